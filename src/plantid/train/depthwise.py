"""A faster CPU backward for depthwise convolutions whose kernel is larger than their feature map.

PyTorch's CPU convolution backward (oneDNN) computes the weight gradient of a depthwise
convolution 4-6x slower when the kernel is larger than the feature map than when it fits: for
`tf_efficientnet_lite0` at 128 px the 5x5 depthwise convolutions of the last stage run on 4x4
maps, and their weight gradients alone took ~20% of a training step (33-43 ms each, against
8 ms for the same convolution on a 5x5 map, and 6 ms for plantid's; benchmarks/bench_depthwise.py).
ConvNeXt's 7x7 depthwise convolutions meet the same case on 6x6 and smaller maps.

`use_small_map_depthwise(model)` makes the model's depthwise `nn.Conv2d` layers (stride 1, no
dilation) `SmallMapDepthwiseConv2d`, which on each call checks whether the case applies (CPU,
float32, grad enabled, trainable weight, kernel larger than the map) and then runs
`DepthwiseConv2d`: the same `conv2d` forward, and a backward that asks PyTorch only for the
input gradient (fast in oneDNN) and computes the weight gradient itself, one multiply-and-sum
over the channels-last batch per kernel tap. Every other call, and everything under `no_grad`,
is the plain `nn.Conv2d`, so inference, export and GPU training never see it; parameters and
checkpoint keys are unchanged. Gradients equal PyTorch's up to float32 rounding
(tests/train/test_depthwise.py). (A torch function mode routing `conv2d` calls did the same
without touching the model, but its Python dispatch of every operator cost 3% at 192 px.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class DepthwiseConv2d(torch.autograd.Function):
    """conv2d(x, weight, bias, stride 1, padding, groups=channels) with a tap-by-tap weight gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, 1, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        channels, _, kh, kw = weight.shape
        ph, pw = ctx.padding
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], [ph, pw], [1, 1], False, [0, 0], channels, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            # grad_w[c, i, j] = sum over n, h, w of grad_out[n, c, h, w] * x_padded[n, c, h + i, w + j],
            # computed channels-last so each tap is one elementwise product and one column sum.
            g = grad_out.permute(0, 2, 3, 1).contiguous()
            x_padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))
            height, width = g.shape[1:3]
            taps = torch.empty(kh * kw, channels, dtype=g.dtype, device=g.device)
            product = torch.empty_like(g)
            for i in range(kh):
                for j in range(kw):
                    torch.mul(x_padded[:, i:i + height, j:j + width, :], g, out=product)
                    torch.sum(product.view(-1, channels), 0, out=taps[i * kw + j])
            grad_w = taps.t().reshape(channels, 1, kh, kw).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class SmallMapDepthwiseConv2d(nn.Conv2d):
    """A depthwise nn.Conv2d that trains through `DepthwiseConv2d` when its kernel exceeds its map on CPU.

    `small_map_calls` counts the calls that did (for tests and benchmarks).
    """

    small_map_calls = 0

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (weight.requires_grad and torch.is_grad_enabled() and input.device.type == "cpu" and input.ndim == 4
                and input.dtype == torch.float32 and weight.dtype == torch.float32
                and (weight.shape[2] > input.shape[2] or weight.shape[3] > input.shape[3])
                and not torch.is_autocast_enabled("cpu")):
            self.small_map_calls += 1
            return DepthwiseConv2d.apply(input, weight, bias, self.padding)
        return super()._conv_forward(input, weight, bias)


def _is_plain_depthwise(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.groups == module.in_channels == module.out_channels > 1
            and module.stride == (1, 1) and module.dilation == (1, 1) and not isinstance(module.padding, str)
            and module.padding_mode == "zeros")


def use_small_map_depthwise(model: nn.Module) -> int:
    """Let the model's stride-1 depthwise convolutions train with `DepthwiseConv2d` on small CPU maps.

    Changes those layers' class in place (parameters, buffers and state_dict keys stay as they
    are) and returns how many there are. Idempotent.
    """
    for layer in [m for m in model.modules() if _is_plain_depthwise(m)]:
        layer.__class__ = SmallMapDepthwiseConv2d
    return sum(isinstance(m, SmallMapDepthwiseConv2d) for m in model.modules())
