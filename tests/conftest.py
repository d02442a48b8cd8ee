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


def refuse_bf16_packing(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Make this CPU look like one without native bfloat16 (an AVX2-only one): ``native_bf16()`` is False
    and oneDNN refuses to pack bfloat16 weights, as it does there.  Returns the count of refused packs."""
    import torch

    import netspec.inference as inference

    monkeypatch.setattr(inference, "native_bf16", lambda: False)
    monkeypatch.setattr(inference, "_warned", set())
    real_reorder = torch._C._nn.mkldnn_reorder_conv2d_weight
    attempts = {"bf16": 0}

    def reorder(weight, *args):
        if weight.dtype == torch.bfloat16:
            attempts["bf16"] += 1
            raise RuntimeError("mkldnn_reorder_conv2d_weight: bf16 path needs the cpu support avx512bw, avx512vl "
                               "and avx512dq")
        return real_reorder(weight, *args)

    monkeypatch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight", reorder)
    return attempts


@pytest.fixture(scope="session", autouse=True)
def _simulated_cpu_without_bf16():
    """``NETSPEC_SIMULATE_NO_BF16=1 python -m pytest ...`` runs the suite as on a CPU without native bfloat16."""
    if os.environ.get("NETSPEC_SIMULATE_NO_BF16") != "1":
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        refuse_bf16_packing(patch)
        yield


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
