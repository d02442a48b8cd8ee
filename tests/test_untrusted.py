"""Files named by a cfg or given on the command line are untrusted: they give errors or warnings, never hangs,
crashes or code execution."""

from __future__ import annotations

import torch

import netspec

REGION = ("[net]\nwidth=4\nheight=4\nchannels=1\n[conv]\nfilters={f}\nsize=1\n"
          "[region]\nclasses={c}\nnum=1\ntree={tree}\n")


def _region_output(tree: str, classes: int):
    net = netspec.build(REGION.format(f=classes + 5, c=classes, tree=tree)).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, 4, 4))[0]
    return net, out


def test_tree_file_that_is_a_device_is_not_read():
    net, out = _region_output("/dev/zero", 3)  # reading it would never end
    assert any("not found or unreadable" in w.message for w in net.warnings)
    assert out.shape[-1] == 3 + 5


def test_tree_file_with_the_wrong_number_of_classes_is_not_used(tmp_path):
    tree = tmp_path / "t.tree"
    tree.write_text("a -1\nb 0\nc 0\n")
    net, out = _region_output(str(tree), 3)
    assert not net.warnings and net.layers[1].tree == [(0, 1), (1, 2)]
    # found by probing: 5 classes with a 3-class tree gave an output 2 entries short of the inferred shape
    net, out = _region_output(str(tree), 5)
    assert any("lists 3 classes but the layer has 5" in w.message for w in net.warnings)
    assert tuple(out.shape[1:]) == net.spec.layers[1].section.tensor_shape(net.spec.layers[1])


# ------------------------------------------------------------------------------------------- .weights files

import json  # noqa: E402
import pickle  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from netspec.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from netspec.errors import CheckpointError, WeightsError  # noqa: E402
from netspec.safetensors_io import save_safetensors  # noqa: E402
from netspec.weights import load_darknet_weights, save_darknet_weights  # noqa: E402

from .test_fuzz_cfg import PROFILE  # noqa: E402

CFG = ("[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\n"
       "activation=leaky\n\n[convolutional]\nfilters=2\nsize=1\nactivation=linear\n")
HEADER = 20  # major 0, minor 2: a 64-bit 'seen'


@pytest.fixture(scope="module")
def weights_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("w") / "good.weights"
    save_darknet_weights(netspec.build(CFG), path)
    return path.read_bytes()


def _load_weights(tmp_path, data: bytes, **kwargs):
    path = tmp_path / "in.weights"
    path.write_bytes(data)
    return load_darknet_weights(netspec.build(CFG), path, **kwargs)


def _flip_float(data: bytes, index: int, value: float) -> bytes:
    at = HEADER + 4 * index
    return data[:at] + struct.pack("<f", value) + data[at + 4:]


@pytest.mark.parametrize("kind, damage, message", [
    ("zero-length", lambda d: b"", "too short for a Darknet .weights header"),
    ("truncated header", lambda d: d[:18], "ends inside its 20-byte header"),
    ("truncated body", lambda d: d[:-6], "ends inside the record of layer 1"),
    ("padded", lambda d: d + b"\0" * 12, "12 bytes left after the last record"),
    ("wrong version", lambda d: struct.pack("<iii", 9, 9, 9) + d[12:], "unsupported header version 9.9.9"),
    ("random bytes", lambda d: bytes(np.random.default_rng(0).integers(0, 256, len(d), dtype=np.uint8)),
     "unsupported header version"),
    ("bit flip to Inf", lambda d: _flip_float(d, 3, float("inf")), "NaN/Inf value"),
    ("bit flip to NaN", lambda d: _flip_float(d, 50, float("nan")), "NaN/Inf value"),
    ("bit flip in the version", lambda d: bytes([d[0] ^ 0x04]) + d[1:], "unsupported header version"),
])
def test_damaged_weights_give_a_specific_error(kind, damage, message, weights_bytes, tmp_path):
    with pytest.raises(WeightsError, match=message):
        _load_weights(tmp_path, damage(weights_bytes))


def test_nonfinite_weights_accepted_on_request(weights_bytes, tmp_path):
    report = _load_weights(tmp_path, _flip_float(weights_bytes, 3, float("nan")), allow_nonfinite=True)
    assert report.complete


def test_cli_allow_nonfinite(weights_bytes, tmp_path, capsys):
    from netspec.cli import main

    (tmp_path / "a.cfg").write_text(CFG)
    (tmp_path / "nan.weights").write_bytes(_flip_float(weights_bytes, 3, float("nan")))
    argv = ["build", str(tmp_path / "a.cfg"), "--weights", str(tmp_path / "nan.weights")]
    assert main(argv) == 1 and "--allow-nonfinite" in capsys.readouterr().err
    assert main(argv + ["--allow-nonfinite"]) == 0


