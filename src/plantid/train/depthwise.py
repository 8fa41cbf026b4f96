"""A faster CPU backward for depthwise convolutions whose kernel is larger than their feature map.

PyTorch's CPU convolution backward (oneDNN) computes the weight gradient of a depthwise
convolution 4-5x slower when the kernel is larger than the feature map than when it fits: for
`tf_efficientnet_lite0` at 128 px the 5x5 depthwise convolutions of the last stage run on 4x4
maps, and their weight gradients alone took ~20% of a training step (33 ms each, against 8 ms
for the same convolution on a 5x5 map; `benchmarks/bench_depthwise.py`). ConvNeXt's 7x7
depthwise convolutions meet the same case on 6x6 and smaller maps.

`SmallMapDepthwise` is a torch function mode that routes exactly those calls (CPU, float32,
stride 1, no dilation, grad enabled, kernel larger than the map) to `DepthwiseConv2d`, whose
forward is the same `conv2d` and whose backward asks PyTorch only for the input gradient (fast
in oneDNN) and computes the weight gradient itself: one multiply-and-sum over the channels-last
batch per kernel tap. Every other call, and everything under `no_grad`, is left alone, so
inference, export and GPU training never see it. Gradients equal PyTorch's up to float32
rounding (tests/train/test_depthwise.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CONV2D_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[-1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


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


class SmallMapDepthwise(TorchFunctionMode):
    """Within it, CPU depthwise convolutions with a kernel larger than their map train via `DepthwiseConv2d`.

    `routed` counts the calls it took over (for tests and logs).
    """

    def __init__(self) -> None:
        super().__init__()
        self.routed = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            call = dict(zip(_CONV2D_ARGS, args), **kwargs)
            if _takes_over(call):
                self.routed += 1
                return DepthwiseConv2d.apply(call["input"], call["weight"], call.get("bias"),
                                             _pair(call.get("padding", 0)))
        return func(*args, **kwargs)


def _takes_over(call: dict[str, Any]) -> bool:
    x, weight = call["input"], call["weight"]
    if not (torch.is_grad_enabled() and weight.requires_grad and x.device.type == "cpu"):
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.ndim != 4 or torch.is_autocast_enabled("cpu"):
        return False
    padding = call.get("padding", 0)
    if isinstance(padding, str) or _pair(call.get("stride", 1)) != (1, 1) or _pair(call.get("dilation", 1)) != (1, 1):
        return False
    channels = x.shape[1]
    if call.get("groups", 1) != channels or weight.shape[0] != channels or weight.shape[1] != 1 or channels == 1:
        return False
    return weight.shape[2] > x.shape[2] or weight.shape[3] > x.shape[3]
