"""The remaining sections: ``[connected]`` (§3.15), ``[batchnorm]`` (§3.16), ``[dropout]`` (§3.17),
``[empty]``/``[silence]`` (§3.18), ``[activation]`` (§3.19), ``[implicit]`` (§3.22),
``[normalization]``/``[lrn]`` (§3.23), ``[cost]`` (§3.25), ``[local]`` (§3.26), ``[contrastive]`` (§3.27)
and ``[softmax]`` (§3.14)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..activations import Activation
from ..keys import Choice, Flag, Float, Int, Text
from .base import BuildContext, Context, Inference, InitTarget, LayerSpec, Params, Section, Shape, SpecError, register
from .common import BN_EPS, BN_MOMENTUM, activation_key, batchnorm2d, bn_init_targets, set_inplace_activation
from .heads import group_softmax, load_tree

_T = {"training": True}


class Connected(nn.Module):
    """Flatten (CHW order), Linear, optional BN (bias after BN, as Darknet), activation."""

    def __init__(self, inputs: int, outputs: int, batch_normalize: bool, activation: str, act_fn: Activation) -> None:
        super().__init__()
        self.activation = activation
        self.act_fn = act_fn
        self.linear = nn.Linear(inputs, outputs, bias=not batch_normalize)
        self.bn = nn.BatchNorm1d(outputs, eps=BN_EPS, momentum=BN_MOMENTUM) if batch_normalize else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(torch.flatten(x, 1))
        if self.bn is not None:
            y = self.bn(y)
        return self.act_fn(y)[:, :, None, None]

    def darknet_record(self) -> list[tuple[torch.Tensor, str]]:
        bias = self.bn.bias if self.bn is not None else self.linear.bias
        record = [(bias, "flat"), (self.linear.weight, "connected")]
        if self.bn is not None:
            record += [(self.bn.weight, "scales"), (self.bn.running_mean, "scales"), (self.bn.running_var, "scales")]
        return record

    def fuse(self) -> None:
        """Inference mode: BN folded into the linear layer, the activation in place."""
        from ..inference import fold_batchnorm_into

        if self.bn is not None:
            fold_batchnorm_into(self.linear, self.bn)
            self.bn = None
        set_inplace_activation(self)


@register
class ConnectedSection(Section):
    name = "connected"
    needs_image = False
    aliases = ("conn",)
    decays_weights = True
    port_kind = "linear"
    keys = {"output": Int(1, "output size", min=1), "activation": activation_key("logistic"),
            "batch_normalize": Flag(0, "batch normalization")}

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        c, h, w = inputs[0]
        n_in = c * h * w
        n = p.output
        params = n_in * n + (2 * n if p.batch_normalize else n)
        floats = n_in * n + (4 * n if p.batch_normalize else n)
        return Inference((n, 1, 1), params, floats)

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        c, h, w = spec.in_shape
        p = spec.p
        return Connected(c * h * w, p.output, bool(p.batch_normalize), p.activation, ctx.activation(p.activation, spec))

    def init_targets(self, spec: LayerSpec, module: Connected) -> list[InitTarget]:
        w = module.linear.weight
        targets = [InitTarget("linear.weight", w, "weight", (w.shape[1], w.shape[0]))]
        if module.linear.bias is not None:
            targets.append(InitTarget("linear.bias", module.linear.bias, "bias"))
        return targets + bn_init_targets("bn", module.bn)

    def fuse(self, spec: LayerSpec, module: Connected) -> None:
        module.fuse()

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        return str(spec.p.output), ""


class BatchNorm(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = batchnorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)

    def darknet_record(self) -> list[tuple[torch.Tensor, str]]:
        bn = self.bn
        return [(bn.bias, "flat"), (bn.weight, "flat"), (bn.running_mean, "flat"), (bn.running_var, "flat")]


@register
class BatchnormSection(Section):
    name = "batchnorm"
    keys = {}

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        c = inputs[0][0]
        return Inference(inputs[0], 2 * c, 4 * c)

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return BatchNorm(spec.in_shape[0])

    def init_targets(self, spec: LayerSpec, module: BatchNorm) -> list[InitTarget]:
        return bn_init_targets("bn", module.bn)  # its shift is the block's Darknet biases


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Dropout(nn.Module):
    """Identity at inference; inverted dropout when training (DropBlock is not implemented)."""

    def __init__(self, probability: float) -> None:
        super().__init__()
        self.probability = probability

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.probability > 0:
            return F.dropout(x, self.probability, True)
        return x


@register
class DropoutSection(Section):
    name = "dropout"
    needs_image = False
    keys = {"probability": Float(0.2, "drop probability", min=0, max=1),
            "dropblock": Flag(0, "DropBlock (training; netspec uses plain dropout)", **_T),
            "dropblock_size_rel": Float(0, "DropBlock size", **_T),
            "dropblock_size_abs": Float(0, "DropBlock size", **_T)}

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return Dropout(spec.p.probability)


@register
class Empty(Section):
    name = "empty"
    needs_image = False
    aliases = ("silence",)
    keys = {}

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return Identity()


class Activate(nn.Module):
    def __init__(self, activation: str, act_fn: Activation) -> None:
        super().__init__()
        self.activation = activation
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_fn(x)

    def extra_repr(self) -> str:
        return self.activation


@register
class ActivationSection(Section):
    name = "activation"
    needs_image = False
    keys = {"activation": activation_key("linear")}

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return Activate(spec.p.activation, ctx.activation(spec.p.activation, spec))


class Implicit(nn.Module):
    """A learned constant ``(filters, atoms, 1)``, broadcast over the batch; the input is ignored."""

    def __init__(self, filters: int, atoms: int, mean: float, std: float) -> None:
        super().__init__()
        self.mean = mean
        self.std = std
        self.weight = nn.Parameter(torch.empty(1, filters, atoms, 1))
        with torch.no_grad():
            self.weight.uniform_(mean - std, mean + std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.expand(x.shape[0], -1, -1, -1).to(x.dtype)

    def darknet_record(self) -> list[tuple[torch.Tensor, str]]:
        return [(self.weight, "flat")]

    def darknet_start(self, tensor: torch.Tensor, generator: torch.Generator) -> None:
        """Darknet's start: uniform in ``[mean - std, mean + std]``."""
        tensor.uniform_(self.mean - self.std, self.mean + self.std, generator=generator)


