"""benchmarks/baseline_finetune.py end to end: a real process on a tiny generated split, 1 epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "baseline_finetune.py"


def test_baseline_finetune_runs_and_reports_json(tiny_manifest: Path, tmp_path: Path) -> None:
    """The baseline trains one epoch at 32 px and writes val/test accuracy and seconds as JSON."""
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_manifest), "--out", str(out), "--epochs", "1",
         "--size", "32", "--batch-size", "8"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result == json.loads(proc.stdout[proc.stdout.index("{"):])  # printed and written alike
    assert result["classes"] == 3 and result["epochs"] == 1 and result["image_size"] == 32
    assert result["n"]["train"] + result["n"]["val"] + result["n"]["test"] == 36
    for key in ("val_acc", "test_acc"):
        assert 0.0 <= result[key] <= 1.0
    assert result["train_seconds"] > 0
