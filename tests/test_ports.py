"""Importing the state_dicts of PyTorch Darknet ports (erik, ultralytics, tianxiaomo).

The port state_dicts are constructed here the way each port names its modules (read from their public
code), independently of netspec.ports: per cfg block, a conv and optionally a BN under the port's names.
"""

from __future__ import annotations

import pytest
import torch

import netspec
from netspec.cli import main
from netspec.errors import CheckpointError
from netspec.ports import load_port

from .conftest import CFGS, DARKNET_CFGS, need_shared


def cfg_path(name: str):
    ours = CFGS / name
    return ours if ours.exists() else need_shared(DARKNET_CFGS / name)


def conv_blocks(cfg) -> list[tuple[int, int, int, int, bool]]:
    """(layer index, filters, input channels, size, batch_normalize) for each [convolutional] of a cfg."""
    spec = netspec.build_spec(cfg, 96, 96)
    return [(s.index, s.p.filters, s.in_shape[0], s.p.size, bool(s.p.batch_normalize))
            for s in spec.layers if s.type == "convolutional"]


def port_state_dict(cfg, port: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state_dict in the port's naming, with the tensor shapes its model would have."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for number, (i, filters, channels, size, bn) in enumerate(conv_blocks(cfg), 1):
        conv, norm = {"erik": (f"module_list.{i}.conv_{i}", f"module_list.{i}.batch_norm_{i}"),
                      "ultralytics": (f"module_list.{i}.Conv2d", f"module_list.{i}.BatchNorm2d"),
                      "tianxiaomo": (f"models.{i}.conv{number}", f"models.{i}.bn{number}")}[port]
        state[f"{conv}.weight"] = torch.randn(filters, channels, size, size, generator=g) * 0.1
        if bn:
            state[f"{norm}.weight"] = torch.rand(filters, generator=g) + 0.5
            state[f"{norm}.bias"] = torch.randn(filters, generator=g) * 0.1
            state[f"{norm}.running_mean"] = torch.randn(filters, generator=g) * 0.1
            state[f"{norm}.running_var"] = torch.rand(filters, generator=g) + 0.5
            state[f"{norm}.num_batches_tracked"] = torch.tensor(7)
        else:
            state[f"{conv}.bias"] = torch.randn(filters, generator=g) * 0.1
    return state


NETS = ["yolov3-tiny.cfg", "yolov4-tiny.cfg"]
PORTS = ["erik", "ultralytics", "tianxiaomo"]


@pytest.mark.parametrize("port", PORTS)
@pytest.mark.parametrize("name", NETS)
def test_port_state_dict_loads_every_tensor(name, port, tmp_path):
    cfg = cfg_path(name)
    state = port_state_dict(cfg, port)
    if port == "erik":  # erik's [yolo] modules register their anchors as buffers
        spec = netspec.build_spec(cfg, 96, 96)
        for s in spec.layers:
            if s.type == "yolo":
                pairs = [[s.p.anchors[2 * m], s.p.anchors[2 * m + 1]] for m in s.p.mask]
                state[f"module_list.{s.index}.yolo_{s.index}.anchors"] = torch.tensor(pairs)
    if port == "ultralytics":  # a training checkpoint: the state_dict under "model"
        torch.save({"epoch": 3, "best_fitness": 0.5, "model": state, "optimizer": None}, tmp_path / "last.pt")
    else:
        torch.save(state, tmp_path / "last.pt")
    net = netspec.build(cfg, 96, 96).eval()
    report = load_port(net, tmp_path / "last.pt", port)
    assert not report.problems and not report.warnings
    assert report.loaded == len(net.state_dict())
    ours = net.state_dict()
    for number, (i, _, _, _, bn) in enumerate(conv_blocks(cfg), 1):
        conv, norm = {"erik": (f"module_list.{i}.conv_{i}", f"module_list.{i}.batch_norm_{i}"),
                      "ultralytics": (f"module_list.{i}.Conv2d", f"module_list.{i}.BatchNorm2d"),
                      "tianxiaomo": (f"models.{i}.conv{number}", f"models.{i}.bn{number}")}[port]
        assert torch.equal(ours[f"layers.{i}.conv.weight"], state[f"{conv}.weight"])
        if bn:
            assert torch.equal(ours[f"layers.{i}.bn.running_var"], state[f"{norm}.running_var"])
            assert torch.equal(ours[f"layers.{i}.bn.bias"], state[f"{norm}.bias"])
        else:
            assert torch.equal(ours[f"layers.{i}.conv.bias"], state[f"{conv}.bias"])


def test_known_names_of_yolov3_tiny():
    """Spot checks written out by hand: the head conv is layer 15, the 10th [convolutional]."""
    cfg = cfg_path("yolov3-tiny.cfg")
    net = netspec.build(cfg, 96, 96)
    head = net.state_dict()["layers.15.conv.weight"]
    for port, key in [("erik", "module_list.15.conv_15.weight"), ("ultralytics", "module_list.15.Conv2d.weight"),
                      ("tianxiaomo", "models.15.conv10.weight")]:
        state = port_state_dict(cfg, port)
        assert key in state and state[key].shape == head.shape
        load_port(net, state, port)
        assert torch.equal(net.state_dict()["layers.15.conv.weight"], state[key])
    assert "module_list.0.batch_norm_0.running_mean" in port_state_dict(cfg, "erik")
    assert "models.0.bn1.running_mean" in port_state_dict(cfg, "tianxiaomo")


def test_loaded_port_computes_like_the_port_model():
    """A hand-built conv+BN+leaky in the port's layout gives netspec's layer 0 output."""
    cfg = cfg_path("yolov4-tiny.cfg")
    state = port_state_dict(cfg, "ultralytics", seed=5)
    net = netspec.build(cfg, 96, 96).eval()
    load_port(net, state, "ultralytics")
    x = torch.rand(1, 3, 96, 96)
    conv = torch.nn.Conv2d(3, 32, 3, 2, 1, bias=False)
    bn = torch.nn.BatchNorm2d(32)
    conv.load_state_dict({"weight": state["module_list.0.Conv2d.weight"]})
    bn.load_state_dict({k.split(".")[-1]: v for k, v in state.items() if k.startswith("module_list.0.BatchNorm2d.")})
    port_layer = torch.nn.Sequential(conv, bn, torch.nn.LeakyReLU(0.1)).eval()
    with torch.no_grad():
        assert torch.allclose(net.forward_all(x)[0], port_layer(x), atol=1e-6)


def test_wrong_checkpoint_lists_every_problem_with_its_block(tmp_path):
    cfg = cfg_path("yolov4-tiny.cfg")
    state = port_state_dict(cfg, "erik")
    del state["module_list.2.batch_norm_2.running_var"]  # missing
    state["module_list.4.conv_4.weight"] = torch.zeros(1, 1, 3, 3)  # mismatched
    state["module_list.3.conv_3.bias"] = torch.zeros(64)  # unexpected
    torch.save(state, tmp_path / "bad.pt")
    net = netspec.build(cfg, 96, 96)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_port(net, tmp_path / "bad.pt", "erik")
    message = str(info.value)
    spec = net.spec.layers
    shapes = {k: tuple(v.shape) for k, v in before.items()}
    assert f"module_list.2.batch_norm_2.running_var {shapes['layers.2.bn.running_var']}: missing, needed for " \
           f"[convolutional] #2 (line {spec[2].block.line})" in message
    assert f"module_list.4.conv_4.weight: shape (1, 1, 3, 3) in the file, [convolutional] #4 " \
           f"(line {spec[4].block.line}) needs {shapes['layers.4.conv.weight']}" in message
    assert f"module_list.3.conv_3.bias (64,): unexpected ([route] #3 (line {spec[3].block.line}))" in message
    assert len(message.strip().splitlines()) == 4  # the header line and exactly these three
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing loaded
    report = load_port(net, tmp_path / "bad.pt", "erik", strict=False)
    assert len(report.problems) == 3 and report.loaded == len(before) - 2


def test_checkpoint_of_another_net_is_rejected(tmp_path):
    state = port_state_dict(cfg_path("yolov3-tiny.cfg"), "tianxiaomo")
    net = netspec.build(cfg_path("yolov4-tiny.cfg"), 96, 96)
    with pytest.raises(CheckpointError, match=r"models\.\d+\.conv\d+\.weight: shape .* in the file, "
                                              r"\[convolutional\] #\d+ \(line \d+\) needs"):
        load_port(net, state, "tianxiaomo")


def test_unsafe_pickle_is_refused_with_the_resave_hint(tmp_path):
    # A whole pickled module (as some training scripts save) needs unpickling arbitrary classes.
    torch.save({"model": torch.nn.Conv2d(3, 16, 3)}, tmp_path / "full.pt")
    net = netspec.build(cfg_path("yolov3-tiny.cfg"), 96, 96)
    with pytest.raises(CheckpointError, match=r"weights_only=True.*\n.*re-save only its state_dict"):
        load_port(net, tmp_path / "full.pt", "erik")


def test_data_parallel_prefix_and_anchor_warning():
    cfg = cfg_path("yolov3-tiny.cfg")
    state = {f"module.{k}": v for k, v in port_state_dict(cfg, "erik").items()}
    state["module.module_list.16.yolo_16.anchors"] = torch.ones(3, 2)
    report = load_port(netspec.build(cfg, 96, 96), state, "erik")
    assert not report.problems and report.ignored == ["module_list.16.yolo_16.anchors"]
    assert "differ from the cfg's" in report.warnings[0] and "[yolo] #16" in report.warnings[0]


@pytest.mark.parametrize("port", PORTS)
def test_cli_convert_from_port(port, tmp_path, capsys):
    cfg = cfg_path("yolov4-tiny.cfg")
    state = port_state_dict(cfg, port, seed=9)
    torch.save(state, tmp_path / "port.pt")
    out = tmp_path / "out.weights"
    assert main(["convert", str(tmp_path / "port.pt"), "--cfg", str(cfg), "--from", port, "-o", str(out)]) == 0
    net = netspec.build(cfg)
    netspec.load_darknet_weights(net, out)
    first = next(k for k in state if k.endswith(".weight") and state[k].dim() == 4)
    assert torch.equal(net.state_dict()["layers.0.conv.weight"], state[first])
    del state[first]
    torch.save(state, tmp_path / "broken.pt")
    assert main(["convert", str(tmp_path / "broken.pt"), "--cfg", str(cfg), "--from", port,
                 "-o", str(tmp_path / "x.weights")]) == 1
    assert "[convolutional] #0 (line" in capsys.readouterr().err
    assert not (tmp_path / "x.weights").exists()


def test_unknown_port_is_a_netspec_error():
    net = netspec.build(cfg_path("yolov3-tiny.cfg"), 96, 96)
    with pytest.raises(netspec.NetspecError, match="unknown port 'eric': choose one of erik"):
        load_port(net, {"a": torch.zeros(1)}, "eric")
