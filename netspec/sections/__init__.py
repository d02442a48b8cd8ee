"""One module per family of Darknet section types; importing them registers the definitions."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def load_all() -> None:
    """Import every built-in section module (each registers its sections on import)."""
    from . import convolutional, heads, merge, misc, net, pooling, resample  # noqa: F401
