"""Sections that read earlier layers: ``[route]`` (§3.5), ``[shortcut]`` (§3.6), ``[sam]`` (§3.20),
``[scale_channels]`` (§3.21)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..activations import Activation
from ..keys import Choice, Flag, Int, IntList
from .base import BuildContext, Context, Inference, InitTarget, LayerSpec, Params, Section, Shape, SpecError, register
from .common import activation_key, fill_ones, set_inplace_activation


class Route(nn.Module):
    """Concatenate the listed layers' outputs (each reduced to chunk ``group_id`` of ``groups``)."""

    def __init__(self, groups: int, group_id: int, n_inputs: int) -> None:
        super().__init__()
        self.groups = groups
        self.group_id = group_id
        self.n_inputs = n_inputs

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.groups > 1:
            xs = tuple(x.chunk(self.groups, 1)[self.group_id] for x in xs)
        if len(xs) == 1:
            return xs[0]
        return torch.cat(xs, 1)


@register
class RouteSection(Section):
    name = "route"
    refs = ("layers",)
    reads_previous = False
    keys = {
        "layers": IntList(None, "layers to concatenate, in order (negative: relative)"),
        "groups": Int(1, "split each input into this many channel chunks", min=1),
        "group_id": Int(0, "which chunk to take", min=0),
    }

    def check(self, p: Params, ctx: Context) -> None:
        if p.layers is None:
            raise SpecError("[route] needs layers= (the layers to concatenate)")
        if p.group_id >= p.groups:
            raise SpecError(f"group_id={p.group_id} must be smaller than groups={p.groups}", "group_id")

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        h, w = inputs[0][1], inputs[0][2]
        for i, (layer, shape) in enumerate(zip(p.layers, inputs)):
            if shape[1:] != (h, w):
                listing = ", ".join(f"layer {idx}: {s[1]}x{s[2]}" for idx, s in zip(p.layers, inputs))
                raise SpecError(f"route inputs must have the same spatial size ({listing})", "layers", i)
            if shape[0] % p.groups:
                raise SpecError(f"groups={p.groups} does not divide the {shape[0]} channels of layer {layer}",
                                "groups")
        return Inference((sum(s[0] for s in inputs) // p.groups, h, w))

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return Route(spec.p.groups, spec.p.group_id, len(spec.p.layers))

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        p = spec.p
        return ",".join(str(i) for i in p.layers) + (f" g{p.group_id}/{p.groups}" if p.groups > 1 else ""), ""


def _normalize(w: torch.Tensor, kind: str) -> torch.Tensor:
    """Normalize shortcut weights across the n+1 inputs (dim 0), per position (§3.6)."""
    if kind == "relu":
        # Darknet's load-time fusion and GPU kernel use max(w, 0.001) (its CPU path uses relu); the
        # two agree for weights above 0.001, as trained weights are.
        pos = torch.clamp(w, min=0.001)
        return pos / (1e-4 + pos.sum(dim=0, keepdim=True))
    if kind == "softmax":
        e = torch.exp(w - w.amax(dim=0, keepdim=True))
        return e / (1e-4 + e.sum(dim=0, keepdim=True))
    return w


class Shortcut(nn.Module):
    """``out = w0*x + sum_k w_k*from_k`` over the overlapping channels, then the activation."""

    def __init__(self, n_from: int, channels: int, from_channels: tuple[int, ...], weights_type: str,
                 normalization: str, activation: str, act_fn: Activation) -> None:
        super().__init__()
        self.activation = activation
        self.act_fn = act_fn
        self.channels = channels
        self.from_channels = from_channels
        self.weights_type = weights_type
        self.normalization = normalization
        if weights_type == "per_feature":
            self.weight = nn.Parameter(torch.ones(n_from + 1))
        elif weights_type == "per_channel":
            self.weight = nn.Parameter(torch.ones(n_from + 1, channels))
        else:
            self.weight = None

    def forward(self, x: torch.Tensor, *sources: torch.Tensor) -> torch.Tensor:
        c = self.channels
        if self.weight is None:
            out = x
            for src in sources:
                out = self._add(out, src)
        else:
            w = _normalize(self.weight, self.normalization)
            w = w.view(w.shape[0], 1, -1, 1, 1) if w.dim() == 2 else w.view(-1, 1, 1, 1, 1)
            w = w.to(x.dtype)
            out = x * w[0]
            for k, src in enumerate(sources, 1):
                k_c = min(src.shape[1], c)
                out = self._add(out, src[:, :k_c] * w[k][:, :k_c])
        return self.act_fn(out)

    def _add(self, out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        c = out.shape[1]
        k = src.shape[1]
        if k == c:
            return out + src
        if k > c:
            return out + src[:, :c]
        # Fewer channels: Darknet adds over the first k channels only (flat-index overlap).
        return torch.cat([out[:, :k] + src, out[:, k:]], 1)

    def darknet_record(self) -> list[tuple[torch.Tensor, str]]:
        return [(self.weight, "flat")] if self.weight is not None else []

    def extra_repr(self) -> str:
        return f"weights_type={self.weights_type}, activation={self.activation}"


@register
class ShortcutSection(Section):
    name = "shortcut"
    refs = ("from",)
    decays_weights = True
    darknet_activations = frozenset({"swish", "mish"})
    keys = {
        "from": IntList(None, "layers to add to the previous layer's output"),
        "activation": activation_key("linear"),
        "weights_type": Choice("none", "learned weights per input", choices=("none", "per_feature", "per_channel"),
                               aliases={"per_layer": "per_feature"}),
        "weights_normalization": Choice("none", "normalization of the weights",
                                        choices=("none", "relu", "softmax"), aliases={"avg_relu": "relu"}),
        "alpha": Int(None, "PJ-only key, not supported", min=0, training=True),
        "beta": Int(None, "PJ-only key, not supported", min=0, training=True),
    }

    def check(self, p: Params, ctx: Context) -> None:
        if getattr(p, "from") is None:
            raise SpecError("[shortcut] needs from= (the layers to add)")
        for key in ("alpha", "beta"):
            if p.given(key):
                raise SpecError(f"'{key}' is a pjreddie-darknet shortcut key that AlexeyAB's Darknet and netspec "
                                "do not implement", key)
        if p.weights_type != "none" and p.weights_normalization == "none":
            raise SpecError(f"weights_type={p.weights_type} needs weights_normalization=relu or softmax (Darknet "
                            "rejects it otherwise)", "weights_normalization")

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        c, h, w = inputs[0]
        froms = getattr(p, "from")
        for i, (layer, shape) in enumerate(zip(froms, inputs[1:])):
            if shape[1:] != (h, w):
                raise SpecError(f"from={layer} has spatial size {shape[1]}x{shape[2]} but the previous layer has "
                                f"{h}x{w}; Darknet would mix unrelated positions", "from", i)
            if shape[0] != c:
                ctx.warn(f"from={layer} has {shape[0]} channels and the previous layer {c}: Darknet adds over the "
                         f"first {min(shape[0], c)} channels only", "from")
        n = len(froms)
        nweights = {"none": 0, "per_feature": n + 1, "per_channel": (n + 1) * c}[p.weights_type]
        bflops = c * h * w * n * (2 if p.weights_type != "none" else 1) / 1e9
        return Inference((c, h, w), nweights, nweights, bflops)

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        return Shortcut(len(getattr(p, "from")), spec.in_shape[0], tuple(s[0] for s in spec.in_shapes[1:]),
                        p.weights_type, p.weights_normalization, p.activation, ctx.activation(p.activation, spec))

    def init_targets(self, spec: LayerSpec, module: Shortcut) -> list[InitTarget]:
        # Learned input weights start at 1 (a plain sum); only the block's own init= changes that.
        if module.weight is None:
            return []
        return [InitTarget("weight", module.weight, "weight", (1, 1), net_init=False, darknet_start=fill_ones)]

    def fuse(self, spec: LayerSpec, module: Shortcut) -> None:
        set_inplace_activation(module)

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        return ",".join(str(i) for i in getattr(spec.p, "from")), ""


class _MultiplySection(Section):
    """``[sam]`` and ``[scale_channels]``: one earlier layer times the previous output."""

    refs = ("from",)

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return Multiply(spec.p.activation, ctx.activation(spec.p.activation, spec))

    def fuse(self, spec: LayerSpec, module: Multiply) -> None:
        set_inplace_activation(module)

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        return str(getattr(spec.p, "from")), ""


class Multiply(nn.Module):
    """``[sam]`` and ``[scale_channels]``: the previous output times an earlier one, then activation."""

    def __init__(self, activation: str, act_fn: Activation) -> None:
        super().__init__()
        self.activation = activation
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.act_fn(other * x)


@register
class Sam(_MultiplySection):
    name = "sam"
    keys = {"from": Int(None, "layer to multiply with the previous output"),
            "activation": activation_key("linear")}

    def check(self, p: Params, ctx: Context) -> None:
        if getattr(p, "from") is None:
            raise SpecError("[sam] needs from=")

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        if inputs[0] != inputs[1]:
            raise SpecError(f"[sam] needs the previous layer ({_fmt(inputs[0])}) and from={getattr(p, 'from')} "
                            f"({_fmt(inputs[1])}) to have the same shape", "from")
        return Inference(inputs[1])


@register
class ScaleChannels(_MultiplySection):
    name = "scale_channels"
    keys = {"from": Int(None, "layer whose output is scaled"),
            "scale_wh": Flag(0, "1: scale per position (1xHxW) instead of per channel (Cx1x1)"),
            "activation": activation_key("linear")}

    def check(self, p: Params, ctx: Context) -> None:
        if getattr(p, "from") is None:
            raise SpecError("[scale_channels] needs from=")

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        (c, h, w), (fc, fh, fw) = inputs
        src = getattr(p, "from")
        if p.scale_wh:
            if c != 1 or (h, w) != (fh, fw):
                raise SpecError(f"scale_wh=1 needs the previous layer to be 1x{fh}x{fw} (c x h x w), got "
                                f"{_fmt(inputs[0])}", "scale_wh")
        elif (h, w) != (1, 1) or c != fc:
            raise SpecError(f"the previous layer must be {fc}x1x1 (c x h x w) to scale the channels of layer {src}, "
                            f"got {_fmt(inputs[0])}", "from")
        return Inference(inputs[1])


def _fmt(shape) -> str:
    return "x".join(str(d) for d in shape)
