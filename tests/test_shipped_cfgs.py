"""The cfgs netspec ships in cfgs/: they build cleanly, say what they are, and the detectors are layer for
layer the networks of Darknet's official cfgs of the same name (so Darknet's pretrained .weights load)."""

from __future__ import annotations

import json
import re

import pytest
import torch

import netspec

from .conftest import CFGS, CONFORMANCE, DARKNET_CFGS, need_shared

DETECTORS = ["yolov3.cfg", "yolov3-tiny.cfg", "yolov4-tiny.cfg"]


def _census_entry(name: str) -> dict:
    need_shared(CONFORMANCE / "census.json")
    return json.loads((CONFORMANCE / "census.json").read_text())["cfgs"][name]


def _header(path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


@pytest.mark.parametrize("name", DETECTORS)
def test_builds_strictly_without_warnings(name):
    spec = netspec.build_spec(CFGS / name)
    assert spec.warnings == []
    assert spec.input_shape == (3, 416, 416)
    assert [s.type for s in spec.layers].count("yolo") >= 2


@pytest.mark.parametrize("name", DETECTORS)
def test_header_says_what_it_is_and_its_numbers_are_right(name):
    """The comment header names the model, the input size and the source, and its totals are the built ones."""
    header = _header(CFGS / name)
    assert header.startswith(name), header
    assert "416x416" in header and "Architecture:" in header and "80 COCO classes" in header
    m = re.search(r"([\d,]+) \.weights floats, ([\d.]+) BFLOPs", header)
    layers = re.search(r"(\d+) layers", header)
    assert m and layers, header
    spec = netspec.build_spec(CFGS / name)
    assert len(spec.layers) == int(layers.group(1))
    assert spec.total_weights_floats == int(m.group(1).replace(",", ""))
    assert f"{spec.total_bflops:.3f}" == m.group(2)


@pytest.mark.parametrize("name", DETECTORS)
def test_matches_darknet_census(name):
    entry = _census_entry(name)
    spec = netspec.build_spec(CFGS / name)
    assert (spec.input_shape[2], spec.input_shape[1]) == (entry["width"], entry["height"])
    assert len(spec.layers) == entry["n_layers"]
    for layer, ref in zip(spec.layers, entry["layers"]):
        assert layer.type == ref["type"], layer.index
        assert list(layer.out_shape) == ref["out"], (layer.index, layer.type)
        assert layer.info.bflops == pytest.approx(ref["bflops"], rel=1e-6, abs=1e-9), layer.index
        # census key -> netspec attribute (the effective strides are the derived sx/sy)
        for key, attr in (("filters", "filters"), ("size", "size"), ("stride_x", "sx"), ("stride_y", "sy"),
                          ("groups", "groups"), ("batch_normalize", "batch_normalize"), ("activation", "activation"),
                          ("classes", "classes"), ("scale_x_y", "scale_x_y"), ("new_coords", "new_coords"),
                          ("group_id", "group_id")):
            if key in ref and hasattr(layer.p, attr) and layer.type != "maxpool":
                expected = ref[key] if isinstance(ref[key], str) else pytest.approx(ref[key], rel=1e-6)
                assert getattr(layer.p, attr) == expected, (layer.index, key)
        for key in ("layers", "from"):
            if key in ref:
                assert list(getattr(layer.p, key)) == ref[key], (layer.index, key)
    assert spec.total_weights_floats == entry["weights_body_floats"]
    assert spec.total_bflops == pytest.approx(entry["total_bflops"], rel=1e-6)


@pytest.mark.parametrize("name", DETECTORS)
def test_every_layer_key_equals_the_official_cfg(name):
    """Stronger than the census: every typed key of every layer (anchors, masks, losses...) is Darknet's."""
    official = netspec.build_spec(need_shared(DARKNET_CFGS) / name, strict=False)
    ours = netspec.build_spec(CFGS / name)
    assert len(ours.layers) == len(official.layers)
    for mine, theirs in zip(ours.layers, official.layers):
        assert mine.type == theirs.type
        assert mine.p.as_dict() == theirs.p.as_dict(), mine.index
    for key in ("width", "height", "channels", "policy", "steps", "scales", "learning_rate", "max_batches"):
        assert getattr(ours.net, key) == getattr(official.net, key), key


@pytest.mark.parametrize("name", DETECTORS)
def test_forward_gives_the_heads_at_a_small_size(name):
    net = netspec.build(CFGS / name, width=96, height=96).eval()
    with torch.no_grad():
        heads = net(torch.rand(1, 3, 96, 96))
    yolo = [s for s in net.spec.layers if s.type == "yolo"]
    assert [tuple(h.shape) for h in heads] == [(1, *s.out_shape) for s in yolo]
    assert [s.out_shape[1] for s in yolo][:2] == [3, 6]  # strides 32 and 16 of 96


def test_other_input_sizes_scale_the_grids():
    spec = netspec.build_spec(CFGS / "yolov3.cfg", width=608, height=320)
    grids = [s.out_shape[1:] for s in spec.layers if s.type == "yolo"]
    assert grids == [(10, 19), (20, 38), (40, 76)]
