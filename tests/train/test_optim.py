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


def _decay_of(optimizer, param):
    return next(g["weight_decay"] for g in optimizer.param_groups if any(p is param for p in g["params"]))


def test_without_layer_decay_biases_and_norms_are_not_decayed_as_in_timm():
    model = _lite0()
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.01))
    assert isinstance(opt, torch.optim.AdamW)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(params) == len({id(p) for p in params})  # frozen layers left out, no parameter twice
    bb = model.backbone
    assert _decay_of(opt, bb.classifier.weight) == _decay_of(opt, bb.conv_head.weight) == 0.01
    assert _decay_of(opt, bb.classifier.bias) == _decay_of(opt, bb.bn2.weight) == _decay_of(opt, bb.bn2.bias) == 0.0
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)


def test_one_adamw_step_on_zero_gradients_shrinks_only_the_decayed_weights():
    model = _lite0()
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=0.1, weight_decay=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for p in before:
        model.get_parameter(p).grad = torch.zeros_like(before[p])
    opt.step()
    for name, old in before.items():
        new = model.get_parameter(name).detach()
        factor = 1.0 if old.ndim <= 1 else 1 - 0.1 * 0.5  # decoupled decay: p -= lr * wd * p
        torch.testing.assert_close(new, old * factor, msg=name)


def test_decay_biases_and_norms_shrinks_every_trainable_tensor_on_zero_gradients():
    model = _lite0()
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=0.1, weight_decay=0.5, decay_biases_and_norms=True))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(old.ndim <= 1 for old in before.values())  # the biases and norm weights are in play
    for name in before:
        model.get_parameter(name).grad = torch.zeros_like(before[name])
    opt.step()
    for name, old in before.items():
        torch.testing.assert_close(model.get_parameter(name).detach(), old * (1 - 0.1 * 0.5), msg=name)


def test_a_backbones_no_weight_decay_names_are_honoured():
    model = build_model(ModelConfig(name="test_vit", weights="none", freeze=0), num_classes=3, image_size=32)
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.05))
    assert _decay_of(opt, model.backbone.pos_embed) == _decay_of(opt, model.backbone.cls_token) == 0.0
    assert _decay_of(opt, model.backbone.blocks[0].attn.qkv.weight) == 0.05
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.05, layer_decay=0.9))
    assert _decay_of(opt, model.backbone.pos_embed) == 0.0
    assert _decay_of(opt, model.backbone.blocks[0].attn.qkv.weight) == 0.05


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_optimizers_by_name_keep_their_settings(name, cls):
    opt = build_optimizer(_lite0(), OptimConfig(name=name, lr=3e-3, weight_decay=1e-4))
    assert type(opt) is cls
    assert {g["lr"] for g in opt.param_groups} == {3e-3}
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 1e-4}
    if name == "sgd":
        assert all(g["momentum"] == 0.9 and g["nesterov"] for g in opt.param_groups)


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
    sched = build_scheduler(opt, cfg, epochs=2, steps_per_epoch=3)
    assert len({g["lr_scale"] for g in opt.param_groups}) > 3
    for step in range(6):
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(curve[step] * group["lr_scale"])
        opt.step()
        sched.step()


def test_the_seed_head_trains_at_the_full_rate():
    model = _lite0(head="seed")
    opt = build_optimizer(model, OptimConfig(weight_decay=0.01, layer_decay=0.7))
    assert all(_scale_of(opt, p) == 1.0 for p in model.head.parameters())
    assert _decay_of(opt, model.head.fc.weight) == 0.01 and _decay_of(opt, model.head.fc.bias) == 0.0
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
