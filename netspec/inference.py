"""Inference mode for a built network: BatchNorm folded into the weights, activations in place.

Used by :meth:`netspec.network.Network.fuse`.  The fold follows Darknet's load-time fusion
(reference §3.1), computed in float64 and stored back in the weights' own dtype.
"""

from __future__ import annotations

import functools
import platform
import warnings
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import activations

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network

Activation = Callable[[torch.Tensor], torch.Tensor]


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w', b')`` with ``bn(w @ x + b) == w' @ x + b'`` in eval mode, computed in float64.

    ``weight`` has output channels first (conv ``[out, in, kh, kw]`` or linear ``[out, in]``)."""
    with torch.no_grad():
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bias.double() if bias is not None else torch.zeros_like(scale)
        folded_w = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
        folded_b = bn.bias.double() + (shift - bn.running_mean.double()) * scale
    return folded_w.to(weight.dtype), folded_b.to(weight.dtype)


def fold_batchnorm_into(inner: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Replace ``inner``'s (a conv's or linear layer's) weight and bias by their fold with ``bn``, which
    the caller then drops."""
    weight, bias = fold_batchnorm(inner.weight, inner.bias, bn)
    inner.weight = nn.Parameter(weight, requires_grad=inner.weight.requires_grad)
    inner.bias = nn.Parameter(bias, requires_grad=inner.weight.requires_grad)


def _leaky_(x):
    return F.leaky_relu_(x, 0.1)


def _relie_(x):
    return F.leaky_relu_(x, 0.01)


def _silu_(x):
    return F.silu(x, inplace=True)


_MISH_CHUNK = 1 << 16  # elements per block: the block's temporaries stay in the core's cache


def _mish_(x):
    """Mish in place.  ``x * tanh(softplus(x)) == x * n / (n + 2)`` with ``n = e^x (e^x + 2)``: one exp
    instead of exp, log1p and tanh, computed block by block in float32 so that the few passes over each
    block hit the cache (about 2.5x faster than ``F.mish`` on the CPU; same values to float32 rounding)."""
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    if (not dense or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16)
            or torch.jit.is_tracing() or torch.compiler.is_compiling()):
        return F.mish(x, inplace=True)
    flat = x.as_strided((x.numel(),), (1,), x.storage_offset())  # every element once, in memory order
    n_all = flat.numel()
    e = torch.empty(min(_MISH_CHUNK, n_all), dtype=torch.float32)
    d = torch.empty_like(e)
    for start in range(0, n_all, _MISH_CHUNK):
        v = flat[start:start + _MISH_CHUNK]
        k = v.numel()
        ek, dk = e[:k], d[:k]
        ek.copy_(v).clamp_(max=20.0).exp_()  # beyond 20 the factor is 1 in float32; no overflow
        torch.add(ek, 2.0, out=dk)
        ek.mul_(dk)
        torch.add(ek, 2.0, out=dk)
        ek.div_(dk)
        v.mul_(ek)
    return x


def _hardtan_(x):
    return x.clamp_(-1.0, 1.0)


# Activation -> in-place version.  Everything else keeps its out-of-place function.
_INPLACE: dict[Activation, Activation] = {
    activations.FUNCTIONS["leaky"]: _leaky_,
    activations.FUNCTIONS["relie"]: _relie_,
    activations.FUNCTIONS["logistic"]: torch.sigmoid_,
    activations.FUNCTIONS["relu"]: torch.relu_,
    activations.FUNCTIONS["swish"]: _silu_,
    activations.FUNCTIONS["mish"]: _mish_,
    activations.FUNCTIONS["tanh"]: torch.tanh_,
    activations.FUNCTIONS["hardtan"]: _hardtan_,
}


class InplaceActivation:
    """Runs the activation in place, except when autograd records the graph (where an in-place op
    could overwrite a value that backward needs): then it falls back to the out-of-place function."""

    def __init__(self, fn: Activation, inplace: Activation) -> None:
        self.fn = fn
        self.inplace = inplace

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return self.fn(x)
        return self.inplace(x)

    def __repr__(self) -> str:
        return f"InplaceActivation({getattr(self.fn, '__name__', self.fn)})"


def inplace_activation(fn: Activation) -> Activation:
    """The in-place variant of ``fn`` (``fn`` itself when there is none)."""
    if isinstance(fn, InplaceActivation):
        return fn
    inplace = _INPLACE.get(fn)
    return InplaceActivation(fn, inplace) if inplace is not None else fn


