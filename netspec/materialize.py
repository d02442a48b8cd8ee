"""Cold build without wasted initialization.

PyTorch modules initialize their parameters when constructed; netspec then initializes them again
(:func:`netspec.init.init_weights`) or overwrites them with a ``.weights`` file.  Here the layers are
constructed on the ``meta`` device (shapes only, no memory, no random numbers), then every tensor is
allocated once, uninitialized, and filled exactly once: by netspec's initializer or by the file.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .sections.base import BuildContext
from .specs import NetSpec

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network
    from .params_io import ParametersReport


def _constants_lost(module: nn.Module) -> bool:
    """Whether constructing on meta lost values that are not parameters or saved buffers (e.g. a blur kernel)."""
    for sub in module.modules():
        for name, buf in sub._buffers.items():
            if buf is not None and buf.is_meta and name in sub._non_persistent_buffers_set:
                return True
    return False


def _allocate(tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.is_meta:
        return tensor
    if tensor.is_floating_point():
        return torch.empty_like(tensor, device="cpu")
    return torch.zeros_like(tensor, device="cpu")  # counters such as BN's num_batches_tracked


def assemble_uninitialized(spec: NetSpec, darknet_bugs: bool = True) -> Network:
    """A :class:`~netspec.network.Network` whose floating-point parameters and buffers are allocated but
    hold arbitrary values: fill them with :func:`netspec.init.init_weights` or a weights file.

    A layer whose module computes constants at construction (a blur kernel, head masks) is built on
    the CPU as usual, so those constants are right."""
    from .network import Network

    ctx = BuildContext(spec.layers, spec.net, darknet_bugs)
    for layer in spec.layers:
        n_warnings = len(ctx.warnings)
        try:
            with torch.device("meta"):
                module = layer.section.module(layer, ctx)
            rebuild = _constants_lost(module)
        except (NotImplementedError, RuntimeError):  # a module that reads tensor values while constructed
            rebuild = True
        if rebuild:
            del ctx.warnings[n_warnings:]
            module = layer.section.module(layer, ctx)
        ctx.modules.append(module)
    net = Network(spec, ctx.modules, ctx.warnings, darknet_bugs)
    net._apply(_allocate)
    return net


def build_network(spec: NetSpec, darknet_bugs: bool = True, seed: int | None = 0) -> Network:
    """Modules for ``spec``: initialized once by netspec's initializer (``seed``), or with PyTorch's
    default initialization when ``seed`` is None."""
    if seed is None:
        from .network import assemble

        return assemble(spec, darknet_bugs=darknet_bugs)
    from .init import init_weights

    return init_weights(assemble_uninitialized(spec, darknet_bugs), seed)


def load_initializing_rest(net: Network, path: str | os.PathLike, seed: int = 0, upto: int | None = None, *,
                           strict: bool = True, allow_nonfinite: bool = False) -> ParametersReport:
    """Fill an uninitialized network from a parameter file (Darknet ``.weights``, netspec checkpoint or
    ``.safetensors``; :func:`netspec.params_io.load_parameters`); every tensor the file does not provide
    (layers past the end of a backbone file, past ``upto``, ``dontload``/``dontloadscales``) is initialized
    with ``seed``, and nothing else is.  Returns the load report.

    On a :class:`~netspec.errors.NetspecError` the network's values are undefined: discard it."""
    from .init import init_weights
    from .params_io import load_parameters

    specs = net.spec.layers
    # Layers the file skips in whole or in part: initialized first, the file fills the rest of them.
    skipped = {s.index for s in specs if s.p.dontload or s.p.dontloadscales}
    if skipped:
        init_weights(net, seed, layers=skipped)
    report = load_parameters(net, path, upto, strict=strict, allow_nonfinite=allow_nonfinite)
    rest = {s.index for s in specs if s.index > report.last_layer} - skipped
    if rest:
        init_weights(net, seed, layers=rest)
    return report
