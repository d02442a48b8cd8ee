"""``[convolutional]`` / ``[conv]`` (reference §3.1): conv, optional BN, activation, optional blur."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..activations import Activation
from ..keys import Choice, Flag, Float, Int
from .base import (
    BuildContext,
    Context,
    Inference,
    InitTarget,
    LayerSpec,
    Params,
    Section,
    Shape,
    SpecError,
    conv_out,
    register,
)
from .common import Blur, activation_key, batchnorm2d, blur_out, bn_init_targets, set_inplace_activation, stride_text

_T = {"training": True}


class ConvLayer(nn.Module):
    """Conv2d (+ BatchNorm2d) + activation (+ blur); ``share`` reuses another ConvLayer's tensors."""

    def __init__(self, in_channels: int, filters: int, size: int, stride: tuple[int, int], padding: int,
                 dilation: int, groups: int, batch_normalize: bool, activation: str, act_fn: Activation,
                 antialiasing: int = 0, blur_stride: tuple[int, int] = (1, 1), share: ConvLayer | None = None,
                 flipped: bool = False, xnor: bool = False, binary: bool = False) -> None:
        super().__init__()
        self.xnor = xnor
        self.binary = binary
        from ..inference import inplace_activation

        self.activation = activation
        # In place from the start (in training too, where autograd allows): the activation always runs on the
        # tensor the conv (or its BN) has just created, which nothing else holds.
        self.act_fn = inplace_activation(act_fn)
        self.flipped = flipped
        self.stride = stride
        self.padding = padding * dilation  # Darknet pads by padding*dilation at compute time
        self.dilation = dilation
        self.groups = groups
        # Weight sharing: keep the source in a tuple so nn.Module does not register it a second
        # time (its parameters then appear once in parameters() and state_dict()).
        self._share = (share,) if share is not None else ()
        if share is None:
            self.conv = nn.Conv2d(in_channels, filters, size, stride, self.padding, dilation, groups,
                                  bias=not batch_normalize)
            self.bn = batchnorm2d(filters) if batch_normalize else None
        self.blur = Blur(antialiasing, filters, *blur_stride) if antialiasing else None

    @property
    def source(self) -> ConvLayer:
        return self._share[0] if self._share else self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = getattr(self, "fast", None)  # set by Network.fuse(): oneDNN-packed weights for inference
        if fast is not None:
            y = fast(self, x)
            if y is not None:
                return y
        src = self.source
        if self.xnor or self.binary:
            return self._forward_binary(x, src)
        if src is self:
            x = self.conv(x)
            if self.bn is not None:
                x = self.bn(x)
        else:
            x = F.conv2d(x, src.conv.weight, src.conv.bias, self.stride, self.padding, self.dilation, self.groups)
            if src.bn is not None:
                bn = src.bn
                x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                 self.training and bn.training, bn.momentum, bn.eps)
        x = self.act_fn(x)
        if self.blur is not None:
            x = self.blur(x)
        return x

    def _forward_binary(self, x: torch.Tensor, src: ConvLayer) -> torch.Tensor:
        # Each filter's weights become sign(w) * mean|w| (Darknet's binarize_weights); with xnor the
        # inputs are binarized to +-1 as well (binarize_cpu).  Then the usual BN and activation.
        # Training is straight-through, as Darknet's backward: the gradient of the binarized tensor goes to
        # the real-valued one unchanged (``b.detach() + v - v.detach()`` has exactly b's value).
        w = src.conv.weight
        scale = w.abs().mean(dim=(1, 2, 3), keepdim=True)
        w = torch.where(w > 0, scale, -scale).detach() + (w - w.detach())
        if self.xnor:
            x = torch.where(x > 0, 1.0, -1.0).to(w.dtype).detach() + (x - x.detach())
        x = F.conv2d(x, w, src.conv.bias, self.stride, self.padding, self.dilation, self.groups)
        if src.bn is not None:
            bn = src.bn
            x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                             self.training and bn.training, bn.momentum, bn.eps)
        x = self.act_fn(x)
        return self.blur(x) if self.blur is not None else x

    def darknet_record(self) -> list[tuple[torch.Tensor, str]]:
        """Tensors of the .weights record in file order, each with its layout ('flat' or 'matrix')."""
        if self._share:
            return []
        bias = self.bn.bias if self.bn is not None else self.conv.bias
        record = [(bias, "flat")]
        if self.bn is not None:
            record += [(self.bn.weight, "scales"), (self.bn.running_mean, "scales"),
                       (self.bn.running_var, "scales")]
        record.append((self.conv.weight, "transposed" if self.flipped else "flat"))
        return record

    def extra_repr(self) -> str:
        return f"activation={self.activation}" + (", shared" if self._share else "")

    def fuse(self, in_shape: tuple[int, int, int] | None = None) -> None:
        """Inference mode: BN folded into the conv, the activation in place, the oneDNN fast path where it
        computes the same thing (weights packed for a batch-1 ``in_shape`` input when given).  A sharing layer
        reads its source's (already folded) conv and finds no BN."""
        from ..inference import PackedConv, fold_batchnorm_into, mkldnn_available, prepack, use_packed_weights

        if not self._share and self.bn is not None:
            fold_batchnorm_into(self.conv, self.bn)
            self.bn = None
        if (not self._share and not self.xnor and not self.binary and self.conv.bias is not None
                and mkldnn_available()):
            self.fast = PackedConv()
            if type(self.conv) is nn.Conv2d:
                use_packed_weights(self.conv, self.fast)
        set_inplace_activation(self)
        if in_shape is not None:
            prepack(self, in_shape)