@settings(PROFILE)
@given(st.data())
def test_any_weights_bytes_give_a_report_or_a_weights_error(weights_bytes, tmp_path_factory, data):
    raw = data.draw(st.one_of(
        st.binary(max_size=64),
        st.builds(lambda cut, flips: _damage(weights_bytes, cut, flips),
                  st.integers(0, len(weights_bytes) + 8), st.lists(st.integers(0, 8 * len(weights_bytes) - 1),
                                                                    max_size=4))))
    try:
        _load_weights(tmp_path_factory.mktemp("w"), raw)
    except WeightsError as exc:
        assert str(exc).startswith(str(tmp_path_factory.getbasetemp()))  # the message names the file


def _damage(data: bytes, cut: int, flips: list[int]) -> bytes:
    out = bytearray(data[:cut] + b"\0" * max(0, cut - len(data)))
    for bit in flips:
        if bit // 8 < len(out):
            out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# ------------------------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("c") / "good.ckpt"
    save_checkpoint(path, netspec.build(CFG), step=3)
    return path.read_bytes()


def _load_checkpoint(tmp_path, data: bytes):
    path = tmp_path / "in.ckpt"
    path.write_bytes(data)
    ckpt = load_checkpoint(path)
    ckpt.network  # noqa: B018 - builds the stored cfg and loads the tensors
    return ckpt


@pytest.mark.parametrize("kind, damage, message", [
    ("zero-length", lambda d: b"", "too short for a safetensors file"),
    ("truncated", lambda d: d[: len(d) // 2], "truncated|inconsistent offsets"),
    ("padded", lambda d: d + b"\0" * 16, "16 bytes after the last tensor"),
    ("random bytes", lambda d: bytes(np.random.default_rng(0).integers(0, 256, len(d), dtype=np.uint8)),
     "not a safetensors file"),
    ("bit flip in the data", lambda d: d[:-9] + bytes([d[-9] ^ 0x10]) + d[-8:], "checksum mismatch"),
    ("bit flip in the header", lambda d: d[:40] + bytes([d[40] ^ 0x01]) + d[41:], "checksum mismatch|damaged|not a"),
    ("pickle", lambda d: pickle.dumps({"model": 1}), "refuses to unpickle"),
])
def test_damaged_checkpoints_give_a_specific_error(kind, damage, message, checkpoint_bytes, tmp_path):
    assert _load_checkpoint(tmp_path, checkpoint_bytes).step == 3
    with pytest.raises(CheckpointError, match=message):
        _load_checkpoint(tmp_path, damage(checkpoint_bytes))


def test_malicious_torch_save_never_runs(tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.ckpt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        load_checkpoint(path)
    from netspec.cli import main

    (tmp_path / "a.cfg").write_text(CFG)
    assert main(["convert", str(path), "--cfg", str(tmp_path / "a.cfg"), "-o", str(tmp_path / "out.weights")]) == 1
    assert not (tmp_path / "out.weights").exists()
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: loading it the unsafe way runs it
    assert marker.exists()


def _crafted(tmp_path, metadata: dict, tensors: dict | None = None):
    """A well-formed (checksummed) safetensors file with hostile content, as an attacker would write it."""
    path = tmp_path / "crafted.ckpt"
    base = {"format": "netspec-checkpoint", "netspec.cfg": CFG, "netspec.build": "{}",
            "netspec.state": json.dumps({"state": {"step": 1}})}
    base.update(metadata)
    save_safetensors(path, tensors if tensors is not None else {}, base)
    ckpt = load_checkpoint(path)
    return ckpt.build_network()


@pytest.mark.parametrize("metadata, message", [
    ({"netspec.cfg": "[net]\nwidth=8\nheight=8\nchannels=3\n[conv]\nfilters=-4\n"},
     r"no longer builds:\n.*:6:9: .*filters=-4"),
    ({"netspec.cfg": "[net]\nwidth=8\nheight=8\nchannels=3\n[conv]\nfilters=1000000000\nsize=3\n"},
     "28,000,000,000 parameters"),
    ({"netspec.cfg": "/etc/passwd"}, "no longer builds"),
    ({"netspec.build": json.dumps({"bogus": 1})}, "build arguments"),
    ({"netspec.build": json.dumps({"width": "abc"})}, "width='abc'.*must be a positive integer"),
    ({"netspec.build": json.dumps([1, 2])}, "build arguments"),
    ({"netspec.build": json.dumps({"width": 10**7, "height": 10**7})}, "GiB of layer outputs"),
    ({"netspec.state": "{not json"}, "damaged checkpoint state"),
])
def test_crafted_checkpoint_metadata_is_validated(metadata, message, tmp_path):
    with pytest.raises(CheckpointError, match=message):
        _crafted(tmp_path, metadata)


@settings(PROFILE)
@given(st.data())
def test_any_checkpoint_bytes_give_a_checkpoint_or_a_checkpoint_error(checkpoint_bytes, tmp_path_factory, data):
    raw = data.draw(st.one_of(
        st.binary(max_size=64),
        st.builds(lambda cut, flips: _damage(checkpoint_bytes, cut, flips),
                  st.integers(0, len(checkpoint_bytes) + 8),
                  st.lists(st.integers(0, 8 * len(checkpoint_bytes) - 1), min_size=1, max_size=4))))
    try:
        _load_checkpoint(tmp_path_factory.mktemp("c"), raw)
    except CheckpointError:
        pass
