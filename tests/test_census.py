"""Every official Darknet cfg: shapes, parameter/.weights float counts and BFLOPs equal Darknet's census,
or a clear error where Darknet itself fails (or netspec's strict mode rejects a Darknet-tolerated mistake)."""

from __future__ import annotations

import json

import pytest
import torch

import netspec
from netspec import CfgError

from .conftest import CONFORMANCE, DARKNET_CFGS

RECURRENT = {"rnn", "gru", "lstm", "crnn", "conv_lstm"}


def _census():
    if not (CONFORMANCE / "census.json").exists():
        return {}
    return json.loads((CONFORMANCE / "census.json").read_text())["cfgs"]


CENSUS = _census()
NAMES = sorted(CENSUS) or ["<no ../shared>"]

# Problems strict mode reports in official cfgs that Darknet tolerates (it ignores or guesses):
STRICT_ONLY = ("duplicate key", "unknown key", "is not an anchor index", "must be a number")


def _build_spec(name: str):
    path = DARKNET_CFGS / name
    try:
        return netspec.build_spec(path), None
    except CfgError as exc:
        return None, exc


@pytest.mark.parametrize("name", NAMES)
def test_official_cfg_matches_darknet_census(name):
    if name not in CENSUS:
        pytest.skip("../shared/conformance/census.json is not present")
    entry = CENSUS[name]
    spec, error = _build_spec(name)
    if not entry["parse_ok"]:
        assert error is not None, f"Darknet fails on {name} ({entry['parse_result']}) but netspec accepted it"
        assert error.line is not None and error.problems
        return
    if error is not None:
        text = str(error)
        sections = {b.section for b in netspec.parse(DARKNET_CFGS / name).blocks}
        if sections & RECURRENT:
            assert "not supported yet" in text
            return
        errors = [p for p in error.problems if p.severity == "error"]
        assert all(any(k in p.message for k in STRICT_ONLY) for p in errors), text
        spec = netspec.build_spec(DARKNET_CFGS / name, strict=False)
    layers = entry["layers"]
    assert len(spec.layers) == entry["n_layers"]
    for layer, ref in zip(spec.layers, layers):
        assert layer.type == ref["type"], layer.index
        declared = layer.info.darknet_out or layer.out_shape
        assert list(declared) == ref["out"], (layer.index, layer.type, declared, ref["out"])
        assert layer.info.bflops == pytest.approx(ref["bflops"], rel=1e-6, abs=1e-9), (layer.index, layer.type)
    assert spec.total_weights_floats == entry["weights_body_floats"]
    assert spec.total_bflops == pytest.approx(entry["total_bflops"], rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_official_cfg_forward_shapes(name):
    """A forward pass at a small input size produces exactly the inferred shapes."""
    if name not in CENSUS:
        pytest.skip("../shared/conformance/census.json is not present")
    if not CENSUS[name]["parse_ok"]:
        pytest.skip("Darknet itself cannot build this cfg")
    path = DARKNET_CFGS / name
    sections = {b.section for b in netspec.parse(path).blocks}
    if sections & RECURRENT:
        pytest.skip("recurrent sections are not supported yet")
    size = 128
    crops = [b for b in netspec.parse(path).blocks if b.section == "crop"]
    if crops:  # classifiers with a [crop] need an input at least as big as the crop
        size = max(size, max(int(b.get("crop_width").raw) for b in crops))
    try:
        net = netspec.build(path, size, size)
    except CfgError:
        net = netspec.build(path, size, size, strict=False)
    net.eval()
    c, h, w = net.input_shape
    with torch.no_grad():
        outs = net.forward_all(torch.rand(1, c, h, w))
    for spec, out in zip(net.spec.layers, outs):
        assert tuple(out.shape[1:]) == tuple(spec.section.tensor_shape(spec)), (spec.index, spec.type)
