"""netspec.params_io: one loader for every parameter file, the Darknet header through netspec files, --upto,
and the explanation of a .weights file written for other classes."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

import netspec
from netspec.checkpoint import export_safetensors, load_checkpoint, save_checkpoint
from netspec.cli import main
from netspec.errors import WeightsError
from netspec.params_io import load_parameters, save_parameters
from netspec.weights import load_darknet_weights, save_darknet_weights

# two yolo heads, the first one in the middle of the file (a batch-normalized conv reads after it)
TWO_HEADS = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters={filters}
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,5, 8,9, 12,14, 16,20, 24,25, 30,30
classes={classes}
num=6

[route]
layers=-3

[convolutional]
batch_normalize=1
filters=8
size=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1,0

[convolutional]
filters={filters}
size=1
activation=linear

[yolo]
mask=3,4,5
anchors=4,5, 8,9, 12,14, 16,20, 24,25, 30,30
classes={classes}
num=6
"""


def two_heads(classes: int) -> str:
    return TWO_HEADS.format(classes=classes, filters=3 * (classes + 5))


@pytest.fixture()
def weights_with_seen(tmp_path) -> Path:
    """An 80-class .weights file whose header is not netspec's default (seen = 123456789)."""
    net = netspec.build(two_heads(80), seed=3)
    path = tmp_path / "coco.weights"
    save_darknet_weights(net, path)
    data = bytearray(path.read_bytes())
    data[12:20] = (123456789).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_library_round_trip_is_byte_identical(weights_with_seen, tmp_path, suffix):
    """.weights -> export_safetensors / save_checkpoint -> .weights through the library, no CLI."""
    net = netspec.build(two_heads(80))
    load_darknet_weights(net, weights_with_seen)
    path = tmp_path / f"net{suffix}"
    if suffix == ".safetensors":
        export_safetensors(path, net)
    else:
        save_checkpoint(path, net)
    rebuilt = load_checkpoint(path).network
    assert rebuilt.darknet_header.seen == 123456789
    save_darknet_weights(rebuilt, tmp_path / "back.weights")
    assert (tmp_path / "back.weights").read_bytes() == weights_with_seen.read_bytes()


def test_save_parameters_and_load_parameters_round_trip(weights_with_seen, tmp_path):
    net = netspec.build(two_heads(80))
    load_parameters(net, weights_with_seen)
    save_parameters(net, tmp_path / "a.ckpt")
    other = netspec.build(two_heads(80), seed=9)
    report = load_parameters(other, tmp_path / "a.ckpt")
    assert report.complete and report.last_layer == len(other.layers) - 1
    save_parameters(other, tmp_path / "b.weights")
    assert (tmp_path / "b.weights").read_bytes() == weights_with_seen.read_bytes()


def test_checkpoint_of_the_old_convert_keeps_its_header(weights_with_seen, tmp_path):
    """netspec convert used to keep the header in the checkpoint's state; such files still carry it."""
    net = netspec.build(two_heads(80))
    load_darknet_weights(net, weights_with_seen)
    header = net.darknet_header
    del net.darknet_header
    save_checkpoint(tmp_path / "old.ckpt", net, rng=False, darknet_header=header.as_dict())
    rebuilt = load_checkpoint(tmp_path / "old.ckpt").network
    save_darknet_weights(rebuilt, tmp_path / "back.weights")
    assert (tmp_path / "back.weights").read_bytes() == weights_with_seen.read_bytes()


def test_commands_import_no_private_names():
    commands = Path(netspec.__file__).parent / "commands"
    found = []
    for path in commands.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                    and isinstance(node.value, ast.Name) and node.value.id != "args":
                found.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not found


# ------------------------------------------------------------------------------------ other classes, --upto

def test_weights_for_other_classes_name_the_first_layer_that_disagrees(weights_with_seen):
    net = netspec.build(two_heads(3))
    with pytest.raises(WeightsError) as info:
        load_darknet_weights(net, weights_with_seen)
    message = str(info.value)
    assert "bytes left after the last record" in message
    assert "the first layer that disagrees is layer 2 [convolutional] (line 22)" in message
    assert "--upto 2" in message


def test_weights_for_fewer_classes_name_the_first_layer_that_disagrees(tmp_path):
    small = netspec.build(two_heads(20))
    save_darknet_weights(small, tmp_path / "20.weights")
    with pytest.raises(WeightsError, match=r"ends inside the record .*first layer that disagrees is layer 2 "):
        load_darknet_weights(netspec.build(two_heads(30)), tmp_path / "20.weights")


