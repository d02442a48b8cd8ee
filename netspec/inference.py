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


def _mish_(x):
    """Mish in place, as torch's single fused kernel.  (A blockwise rewrite with one exp instead of three
    transcendentals was 2.7x faster on an idle machine, but its six small ops per block are each a parallel
    region: on a loaded 2-core machine it was 25x slower than ``F.mish``, and yolov4 slower than the port.)"""
    return F.mish(x, inplace=True)


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


# In-place activations autograd differentiates from their result (torch's derivative formulas use ``result``;
# leaky_relu_ only with a positive slope): safe under autograd on a tensor that the op producing it did not
# save for its own backward (a convolution's or BatchNorm's output).  The others (mish, swish, hardtan) need
# their input in backward.
_RESULT_DIFFERENTIABLE: frozenset[Activation] = frozenset({
    activations.FUNCTIONS["leaky"], activations.FUNCTIONS["relie"], activations.FUNCTIONS["relu"],
    activations.FUNCTIONS["logistic"], activations.FUNCTIONS["tanh"],
})


class InplaceActivation:
    """Runs the activation in place.  When autograd records the graph it does so only for activations whose
    backward needs their result alone (leaky, relie, relu, logistic, tanh: the in-place op then saves one
    activation-sized tensor fewer and allocates nothing); the others fall back to the out-of-place function
    there, since an in-place op would overwrite the input their backward needs."""

    def __init__(self, fn: Activation, inplace: Activation) -> None:
        self.fn = fn
        self.inplace = inplace
        self.autograd_inplace = fn in _RESULT_DIFFERENTIABLE

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.autograd_inplace and x.requires_grad and torch.is_grad_enabled():
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


def _version(tensor: torch.Tensor) -> int:
    """The in-place version counter; tensors made under ``torch.inference_mode`` (``netspec map`` loads and
    packs there) have none, and are not modified in place by netspec afterwards."""
    return -1 if tensor.is_inference() else tensor._version


class PackedConv:
    """Inference fast path of a fused conv layer on the CPU: the weights reordered once into oneDNN's
    blocked layout (in the compute dtype: float32, or bfloat16 under autocast or for bf16 inputs),
    bias and activation applied inside the convolution, channels_last activations.

    Without it every call reorders the weights again (and autocast casts them to bf16 again).  Used only
    where it computes the same thing: no autograd, not while tracing or compiling (inductor's freezing
    packs weights itself), CPU, float32/bfloat16.  Under bfloat16 autocast on a CPU without native
    bfloat16 it computes in float32 (see :func:`autocast_compute_dtype`).  The packed copy is a cache, not
    state: dropped on copy and pickling, rebuilt when the weights, dtype or input shape change.  A dtype
    and input shape oneDNN refuses to pack is remembered, so that it is not tried again on every call.

    When the packed copy is exact (packed in the weight's own dtype) the plain weight is released
    (:class:`PackedWeightConv2d`): the layer holds its weight once, in the packed form."""

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

    def drop(self) -> None:
        """Forget the packed copy (its weight is about to change device, dtype or values)."""
        self._key = self._packed = None

    def plain_weight(self, shape: torch.Size) -> torch.Tensor:
        """A fresh plain tensor with the packed weight's values (exact: the packing is a reordering)."""
        return self._packed[0].to_dense().reshape(shape)

    @staticmethod
    def _key_of(dtype: torch.dtype, shape: tuple[int, ...], weight: torch.Tensor, bias: torch.Tensor) -> tuple:
        return dtype, tuple(shape), weight.data_ptr(), _version(weight), bias.data_ptr(), _version(bias)

    def __call__(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        if (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling()
                or x.device.type != "cpu" or x.dim() != 4):
            return None
        dtype = autocast_compute_dtype(x)
        if dtype not in (torch.float32, torch.bfloat16) or not self.pack(layer, dtype, tuple(x.shape)):
            return None
        conv = layer.conv
        packed, b, attr, scalars, apply_after = self._packed
        x = x.to(dtype, memory_format=torch.channels_last)
        y = torch.ops.mkldnn._convolution_pointwise(x, packed, b, list(conv.padding), list(conv.stride),
                                                    list(conv.dilation), conv.groups, attr, scalars, "")
        if apply_after:
            y = layer.act_fn(y)
        return layer.blur(y) if layer.blur is not None else y

    def pack(self, layer: nn.Module, dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
        """Make the packed copy match ``layer``'s weights, ``dtype`` and input ``shape``; False where oneDNN
        will not take them (the regular path then)."""
        conv = layer.conv
        # The registered tensor itself: ``conv.weight`` would bring a released weight back.
        weight, bias = conv._parameters["weight"], conv._parameters["bias"]
        released = getattr(conv, "released", False)
        key = self._key_of(dtype, shape, weight, bias)
        if key == self._key:
            return True
        if released and (key[:2] in self._refused or dtype != weight.dtype):
            conv.restore()  # the regular path, or an inexact (bf16) packed copy: the plain weight is needed
            weight, released = conv._parameters["weight"], False
        if key[:2] in self._refused:
            return False
        plain = self.plain_weight(weight.shape) if released else weight.detach()
        try:
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                plain.to(dtype).to_mkldnn(), list(conv.padding), list(conv.stride),
                list(conv.dilation), conv.groups, list(shape))
        except RuntimeError:  # a shape or dtype oneDNN does not take: the regular path, from now on
            self._refused.add(key[:2])
            if released:
                conv.restore()
            return False
        del plain
        fn = layer.act_fn.fn if isinstance(layer.act_fn, InplaceActivation) else layer.act_fn
        attr, scalars = _POST_OPS.get(fn, ("none", []))
        self._packed = (packed, bias.detach().float(), attr, scalars, attr == "none" and fn is not _linear)
        if dtype == weight.dtype and isinstance(conv, PackedWeightConv2d):
            conv.release()  # the packed copy is exact: the plain one is not needed any more
            weight = conv._parameters["weight"]
        self._key = self._key_of(dtype, shape, weight, bias)
        return True

    def adopt(self, weight: torch.Tensor) -> None:
        """``weight`` now holds the packed values: keep the packed copy valid for it."""
        if self._key is not None:
            self._key = self._key[:2] + (weight.data_ptr(), _version(weight)) + self._key[4:]


class PackedWeightConv2d(nn.Conv2d):
    """The ``Conv2d`` of a fused layer on the oneDNN fast path (its class is switched by
    :func:`use_packed_weights`): once :class:`PackedConv` holds an exact packed copy of the weight, the
    module lets go of its plain weight, so the weight is held once.

    While released, ``weight`` in ``parameters()`` is a placeholder of the right shape, dtype and device that
    owns no memory (it reads as zeros and refuses in-place writes); everything that needs the values gets
    them from the packed copy: ``state_dict()`` (and so saving), pickling and ``copy.deepcopy``, ``.to()``
    and the other ``_apply`` conversions, ``load_state_dict``.  Reading the attribute ``conv.weight`` (as the
    regular forward, tracing and user code do) hands the plain tensor out, so it is brought back if released
    and kept from then on: the caller may hold it and change it (the packed copy follows such changes).  A
    tensor obtained earlier from ``parameters()`` keeps its values but is no longer the module's weight."""

    _fast: PackedConv
    released: bool
    _keep_plain: bool

    def __getattr__(self, name: str):
        if name == "weight" and "_fast" in self.__dict__:
            if torch.compiler.is_compiling():
                _restore_while_compiling(self)
            else:
                self.restore(keep=True)
        return super().__getattr__(name)

    def release(self) -> None:
        """Let go of the plain weight (the packed copy has its values); a placeholder takes its place."""
        if self._keep_plain or self.released:
            return
        weight = self._parameters["weight"]
        placeholder = torch.zeros((), dtype=weight.dtype, device=weight.device).expand(weight.shape)
        self._parameters["weight"] = nn.Parameter(placeholder, requires_grad=weight.requires_grad)
        self.released = True

    def restore(self, keep: bool = False) -> None:
        """The plain weight back from the packed copy (``keep``: and never released again)."""
        self._keep_plain = self._keep_plain or keep
        if not self.released:
            return
        weight = self._parameters["weight"]
        self._parameters["weight"] = nn.Parameter(self._fast.plain_weight(weight.shape),
                                                  requires_grad=weight.requires_grad)
        self.released = False
        self._fast.adopt(self._parameters["weight"])

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.released:
            destination[prefix + "weight"] = self._fast.plain_weight(self._parameters["weight"].shape)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.restore()
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse: bool = True):
        self.restore()
        self._fast.drop()  # e.g. moved to another device: the CPU copy is stale
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        if self.released:  # the copy gets the plain weight (its PackedConv starts empty)
            weight = self._parameters["weight"]
            state["_parameters"] = dict(state["_parameters"])
            state["_parameters"]["weight"] = nn.Parameter(self._fast.plain_weight(weight.shape),
                                                          requires_grad=weight.requires_grad)
            state["released"] = False
        return state


