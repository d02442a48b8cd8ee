"""The public entry point: cfg (path or text) → validated, shape-checked :class:`Network`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .document import Document
from .errors import CfgError
from .parser import parse
from .specs import Limits, NetSpec, build_specs

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network


def build_spec(source: str | os.PathLike | bytes | Document, width: int | None = None, height: int | None = None,
               strict: bool = True, *, channels: int | None = None, limits: Limits | None = None) -> NetSpec:
    """Parse and validate a cfg, inferring every layer's shape, without creating any tensor.

    ``source`` is a path, cfg text, or an already parsed :class:`~netspec.document.Document`."""
    document = source if isinstance(source, Document) else parse(source)
    return build_specs(document, width, height, channels=channels, strict=strict, limits=limits)


def build(source: str | os.PathLike | bytes | Document, width: int | None = None, height: int | None = None,
          strict: bool = True, *, channels: int | None = None, darknet_bugs: bool = True, limits: Limits | None = None,
          seed: int | None = 0, fuse: bool = False) -> Network:
    """Build a :class:`~netspec.network.Network` from a cfg path or cfg text.

    ``width``/``height`` override ``[net]``; ``strict=False`` turns Darknet-tolerated mistakes
    (unknown or duplicate keys, stray commas) into warnings; ``darknet_bugs`` reproduces Darknet's
    CPU output where it differs from the intended function (see the README).
    ``seed`` initializes the weights reproducibly with :func:`netspec.init_weights` (``None``: keep
    PyTorch's default initialization, e.g. when weights are loaded right after).
    ``fuse=True`` returns the inference-mode network (:meth:`Network.fuse`: BN folded, eval mode).
    Raises :class:`CfgError` listing every problem found.
    """
    from .materialize import build_network

    spec = build_spec(source, width, height, strict, channels=channels, limits=limits)
    net = build_network(spec, darknet_bugs, seed)  # constructed on meta, initialized once
    return net.fuse() if fuse else net


__all__ = ["CfgError", "build", "build_spec"]
