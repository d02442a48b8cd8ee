"""Shared fixtures: where ../shared is (tests that need it skip cleanly without it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("NETSPEC_SHARED", REPO.parent / "shared"))
DARKNET_CFGS = SHARED / "darknet-cfgs"
CONFORMANCE = SHARED / "conformance"
CFGS = REPO / "cfgs"


def need_shared(path: Path = SHARED) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not present (the Darknet reference data lives in ../shared beside the checkout)")
    return path


def need_native_bf16() -> None:
    """Skip where the CPU has no native bfloat16: there netspec keeps its fast paths in float32 (tested on
    its own, with the capability check simulated)."""
    from netspec.inference import native_bf16

    if not native_bf16():
        pytest.skip("this CPU has no native bfloat16 (AVX512-BF16, AMX or ARM BF16): bf16 fast paths stay float32")


@pytest.fixture
def darknet_cfgs() -> Path:
    return need_shared(DARKNET_CFGS)


@pytest.fixture
def conformance() -> Path:
    return need_shared(CONFORMANCE)