def _restore_while_compiling(conv: PackedWeightConv2d) -> bool:
    conv.restore(keep=True)
    return True


# What ``torch._dynamo.assume_constant_result`` sets (without importing dynamo, which takes seconds): dynamo
# runs the function eagerly while tracing and treats its result as a constant, so the graph reads the restored
# weight instead of tracing the restore (which creates a Parameter, a graph break).
_restore_while_compiling._dynamo_marked_constant = True


def restore_plain_weights(net: nn.Module) -> None:
    """Bring back (and keep) every plain conv weight a fused ``net`` released, for code that reads
    ``parameters()`` directly (the ONNX exporter, an optimizer)."""
    for module in net.modules():
        if isinstance(module, PackedWeightConv2d):
            module.restore(keep=True)


def use_packed_weights(conv: nn.Conv2d, fast: PackedConv) -> None:
    """Let ``fast`` release ``conv``'s plain weight once it holds an exact packed copy."""
    conv.__class__ = PackedWeightConv2d
    conv._fast = fast
    conv.released = False
    conv._keep_plain = False


_linear = activations.FUNCTIONS["linear"]


def prepack(layer: nn.Module, in_shape: tuple[int, int, int]) -> None:
    """At fuse time: pack ``layer``'s weights for a batch-1 input of the cfg's size in the weights' dtype, so
    that the fused network holds each weight once, packed, from the start (another batch size or dtype
    repacks on its first call)."""
    fast = getattr(layer, "fast", None)
    if fast is None:
        return
    weight = layer.conv._parameters["weight"]  # not conv.weight: reading that keeps the plain weight
    if weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16):
        with torch.no_grad():
            fast.pack(layer, weight.dtype, (1, *in_shape))


def _return_freed_memory() -> None:
    """Hand the heap memory freed by the released plain weights back to the OS (glibc keeps freed blocks for
    reuse, so the process would look as if it held the weights twice)."""
    if platform.system() != "Linux":
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
        pass


def fuse_network(net: Network) -> None:
    """Inference mode, layer by layer in cfg order: each section's ``fuse`` hook (BN folded into the conv or
    connected weights, activations on fresh outputs in place, the oneDNN fast path with the weights packed)."""
    for spec, module in zip(net.spec.layers, net.layers):
        spec.section.fuse(spec, module)
    _return_freed_memory()
