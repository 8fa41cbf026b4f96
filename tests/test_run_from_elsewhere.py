"""A run folder shared by a colleague or downloaded is untrusted input: opening it never runs its
text as HTML, never sends its files where it says, never expands its YAML without bound, never
uses a changed ONNX model, and never uses nonsense numbers from its trust.json."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from plantid.config import load_run_config
from plantid.infer.predictor import Predictor
from plantid.records import read_trust
from plantid.serve.app import build_app
from plantid.serve.middleware import INLINE_SCRIPT
from plantid.track.mlflow_store import log_run_files
from tests.support.cli import one_line_error, run_plantid
from tests.support.refusals import refusal

HOSTILE_ID = '<img src=x onerror=alert(1)>`<script>alert(2)</script>'


def _predictor(model_id: str) -> Predictor:
    return Predictor(["a", "b"], 32, lambda images: np.full((len(images), 2), 0.5), model_id, "onnx")


def test_a_hostile_model_id_is_shown_as_text_and_docs_pages_carry_a_csp(tmp_path: Path):
    client = TestClient(build_app(_predictor(HOSTILE_ID), tmp_path))
    description = client.get("/openapi.json").json()["info"]["description"]
    assert "<img" not in description and "<script" not in description
    assert "&#96;" in description and "&#60;img" in description  # the id's backtick cannot close the code span
    for page in ("/docs", "/redoc"):
        answer = client.get(page)
        csp = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        # every inline script of the page is allowed by its hash, and nothing else inline runs
        for body in INLINE_SCRIPT.findall(answer.content):
            import base64
            import hashlib

            assert base64.b64encode(hashlib.sha256(body).digest()).decode() in csp


def test_mlflow_json_never_chooses_where_a_runs_files_go(copy_run: Path, tmp_path: Path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    elsewhere = tmp_path / "elsewhere" / "mlflow.db"
    for uri in (f"http://127.0.0.1:{listener.getsockname()[1]}", f"sqlite:///{elsewhere}"):
        (copy_run / "mlflow.json").write_text(json.dumps({"tracking_uri": uri, "experiment_id": "1", "run_id": "r",
                                                           "run_dir": str(copy_run.resolve())}))
        assert log_run_files(copy_run) == 0
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing connected to the address the file named
    listener.close()
    assert not (tmp_path / "elsewhere").exists()


def test_a_billion_laughs_config_is_one_line_without_growing(copy_run: Path):
    laughs = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    laughs += [f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(9))}]" for i in range(1, 10)]
    (copy_run / "config.yaml").write_text("\n".join(laughs) + "\n")
    assert "anchors and aliases expand" in refusal(load_run_config, copy_run / "config.yaml")
    proc = run_plantid("runs", str(copy_run.parent), timeout=120)
    assert "Traceback" not in proc.stderr and proc.returncode == 0, proc.stderr[-2000:]


def test_an_onnx_model_changed_in_place_is_refused(copy_run: Path):
    from plantid.infer.export import export_run
    from plantid.infer.onnx_backend import OnnxBackend

    export_run(copy_run, "onnx")
    model = copy_run / "export" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-100:-90] = bytes(10)  # same size, other bytes
    model.write_bytes(bytes(data))
    assert "sha256 does not match" in refusal(OnnxBackend.from_run, copy_run)


@pytest.mark.parametrize("key, value", [("image_size", -1), ("labels", []), ("labels", "ab"), ("format", "other/1")])
def test_nonsense_in_preprocessing_json_is_refused_and_auto_falls_back_to_torch(copy_run: Path, key: str, value):
    from plantid.infer.backend_choice import choose_backend
    from plantid.infer.export import export_run
    from plantid.infer.onnx_backend import OnnxBackend

    export_run(copy_run, "onnx")
    meta_path = copy_run / "export" / "preprocessing.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, key: value}))
    assert key in refusal(OnnxBackend.from_run, copy_run)
    choice = choose_backend(copy_run)
    assert choice.backend == "torch" and key in choice.reason


@pytest.mark.parametrize("key, value", [("temperature", 0), ("temperature", float("nan")), ("temperature", -1),
                                        ("threshold", float("inf")), ("keep", 2)])
def test_nonsense_in_trust_json_is_refused(copy_run: Path, key: str, value: float):
    (copy_run / "trust.json").write_text(json.dumps({"format": "plantid-trust/1", "temperature": 1.0, "threshold": 0.5,
                                                     "keep": 0.95, key: value}))
    assert key in refusal(read_trust, copy_run)