def mkldnn_available() -> bool:
    """Whether oneDNN's fused convolution (the fast path of :class:`PackedConv`) is available."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):
        return False


# Activations oneDNN applies inside the convolution (post-ops); the others run right after it.
_POST_OPS: dict[Activation, tuple[str, list]] = {
    activations.FUNCTIONS["linear"]: ("none", []),
    activations.FUNCTIONS["leaky"]: ("leaky_relu", [0.1]),
    activations.FUNCTIONS["relie"]: ("leaky_relu", [0.01]),
    activations.FUNCTIONS["relu"]: ("relu", []),
    activations.FUNCTIONS["logistic"]: ("sigmoid", []),
    activations.FUNCTIONS["swish"]: ("swish", []),
    activations.FUNCTIONS["tanh"]: ("tanh", []),
}


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (x86: AVX512-BF16 or AMX; ARM: the BF16 extension).
    Elsewhere bfloat16 is emulated and slower than float32 (about 50x for convolutions on an AVX2 CPU)."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86"):
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check is not None)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_warned: set[str] = set()


def autocast_compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype netspec's own CPU fast paths compute in for ``x``: the autocast dtype when autocast is on,
    except bfloat16 on a CPU without native bfloat16, where float32 is faster (warned once)."""
    if not torch.is_autocast_enabled("cpu"):
        return x.dtype
    dtype = torch.get_autocast_dtype("cpu")
    if dtype == torch.bfloat16 and not native_bf16():
        warn_slow_bf16()
        return torch.float32
    return dtype


def warn_slow_bf16() -> None:
    """Once per process: bfloat16 autocast on this CPU is slower than float32."""
    if "bf16" in _warned:
        return
    _warned.add("bf16")
    warnings.warn("bfloat16 autocast on a CPU without native bfloat16 (no AVX512-BF16, AMX or ARM BF16): torch "
                  "emulates it, so it runs slower than float32 here (about 50x for convolutions); netspec's fused "
                  "convolutions stay in float32.  Run without autocast for speed.", RuntimeWarning, stacklevel=3)


class PackedConv:
    """Inference fast path of a fused conv layer on the CPU: the weights reordered once into oneDNN's
    blocked layout (in the compute dtype: float32, or bfloat16 under autocast or for bf16 inputs),
    bias and activation applied inside the convolution, channels_last activations.

    Without it every call reorders the weights again (and autocast casts them to bf16 again).  Used only
    where it computes the same thing: no autograd, not while tracing or compiling (inductor's freezing
    packs weights itself), CPU, float32/bfloat16.  Under bfloat16 autocast on a CPU without native
    bfloat16 it computes in float32 (see :func:`autocast_compute_dtype`).  The packed copy is a cache, not
    state: dropped on copy and pickling, rebuilt when the weights, dtype or input shape change.  A dtype
    and input shape oneDNN refuses to pack is remembered, so that it is not tried again on every call."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._packed: tuple | None = None
        self._refused: set[tuple] = set()  # (dtype, input shape) oneDNN would not pack: the regular path

    def __deepcopy__(self, memo) -> PackedConv:
        return PackedConv()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def __call__(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        if (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or x.device.type != "cpu" or x.dim() != 4):
            return None
        dtype = autocast_compute_dtype(x)
        if dtype not in (torch.float32, torch.bfloat16):
            return None
        conv = layer.conv
        weight, bias = conv.weight, conv.bias
        key = (dtype, tuple(x.shape), weight.data_ptr(), weight._version, bias.data_ptr(), bias._version)
        if key != self._key:
            if key[:2] in self._refused:
                return None
            try:
                packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    weight.detach().to(dtype).to_mkldnn(), list(conv.padding), list(conv.stride),
                    list(conv.dilation), conv.groups, list(x.shape))
            except RuntimeError:  # a shape or dtype oneDNN does not take: the regular path, from now on
                self._refused.add(key[:2])
                return None
            fn = layer.act_fn.fn if isinstance(layer.act_fn, InplaceActivation) else layer.act_fn
            attr, scalars = _POST_OPS.get(fn, ("none", []))
            self._packed = (packed, bias.detach().float(), attr, scalars, attr == "none" and fn is not _linear)
            self._key = key
        packed, b, attr, scalars, apply_after = self._packed
        x = x.to(dtype, memory_format=torch.channels_last)
        y = torch.ops.mkldnn._convolution_pointwise(x, packed, b, list(conv.padding), list(conv.stride),
                                                    list(conv.dilation), conv.groups, attr, scalars, "")
        if apply_after:
            y = layer.act_fn(y)
        return layer.blur(y) if layer.blur is not None else y


_linear = activations.FUNCTIONS["linear"]


def fuse_network(net: Network) -> None:
    """Inference mode, layer by layer in cfg order: each section's ``fuse`` hook (BN folded into the conv or
    connected weights, activations on fresh outputs in place, the oneDNN fast path)."""
    for spec, module in zip(net.spec.layers, net.layers):
        spec.section.fuse(spec, module)
