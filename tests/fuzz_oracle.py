"""The property every input must satisfy, shared by the hypothesis tests, the corpus replay and the atheris target.

Any bytes given to netspec either build a network whose run-time shapes equal the inferred ones, or raise
:class:`netspec.CfgError` (or a subclass) that points at a line of the file.  Nothing else may escape.
"""

from __future__ import annotations

import netspec
from netspec.errors import CfgError
from netspec.specs import Limits, NetSpec

# Small enough that a forward pass over any accepted input stays quick on a CPU.
FORWARD_MAX_ACTIVATION_BYTES = 8 * 2**20
FORWARD_MAX_BFLOPS = 0.05


class OracleViolation(AssertionError):
    """The input made netspec misbehave (an error without a location, or a shape mismatch)."""


def _check_error(exc: CfgError) -> None:
    if not exc.problems:
        raise OracleViolation(f"CfgError without problems: {exc!r}")
    for problem in exc.problems:
        if problem.line is None:
            raise OracleViolation(f"CfgError without a line number: {problem}")
    str(exc)  # the message itself must render


def spec_or_error(data: bytes | str, limits: Limits, strict: bool) -> NetSpec | None:
    """The spec, or None after checking that the CfgError raised carries a location."""
    try:
        return netspec.build_spec(data, strict=strict, limits=limits)
    except CfgError as exc:
        _check_error(exc)
        return None


def check_forward(spec: NetSpec) -> None:
    """Build the modules and run them once; every layer's output shape must be the inferred one."""
    import torch

    from netspec.network import assemble

    net = assemble(spec).eval()
    c, h, w = spec.input_shape
    with torch.no_grad():
        outs = net.forward_all(torch.rand(1, c, h, w))
    for layer, out in zip(spec.layers, outs):
        expected = tuple(layer.section.tensor_shape(layer))
        ran = tuple(out.shape[1:])
        if ran != expected:
            raise OracleViolation(f"layer {layer.index} [{layer.type}]: inferred {expected}, ran {ran}")


def small_enough_to_run(spec: NetSpec) -> bool:
    return spec.activation_bytes() <= FORWARD_MAX_ACTIVATION_BYTES and spec.total_bflops <= FORWARD_MAX_BFLOPS


def check_input(data: bytes | str, limits: Limits, run_forward: bool = False) -> NetSpec | None:
    """Apply the property to one input (strict, then lenient); return the strict spec when it built."""
    strict_spec = spec_or_error(data, limits, strict=True)
    lenient_spec = spec_or_error(data, limits, strict=False)
    if strict_spec is not None and lenient_spec is None:
        raise OracleViolation("accepted in strict mode but rejected in lenient mode")
    spec = strict_spec or lenient_spec
    if spec is not None and run_forward and small_enough_to_run(spec):
        check_forward(spec)
    return strict_spec