def test_a_truncated_or_padded_file_is_not_blamed_on_a_layer(weights_with_seen, tmp_path):
    data = weights_with_seen.read_bytes()
    (tmp_path / "cut.weights").write_bytes(data[:-40])
    (tmp_path / "padded.weights").write_bytes(data + bytes(12))
    for name in ("cut.weights", "padded.weights"):
        with pytest.raises(WeightsError) as info:
            load_darknet_weights(netspec.build(two_heads(80)), tmp_path / name)
        assert "disagrees" not in str(info.value)


def test_upto_loads_the_layers_before_and_says_so(weights_with_seen):
    source = netspec.build(two_heads(80))
    load_darknet_weights(source, weights_with_seen)
    net = netspec.build(two_heads(3), seed=5)
    untouched = net.layers[5].conv.weight.clone()
    report = load_parameters(net, weights_with_seen, upto=2)
    assert "all layers" not in str(report) and "layers 0..1 (upto=2" in str(report)
    assert torch.equal(net.layers[1].conv.weight, source.layers[1].conv.weight)
    assert torch.equal(net.layers[5].conv.weight, untouched)


def test_upto_on_a_checkpoint(tmp_path):
    source = netspec.build(two_heads(80), seed=1)
    export_safetensors(tmp_path / "a.safetensors", source)
    net = netspec.build(two_heads(3), seed=2)
    report = load_parameters(net, tmp_path / "a.safetensors", upto=2)
    assert "upto=2" in str(report) and report.last_layer == 1
    assert torch.equal(net.layers[0].conv.weight, source.layers[0].conv.weight)


def test_cli_upto_on_every_command_with_weights(weights_with_seen, tmp_path, capsys):
    cfg = tmp_path / "three.cfg"
    cfg.write_text(two_heads(3))
    assert main(["build", str(cfg), "--weights", str(weights_with_seen)]) == 1
    assert "--upto 2" in capsys.readouterr().err
    assert main(["build", str(cfg), "--weights", str(weights_with_seen), "--upto", "2"]) == 0
    err = capsys.readouterr().err
    assert "layers 0..1 (upto=2" in err and "all layers" not in err
    pytest.importorskip("onnx")
    assert main(["export", str(cfg), "--weights", str(weights_with_seen), "--upto", "2", "--onnx",
                 str(tmp_path / "a.onnx")]) == 0
    assert main(["build", str(cfg), "--upto", "2"]) == 2


def test_cli_convert_upto_writes_a_backbone(weights_with_seen, tmp_path):
    cfg = tmp_path / "coco.cfg"
    cfg.write_text(two_heads(80))
    out = tmp_path / "backbone.conv.2"
    assert main(["convert", str(weights_with_seen), "--cfg", str(cfg), "--upto", "2", "-o", str(out)]) == 0
    net = netspec.build(two_heads(80))
    save_darknet_weights(net, tmp_path / "full.weights")
    report = load_darknet_weights(net, out)
    assert not report.complete and report.last_layer == 1


@pytest.mark.parametrize("kind", ["ckpt", "safetensors", "run directory"])
def test_build_weights_accepts_netspec_files(weights_with_seen, tmp_path, capsys, kind):
    cfg = tmp_path / "coco.cfg"
    cfg.write_text(two_heads(80))
    net = netspec.build(cfg)
    load_darknet_weights(net, weights_with_seen)
    if kind == "ckpt":
        path = save_checkpoint(tmp_path / "a.ckpt", net)
    elif kind == "safetensors":
        path = tmp_path / "a.safetensors"
        export_safetensors(path, net)
    else:
        save_checkpoint(tmp_path / "run", net, step=5)
        path = tmp_path / "run"
    assert main(["build", str(cfg), "--weights", str(path)]) == 0, capsys.readouterr().err
    assert "unsupported header version" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------ other defects

def test_keep_last_zero_is_refused_before_anything_is_written(tmp_path):
    net = netspec.build(two_heads(3))
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(tmp_path / "run", net, step=1, keep_last=0)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_schedule_plot_without_matplotlib_is_a_usage_error(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "a.cfg"
    cfg.write_text("[net]\nwidth=4\nheight=4\nchannels=1\nmax_batches=10\n[convolutional]\nfilters=2\nsize=1\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert main(["schedule", str(cfg), "--plot", str(tmp_path / "lr.png")]) == 2
    captured = capsys.readouterr()
    assert "pip install 'netspec[plot]'" in captured.err and not captured.out
    assert not (tmp_path / "lr.png").exists()


def test_every_command_with_weights_takes_upto():
    import argparse
    import importlib

    from netspec.cli import COMMANDS

    with_weights = []
    for name in COMMANDS:
        parser = argparse.ArgumentParser()
        importlib.import_module(f"netspec.commands.{name.replace('-', '_')}").add_arguments(parser)
        options = {o for action in parser._actions for o in action.option_strings}
        if "--weights" in options:
            with_weights.append(name)
            assert "--upto" in options, name
    assert {"build", "export"} <= set(with_weights)
