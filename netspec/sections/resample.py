"""Sections that move values around: ``[upsample]`` (§3.7), ``[reorg3d]`` (§3.8), ``[reorg]`` (§3.9),
``[crop]`` (§3.24)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..keys import Flag, Float, Int
from .base import BuildContext, Context, Inference, LayerSpec, Params, Section, Shape, SpecError, register


class Upsample(nn.Module):
    """Positive stride: nearest-neighbour times ``scale``; negative: sum over |s|x|s| blocks times ``scale``."""

    def __init__(self, stride: int, scale: float) -> None:
        super().__init__()
        self.stride = stride
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        if s > 0:
            if s > 1:
                b, c, h, w = x.shape
                x = x[:, :, :, None, :, None].expand(b, c, h, s, w, s).reshape(b, c, h * s, w * s)
        else:
            b, c, h, w = x.shape
            x = x.reshape(b, c, h // -s, -s, w // -s, -s).sum(dim=(3, 5))  # a plain sum: exports to ONNX as is
        return x * self.scale if self.scale != 1 else x


@register
class UpsampleSection(Section):
    name = "upsample"
    keys = {"stride": Int(2, "factor; negative: downsample by summing blocks"),
            "scale": Float(1.0, "multiplier on the output")}

    def check(self, p: Params, ctx: Context) -> None:
        if p.stride == 0:
            raise SpecError("stride=0 is not a valid upsampling factor", "stride")

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        c, h, w = inputs[0]
        if p.stride > 0:
            return Inference((c, h * p.stride, w * p.stride))
        s = -p.stride
        if h % s or w % s:
            raise SpecError(f"stride={p.stride} needs the input size {h}x{w} to be divisible by {s}", "stride")
        return Inference((c, h // s, w // s))

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return Upsample(spec.p.stride, spec.p.scale)

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        return "", f"{spec.p.stride}x"


def space_to_depth(x: torch.Tensor, s: int) -> torch.Tensor:
    """Darknet's space-to-depth, channel order (dy, dx, c): ``out[(dy*s+dx)*C + c] = in[c, y*s+dy, x*s+dx]``."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4).reshape(b, s * s * c, h // s, w // s)


def depth_to_space(x: torch.Tensor, s: int) -> torch.Tensor:
    """The inverse of :func:`space_to_depth`."""
    b, c, h, w = x.shape
    cc = c // (s * s)
    return x.reshape(b, s, s, cc, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, cc, h * s, w * s)


class Reorg(nn.Module):
    """``[reorg3d]`` (``old=False``) and YOLOv2's ``[reorg]`` buffer reinterpretation (``old=True``)."""

    def __init__(self, stride: int, reverse: bool, old: bool) -> None:
        super().__init__()
        self.stride = stride
        self.reverse = reverse
        self.old = old

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        if self.reverse:
            return depth_to_space(x, s)
        if not self.old:
            return space_to_depth(x, s)
        b, c, h, w = x.shape
        y = space_to_depth(x.reshape(b, c // (s * s), h * s, w * s), s)
        return y.reshape(b, c * s * s, h // s, w // s)


class _ReorgBase(Section):
    old = False
    keys = {"stride": Int(1, "block size", min=1), "reverse": Flag(0, "1: depth-to-space instead")}

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        c, h, w = inputs[0]
        s = p.stride
        if p.reverse:
            if c % (s * s):
                raise SpecError(f"reverse=1 needs the {c} input channels to be divisible by stride^2={s * s}",
                                "stride")
            return Inference((c // (s * s), h * s, w * s))
        if h % s or w % s:
            raise SpecError(f"stride={s} needs the input size {h}x{w} to be divisible by {s}", "stride")
        if self.old and c % (s * s):
            raise SpecError(f"[reorg] needs the {c} input channels to be divisible by stride^2={s * s}", "stride")
        return Inference((c * s * s, h // s, w // s))

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return Reorg(spec.p.stride, bool(spec.p.reverse), self.old)


@register
class Reorg3d(_ReorgBase):
    name = "reorg3d"


@register
class ReorgOld(_ReorgBase):
    name = "reorg"
    old = True


class Crop(nn.Module):
    """Centre crop; values mapped to [-1, 1] (``2x-1``) unless ``noadjust``."""

    def __init__(self, top: int, left: int, height: int, width: int, adjust: bool) -> None:
        super().__init__()
        self.box = (top, left, height, width)
        self.adjust = adjust

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self.box
        x = x[:, :, top:top + h, left:left + w]
        return x * 2 - 1 if self.adjust else x


@register
class CropSection(Section):
    name = "crop"
    keys = {
        "crop_height": Int(1, "output height", min=1),
        "crop_width": Int(1, "output width", min=1),
        "noadjust": Flag(0, "1: keep values (else 2x-1)"),
        "flip": Flag(0, "training augmentation", training=True),
        "angle": Float(0, "training augmentation", training=True),
        "saturation": Float(1, "training augmentation", training=True),
        "exposure": Float(1, "training augmentation", training=True),
        "shift": Float(0, "training augmentation", training=True),
    }

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        c, h, w = inputs[0]
        if p.crop_height > h or p.crop_width > w:
            raise SpecError(f"crop {p.crop_height}x{p.crop_width} is larger than the {h}x{w} input", "crop_height")
        return Inference((c, p.crop_height, p.crop_width))

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        _, h, w = spec.in_shape
        return Crop((h - p.crop_height) // 2, (w - p.crop_width) // 2, p.crop_height, p.crop_width, not p.noadjust)
