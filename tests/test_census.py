"""Every official Darknet cfg: shapes, parameter/.weights float counts and BFLOPs equal Darknet's census,
or a clear error where Darknet itself fails (or netspec's strict mode rejects a Darknet-tolerated mistake);
the flat recurrent nets Darknet's parser dies on for an unrelated division by zero build, with Darknet's sizes."""

from __future__ import annotations

import json
import re

import pytest
import torch

import netspec
from netspec import CfgError

from .conftest import CONFORMANCE, DARKNET_CFGS

RECURRENT = {"rnn", "gru", "lstm", "crnn", "conv_lstm", "history"}


def _census():
    if not (CONFORMANCE / "census.json").exists():
        return {}
    return json.loads((CONFORMANCE / "census.json").read_text())["cfgs"]


CENSUS = _census()
NAMES = sorted(CENSUS) or ["<no ../shared>"]

# Problems strict mode reports in official cfgs that Darknet tolerates (it ignores or guesses):
STRICT_ONLY = ("duplicate key", "unknown key", "is not an anchor index", "must be a number")


def _dense(n_in: int, n: int, bn: bool = True) -> int:
    """.weights floats of one connected (sub-)layer: biases, weights, then scales/mean/variance with BN."""
    return n + n_in * n + (3 * n if bn else 0)


def _conv1x1(n_in: int, n: int) -> int:
    """.weights floats of one 1x1 convolution with BN: biases, scales/mean/variance, weights."""
    return 4 * n + n_in * n


_RNN = 3 * _dense(1024, 1024)
# Darknet dies of SIGFPE on these cfgs for a reason that has nothing to do with them: after the last layer
# parse_network_cfg_custom divides by the number of layers more than 1 pixel wide and tall (avg_outputs /
# avg_counter), and nets made only of flat layers have none.  netspec builds them; their shapes, .weights
# floats and BFLOPs follow Darknet's make_*_layer arithmetic (each total written out from the cfg, layer by
# layer; the 1024-wide recurrent layers all have batch_normalize=1, the final [connected] has none).
FLAT_RECURRENT = {
    "rnn.cfg": {"out": [[1024, 1, 1]] * 3 + [[256, 1, 1], [0, 0, 0], [0, 0, 0]], "bflops": 0.0,
                "floats": _dense(256, 1024) + 2 * _dense(1024, 1024) + 2 * _RNN + _dense(1024, 256, False)},
    "rnn.train.cfg": {"out": [[1024, 1, 1]] * 3 + [[256, 1, 1], [0, 0, 0], [0, 0, 0]], "bflops": 0.0,
                      "floats": _dense(256, 1024) + 2 * _dense(1024, 1024) + 2 * _RNN + _dense(1024, 256, False)},
    "gru.cfg": {"out": [[0, 0, 0]] * 3 + [[256, 1, 1], [0, 0, 0], [0, 0, 0]], "bflops": 0.0,
                "floats": 3 * _dense(256, 1024) + 3 * _dense(1024, 1024) + 2 * 6 * _dense(1024, 1024)
                + _dense(1024, 256, False)},
    "lstm.train.cfg": {"out": [[1024, 1, 1]] * 3 + [[256, 1, 1], [0, 0, 0], [0, 0, 0]], "bflops": 0.0,
                       "floats": 4 * _dense(256, 1024) + 4 * _dense(1024, 1024) + 2 * 8 * _dense(1024, 1024)
                       + _dense(1024, 256, False)},
    "crnn.train.cfg": {"out": [[256, 1, 1]] + [[1024, 1, 1]] * 3 + [[256, 1, 1], [0, 0, 0], [0, 0, 0]],
                       # three crnn layers of 1x1 convs: input (256 or 1024 -> 1024), self and output (1024 -> 1024)
                       "bflops": 2 * (256 * 1024 + 8 * 1024 * 1024) / 1e9,
                       "floats": _dense(256, 256, False) + _conv1x1(256, 1024) + 8 * _conv1x1(1024, 1024)
                       + _dense(1024, 256, False)},
}


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
    if name in FLAT_RECURRENT:
        assert entry["parse_result"] == "killed by signal 8 (SIGFPE)" and error is None, error
        expected = FLAT_RECURRENT[name]
        assert [list(s.info.darknet_out or s.out_shape) for s in spec.layers] == expected["out"]
        assert spec.total_weights_floats == expected["floats"]
        assert spec.total_bflops == pytest.approx(expected["bflops"], rel=1e-9)
        return
    if not entry["parse_ok"]:
        assert error is not None, f"Darknet fails on {name} ({entry['parse_result']}) but netspec accepted it"
        assert error.line is not None and error.problems
        return
    if error is not None:
        text = str(error)
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
    if not CENSUS[name]["parse_ok"] and name not in FLAT_RECURRENT:
        pytest.skip("Darknet itself cannot build this cfg")
    path = DARKNET_CFGS / name
    source = path
    steps = 1
    if {b.section for b in netspec.parse(path).blocks} & RECURRENT:
        # the batch is time_steps groups of samples; 2 steps exercise the recurrence as well as 576 do
        steps = min(2, netspec.build_spec(path).net.time_steps)
        source = re.sub(r"^time_steps\s*=.*$", f"time_steps={steps}", path.read_text(), flags=re.M)
    size = 128
    crops = [b for b in netspec.parse(path).blocks if b.section == "crop"]
    if crops:  # classifiers with a [crop] need an input at least as big as the crop
        size = max(size, max(int(b.get("crop_width").raw) for b in crops))
    try:
        net = netspec.build(source, size, size)
    except CfgError:
        net = netspec.build(source, size, size, strict=False)
    net.eval()
    c, h, w = net.input_shape
    with torch.no_grad():
        outs = net.forward_all(torch.rand(steps, c, h, w))
    for spec, out in zip(net.spec.layers, outs):
        assert tuple(out.shape[1:]) == tuple(spec.section.tensor_shape(spec)), (spec.index, spec.type)
