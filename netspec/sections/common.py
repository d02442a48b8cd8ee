"""Pieces shared by several section definitions: activation keys, BN helpers, the antialiasing blur."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import activations
from ..keys import Choice
from .base import InitTarget

BN_EPS = 1e-5
BN_MOMENTUM = 0.01  # Darknet's GPU rolling-statistics update rate (reference §5.2)


def activation_key(default: str, doc: str = "activation function") -> Choice:
    return Choice(default, doc, choices=activations.NAMES, lenient_fallback="relu")


def batchnorm2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def bn_init_targets(prefix: str, bn: nn.Module | None, shift_is_bias: bool = True) -> list[InitTarget]:
    """Init targets of a BatchNorm: scale, shift (the block's Darknet biases when ``shift_is_bias``), statistics."""
    if bn is None:
        return []
    return [InitTarget(f"{prefix}.weight", bn.weight, "bn_scale"),
            InitTarget(f"{prefix}.bias", bn.bias, "bias" if shift_is_bias else "bn_shift"),
            InitTarget(prefix, bn, "bn_stats")]


def fill_ones(tensor: torch.Tensor, generator: torch.Generator) -> None:
    """Darknet's start for weights that begin as an identity multiplier (shortcut weights)."""
    tensor.fill_(1.0)


def set_inplace_activation(module: nn.Module) -> None:
    """Fusing hook for a module whose activation runs on a tensor the module has just created (a conv
    output, a sum, a product), which no other layer can be holding yet: run it in place."""
    from ..inference import inplace_activation

    module.act_fn = inplace_activation(module.act_fn)


def stride_text(sx: int, sy: int) -> str:
    return f"{sy}" if sx == sy else f"{sx}x{sy}"


def blur_kernel(kind: int, channels: int) -> torch.Tensor:
    """Darknet's fixed antialiasing blur, one depthwise filter per channel (reference §3.1)."""
    if kind == 1:
        k = torch.tensor([1.0, 2.0, 1.0])
        k = torch.outer(k, k) / 16.0
    else:
        k = torch.full((2, 2), 0.25)
    return k.expand(channels, 1, *k.shape).contiguous()


def blur_out(size: int, kind: int, stride: int) -> int:
    return (size + 2 - 3) // stride + 1 if kind == 1 else (size - 2) // stride + 1


class Blur(nn.Module):
    """The antialiasing blur: a constant depthwise conv carrying the layer's real stride."""

    def __init__(self, kind: int, channels: int, stride_y: int, stride_x: int) -> None:
        super().__init__()
        # A constant, never trained or stored in .weights: a non-persistent buffer keeps it out of
        # state_dict() while still moving with .to(device).
        self.register_buffer("kernel", blur_kernel(kind, channels), persistent=False)
        self.stride = (stride_y, stride_x)
        self.padding = 1 if kind == 1 else 0
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), None, self.stride, self.padding, 1, self.channels)
