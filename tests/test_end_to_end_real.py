"""The whole pipeline, as a user runs it, on the shared real photos (slow: run with `make test-slow`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import run_plantid

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "an2dl2022-plants"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real photos not found at {REAL_DATA}"),
]


def _plantid(*args: str) -> subprocess.CompletedProcess:
    proc = run_plantid(*args, timeout=1800)
    assert proc.returncode == 0, f"plantid {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


def test_scan_split_train_evaluate_report_predict_export_on_real_photos(tmp_path: Path):
    _plantid("scan", str(REAL_DATA), "--out", str(tmp_path / "scan.json"))
    scan = json.loads((tmp_path / "scan.json").read_text())
    assert len(scan["classes"]) == 8
    _plantid("split", str(REAL_DATA), "--out", str(tmp_path / "split"))
    run = tmp_path / "run"
    _plantid("train", "--data", str(tmp_path / "split" / "split.csv"), "--recipe", "cpu-default", "--out", str(run),
             "train.epochs=2", "data.image_size=96", "train.progress=false", f"data.cache_dir={tmp_path / 'cache'}")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["test_acc"] > 0.6  # two short epochs of a pretrained backbone beat the 1/8 chance level by far
    _plantid("evaluate", str(run), "--tta", "hflip,vflip")
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["n_images"] == 446 and evaluation["tta"] is not None
    _plantid("report", str(run))
    assert (run / "report.html").stat().st_size > 100_000
    photos = sorted((REAL_DATA / "Species1").glob("*.jpg"))[:5]
    out = _plantid("predict", str(run), *map(str, photos), "--format", "json")
    assert len(json.loads(out.stdout)) == 5
    _plantid("export", str(run), "--format", "onnx")
    onnx_out = _plantid("predict", str(run), *map(str, photos), "--format", "json", "--backend", "onnx")
    torch_top = [p["predictions"][0]["label"] for p in json.loads(out.stdout)]
    onnx_top = [p["predictions"][0]["label"] for p in json.loads(onnx_out.stdout)]
    assert torch_top == onnx_top
