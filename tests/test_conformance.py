"""Forward parity with the real Darknet, layer by layer, and byte-identical .weights round trips.

Metric (per stored layer): ``max|netspec - darknet| <= 1e-4 * max(1, max|darknet|)``, in eval mode with
Darknet's own cfg, weights and input.  Each net prints its worst layer and that relative error.
"""

from __future__ import annotations

import json
import lzma

import numpy as np
import pytest
import torch

import netspec
from netspec.weights import darknet_weights_bytes, load_darknet_weights

from .conftest import CONFORMANCE

RTOL = 1e-4


def _vectors() -> list[str]:
    index = CONFORMANCE / "index.json"
    if not index.exists():
        return ["<no ../shared>"]
    return [v["name"] for v in json.loads(index.read_text())["vectors"] if v.get("status") == "ok"]


def load_vector(name: str, tmp_path):
    """(net with Darknet's weights loaded, manifest, raw .weights bytes, input tensor)."""
    folder = CONFORMANCE / name
    if not folder.exists():
        pytest.skip("../shared/conformance is not present")
    manifest = json.loads((folder / "manifest.json").read_text())
    cfg = folder / "model.cfg"
    try:
        net = netspec.build(cfg, manifest["width"], manifest["height"])
    except netspec.CfgError:  # official cfgs with Darknet-tolerated duplicate [net] keys
        net = netspec.build(cfg, manifest["width"], manifest["height"], strict=False)
    raw = lzma.open(folder / "weights.weights.xz").read()
    path = tmp_path / "model.weights"
    path.write_bytes(raw)
    report = load_darknet_weights(net, path)
    assert report.complete and report.floats_read == manifest["weights"]["body_floats"]
    shape = (1, manifest["channels"], manifest["height"], manifest["width"])
    x = torch.from_numpy(np.fromfile(folder / "input.f32", dtype="<f4").reshape(shape))
    return net.eval(), manifest, raw, x


@pytest.mark.parametrize("name", _vectors())
def test_layer_outputs_match_darknet(name, tmp_path):
    net, manifest, _, x = load_vector(name, tmp_path)
    with torch.no_grad():
        outs = net.forward_all(x)
    folder = CONFORMANCE / name
    worst = (0.0, None)
    failures = []
    for layer in manifest["layers"]:
        if not layer.get("file"):
            continue
        i = layer["index"]
        ref = np.fromfile(folder / layer["file"], dtype="<f4").astype(np.float64)
        got = outs[i].detach().double().numpy().ravel()
        assert got.size == ref.size, f"layer {i} [{layer['type']}]: {got.size} values, Darknet has {ref.size}"
        scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        err = float(np.abs(got - ref).max()) if ref.size else 0.0
        if err / scale > worst[0]:
            worst = (err / scale, f"layer {i} [{layer['type']}]")
        if not err <= RTOL * scale:
            failures.append(f"layer {i} [{layer['type']}]: max abs error {err:.3g} > {RTOL * scale:.3g}")
    print(f"{name}: worst {worst[1]} relative error {worst[0]:.2e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", _vectors())
def test_weights_round_trip_is_byte_identical(name, tmp_path):
    net, _, raw, _ = load_vector(name, tmp_path)
    assert darknet_weights_bytes(net) == raw
    out = tmp_path / "again.weights"
    netspec.save_darknet_weights(net, out)
    assert out.read_bytes() == raw
