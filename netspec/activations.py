"""Darknet's activation functions (reference §4) as torch functions, and where Darknet computes them.

Darknet's CPU forward returns 0 for some activations in some layers (``relu6`` everywhere; ``swish``,
``mish``, ``hard_mish`` and ``normalize_channels*`` outside ``[convolutional]``, with ``swish`` and
``mish`` also working in ``[shortcut]``).  With ``darknet_bugs=True`` (the default) netspec
reproduces those zeros and says so in a build warning; with ``darknet_bugs=False`` it computes the
function the name stands for.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Callable

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


def _linear(x):
    return x


def _leaky(x):
    return F.leaky_relu(x, 0.1)


def _relie(x):
    return F.leaky_relu(x, 0.01)


def _ramp(x):
    return x * (x > 0) + 0.1 * x


def _tanh(x):
    return torch.tanh(x)


def _loggy(x):
    return 2.0 * torch.sigmoid(x) - 1.0


def _elu(x):
    return F.elu(x)


def _selu(x):  # Darknet's rounded constants, not F.selu's: the outputs must match Darknet's
    return torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * torch.expm1(x))


def _plse(x):
    return torch.where(x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5))


def _hardtan(x):
    return torch.clamp(x, -1.0, 1.0)


def _lhtan(x):
    return torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x))


def _stair(x):
    n = torch.floor(x)
    half = torch.floor(x / 2)
    return torch.where(torch.fmod(n, 2) == 0, half, (x - n) + half)


def _relu6(x):
    return torch.clamp(x, 0.0, 6.0)


def _gelu(x):
    return 0.5 * x * (1 + torch.tanh(0.797885 * x + 0.035677 * x * x * x))


def _mish(x):
    return F.mish(x)


def _hard_mish(x):
    return torch.where(x > 0, x, torch.where(x > -2, 0.5 * x * x + x, torch.zeros_like(x)))


def _normalize_channels(x):
    pos = torch.relu(x)
    return pos / (1e-4 + pos.sum(dim=1, keepdim=True))


def _normalize_channels_softmax(x):
    e = torch.exp(x)
    return e / (1e-4 + e.sum(dim=1, keepdim=True))


def _normalize_channels_softmax_maxval(x):
    e = torch.exp(x - x.amax(dim=1, keepdim=True))
    return e / (1e-4 + e.sum(dim=1, keepdim=True))


def _zero(x):
    return torch.zeros_like(x)


FUNCTIONS: dict[str, Activation] = {
    "linear": _linear,
    "logistic": torch.sigmoid,
    "loggy": _loggy,
    "relu": torch.relu,
    "relie": _relie,
    "leaky": _leaky,
    "ramp": _ramp,
    "tanh": _tanh,
    "elu": _elu,
    "selu": _selu,
    "plse": _plse,
    "hardtan": _hardtan,
    "lhtan": _lhtan,
    "stair": _stair,
    "relu6": _relu6,
    "gelu": _gelu,
    "revleaky": _leaky,
    "swish": F.silu,
    "mish": _mish,
    "hard_mish": _hard_mish,
    "normalize_channels": _normalize_channels,
    "normalize_channels_softmax": _normalize_channels_softmax,
    "normalize_channels_softmax_maxval": _normalize_channels_softmax_maxval,
}
NAMES: tuple[str, ...] = tuple(FUNCTIONS)

# Activations that Darknet's CPU forward computes only in the sections whose definition lists them in
# ``Section.darknet_activations`` (elsewhere it yields 0; relu6 everywhere).  Every other activation works
# in every section.
SECTION_DEPENDENT = frozenset({"swish", "mish", "hard_mish", "normalize_channels", "normalize_channels_softmax",
                               "normalize_channels_softmax_maxval", "relu6"})

# Gains for kaiming init, by activation (leaky's slope 0.1 matters).
NEGATIVE_SLOPE = {"leaky": 0.1, "revleaky": 0.1, "relie": 0.01}


def darknet_computes(name: str, computed_here: Collection[str] = ()) -> bool:
    """Whether Darknet's CPU forward computes ``name`` in a section whose ``darknet_activations`` are
    ``computed_here`` (False: it outputs zeros)."""
    return name not in SECTION_DEPENDENT or name in computed_here


def resolve(name: str, section: str, darknet_bugs: bool, computed_here: Collection[str] = ()
            ) -> tuple[Activation, str | None]:
    """The function to apply for ``activation=name`` in the section named ``section`` (its definition's
    ``darknet_activations`` being ``computed_here``), and a warning if Darknet differs."""
    fn = FUNCTIONS[name]
    if darknet_computes(name, computed_here):
        return fn, None
    if darknet_bugs:
        return _zero, (f"Darknet's CPU forward outputs 0 for activation={name} in [{section}]; netspec matches "
                       "it (build with darknet_bugs=False for the real function)")
    return fn, (f"Darknet's CPU forward outputs 0 for activation={name} in [{section}]; netspec computes "
                f"{name} (darknet_bugs=False)")