@register
class ImplicitSection(Section):
    name = "implicit"  # reads the previous output only for its batch size
    needs_image = False
    decays_weights = True
    keys = {"filters": Int(128, "channels", min=1), "atoms": Int(1, "height", min=1),
            "mean": Float(0.0, "init mean", **_T), "std": Float(0.2, "init spread", min=0, **_T)}

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        n = p.filters * p.atoms
        return Inference((p.filters, p.atoms, 1), n, n)

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        return Implicit(p.filters, p.atoms, p.mean, p.std)

    def init_targets(self, spec: LayerSpec, module: Implicit) -> list[InitTarget]:
        # its own start (mean, std keys); only the block's init= replaces it, never [net] init=
        return [InitTarget("weight", module.weight, "weight", (1, 1), net_init=False,
                           darknet_start=module.darknet_start)]


class LocalResponseNorm(nn.Module):
    """``y_c = x_c * (kappa + alpha * sum_{j in [c-(size-1)//2, c+size//2]} x_j^2)^-beta`` (alpha not /size)."""

    def __init__(self, size: int, alpha: float, beta: float, kappa: float) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.kappa = size, alpha, beta, kappa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = (x * x)[:, None]  # (B, 1, C, H, W)
        lo, hi = (self.size - 1) // 2, self.size // 2
        sq = F.pad(sq, (0, 0, 0, 0, lo, hi))
        window = F.avg_pool3d(sq, (self.size, 1, 1), stride=1)[:, 0] * self.size  # (ONNX has no divisor_override)
        return x * torch.pow(self.kappa + self.alpha * window, -self.beta)


@register
class Normalization(Section):
    name = "normalization"
    aliases = ("lrn",)
    keys = {"alpha": Float(0.0001, "scale"), "beta": Float(0.75, "exponent"), "kappa": Float(1.0, "offset"),
            "size": Int(5, "channel window", min=1)}

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        return LocalResponseNorm(p.size, p.alpha, p.beta, p.kappa)


