"""benchmarks/pool_calibration.py: pooling runs' reliability bins equals the ECE of their photos together."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from plantid.evaluate.trust_metrics import calibration
from plantid.trust.calibration import ece_if_calibrated, expected_calibration_error

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "pool_calibration.py"


def _overconfident_run(rng: np.random.Generator, photos: int, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs of a model right less often than it claims, and their labels."""
    logits = rng.normal(0.0, 3.0, (photos, classes))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    right = rng.random(photos) < 0.8 * probs.max(1)
    labels = np.where(right, probs.argmax(1), (probs.argmax(1) + 1) % classes)
    return probs, labels


def _write_run(folder: Path, probs: np.ndarray, labels: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    measured = calibration(probs, labels)
    accuracy = float(np.mean(probs.argmax(1) == labels))
    # eval.json's trust section as `plantid evaluate` writes it (plantid.records.EvaluationTrust)
    trust = {"detector": "knn", "temperature": 1.0, "threshold": 1.0, "keep": 0.95, "kept": 1.0,
             "calibration": {"ece_before": measured["ece"], "ece_after": measured["ece"], "nll_before": 0.0,
                             "nll_after": 0.0, "bins_before": measured["bins"], "bins_after": measured["bins"]}}
    (folder / "eval.json").write_text(json.dumps({"split": "test", "metrics": {"accuracy": accuracy}, "trust": trust}))
    return folder


def test_pooled_ece_is_the_ece_of_all_photos_and_its_floor_shrinks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    runs = [_overconfident_run(rng, n) for n in (300, 200)]
    folders = [_write_run(tmp_path / f"run{i}", *run) for i, run in enumerate(runs)]
    out = tmp_path / "pooled.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), *(f"toy={f}" for f in folders), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())["toy"]

    every_probs = torch.from_numpy(np.concatenate([p for p, _ in runs])).float()
    every_label = torch.from_numpy(np.concatenate([y for _, y in runs]))
    assert abs(result["pooled"]["ece"] - expected_calibration_error(every_probs, every_label)) < 1e-5
    for row, (probs, labels) in zip(result["runs"], runs):
        assert abs(row["ece"] - expected_calibration_error(torch.from_numpy(probs).float(), torch.from_numpy(labels))) < 1e-5
        # the floor from bin means tracks the per-photo draws of plantid's own noise floor
        assert abs(row["floor"][0] - ece_if_calibrated(torch.from_numpy(probs))[0]) < 0.005
    assert result["pooled"]["photos"] == 500
    assert result["pooled"]["floor"][0] < min(row["floor"][0] for row in result["runs"])
    assert result["pooled"]["ece"] > result["pooled"]["floor"][2]  # the toy model IS over-confident


def test_a_run_without_calibration_is_named(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "eval.json").write_text(json.dumps({"split": "test", "metrics": {"accuracy": 0.5}, "trust": None}))
    proc = subprocess.run([sys.executable, str(SCRIPT), f"x={tmp_path / 'run'}", "--out", str(tmp_path / "o.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "eval.json: no calibration" in proc.stderr and "Traceback" not in proc.stderr
