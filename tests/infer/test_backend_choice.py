"""`--backend auto`: the run's ONNX export answers when it matches the checkpoint and trust files, else torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from plantid.infer.backend_choice import choose_backend
from plantid.infer.predictor import Predictor
from plantid.runfolder import TRUST_JSON


def _photos(run: Path, n: int = 4) -> list[str]:
    from plantid.data.split import read_manifest

    return [r.path for r in read_manifest(run / "split.csv").rows][:n]


def test_a_run_without_export_is_answered_by_torch_with_the_way_to_the_fast_path(copy_run: Path) -> None:
    choice = choose_backend(copy_run)
    assert choice.backend == "torch"
    assert "plantid export" in choice.reason


def test_a_matching_export_answers_and_gives_the_checkpoints_answers(run: Path) -> None:
    choice = choose_backend(run)
    assert choice.backend == "onnx", choice.reason
    photos = _photos(run)
    onnx = Predictor.from_run(run, backend="onnx").predict(photos, top_k=3)
    torch_ = Predictor.from_run(run, backend="torch").predict(photos, top_k=3)
    for a, b in zip(onnx, torch_):
        assert [label for label, _ in a.top] == [label for label, _ in b.top]
        np.testing.assert_allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-4)


def test_views_or_changed_weights_or_refitted_trust_fall_back_to_torch(run: Path, tmp_path: Path) -> None:
    assert choose_backend(run, wants_views=True).backend == "torch"
    changed = Path(shutil.copytree(run, tmp_path / "changed", symlinks=True))
    state = torch.load(changed / "best.ckpt", map_location="cpu", weights_only=True)
    first = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    state["state_dict"][first] = state["state_dict"][first] + 1.0
    torch.save(state, changed / "best.ckpt")
    choice = choose_backend(changed)
    assert choice.backend == "torch" and "other weights" in choice.reason
    refit = Path(shutil.copytree(run, tmp_path / "refit", symlinks=True))
    (refit / TRUST_JSON).write_text(json.dumps({"detector": "knn", "threshold": 1.0, "temperature": 1.5}))
    choice = choose_backend(refit)
    assert choice.backend == "torch" and "trust" in choice.reason


def test_one_photo_predict_says_onnx_answered_and_never_imports_torch(run: Path) -> None:
    script = ("import sys\nfrom plantid.cli import main\n"
              f"sys.argv = ['plantid', 'predict', {str(run)!r}, {_photos(run, 1)[0]!r}, '--format', 'json']\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
              "print('TORCH-LOADED' if 'torch' in sys.modules else 'TORCH-NOT-LOADED', code, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert "backend: onnx" in proc.stderr, proc.stderr
    assert "TORCH-NOT-LOADED 0" in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)[0]["predictions"]
