"""Fixtures shared by tests/infer: the session's tiny run, exported with --quantize."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from plantid.infer.export import export_run


def _exported_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One private copy of the session's tiny run, exported with --quantize, shared by tests/infer."""
    run = tmp_path_factory.getbasetemp() / "infer-exported-run"
    if not (run / "export" / "preprocessing.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(trained_run, run, symlinks=True)
        export_run(run, "onnx", quantize=True)
    return run


@pytest.fixture(scope="module")
def run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _exported_run(trained_run, tmp_path_factory)
