"""Precision and compilation: bfloat16 autocast (and plain bf16 weights), channels_last,
``torch.compile`` without graph breaks, ``torch.jit.trace``."""

from __future__ import annotations

import copy

import pytest
import torch

import netspec
from netspec.sections.merge import Route
from netspec.sections.pooling import MaxPool

from .conftest import CFGS
from .test_conformance import load_vector


def _outputs(net, x):
    out = net(x)
    return out if isinstance(out, list) else [out]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.fixture(scope="module")
def kitchen_sink(tmp_path_factory):
    """Every section Darknet's CPU computes, with Darknet's weights and input."""
    net, _, _, x = load_vector("kitchen-sink", tmp_path_factory.mktemp("ks"))
    return net, x


@pytest.fixture(scope="module")
def tiny():
    """yolov3-tiny at 64x64 (conv, maxpool, route, upsample, two [yolo] heads)."""
    return netspec.build(CFGS / "yolov3-tiny.cfg", 64, 64).eval(), torch.rand(2, 3, 64, 64)


def test_bf16_autocast_every_layer(kitchen_sink):
    net, x = kitchen_sink
    with torch.no_grad():
        ref = net.forward_all(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net.forward_all(x)
    for i, (r, lo) in enumerate(zip(ref, low)):
        assert lo.shape == r.shape, i
        assert torch.isfinite(lo).all() or not torch.isfinite(r).all(), f"layer {i} [{net.spec.layers[i].type}]"
    for i in net.outputs:
        assert low[i].dtype == torch.float32  # heads decode in float32
        assert _rel(low[i], ref[i]) < 0.05, i


def test_bf16_fused_heads_stay_float32(kitchen_sink):
    net, x = kitchen_sink
    fused = copy.deepcopy(net).fuse()
    with torch.no_grad():
        ref = _outputs(fused, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = _outputs(fused, x)
    for r, lo in zip(ref, low):
        assert lo.dtype == torch.float32 and _rel(lo, r) < 0.05


def test_bf16_weights_without_autocast(tiny):
    net, x = tiny
    low_net = copy.deepcopy(net).fuse().to(torch.bfloat16)
    with torch.no_grad():
        ref = _outputs(net, x)
        low = _outputs(low_net, x.to(torch.bfloat16))
    for r, lo in zip(ref, low):
        assert lo.dtype == torch.float32 and _rel(lo, r) < 0.05


def test_maxpool_padding_is_minus_infinity_in_bf16():
    pool = MaxPool(3, (1, 1), 2)
    x = -torch.rand(1, 2, 5, 5) - 1  # all negative: zero padding would win the max at the borders
    ref = pool(x)
    got = pool(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.to(torch.bfloat16).float())
    assert (got < 0).all()


def test_route_mixes_dtypes_under_autocast():
    route = Route(1, 0, 2)
    a, b = torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = route(a, b)
    assert out.shape == (1, 5, 4, 4)
    torch.testing.assert_close(out.float(), torch.cat([a, b.float()], 1), atol=1e-2, rtol=1e-2)


def test_channels_last(kitchen_sink):
    net, x = kitchen_sink
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = _outputs(net, x)
        got = _outputs(cl, x.contiguous(memory_format=torch.channels_last))
        fused = _outputs(copy.deepcopy(cl).fuse(), x.contiguous(memory_format=torch.channels_last))
    for r, g, f in zip(ref, got, fused):
        assert _rel(g, r) < 1e-4 and _rel(f, r) < 1e-4


@pytest.mark.parametrize("fuse", [False, True])
def test_compile_fullgraph_without_graph_breaks(tiny, fuse):
    torch._dynamo.reset()
    net, x = tiny
    net = copy.deepcopy(net).fuse() if fuse else net
    # fullgraph=True fails on any graph break; the eager backend keeps the test fast (dynamo's
    # tracing, where graph breaks happen, is the same for every backend).
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    with torch.no_grad():
        ref = _outputs(net, x)
        got = _outputs(compiled, x)
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r)
    explanation = torch._dynamo.explain(net)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates jit; it still works
def test_jit_trace(tiny):
    net, x = tiny
    fused = copy.deepcopy(net).fuse()
    with torch.no_grad():
        traced = torch.jit.trace(fused, x, strict=False)
        other = torch.rand(2, 3, 64, 64)
        for r, g in zip(_outputs(fused, other), _outputs(traced, other)):
            torch.testing.assert_close(g, r)
