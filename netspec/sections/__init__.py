"""Section definitions: every module of this package, plus third-party ones from the ``netspec.sections``
entry point group.  Importing a module registers its sections; nothing here has a fixed list of them."""

from __future__ import annotations

import importlib
import pkgutil
import threading
import types
import warnings

ENTRY_POINT_GROUP = "netspec.sections"

_lock = threading.RLock()
_state = {"loaded": False, "loading": False}


def _entry_points(group: str) -> list:
    from importlib.metadata import entry_points

    found = entry_points()
    if hasattr(found, "select"):  # Python >= 3.10
        return list(found.select(group=group))
    return list(found.get(group, ()))  # pragma: no cover - Python 3.9


def _load_entry_point(ep) -> None:
    """An entry point names a module (importing it registers its sections) or a Section subclass."""
    from ..errors import SectionError
    from .base import _REGISTRY, Section, register

    def skip(reason: str) -> None:  # a broken plugin must not stop every other cfg from building
        warnings.warn(f"netspec: section plugin '{ep.name} = {ep.value}' (entry point group {ENTRY_POINT_GROUP}) "
                      f"is skipped: {reason}", RuntimeWarning, stacklevel=4)

    try:
        obj = ep.load()
    except Exception as exc:
        skip(f"it failed to load: {type(exc).__name__}: {exc}")
        return
    if isinstance(obj, type) and issubclass(obj, Section):
        if not any(type(s) is obj for s in _REGISTRY.values()):
            try:
                register(obj)
            except SectionError as exc:
                skip(str(exc))
    elif not isinstance(obj, types.ModuleType):
        skip(f"it names {obj!r}, neither a module nor a netspec.Section subclass")


def load_all() -> None:
    """Import every module of this package (built-in sections), then the entry-point plugins.  Idempotent
    and safe to re-enter (a plugin that calls ``register_section`` while being loaded)."""
    with _lock:
        if _state["loaded"] or _state["loading"]:
            return
        _state["loading"] = True
        try:
            for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
                importlib.import_module(f"{__name__}.{info.name}")
            for ep in _entry_points(ENTRY_POINT_GROUP):
                _load_entry_point(ep)
            _state["loaded"] = True
        finally:
            _state["loading"] = False
