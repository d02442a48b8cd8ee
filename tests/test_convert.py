"""``netspec convert``: Darknet .weights ↔ netspec .ckpt ↔ .safetensors, byte-identical round trips."""

from __future__ import annotations

import json
import lzma

import numpy as np
import pytest
import torch

import netspec
from netspec.cli import main

from .conftest import CFGS, CONFORMANCE, DARKNET_CFGS, need_shared

# kitchen-sink: weighted shortcuts, [implicit], shared convs; -cls: [connected] with BN, [local], [batchnorm]
ROUND_TRIP_NETS = ["yolov4-tiny", "kitchen-sink", "kitchen-sink-cls"]


def vector(name: str, tmp_path):
    folder = need_shared(CONFORMANCE / name)
    manifest = json.loads((folder / "manifest.json").read_text())
    original = tmp_path / "original.weights"
    original.write_bytes(lzma.open(folder / manifest["weights"]["file"]).read())
    cfg = ["--cfg", str(folder / "model.cfg"), "--width", str(manifest["width"]), "--height",
           str(manifest["height"]), "--lenient"]
    return folder, manifest, original, cfg


@pytest.mark.parametrize("name", ROUND_TRIP_NETS)
def test_weights_safetensors_weights_is_byte_identical_and_onnx_agrees(name, tmp_path):
    folder, manifest, original, cfg = vector(name, tmp_path)
    st, back = tmp_path / "net.safetensors", tmp_path / "back.weights"
    assert main(["convert", str(original), *cfg, "-o", str(st)]) == 0
    # the .safetensors file carries its cfg: no --cfg needed on the way back
    size = ["--width", str(manifest["width"]), "--height", str(manifest["height"])]
    assert main(["convert", str(st), *size, "-o", str(back)]) == 0
    assert back.read_bytes() == original.read_bytes()

    ort = pytest.importorskip("onnxruntime")
    from netspec.onnx_export import export_onnx

    net = netspec.build(folder / "model.cfg", manifest["width"], manifest["height"], strict=False).eval()
    netspec.load_darknet_weights(net, original)
    restored = netspec.build(folder / "model.cfg", manifest["width"], manifest["height"], strict=False).eval()
    netspec.load_checkpoint(st).load_into(restored)
    export_onnx(restored, tmp_path / "net.onnx")
    x = torch.from_numpy(np.fromfile(folder / "input.f32", dtype="<f4").reshape(1, *net.input_shape).copy())
    got = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x.numpy()})
    with torch.no_grad():
        want = net(x)
    for g, w in zip(got, want if isinstance(want, list) else [want]):
        w = w.detach().numpy()
        assert np.abs(g - w).max() <= 1e-4 * max(1.0, float(np.abs(w).max()))


def test_checkpoint_round_trip_keeps_seen(tmp_path):
    """A .weights with a non-zero `seen` → .ckpt → .weights: the header survives exactly."""
    cfg = CFGS / "yolov3-tiny.cfg"
    net = netspec.build(cfg, 96, 96)
    first = tmp_path / "a.weights"
    netspec.save_darknet_weights(net, first)
    data = bytearray(first.read_bytes())
    data[12:20] = (123456789).to_bytes(8, "little")  # seen
    first.write_bytes(bytes(data))
    common = ["--cfg", str(cfg), "--width", "96", "--height", "96"]
    assert main(["convert", str(first), *common, "-o", str(tmp_path / "b.ckpt")]) == 0
    assert main(["convert", str(tmp_path / "b.ckpt"), *common, "-o", str(tmp_path / "c.weights")]) == 0
    assert (tmp_path / "c.weights").read_bytes() == bytes(data)
    assert main(["convert", str(tmp_path / "b.ckpt"), *common, "-o", str(tmp_path / "d.safetensors")]) == 0
    assert main(["convert", str(tmp_path / "d.safetensors"), "-o", str(tmp_path / "e.weights")]) == 0
    assert (tmp_path / "e.weights").read_bytes() == bytes(data)


def test_torch_file_without_from_is_explained(tmp_path, capsys):
    torch.save({"module_list.0.conv_0.weight": torch.zeros(1)}, tmp_path / "port.pt")
    rc = main(["convert", str(tmp_path / "port.pt"), "--cfg", str(CFGS / "yolov3-tiny.cfg"), "-o",
               str(tmp_path / "x.weights")])
    assert rc == 1 and "--from erik|ultralytics|tianxiaomo" in capsys.readouterr().err
    assert not (tmp_path / "x.weights").exists()


def test_cfg_is_required_for_darknet_input(tmp_path, capsys):
    net = netspec.build(CFGS / "yolov3-tiny.cfg", 96, 96)
    netspec.save_darknet_weights(net, tmp_path / "a.weights")
    assert main(["convert", str(tmp_path / "a.weights"), "-o", str(tmp_path / "b.safetensors")]) == 2
    assert "--cfg is required" in capsys.readouterr().err


def test_unwritable_output_is_exit_3(tmp_path):
    net = netspec.build(CFGS / "yolov3-tiny.cfg", 96, 96)
    netspec.save_darknet_weights(net, tmp_path / "a.weights")
    rc = main(["convert", str(tmp_path / "a.weights"), "--cfg", str(CFGS / "yolov3-tiny.cfg"), "--width", "96",
               "--height", "96", "-o", str(tmp_path / "missing" / "b.weights")])
    assert rc == 3


@pytest.mark.parametrize("length", [0x3380, 0x4B50])  # low bytes 0x80 (a pickle's first byte), b"PK" (zip's)
def test_safetensors_header_lengths_that_look_like_torch_files_are_read_as_safetensors(length, tmp_path):
    from netspec.params_io import NETSPEC, file_format

    header = b'{"__metadata__":{"pad":"' + b" " * (length - 27) + b'"}}'
    assert len(header) == length
    path = tmp_path / "x.safetensors"
    path.write_bytes(length.to_bytes(8, "little") + header)
    assert file_format(path, reading=True) == NETSPEC


def test_recurrent_net_weights_safetensors_weights_is_byte_identical(tmp_path):
    """yolov3-tiny_occlusion_track's export has a 0x3380-byte header (it was taken for a pickle)."""
    cfg = need_shared(DARKNET_CFGS / "yolov3-tiny_occlusion_track.cfg")
    net = netspec.build(cfg, seed=3)
    original, st, back = tmp_path / "a.weights", tmp_path / "a.safetensors", tmp_path / "b.weights"
    netspec.save_darknet_weights(net, original)
    assert main(["convert", str(original), "--cfg", str(cfg), "-o", str(st)]) == 0
    assert main(["convert", str(st), "-o", str(back)]) == 0
    assert back.read_bytes() == original.read_bytes()
