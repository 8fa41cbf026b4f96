"""Trust files: written atomically, read back exactly, refused when they belong to other weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from plantid.errors import PlantidError
from plantid.trust.store import TRUST_JSON, TRUST_TENSORS, load_trust


def test_round_trip_rebuilds_the_same_head(trust_run: Path) -> None:
    from plantid.infer.checkpoint import load_trained

    trained = load_trained(trust_run)
    trust = load_trust(trust_run, trained.checkpoint, trained.classes)
    meta = json.loads((trust_run / TRUST_JSON).read_text())
    assert trust is not None and trust.detector == meta["detector"] and trust.threshold == meta["threshold"]
    assert meta["checkpoint"] == trained.checkpoint.name
    head = trust.head()
    assert head.taps == tuple(meta["settings"]["taps"]) == trained.model.last_stage()  # the default reads it
    features, logits = trained.model.features_and_logits(torch.rand(4, 3, 32, 32), head.taps)
    probs, scores = head(features, logits)
    torch.testing.assert_close(probs, torch.softmax(logits / trust.temperature, 1))
    assert scores.shape == (4,)
    assert not any(p.name.startswith(".") for p in trust_run.iterdir())  # no temporary files left


def test_a_retrained_checkpoint_turns_trust_off_with_a_warning(trust_run_copy: Path, caplog) -> None:
    from plantid.infer.predictor import Predictor

    ckpt = trust_run_copy / "best.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["epoch"] = state.get("epoch", 0) + 1  # same weights, different file: not the one trust was fitted for
    torch.save(state, ckpt)
    with caplog.at_level(logging.WARNING, logger="plantid"):
        predictor = Predictor.from_run(trust_run_copy)
    assert predictor.threshold is None
    assert "fitted for another best.ckpt" in caplog.text
    assert "plantid trust" in predictor.note


def test_tampered_tensors_are_refused(trust_run_copy: Path) -> None:
    from plantid.infer.checkpoint import load_trained

    (trust_run_copy / TRUST_TENSORS).write_bytes(b"not safetensors")
    trained = load_trained(trust_run_copy)
    with pytest.raises(PlantidError, match="trust.safetensors: missing or not the file"):
        load_trust(trust_run_copy, trained.checkpoint, trained.classes)


def test_run_without_trust_predicts_as_before_with_a_note(trust_run: Path, trust_run_copy: Path) -> None:
    import numpy as np

    from plantid.infer.predictor import Predictor

    photos = [str(p) for p in sorted((trust_run.parent / "photos" / "b").glob("*.jpg"))[:4]]
    (trust_run_copy / TRUST_JSON).unlink()
    plain = Predictor.from_run(trust_run_copy)
    assert plain.threshold is None and "no trust files" in plain.note
    predictions = plain.predict(photos)
    assert all(p.ok and p.unknown is None and p.ood_score is None for p in predictions)
    # uncalibrated softmax, as before trust existed
    from plantid.infer.checkpoint import load_trained

    trained = load_trained(trust_run_copy)
    x = torch.from_numpy(np.stack([plain.preprocess(p) for p in photos])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = torch.softmax(trained.model(x), 1).numpy()
    assert np.allclose(np.stack([p.probabilities for p in predictions]), expected, atol=1e-5)
