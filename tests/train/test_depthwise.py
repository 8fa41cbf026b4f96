"""Small-map depthwise convolutions: the same gradients as PyTorch's, taken over only where the kernel exceeds the map."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plantid.config import ModelConfig
from plantid.models import build_model
from plantid.train.depthwise import DepthwiseConv2d, SmallMapDepthwiseConv2d, use_small_map_depthwise


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("size,kernel", [((4, 4), 5), ((3, 5), 7), ((2, 6), (3, 7))])
def test_gradients_pass_gradcheck(size, kernel, bias, channels_last):
    gen = torch.Generator().manual_seed(0)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, 1, kh, kw, dtype=torch.float64, generator=gen)
    b = torch.randn(3, dtype=torch.float64, generator=gen) if bias else None
    inputs = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_() if bias else None, (kh // 2, kw // 2))
    assert torch.autograd.gradcheck(DepthwiseConv2d.apply, inputs)


def _grads(model, x, labels):
    torch.manual_seed(5)  # the same dropout / drop-path draws in both passes
    F.cross_entropy(model(x), labels).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _small_map_calls(model) -> int:
    return sum(m.small_map_calls for m in model.modules() if isinstance(m, SmallMapDepthwiseConv2d))


def test_a_timm_backbone_trains_with_the_same_gradients():
    reference = build_model(ModelConfig(name="tf_efficientnet_lite0", weights="none", freeze=30, drop_path=0.05),
                            num_classes=8, image_size=64).train().to(memory_format=torch.channels_last)
    model = copy.deepcopy(reference)
    # 12 stride-1 depthwise layers (blocks 0.0, 1.1, 2.1, 3.1-2, 4.0-2, 5.1-3, 6.0); the strided ones
    # are timm's Conv2dSame and stay as they are
    assert use_small_map_depthwise(model) == 12
    assert model.state_dict().keys() == reference.state_dict().keys()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 64, 64, generator=gen).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 8, (6,), generator=gen)
    expected, ours = _grads(reference, x, labels), _grads(model, x, labels)
    # 64 px: blocks 4.x run 5x5 depthwise convolutions on 4x4 maps, 5.1-5.3 5x5 and 6.0 3x3 on 2x2
    assert _small_map_calls(model) == 7
    assert expected.keys() == ours.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # inference is the plain convolution
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=0, atol=0)
    assert _small_map_calls(model) == 7


def test_layers_and_calls_it_does_not_take_over_stay_pytorchs():
    layers = nn.Sequential(
        nn.Conv2d(4, 4, 5, padding=2, groups=4),
        nn.Conv2d(4, 4, 5, padding=2, stride=2, groups=4),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4),
        nn.Conv2d(4, 8, 5, padding=2, groups=4),
        nn.Conv2d(4, 4, 5, padding=2),
    )
    assert use_small_map_depthwise(layers) == 1 and isinstance(layers[0], SmallMapDepthwiseConv2d)
    depthwise = layers[0]
    depthwise(torch.randn(2, 4, 8, 8)).sum().backward()  # the kernel fits the map
    with torch.no_grad():
        depthwise(torch.randn(2, 4, 3, 3))  # inference
    depthwise.weight.requires_grad_(False)
    depthwise(torch.randn(2, 4, 3, 3))  # frozen
    assert depthwise.small_map_calls == 0
    depthwise.weight.requires_grad_(True)
    depthwise(torch.randn(2, 4, 3, 3)).sum().backward()
    assert depthwise.small_map_calls == 1
