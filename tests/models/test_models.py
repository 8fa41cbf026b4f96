"""The Classifier: normalization inside, heads, layer counting and freezing, scratch nets."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import timm
import torch
from torch import nn

from plantid.config import ModelConfig, load_config
from plantid.errors import PlantidError
from plantid.models import Classifier, Ensemble, build_model, count_layers, freeze_first_layers, members_of
from plantid.models.classifier import SeedHead, layer_modules
from plantid.models.factory import freeze_count
from plantid.models.scratch import InceptionNet, SimpleCNN

KERAS_CONVNEXT_LARGE_LAYERS = 295  # ConvNeXtLarge(include_top=False).layers, as counted by the report


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PLANTID_CACHE", str(tmp_path_factory.getbasetemp() / "plantid-cache"))


def _lite0(**kw) -> Classifier:
    cfg = ModelConfig(name="tf_efficientnet_lite0", weights="none", **kw)
    return build_model(cfg, num_classes=3, image_size=64)


# -- normalization and heads -----------------------------------------------------------------
@pytest.mark.parametrize("name, mean", [("tf_efficientnet_lite0", 0.5), ("resnet18", 0.485), ("simple_cnn", 0.5)])
def test_classifier_normalizes_inside(name: str, mean: float):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, weights="none"), num_classes=4, image_size=64).eval()
    cfg = getattr(model.backbone, "pretrained_cfg", {})
    m = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    s = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    assert m[0, 0, 0, 0].item() == pytest.approx(mean)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.backbone((x - m) / s)
        got = model(x)
        unnormalized = model.backbone(x)
    assert got.shape == (2, 4)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, unnormalized, atol=1e-4)
    assert {"mean", "std"} <= set(model.state_dict())  # travels with checkpoints and ONNX


def test_seed_head_shapes_and_l1l2_penalty_by_hand():
    model = _lite0(head="seed", head_hidden=32, dropout=0.3, l1=1e-3, l2=1e-2)
    assert isinstance(model.head, SeedHead)
    assert model.backbone.num_classes == 0 and model.backbone.drop_rate == 0.0  # dropout lives in the head
    assert [type(m) for m in model.head.children()] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]
    assert model.head.drop.p == 0.3 and model.head.fc1.out_features == 32 and model.head.fc.out_features == 3
    out = model.train()(torch.rand(4, 3, 64, 64))
    assert out.shape == (4, 3)

    w = model.head.fc1.weight.detach().numpy().astype(np.float64)
    expected = 1e-3 * np.abs(w).sum() + 1e-2 * (w**2).sum()
    penalty = model.regularization()
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()  # differentiable: the training loss adds it
    assert model.head.fc1.weight.grad is not None and model.head.fc.weight.grad is None

    plain = _lite0()
    zero = plain.regularization()
    assert isinstance(zero, torch.Tensor) and zero.item() == 0.0
    assert isinstance(plain.head, nn.Identity) and plain.backbone.get_classifier().out_features == 3


def test_parameter_counts_and_gradcam_layer():
    model = _lite0(freeze=5)
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["frozen"] == counts["total"] - counts["trainable"] > 0

    seen: dict[str, torch.Size] = {}

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["shape"] = output.shape

    layer = model.gradcam_layer()
    handle = layer.register_forward_hook(record)
    model.eval()(torch.rand(1, 3, 64, 64))
    handle.remove()
    assert layer is model.backbone.bn2 and seen["shape"] == (1, 1280, 2, 2)

    for name, channels in (("simple_cnn", 128), ("inception", 128)):
        net = build_model(ModelConfig(name=name, weights="none"), 3, 64)
        seen.clear()
        handle = net.gradcam_layer().register_forward_hook(record)
        net.eval()(torch.rand(1, 3, 64, 64))
        handle.remove()
        assert len(seen["shape"]) == 4 and seen["shape"][1] == channels


def test_ensemble_averages_its_members_probabilities():
    torch.manual_seed(0)
    model = _lite0(members=3, freeze=5)
    single = _lite0(freeze=5)
    assert isinstance(model, Ensemble) and len(members_of(model)) == 3 and members_of(single) == [single]
    heads = [m.backbone.get_classifier().weight for m in model.members]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])  # fresh head each
    counts, one = model.parameter_counts(), single.parameter_counts()
    assert counts == {key: 3 * value for key, value in one.items()}  # every member frozen alike
    x = torch.rand(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        out = model(x)
        expected = torch.stack([torch.softmax(m(x), dim=1) for m in model.members]).mean(0)
    assert out.shape == (4, 3)
    torch.testing.assert_close(torch.softmax(out, dim=1), expected)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4))  # log-probabilities: softmax is a no-op
    assert model.gradcam_layer() is model.members[0].backbone.bn2
    torch.testing.assert_close(model.mean, single.mean)
    # training mode reaches every member, and frozen BatchNorm stays in eval mode inside each
    model.train()
    for member in model.members:
        assert member.training and not member.backbone.bn1.training


# -- layers and freezing ---------------------------------------------------------------------
def test_count_layers_counts_weighted_layers_of_the_backbone_only():
    model = _lite0(head="seed", head_hidden=16)
    convs_and_norms = sum(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in model.backbone.modules())
    assert count_layers(model) == convs_and_norms == count_layers(model.backbone) == 98
    linear = _lite0()
    assert count_layers(linear) == 98  # timm's classifier is the head: not counted
    assert all("classifier" not in name for name, _ in layer_modules(linear))
    # Containers owning parameters count once (ConvNeXt's layer-scale gamma lives on the block)
    with torch.device("meta"):
        block = timm.create_model("convnext_atto", num_classes=0).stages[0].blocks[0]
    assert count_layers(block) == 5  # block(gamma), conv_dw, norm, mlp.fc1, mlp.fc2


def test_frozen_layers_get_no_gradient_and_keep_their_batchnorm_statistics():
    torch.manual_seed(0)
    model = _lite0()
    names = freeze_first_layers(model, 10)
    assert names[:3] == ["conv_stem", "bn1", "blocks.0.0.conv_dw"] and len(names) == 10
    frozen_modules = [m for _, m in layer_modules(model)[:10]]
    frozen = [p for m in frozen_modules for p in m.parameters(recurse=False)]
    assert frozen and all(not p.requires_grad for p in frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert model.parameter_counts()["frozen"] == sum(p.numel() for p in frozen)
    assert model.parameter_counts()["trainable"] == sum(p.numel() for p in trainable)

    frozen_bn = model.backbone.bn1
    free_bn = model.backbone.bn2
    before_frozen = frozen_bn.running_mean.clone()
    before_free = free_bn.running_mean.clone()
    model.train()
    assert model.training and model.backbone.training
    assert not frozen_bn.training and free_bn.training
    x = torch.rand(4, 3, 64, 64)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is None for p in frozen)
    assert all(p.grad is not None for p in trainable)
    assert torch.equal(frozen_bn.running_mean, before_frozen)  # pretrained statistics kept
    assert not torch.equal(free_bn.running_mean, before_free)  # the trainable part does update
    model.eval()
    model.train()
    assert not frozen_bn.training

    # freezing again sets exactly the new prefix
    freeze_first_layers(model, 2)
    model.train()
    assert not model.backbone.bn1.training and model.backbone.blocks[0][0].bn1.training
    assert model.backbone.blocks[0][0].conv_dw.weight.requires_grad
    with pytest.raises(PlantidError, match="98 layers"):
        freeze_first_layers(model, 99)


def test_freeze_config_counts_and_fractions(caplog: pytest.LogCaptureFixture):
    assert freeze_count(0, 98) == 0 and freeze_count(12, 98) == 12 and freeze_count(0.5, 98) == 49
    assert freeze_count(88 / 295, 295) == 88
    with pytest.raises(PlantidError, match="whole number"):
        freeze_count(2.5, 98)
    with caplog.at_level(logging.INFO, logger="plantid"):
        model = _lite0(freeze=0.5)
    frozen = [name for name, m in layer_modules(model) if not any(p.requires_grad for p in m.parameters(recurse=False))]
    assert len(frozen) == 49
    assert "49 of 98 backbone layers frozen" in caplog.text and "trainable" in caplog.text
    with pytest.raises(PlantidError, match="only 98 layers"):
        _lite0(freeze=500)


def test_convnext_large_builds_from_scratch_and_freezes_like_the_seed():
    cfg = load_config("seed-convnext-large", ["model.weights=none"]).model
    model = build_model(cfg, num_classes=5, image_size=224)
    layers = count_layers(model)
    n = freeze_count(cfg.freeze, layers)
    names = [name for name, _ in layer_modules(model)]
    print(f"\nconvnext_large: count_layers={layers} (Keras ConvNeXtLarge: {KERAS_CONVNEXT_LARGE_LAYERS}); "
          f"freeze {cfg.freeze} -> {n} layers, last frozen {names[n - 1]}, first trainable {names[n]}")
    assert layers == 189
    assert n == 56 and names[n - 1] == "stages.2.blocks.3.mlp.fc2" and names[n] == "stages.2.blocks.4"
    assert not model.backbone.stages[2].blocks[3].gamma.requires_grad
    assert model.backbone.stages[2].blocks[4].gamma.requires_grad
    assert all(p.requires_grad for p in model.head.parameters())
    assert model.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert model.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)  # recipe: channels_last
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert out.shape == (1, 5)


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    a = _lite0().eval()
    b = _lite0(channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    assert b.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(b(x.contiguous(memory_format=torch.channels_last)), a(x), rtol=1e-4, atol=1e-4)


def test_grad_checkpointing_gives_the_same_gradients_and_leaves_evaluation_as_it_was():
    """Recomputed activations change memory, not results: the same loss gradients in training; in
    evaluation the blocks run as modules again, so the unknown-photo score's feature taps see them."""
    torch.manual_seed(0)
    plain = _lite0().train()
    recomputing = _lite0(grad_checkpointing=True).train()
    recomputing.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 64, 64)
    for model in (plain, recomputing):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout and drop-path draws
        model(x).logsumexp(1).sum().backward()
    assert recomputing.backbone.grad_checkpointing
    for (name, a), (_, b) in zip(plain.named_parameters(), recomputing.named_parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    recomputing.training = False  # as Lightning restores a mode after validation: by attribute
    with torch.no_grad():
        features, logits = recomputing.features_and_logits(x, taps=("blocks.6",))
    assert not recomputing.backbone.grad_checkpointing
    assert features.shape[0] == 2 and torch.isfinite(logits).all()
    with pytest.raises(PlantidError, match="grad_checkpointing"):
        build_model(ModelConfig(name="simple_cnn", grad_checkpointing=True), num_classes=3, image_size=32)


def test_pretrained_and_from_scratch_builds_share_one_state_dict_layout():
    """Checkpoints are rebuilt with weights=none: the keys must match a pretrained build exactly."""
    pretrained = build_model(ModelConfig(weights="lite-package", head="seed", head_hidden=8), 3, 64)
    bare = build_model(ModelConfig(weights="none", head="seed", head_hidden=8), 3, 64)
    missing, unexpected = bare.load_state_dict(pretrained.state_dict(), strict=True)
    assert not missing and not unexpected
    assert not torch.equal(pretrained.backbone.conv_stem.weight, build_model(
        ModelConfig(weights="none"), 3, 64).backbone.conv_stem.weight)


# -- scratch nets ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 96, 224])
def test_scratch_nets_output_shapes(size: int):
    x = torch.rand(2, 3, size, size)
    simple = SimpleCNN(7, image_size=size).eval()
    inception = InceptionNet(7).eval()
    with torch.no_grad():
        assert simple(x).shape == (2, 7)
        assert inception(x).shape == (2, 7)
        assert SimpleCNN(0, hidden=64, image_size=size)(x).shape == (2, 64)
        assert InceptionNet(0, width=16)(x).shape == (2, 64)
    for name in ("simple_cnn", "inception"):
        model = build_model(ModelConfig(name=name, weights="auto", head="seed", head_hidden=16), 5, size).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 5)
        assert model.mean.flatten().tolist() == [0.5, 0.5, 0.5]


def test_scratch_net_structure_and_errors():
    net = SimpleCNN(3, image_size=96)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 3 and all(c.kernel_size == (3, 3) for c in convs) and len(pools) == 3
    assert net.fc1.in_features == 128 * 12 * 12
    assert count_layers(net) == 4  # 3 convs + hidden dense; the classifier is the head
    with pytest.raises(ValueError, match="built for 96 px"):
        net(torch.rand(1, 3, 128, 128))
    with pytest.raises(ValueError, match="at least 32"):
        SimpleCNN(3, image_size=16)

    inc = InceptionNet(3)
    assert [type(m).__name__ for m in inc.children()].count("InceptionModule") == 2
    branches = dict(inc.inception1.named_children())
    assert set(branches) == {"branch1", "branch3", "branch5", "branch_pool"}
    assert branches["branch5"][1][0].kernel_size == (5, 5) and isinstance(branches["branch_pool"][0], nn.MaxPool2d)

    with pytest.raises(PlantidError, match="from scratch"):
        build_model(ModelConfig(name="simple_cnn", weights="hub"), 3, 96)
    with pytest.raises(PlantidError, match="unknown model"):
        build_model(ModelConfig(name="simple_cnnn", weights="none"), 3, 96)
