"""The ONNX export carries the trust: onnxruntime returns the same calibrated probabilities, OOD
scores and unknown answers as PyTorch, for the run's photos and for generated foreign images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.trust.conftest import generated_ood


@pytest.fixture(scope="module", params=[("mahalanobis+knn", "mean"), ("mahalanobis+knn+stage", "mean"),
                                        ("mahalanobis+knn+stage", "max")], ids=lambda p: "/".join(p))
def exported(request: pytest.FixtureRequest, trust_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run exported with the default detector (mean of its three parts), without the last stage,
    and with the parts' maximum (trust files written before 2026-12-02)."""
    import shutil

    from plantid.config import TrustConfig
    from plantid.infer.export import export_run
    from plantid.trustfit.fit import fit_trust

    run = Path(shutil.copytree(trust_run, tmp_path_factory.mktemp("onnx-trust") / "run", symlinks=True))
    detector, combine = request.param
    fit_trust(run, TrustConfig(detector=detector, combine=combine))
    export_run(run, "onnx")
    return run


def test_torch_and_onnx_agree_on_scores_and_unknown(exported: Path) -> None:
    from plantid.data.images import load_image
    from plantid.data.split import read_manifest
    from plantid.infer.predictor import Predictor

    meta = json.loads((exported / "export" / "preprocessing.json").read_text())
    trust = json.loads((exported / "trust.json").read_text())
    assert meta["outputs"] == ["probabilities", "ood_score"]
    assert meta["trust"]["detector"] == trust["detector"] and meta["trust"].get("taps") == trust["settings"].get("taps")
    assert meta["trust"]["threshold"] == trust["threshold"] and meta["trust"]["temperature"] == trust["temperature"]
    assert meta["trust"].get("combine") == trust["settings"].get("combine")

    torch_pred = Predictor.from_run(exported, backend="torch")
    onnx_pred = Predictor.from_run(exported, backend="onnx")
    assert onnx_pred.note is None and onnx_pred.threshold == torch_pred.threshold
    own = np.stack([load_image(r.path, 32) for r in read_manifest(exported / "split.csv").rows_for("test")])
    for name, batch in {"own": own, **generated_ood(exported, n=8)}.items():
        p_t, s_t = torch_pred.predict_scored(batch)
        p_o, s_o = onnx_pred.predict_scored(batch)
        np.testing.assert_allclose(p_o, p_t, atol=1e-4, rtol=0, err_msg=name)
        np.testing.assert_allclose(s_o, s_t, atol=1e-3, rtol=1e-3, err_msg=name)  # SCORE_TOLERANCE
        assert list(s_o > onnx_pred.threshold) == list(s_t > torch_pred.threshold), name


def test_onnx_predictions_say_unknown(exported: Path, tmp_path: Path) -> None:
    from PIL import Image

    from plantid.infer.predictor import Predictor

    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(noise)
    pred = Predictor.from_run(exported, backend="onnx").predict([str(noise)])[0]
    assert pred.unknown is True and pred.ood_score is not None
