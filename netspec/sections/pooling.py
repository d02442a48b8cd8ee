"""Pooling sections: ``[maxpool]`` (§3.2), ``[local_avgpool]`` (§3.3), ``[avgpool]`` (§3.4)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..keys import Flag, Int
from .base import BuildContext, Context, Inference, LayerSpec, Params, Section, Shape, SpecError, conv_out, register
from .common import Blur, blur_out, stride_text


def _window_keys() -> dict:
    return {
        "stride": Int(1, "stride", min=1),
        "stride_x": Int(None, "horizontal stride (default: stride)", min=1),
        "stride_y": Int(None, "vertical stride (default: stride)", min=1),
        "size": Int(None, "window size (default: stride)", min=1),
        "padding": Int(None, "TOTAL padding (default size-1), split floor left/top, ceil right/bottom", min=0),
    }


def _window(p: Params) -> None:
    p.sx = p.stride_x if p.stride_x is not None else p.stride
    p.sy = p.stride_y if p.stride_y is not None else p.stride
    p.k = p.size if p.size is not None else p.stride
    p.pad_total = p.padding if p.padding is not None else p.k - 1


def _describe_window(spec: LayerSpec) -> tuple[str, str]:
    p = spec.p
    if getattr(p, "maxpool_depth", 0):
        return str(p.out_channels), "depth"
    return "", f"{p.k}x{p.k}/{stride_text(p.sx, p.sy)}"


def _window_out(p: Params, h: int, w: int, sy: int, sx: int) -> tuple[int, int]:
    out_h = conv_out(h, p.pad_total, p.k, sy)
    out_w = conv_out(w, p.pad_total, p.k, sx)
    if out_h <= 0 or out_w <= 0:
        raise SpecError(f"a {p.k}x{p.k} window with total padding {p.pad_total} does not fit the {h}x{w} input")
    return out_h, out_w


class MaxPool(nn.Module):
    """Darknet's maxpool: asymmetric -inf padding (floor left/top, ceil right/bottom), then max."""

    def __init__(self, size: int, stride: tuple[int, int], pad_total: int, antialiasing: int = 0,
                 channels: int = 0, blur_stride: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        self.size = size
        self.stride = stride
        lo = pad_total // 2
        hi = pad_total - lo
        self.pad = (lo, hi, lo, hi)
        self.blur = Blur(antialiasing, channels, *blur_stride) if antialiasing else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, value=float("-inf"))
        x = F.max_pool2d(x, self.size, self.stride)
        return self.blur(x) if self.blur is not None else x


class ChannelMaxPool(nn.Module):
    """``maxpool_depth=1``: output channel g is the max over input channels g, g+out_c, g+2*out_c, ..."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.out_channels
        out = x[:, :n]
        for start in range(n, x.shape[1], n):
            chunk = x[:, start:start + n]
            k = chunk.shape[1]
            if k == n:
                out = torch.maximum(out, chunk)
            else:
                out = torch.cat([torch.maximum(out[:, :k], chunk), out[:, k:]], 1)
        return out


@register
class Maxpool(Section):
    name = "maxpool"
    aliases = ("max",)
    keys = {
        **_window_keys(),
        "maxpool_depth": Flag(0, "pool across channels instead of space"),
        "out_channels": Int(1, "output channels of maxpool_depth", min=1),
        "antialiasing": Int(0, "1: 3x3 blur, 2: 2x2 blur carrying the stride", min=0, max=2),
        "maxpool_zero_nonmax": Flag(0, "GPU only: zero the non-maximal inputs", training=True),
    }

    def check(self, p: Params, ctx: Context) -> None:
        _window(p)

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        return _describe_window(spec)

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        c, h, w = inputs[0]
        if p.maxpool_depth:
            return Inference((p.out_channels, h, w), bflops=p.k * p.k * c * h * w / 1e9)
        sy, sx = (1, 1) if p.antialiasing else (p.sy, p.sx)
        out_h, out_w = _window_out(p, h, w, sy, sx)
        bflops = p.k * p.k * c * out_h * out_w / 1e9
        if p.antialiasing:
            real = (c, blur_out(out_h, p.antialiasing, p.sy), blur_out(out_w, p.antialiasing, p.sx))
            return Inference(real, bflops=bflops, darknet_out=(c, out_h, out_w))
        return Inference((c, out_h, out_w), bflops=bflops)

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        if p.maxpool_depth:
            return ChannelMaxPool(p.out_channels)
        stride = (1, 1) if p.antialiasing else (p.sy, p.sx)
        return MaxPool(p.k, stride, p.pad_total, p.antialiasing, spec.in_shape[0], (p.sy, p.sx))


class LocalAvgPool(nn.Module):
    """Average over the in-image cells of each window only (asymmetric padding as in maxpool)."""

    def __init__(self, size: int, stride: tuple[int, int], pad_total: int) -> None:
        super().__init__()
        self.size = size
        self.stride = stride
        lo = pad_total // 2
        self.pad = (lo, pad_total - lo, lo, pad_total - lo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean over the zero-padded window / fraction of the window inside the image = mean of the
        # in-image cells (no divisor_override, which ONNX export would drop)
        ones = torch.ones((1, 1, x.shape[2], x.shape[3]), dtype=x.dtype, device=x.device)
        means = F.avg_pool2d(F.pad(x, self.pad), self.size, self.stride)
        inside = F.avg_pool2d(F.pad(ones, self.pad), self.size, self.stride)
        return means / inside


@register
class LocalAvgpool(Section):
    name = "local_avgpool"
    aliases = ("local_avg",)
    keys = _window_keys()

    def check(self, p: Params, ctx: Context) -> None:
        _window(p)

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        return _describe_window(spec)

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        c, h, w = inputs[0]
        out_h, out_w = _window_out(p, h, w, p.sy, p.sx)
        return Inference((c, out_h, out_w), bflops=p.k * p.k * c * out_h * out_w / 1e9)

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return LocalAvgPool(spec.p.k, (spec.p.sy, spec.p.sx), spec.p.pad_total)


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


@register
class Avgpool(Section):
    name = "avgpool"
    aliases = ("avg",)
    keys = {}

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        return Inference((inputs[0][0], 1, 1))

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return GlobalAvgPool()