class Zeros(nn.Module):
    """Layers whose inference output Darknet leaves at zero ([cost], [contrastive])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@register
class Cost(Section):
    name = "cost"
    needs_image = False
    network_output = False  # Darknet's network output is the last layer that is not a [cost]
    keys = {"type": Choice("sse", "loss", choices=("sse", "masked", "smooth", "L1", "seg", "wgan"), **_T),
            "scale": Float(1.0, "loss scale", **_T), "ratio": Float(0.0, "hard-example ratio", **_T),
            "noobj": Float(1.0, "loss", **_T), "thresh": Float(0.0, "loss", **_T)}

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        return Inference(inputs[0], darknet_out=(0, 0, 0))

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return Zeros()


@register
class Contrastive(Section):
    name = "contrastive"
    needs_image = False
    refs = ("yolo_layer",)
    ref_keys_not_read = ("yolo_layer",)
    keys = {"classes": Int(1000, "classes", min=1, **_T), "yolo_layer": Int(None, "yolo layer", **_T),
            "temperature": Float(1.0, "loss", **_T), "cls_normalizer": Float(1.0, "loss", **_T),
            "max_delta": Float(None, "loss", **_T), "contrastive_neg_max": Int(3, "loss", **_T)}

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        return Inference(inputs[0], darknet_out=(0, 0, 0))

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        return Zeros()


class Softmax(nn.Module):
    """Softmax over each of ``groups`` contiguous chunks of the flat per-sample input (or tree groups)."""

    def __init__(self, groups: int, temperature: float, tree: list[tuple[int, int]] | None,
                 spatial: bool = False) -> None:
        super().__init__()
        self.groups = groups
        self.temperature = temperature
        self.tree = tree
        self.spatial = spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial:  # Darknet's GPU path: per pixel across channels, temperature ignored
            return torch.softmax(x, dim=1)
        b = x.shape[0]
        flat = x.reshape(b, -1)
        if self.tree is not None:
            return group_softmax(flat, self.tree, self.temperature).reshape(x.shape)
        chunks = flat.reshape(b, self.groups, -1)
        if self.temperature != 1:
            chunks = chunks / self.temperature
        return torch.softmax(chunks, dim=-1).reshape(x.shape)


@register
class SoftmaxSection(Section):
    name = "softmax"
    needs_image = False
    aliases = ("soft",)
    keys = {"groups": Int(1, "contiguous chunks soft-maxed separately", min=1),
            "temperature": Float(1.0, "divides the input", min=0, min_open=True),
            "tree": Text(None, "class hierarchy file"),
            "spatial": Flag(0, "GPU only: per-pixel softmax (Darknet's CPU path ignores it)"),
            "noloss": Flag(0, "training", **_T)}

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        c, h, w = inputs[0]
        if (c * h * w) % p.groups:
            raise SpecError(f"groups={p.groups} does not divide the {c * h * w} input values", "groups")
        return Inference(inputs[0], darknet_out=(0, 0, 0))

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        spatial = bool(p.spatial) and not ctx.darknet_bugs
        if p.spatial and ctx.darknet_bugs:
            ctx.warnings.append(spec.problem("Darknet's CPU forward ignores spatial=1 (softmax over the flat input); "
                                             "netspec matches it (darknet_bugs=False: per-pixel softmax)", "spatial",
                                             "warning"))
        return Softmax(p.groups, p.temperature, load_tree(spec, ctx), spatial)

    def classifier_logits(self, spec: LayerSpec) -> Callable[[torch.Tensor], torch.Tensor] | None:
        p = spec.p
        if p.groups != 1 or p.tree is not None:  # several softmaxes: not one distribution over classes
            return None
        temperature = p.temperature

        def logits(x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) / temperature

        return logits


class LocalConv(nn.Module):
    """Unshared convolution: a separate filter bank at every output location."""

    def __init__(self, channels: int, filters: int, size: int, stride: int, pad: int, out_hw: tuple[int, int],
                 activation: str, act_fn: Activation) -> None:
        super().__init__()
        self.activation = activation
        self.act_fn = act_fn
        self.size, self.stride, self.pad, self.out_hw = size, stride, pad, out_hw
        locations = out_hw[0] * out_hw[1]
        self.weight = nn.Parameter(torch.empty(locations, filters, channels * size * size))
        self.bias = nn.Parameter(torch.zeros(filters, *out_hw))
        with torch.no_grad():
            scale = math.sqrt(2.0 / (size * size * channels))
            self.weight.uniform_(-scale, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = F.unfold(x, self.size, padding=self.pad, stride=self.stride)  # (B, c*k*k, L)
        out = torch.einsum("lfk,bkl->bfl", self.weight.to(x.dtype), cols)
        out = out.reshape(x.shape[0], -1, *self.out_hw) + self.bias.to(x.dtype)
        return self.act_fn(out)

    def darknet_record(self) -> list[tuple[torch.Tensor, str]]:
        return [(self.bias, "flat"), (self.weight, "flat")]


@register
class Local(Section):
    name = "local"
    decays_weights = True
    keys = {"filters": Int(1, "output channels", min=1), "size": Int(1, "kernel size", min=1),
            "stride": Int(1, "stride", min=1), "pad": Flag(0, "1: pad by exactly 1"),
            "activation": activation_key("logistic")}

    def check(self, p: Params, ctx: Context) -> None:
        if p.pad and p.size != 3:
            raise SpecError(f"pad=1 with size={p.size}: Darknet's [local] pads by exactly 1 but sizes its output "
                            "as if padded by (size-1)/2, which only agree for size=3", "pad")

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        c, h, w = inputs[0]
        cut = 1 if p.pad else p.size
        out_h, out_w = (h - cut) // p.stride + 1, (w - cut) // p.stride + 1
        if out_h <= 0 or out_w <= 0:
            raise SpecError(f"a {p.size}x{p.size} kernel does not fit the {h}x{w} input")
        locations = out_h * out_w
        n = locations * p.filters * (c * p.size * p.size) + p.filters * locations
        return Inference((p.filters, out_h, out_w), n, n)

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        return LocalConv(spec.in_shape[0], p.filters, p.size, p.stride, p.pad, spec.out_shape[1:], p.activation,
                         ctx.activation(p.activation, spec))

    def init_targets(self, spec: LayerSpec, module: LocalConv) -> list[InitTarget]:
        w = module.weight  # (locations, filters, c*size*size)
        size = module.size
        return [InitTarget("weight", w, "weight", (w.shape[2], w.shape[1] * size * size)),
                InitTarget("bias", module.bias, "bias")]

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        p = spec.p
        return str(p.filters), f"{p.size}x{p.size}/{p.stride}"

