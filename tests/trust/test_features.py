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


@pytest.mark.parametrize("cfg, stage, channels", [
    (ModelConfig(name="simple_cnn", weights="none"), "features.8", 128),
    (ModelConfig(name="tf_efficientnet_lite0", weights="none"), "blocks.6", 320),
    (ModelConfig(name="tf_efficientnet_lite0", weights="none", head="seed", head_hidden=64), "blocks.6", 320),
])
def test_tapped_features_follow_the_penultimate_ones_and_leave_no_hook(cfg: ModelConfig, stage: str,
                                                                       channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(cfg, 5, 64).eval()
    x = torch.rand(3, 3, 64, 64)
    assert model.last_stage() == (stage,)
    with torch.no_grad():
        plain, logits = model.features_and_logits(x)
        features, tapped_logits = model.features_and_logits(x, model.last_stage())
        # the stage's output computed without hooks: the backbone's layers up to it, by hand
        maps = model.normalize(x)
        bb = model.backbone
        if cfg.name == "simple_cnn":
            maps = bb.features[:9](maps)
        else:
            maps = bb.blocks(bb.bn1(bb.conv_stem(maps)))
    width = plain.shape[1]
    assert features.shape == (3, width + channels)
    torch.testing.assert_close(features[:, :width], plain)
    torch.testing.assert_close(features[:, width:], maps.mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tapped_logits, logits)
    assert not any(m._forward_hooks for m in model.modules())


def test_an_ensemble_puts_every_members_penultimate_features_before_the_tapped_ones() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="simple_cnn", weights="none", members=2), 5, 64).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features, _ = model.features_and_logits(x, model.last_stage())
        first, second = (m.features_and_logits(x, m.last_stage())[0] for m in model.members)
    torch.testing.assert_close(features, torch.cat([first[:, :256], second[:, :256], first[:, 256:], second[:, 256:]], 1))
