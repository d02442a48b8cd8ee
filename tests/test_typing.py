"""Typing contract of the public API: the PEP 561 marker ships, every function and method netspec exports
is annotated (parameters and return), and every error class netspec defines is a NetspecError exported from
``netspec``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import netspec
import netspec.errors

from .conftest import REPO


def _public_functions():
    for name in netspec.__all__:
        obj = getattr(netspec, name)
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if inspect.isfunction(member) and (not attr.startswith("_") or attr == "__init__"):
                    yield f"{name}.{attr}", member
                elif isinstance(member, property) and not attr.startswith("_"):
                    yield f"{name}.{attr}", member.fget


def test_every_exported_function_is_annotated():
    missing = []
    for name, fn in _public_functions():
        sig = inspect.signature(fn)
        bare = [p.name for p in sig.parameters.values()
                if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
        no_return = sig.return_annotation is inspect.Signature.empty and not name.endswith("__init__")
        if bare or no_return:
            missing.append(f"{name}: {', '.join(bare)}{' (no return annotation)' if no_return else ''}")
    assert not missing, "\n".join(missing)


def test_build_is_annotated_to_return_a_network():
    assert inspect.signature(netspec.build).return_annotation in ("Network", netspec.Network)


def test_py_typed_marker_is_in_the_package():
    assert (REPO / "netspec" / "py.typed").is_file()


def test_every_error_class_is_a_netspec_error_exported_from_netspec():
    errors = [obj for obj in vars(netspec.errors).values()
              if inspect.isclass(obj) and issubclass(obj, Exception) and not issubclass(obj, Warning)]
    assert errors
    for cls in errors:
        assert issubclass(cls, netspec.NetspecError), cls
        assert getattr(netspec, cls.__name__) is cls and cls.__name__ in netspec.__all__, cls


def test_every_netspec_error_defined_anywhere_is_exported():
    internal = {"KeyValueError", "SpecError", "_NotSimple"}  # raised and caught inside netspec (SpecError:
    # raised by section definitions, reported as a CfgError at the key)
    missing = []
    for info in pkgutil.walk_packages(netspec.__path__, "netspec."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and not issubclass(obj, Warning)
                    and obj.__module__ == info.name and name not in internal):
                if not issubclass(obj, netspec.NetspecError) or getattr(netspec, name, None) is not obj:
                    missing.append(f"{info.name}.{name}")
    assert not missing, missing
