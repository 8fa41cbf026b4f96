"""The optimizer factory: plain groups by default, per-block learning rates with layer decay."""

import pytest
import torch

from plantid.config import ModelConfig, OptimConfig
from plantid.errors import PlantidError
from plantid.models import build_model
from plantid.train.optim import build_optimizer
from plantid.train.schedules import build_scheduler, lr_curve


def _lite0(freeze: int = 30, head: str = "linear"):
    return build_model(ModelConfig(name="tf_efficientnet_lite0", weights="none", freeze=freeze, head=head),
                       num_classes=8, image_size=64)


def _scale_of(optimizer, param):
    return next(g["lr_scale"] for g in optimizer.param_groups if any(p is param for p in g["params"]))


def test_without_layer_decay_one_group_holds_every_trainable_parameter():
    model = _lite0()
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.01))
    assert len(opt.param_groups) == 1
    params = opt.param_groups[0]["params"]
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    assert opt.param_groups[0]["weight_decay"] == 0.01


def test_layer_decay_scales_each_block_below_the_next_and_skips_frozen_layers():
    model = _lite0()
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.01, layer_decay=0.8))
    in_groups = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in in_groups} == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(in_groups) == len({id(p) for p in in_groups})  # no parameter in two groups
    bb = model.backbone
    assert _scale_of(opt, bb.classifier.weight) == 1.0
    head_scale = _scale_of(opt, bb.conv_head.weight)
    last_block = _scale_of(opt, bb.blocks[6][0].conv_pw.weight)
    mid_block = _scale_of(opt, bb.blocks[4][0].conv_pw.weight)
    # timm groups the last block with conv_head, one step below the classifier.
    assert 1.0 > head_scale >= last_block > mid_block > 0
    assert head_scale == pytest.approx(0.8)
    # Each block one step down: blocks.5.2 trains at 0.8 x the rate of blocks.5.3.
    assert _scale_of(opt, bb.blocks[5][2].conv_pw.weight) == pytest.approx(0.8 * _scale_of(opt, bb.blocks[5][3].conv_pw.weight))
    # As in timm: biases and norm weights are not decayed.
    bn_group = next(g for g in opt.param_groups if any(p is bb.bn2.weight for p in g["params"]))
    assert bn_group["weight_decay"] == 0.0


def test_scheduler_applies_each_groups_scale_to_the_curve():
    model = _lite0()
    cfg = OptimConfig(name="adam", lr=1e-2, schedule="cosine", layer_decay=0.5)
    opt = build_optimizer(model, cfg)
    curve = lr_curve(cfg, epochs=2, steps_per_epoch=3)
    sched = build_scheduler(opt, curve)
    for step in range(4):
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(curve(step) * group["lr_scale"])
        opt.step()
        sched.step()


def test_the_seed_head_trains_at_the_full_rate():
    model = _lite0(head="seed")
    opt = build_optimizer(model, OptimConfig(layer_decay=0.7))
    assert all(_scale_of(opt, p) == 1.0 for p in model.head.parameters())
    assert _scale_of(opt, model.backbone.blocks[5][0].conv_pw.weight) < 1.0


def test_layer_decay_on_a_scratch_model_is_a_clear_error():
    model = build_model(ModelConfig(name="simple_cnn", weights="none"), num_classes=3, image_size=32)
    with pytest.raises(PlantidError, match="layer_decay"):
        build_optimizer(model, OptimConfig(layer_decay=0.7))


def test_a_bad_layer_decay_is_refused_by_the_config():
    with pytest.raises(ValueError, match="layer_decay"):
        OptimConfig(layer_decay=1.5)


def test_layer_decay_gives_each_ensemble_member_the_same_per_block_rates():
    model = build_model(ModelConfig(name="tf_efficientnet_lite0", weights="none", freeze=30, members=2),
                        num_classes=8, image_size=64)
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.01, layer_decay=0.8))
    in_groups = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in in_groups} == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(in_groups) == len({id(p) for p in in_groups})
    first, second = (m.backbone for m in model.members)
    for block in (first.blocks[4][0], first.blocks[6][0]):
        twin = second.get_submodule(next(n for n, m in first.named_modules() if m is block))
        assert _scale_of(opt, block.conv_pw.weight) == _scale_of(opt, twin.conv_pw.weight) < 1.0
    assert _scale_of(opt, second.classifier.weight) == 1.0
