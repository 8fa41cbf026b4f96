"""SmallMapDepthwise: the same gradients as PyTorch's, taken over only where the kernel exceeds the map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plantid.config import ModelConfig
from plantid.models import build_model
from plantid.train.depthwise import DepthwiseConv2d, SmallMapDepthwise


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


def _grads(model, x, labels, mode):
    torch.manual_seed(5)  # the same dropout / drop-path draws in both passes
    model.zero_grad(set_to_none=True)
    if mode is None:
        loss = F.cross_entropy(model(x), labels)
    else:
        with mode:
            loss = F.cross_entropy(model(x), labels)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_timm_backbone_trains_with_the_same_gradients():
    # 64 px: tf_efficientnet_lite0's blocks 4.x run 5x5 depthwise convolutions on 4x4 maps, 5.1-5.3
    # 5x5 and 6.0 3x3 ones on 2x2 maps; block 5.0's is strided and stays PyTorch's.
    model = build_model(ModelConfig(name="tf_efficientnet_lite0", weights="none", freeze=30, drop_path=0.05),
                        num_classes=8, image_size=64).train()
    model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 64, 64, generator=gen).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 8, (6,), generator=gen)
    reference = _grads(model, x, labels, None)
    mode = SmallMapDepthwise()
    ours = _grads(model, x, labels, mode)
    assert mode.routed == 7
    assert reference.keys() == ours.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(ours[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_convolutions_it_does_not_take_over_stay_pytorchs():
    x = torch.randn(2, 4, 8, 8)
    depthwise = torch.randn(4, 1, 5, 5, requires_grad=True)
    with SmallMapDepthwise() as mode:
        F.conv2d(x, depthwise, padding=2, groups=4).sum().backward()  # the kernel fits the map
        F.conv2d(x[:, :, :3, :3], torch.randn(4, 4, 5, 5, requires_grad=True), padding=2)  # not depthwise
        F.conv2d(x[:, :, :3, :3], depthwise, padding=2, stride=2, groups=4)  # strided
        with torch.no_grad():
            F.conv2d(x[:, :, :3, :3], depthwise, padding=2, groups=4)  # inference
        F.conv2d(x[:, :, :3, :3], depthwise.detach(), padding=2, groups=4)  # frozen
        assert mode.routed == 0
        F.conv2d(x[:, :, :3, :3], depthwise, padding=2, groups=4)
        assert mode.routed == 1