@register
class Convolutional(Section):
    name = "convolutional"
    aliases = ("conv",)
    decays_weights = True
    port_kind = "conv2d"
    darknet_activations = frozenset({"swish", "mish", "hard_mish", "normalize_channels",
                                     "normalize_channels_softmax", "normalize_channels_softmax_maxval"})
    refs = ("share_index",)
    ref_keys_not_read = ("share_index",)
    keys = {
        "filters": Int(1, "output channels", min=1),
        "size": Int(1, "kernel size", min=1),
        "stride": Int(1, "stride", min=1),
        "stride_x": Int(-1, "horizontal stride (with stride_y, overrides stride)"),
        "stride_y": Int(-1, "vertical stride (with stride_x, overrides stride)"),
        "pad": Flag(0, "1: padding = size//2"),
        "padding": Int(0, "padding per side when pad=0", min=0),
        "groups": Int(1, "grouped convolution", min=1),
        "dilation": Int(1, "dilation", min=1),
        "batch_normalize": Flag(0, "batch normalization after the conv"),
        "activation": activation_key("logistic"),
        "antialiasing": Int(0, "1: 3x3 blur, 2: 2x2 blur carrying the stride", min=0, max=2),
        "share_index": Int(None, "reuse the weights of this layer"),
        "flipped": Flag(0, "weights stored transposed in .weights"),
        "cbn": Flag(0, "cross-iteration BN (training)", **_T),
        "binary": Flag(0, "binary weights (Darknet's CPU forward ignores it)"),
        "xnor": Flag(0, "XNOR net: binary weights and inputs"),
        "bin_output": Flag(0, "XNOR output packing", **_T),
        "dot": Float(0, "training only", **_T),
        "sway": Flag(0, "training only", **_T),
        "rotate": Flag(0, "training only", **_T),
        "stretch": Flag(0, "training only", **_T),
        "stretch_sway": Flag(0, "training only", **_T),
        "angle": Float(15, "training only", **_T),
        "grad_centr": Flag(0, "training only", **_T),
        "reverse": Flag(0, "training only", **_T),
        "assisted_excitation": Float(0, "training only", **_T),
        "coordconv": Flag(0, "GPU only, experimental (ignored on CPU)", **_T),
        "deform": Flag(0, "training only", **_T),
        "mode": Choice(None, "unused", choices=("none",), **_T),
    }

    def check(self, p: Params, ctx: Context) -> None:
        if p.stride_x >= 1 and p.stride_y >= 1:
            p.sx, p.sy = p.stride_x, p.stride_y
        else:
            p.sx = p.stride_x if p.stride_x >= 1 else p.stride
            p.sy = p.stride_y if p.stride_y >= 1 else p.stride
        p.pad_px = p.size // 2 if p.pad else p.padding
        if p.size == 1:
            p.dilation = 1  # Darknet forces dilation 1 for 1x1 kernels
        if p.xnor:
            p.groups = 1
        if p.dilation > 1 and p.size != 2 * p.pad_px + 1:
            raise SpecError(f"dilation={p.dilation} needs size = 2*padding+1 (use pad=1 with an odd size): "
                            "Darknet's declared output size ignores dilation, so other combinations compute a "
                            "different size than Darknet reports", "dilation")
        if p.share_index is not None:
            for key in ("init", "bias_init", "bias_prob"):
                if getattr(p, key) is not None:
                    raise SpecError(f"{key}= given, but this block shares the weights of layer {p.share_index} "
                                    f"(give {key}= there)", key)
        moves = sum(bool(getattr(p, k)) for k in ("sway", "rotate", "stretch", "stretch_sway"))
        if moves > 1:
            raise SpecError("at most one of sway, rotate, stretch, stretch_sway may be set", "sway")

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        c, h, w = inputs[0]
        if c % p.groups:
            raise SpecError(f"groups={p.groups} does not divide the {c} input channels", "groups")
        if p.filters % p.groups:
            raise SpecError(f"groups={p.groups} does not divide filters={p.filters}", "groups")
        sy, sx = (1, 1) if p.antialiasing else (p.sy, p.sx)
        out_h = conv_out(h, 2 * p.pad_px, p.size, sy)
        out_w = conv_out(w, 2 * p.pad_px, p.size, sx)
        if out_h <= 0 or out_w <= 0:
            raise SpecError(f"a {p.size}x{p.size} kernel with padding {p.pad_px} does not fit the {h}x{w} input")
        nweights = p.filters * (c // p.groups) * p.size * p.size
        bflops = 2.0 * nweights * out_h * out_w / 1e9
        if p.xnor:
            bflops /= 32
        shared = p.share_index is not None
        if shared:
            src = ctx.specs[p.share_index]
            if src.type != "convolutional" or src.p.share_index is not None:
                raise SpecError(f"share_index={p.share_index} must name a [convolutional] layer that has its own "
                                "weights", "share_index")
            if (src.p.size, src.p.filters, src.in_shape[0], src.p.groups, src.p.batch_normalize) != (
                    p.size, p.filters, c, p.groups, p.batch_normalize):
                raise SpecError(f"share_index={p.share_index}: layer {p.share_index} has a different size, filters, "
                                "input channels, groups or batch_normalize", "share_index")
        out = (p.filters, out_h, out_w)
        real = out
        if p.antialiasing:
            real = (p.filters, blur_out(out_h, p.antialiasing, p.sy), blur_out(out_w, p.antialiasing, p.sx))
        n = p.filters
        params = 0 if shared else nweights + (2 * n if p.batch_normalize else n)
        floats = 0 if shared else nweights + (4 * n if p.batch_normalize else n)
        return Inference(real, params, floats, bflops, darknet_out=out if p.antialiasing else None)

    @staticmethod
    def _binary(p: Params, spec: LayerSpec, ctx: BuildContext) -> bool:
        if not p.binary or p.xnor:
            return False
        if ctx.darknet_bugs:
            ctx.warnings.append(spec.problem("Darknet's CPU forward ignores binary=1; netspec matches it (build with "
                                             "darknet_bugs=False to binarize the weights)", "binary", "warning"))
            return False
        return True

    def init_targets(self, spec: LayerSpec, module: ConvLayer) -> list[InitTarget]:
        if module._share:  # the source layer's tensors, initialized there
            return []
        w = module.conv.weight
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        targets = [InitTarget("conv.weight", w, "weight", (fan_in, w.shape[0] * w.shape[2] * w.shape[3]))]
        if module.conv.bias is not None:
            targets.append(InitTarget("conv.bias", module.conv.bias, "bias"))
        return targets + bn_init_targets("bn", module.bn)

    def fuse(self, spec: LayerSpec, module: ConvLayer) -> None:
        module.fuse(tuple(spec.in_shape))

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        p = spec.p
        filters = str(p.filters) + (f"/{p.groups}" if p.groups > 1 else "")
        size = f"{p.size}x{p.size}/{stride_text(p.sx, p.sy)}" + (f" d{p.dilation}" if p.dilation > 1 else "")
        return filters, size

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        act_fn = ctx.activation(p.activation, spec)
        share = ctx.modules[p.share_index] if p.share_index is not None else None
        stride = (1, 1) if p.antialiasing else (p.sy, p.sx)
        return ConvLayer(spec.in_shape[0], p.filters, p.size, stride, p.pad_px, p.dilation, p.groups,
                         bool(p.batch_normalize), p.activation, act_fn, p.antialiasing, (p.sy, p.sx), share,
                         bool(p.flipped), bool(p.xnor), self._binary(p, spec, ctx))
