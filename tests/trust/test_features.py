"""Classifier.features_and_logits: one pass that returns the penultimate features and the same logits as forward()."""

from __future__ import annotations

import pytest
import torch

from plantid.config import ModelConfig
from plantid.models import build_model


@pytest.mark.parametrize("cfg, dim", [
    (ModelConfig(name="simple_cnn", weights="none"), 256),
    (ModelConfig(name="inception", weights="none"), 128),
    (ModelConfig(name="tf_efficientnet_lite0", weights="none"), 1280),
    (ModelConfig(name="tf_efficientnet_lite0", weights="none", head="seed", head_hidden=64), 64),
    (ModelConfig(name="simple_cnn", weights="none", members=2), 512),
])
def test_features_and_logits_match_forward(cfg: ModelConfig, dim: int) -> None:
    torch.manual_seed(0)
    model = build_model(cfg, 5, 64).eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        features, logits = model.features_and_logits(x)
        expected = model(x)
    assert features.shape == (3, dim)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
