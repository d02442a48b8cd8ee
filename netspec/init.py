"""Weight initialization: Darknet's scheme by default, per-block ``init=``/``bias_init=``/``bias_prob=``.

Which scheme a tensor gets (highest first):

* weights: the block's ``init=``, else ``[net] init=`` (conv, connected and local weights only; shortcut and
  implicit weights keep their Darknet start unless their own block says otherwise), else Darknet's scheme;
* biases (the block's Darknet ``biases``: the conv/connected bias, or the BN shift when the block has
  ``batch_normalize=1``): the block's ``bias_prob=`` (``-log((1-p)/p)``, the focal-loss prior) or
  ``bias_init=``, else ``[net] bias_init=``, else 0;
* BN: scale 1, shift 0 (unless a bias rule above applies), running mean 0, running variance 1.

Darknet allocates its rolling variance with zeros; netspec starts it at 1 (PyTorch's convention) so an
untrained net run in eval mode normalizes by 1 instead of dividing by ``sqrt(1e-5)``.  Training replaces
either start within a few hundred steps.

Every parameter draws from its own generator, seeded from ``seed`` and a name that does not depend on
how many blocks come before it: the block's position counted from the end of the cfg, its section and the
tensor's role.  Prepending blocks (or resizing an earlier block) therefore leaves a block's values unchanged.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .activations import NEGATIVE_SLOPE
from .errors import CfgError
from .keys import init_arguments
from .sections.base import InitTarget

if TYPE_CHECKING:  # pragma: no cover
    from .document import Call
    from .network import Network

# Activation -> gain for kaiming init without an explicit ``a``: the ReLU family uses sqrt(2) (like
# torch's calculate_gain('relu')), tanh 5/3, selu 3/4; anything else (linear, logistic...) 1.
_RELU_LIKE = {"relu", "relu6", "elu", "gelu", "swish", "mish", "hard_mish", "ramp", "relie"}
_GAINS = {"tanh": 5.0 / 3, "selu": 0.75, "lhtan": 1.0, "hardtan": 1.0}


def activation_gain(activation: str | None, a: float | None = None) -> float:
    """Kaiming gain for a block's activation; ``a`` (negative slope) overrides the activation's own."""
    if a is not None:
        return math.sqrt(2.0 / (1.0 + a * a))
    if activation in NEGATIVE_SLOPE:
        slope = NEGATIVE_SLOPE[activation]
        return math.sqrt(2.0 / (1.0 + slope * slope))
    if activation in _RELU_LIKE:
        return math.sqrt(2.0)
    return _GAINS.get(activation or "", 1.0)


def generator_for(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and ``name`` only."""
    digest = hashlib.sha256(f"{int(seed)}\0{name}".encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def _problem(spec, key: str, message: str) -> CfgError:
    return CfgError([spec.problem(message, key)])


def _orthogonal_(tensor: torch.Tensor, gain: float, gen: torch.Generator) -> None:
    """torch's orthogonal init; a 3-D tensor (the per-location filter banks of [local]) gets one orthogonal
    matrix per leading index, a tensor of another rank is one ``(rows, -1)`` matrix."""
    if tensor.dim() == 3:
        for matrix in tensor:
            nn.init.orthogonal_(matrix, gain, generator=gen)
    else:
        nn.init.orthogonal_(tensor, gain, generator=gen)


def apply_scheme(tensor: torch.Tensor, call: Call, fans: tuple[int, int], activation: str | None,
                 gen: torch.Generator) -> None:
    """Fill ``tensor`` in place with ``call`` (an init :class:`~netspec.document.Call`)."""
    name = call.name
    args = init_arguments(call)
    fan_in, fan_out = fans
    if name == "darknet":
        scale = math.sqrt(2.0 / fan_in)
        tensor.uniform_(-scale, scale, generator=gen)
    elif name in ("kaiming_normal", "kaiming_uniform"):
        a = args.get("a")
        gain = activation_gain(activation, None if a is None else float(a))
        fan = fan_out if args.get("mode") == "fan_out" else fan_in
        std = gain / math.sqrt(fan)
        if name == "kaiming_normal":
            tensor.normal_(0.0, std, generator=gen)
        else:
            bound = math.sqrt(3.0) * std
            tensor.uniform_(-bound, bound, generator=gen)
    elif name in ("xavier_normal", "xavier_uniform"):
        std = float(args.get("gain", 1.0)) * math.sqrt(2.0 / (fan_in + fan_out))
        if name == "xavier_normal":
            tensor.normal_(0.0, std, generator=gen)
        else:
            bound = math.sqrt(3.0) * std
            tensor.uniform_(-bound, bound, generator=gen)
    elif name == "normal":
        tensor.normal_(float(args.get("mean", 0.0)), float(args.get("std", 1.0)), generator=gen)
    elif name == "trunc_normal":
        mean, std = float(args.get("mean", 0.0)), float(args.get("std", 1.0))
        nn.init.trunc_normal_(tensor, mean, std, float(args.get("a", mean - 2 * std)),
                              float(args.get("b", mean + 2 * std)), generator=gen)
    elif name == "uniform":
        tensor.uniform_(float(args.get("a", 0.0)), float(args.get("b", 1.0)), generator=gen)
    elif name == "orthogonal":
        if tensor.dim() < 2:
            tensor.normal_(0.0, 1.0, generator=gen)
        else:
            _orthogonal_(tensor, float(args.get("gain", 1.0)), gen)
    elif name == "constant":
        tensor.fill_(float(args["value"]))
    elif name == "zeros":
        tensor.zero_()
    elif name == "ones":
        tensor.fill_(1.0)
    else:  # pragma: no cover - keys.check_init_call rejects unknown names at parse time
        raise CfgError(f"unknown initializer {name!r}")


def _darknet_default(target: InitTarget, gen: torch.Generator) -> None:
    t = target.tensor
    if target.role == "weight":
        if target.darknet_start is not None:
            target.darknet_start(t, gen)
        else:
            scale = math.sqrt(2.0 / target.fans[0])
            t.uniform_(-scale, scale, generator=gen)
    elif target.role in ("bias", "bn_shift"):
        t.zero_()
    elif target.role == "bn_scale":
        t.fill_(1.0)


def _init_uncovered(layer: nn.Module, targets: list[InitTarget], seed: int, stable: str) -> None:
    """Parameters of module kinds this file does not know: Darknet-style for matrices, zeros otherwise
    (a network may be built on the meta device, so nothing may be left unfilled)."""
    covered = {id(t.tensor) for t in targets if t.role != "bn_stats"}
    covered |= {id(x) for t in targets if t.role == "bn_stats" for x in t.tensor.parameters()}
    for name, param in layer.named_parameters():
        if id(param) in covered:
            continue
        if param.dim() >= 2:
            scale = math.sqrt(2.0 / max(1, param[0].numel()))
            param.uniform_(-scale, scale, generator=generator_for(seed, f"{stable}:{name}"))
        else:
            param.zero_()


def init_weights(net: Network, seed: int = 0, *, layers: Collection[int] | None = None) -> Network:
    """Initialize every parameter of a built :class:`~netspec.network.Network` (in place; returns ``net``).

    ``layers``: only the layers with these indices (the values are those a full init gives them).

    Raises :class:`~netspec.errors.CfgError` (at the block) for ``init=``/``bias_init=`` on a block
    without such a tensor, or ``bias_init=`` together with ``bias_prob=``.
    """
    spec = net.spec
    net_params = spec.net
    net_init = getattr(net_params, "init", None)
    net_bias_init = getattr(net_params, "bias_init", None)
    count = len(spec.layers)
    with torch.no_grad():
        for layer_spec, layer in zip(spec.layers, net.layers):
            if layers is not None and layer_spec.index not in layers:
                continue
            p = layer_spec.p
            stable = f"{layer_spec.index - count}:{layer_spec.type}"  # -1 is the last block
            activation = getattr(p, "activation", None)
            targets = layer_spec.section.init_targets(layer_spec, layer)
            roles = {t.role for t in targets}
            block_init, bias_init, bias_prob = p.init, p.bias_init, p.bias_prob
            if block_init is not None and "weight" not in roles:
                raise _problem(layer_spec, "init", "init= given, but this block has no weights to initialize")
            if (bias_init is not None or bias_prob is not None) and "bias" not in roles:
                key = "bias_init" if bias_init is not None else "bias_prob"
                raise _problem(layer_spec, key, f"{key}= given, but this block has no biases")
            if bias_init is not None and bias_prob is not None:
                raise _problem(layer_spec, "bias_prob", "give either bias_init= or bias_prob=, not both")
            _init_uncovered(layer, targets, seed, stable)
            for target in targets:
                if target.role == "bn_stats":
                    bn = target.tensor
                    bn.running_mean.zero_()
                    bn.running_var.fill_(1.0)
                    if bn.num_batches_tracked is not None:
                        bn.num_batches_tracked.zero_()
                    continue
                gen = generator_for(seed, f"{stable}:{target.suffix}")
                scheme = None
                if target.role == "weight":
                    scheme = block_init or (net_init if target.net_init else None)
                elif target.role == "bias":
                    if bias_prob is not None:
                        target.tensor.fill_(-math.log((1.0 - bias_prob) / bias_prob))
                        continue
                    scheme = bias_init or net_bias_init
                if scheme is None:
                    _darknet_default(target, gen)
                else:
                    fans = target.fans or (target.tensor.numel(), target.tensor.numel())
                    apply_scheme(target.tensor, scheme, fans, activation, gen)
    return net


__all__ = ["activation_gain", "apply_scheme", "generator_for", "init_weights"]
