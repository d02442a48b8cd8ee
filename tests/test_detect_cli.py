"""``netspec detect`` against what ``darknet detector test -out`` reported (../shared/detect-vectors), and its
command-line behaviour: names, inputs (files, folders, list files), outputs, bad input."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from netspec.cli import main

from .conftest import SHARED, need_shared

VECTORS = SHARED / "detect-vectors"
BOX_TOL = 1e-3
CONF_TOL = 1e-3
THRESH_MARGIN = 2e-3


def _folders() -> list[str]:
    if not VECTORS.exists():
        return []
    return sorted(p.name for p in VECTORS.iterdir() if (p / "manifest.json").exists())


def _weights(manifest: dict, tmp_path: Path) -> Path:
    source = SHARED / manifest["weights"]
    if not source.exists():  # the README's wording: a path under ../conformance
        source = SHARED / "conformance" / manifest["weights"]
    need_shared(source)
    if source.suffix == ".xz":
        target = tmp_path / source.stem
        target.write_bytes(lzma.open(source).read())
        return target
    return source


def _names_file(folder: Path, tmp_path: Path, classes: int) -> Path:
    """A names file with the names Darknet printed (other classes get placeholders)."""
    names = [f"class_{k}" for k in range(classes)]
    for result in folder.glob("*.darknet.json"):
        for frame in json.loads(result.read_text()):
            for obj in frame["objects"]:
                names[obj["class_id"]] = obj["name"]
    path = tmp_path / "names.txt"
    path.write_text("\n".join(names) + "\n")
    return path


def _classes(cfg: Path) -> int:
    """The last head's classes, from the layer specs (no module is built)."""
    import netspec

    spec = netspec.build_spec(cfg, strict=False)
    return int([layer for layer in spec.layers if layer.section.is_head][-1].p.classes)


def _match(expected: list[dict], got: list[dict], thresh: float) -> tuple[list, list]:
    """Darknet objects with no netspec object of the same class within the tolerances, and the reverse."""
    def key(o):
        rc = o["relative_coordinates"]
        return np.array([rc["center_x"], rc["center_y"], rc["width"], rc["height"]]), o["confidence"]

    unused = list(range(len(got)))
    missing = []
    for want in expected:
        box, conf = key(want)
        best = None
        for j in unused:
            g_box, g_conf = key(got[j])
            if got[j]["class_id"] == want["class_id"] and np.abs(g_box - box).max() <= BOX_TOL \
                    and abs(g_conf - conf) <= CONF_TOL:
                best = j
                break
        if best is None:
            missing.append(want)
        else:
            unused.remove(best)
    extra = [got[j] for j in unused]
    excused = [o for o in missing + extra if abs(o["confidence"] - thresh) <= THRESH_MARGIN]
    return [o for o in missing if o not in excused], [o for o in extra if o not in excused]


@pytest.mark.parametrize("name", _folders() or ["(none)"])
def test_detect_finds_every_darknet_object(name, tmp_path, capsys):
    folder = need_shared(VECTORS / name)
    manifest = json.loads((folder / "manifest.json").read_text())
    weights = _weights(manifest, tmp_path)
    cfg = folder / "model.cfg"
    names = _names_file(folder, tmp_path, _classes(cfg))
    scenes = sorted(folder.glob("*.png"))
    assert scenes
    out = tmp_path / "out.json"
    argv = [ "detect", str(cfg), *map(str, scenes), "--weights", str(weights), "--names", str(names),
            "--thresh", str(manifest["thresh"]), "--hier-thresh", str(manifest.get("hier_thresh", 0.5)),
            "--nms", str(manifest.get("nms", 0.45)), "--out", str(out), "--batch", "2", "--lenient"]
    if manifest.get("letter_box"):
        argv.append("--letter-box")
    assert main(argv) == 0
    frames = json.loads(out.read_text())
    assert [f["frame_id"] for f in frames] == list(range(1, len(scenes) + 1))
    assert [f["filename"] for f in frames] == [str(s) for s in scenes]
    for scene, frame in zip(scenes, frames):
        result = folder / f"{scene.stem}.darknet.json"
        if not result.exists():
            result = folder / f"{scene.name}.darknet.json"
        (expected,) = json.loads(result.read_text())
        assert len(expected["objects"]) == manifest["objects"].get(scene.stem, len(expected["objects"]))
        missing, extra = _match(expected["objects"], frame["objects"], manifest["thresh"])
        assert not missing, f"{scene.name}: {len(missing)} Darknet objects not found, e.g. {missing[:3]}"
        assert not extra, f"{scene.name}: {len(extra)} objects Darknet did not report, e.g. {extra[:3]}"
        for obj in frame["objects"]:
            assert obj["name"] == names.read_text().split("\n")[obj["class_id"]]
    printed = capsys.readouterr().out
    assert f"{scenes[0]}: Predicted in" in printed and "(left_x:" in printed


@pytest.fixture
def tiny(tmp_path):
    """tests/test_detect.py's small detector as a cfg and .weights, two pictures of its one object, names."""
    import netspec

    from .test_detect import TINY, _tiny_detector, red_square

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY.replace("letter_box=1\n", ""))
    weights = tmp_path / "tiny.weights"
    netspec.save_darknet_weights(_tiny_detector(), weights)
    from PIL import Image

    pixels = red_square()
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(pixels).save(images / "a.png")
    Image.fromarray(pixels[:, ::-1].copy()).save(images / "b.bmp")
    (tmp_path / "names.txt").write_text("zero\none\n")
    (tmp_path / "obj.data").write_text(f"classes = 2\nnames = {tmp_path / 'names.txt'}\n")
    return cfg, weights, images


def test_detect_inputs_names_outputs(tiny, tmp_path, capsys):
    cfg, weights, images = tiny
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images / 'a.png'}\n\n{images / 'b.bmp'}\n")
    out = tmp_path / "out.json"
    saved = tmp_path / "drawn"
    for inputs in ([str(images)], [str(listing)], [str(images / "a.png"), str(images / "b.bmp")]):
        assert main(["detect", str(cfg), *inputs, "--weights", str(weights), "--data", str(tmp_path / "obj.data"),
                     "--out", str(out), "--save-dir", str(saved), "--thresh", "0.5"]) == 0
        frames = json.loads(out.read_text())
        assert [Path(f["filename"]).name for f in frames] == ["a.png", "b.bmp"]
        for frame, x in zip(frames, (82 / 128, 1 - 82 / 128)):
            (obj,) = frame["objects"]
            assert obj["class_id"] == 1 and obj["name"] == "one" and obj["confidence"] > 0.99
            assert obj["relative_coordinates"]["center_x"] == pytest.approx(x, abs=1 / 64)
    assert sorted(p.name for p in saved.iterdir()) == ["a.jpg", "b.jpg"]
    from PIL import Image

    with Image.open(saved / "a.jpg") as drawn:
        assert drawn.size == (128, 64)
    printed = capsys.readouterr().out
    assert "one: 100%\t(left_x:" in printed


@pytest.mark.parametrize("trouble,message", [
    ("missing-image", "no such file"),
    ("not-an-image", "not an image"),
    ("names-count", "holds 3 class names but the network has classes=2"),
    ("empty-list", "image list is empty"),
    ("classifier", "not a detector"),
])
def test_detect_bad_input_is_one_line_exit_1(trouble, message, tiny, tmp_path, capsys):
    cfg, weights, images = tiny
    argv = ["detect", str(cfg), str(images / "a.png"), "--weights", str(weights)]
    if trouble == "missing-image":
        argv[2] = str(images / "nope.png")
    elif trouble == "not-an-image":
        (images / "junk.png").write_bytes(b"junk")
        argv[2] = str(images / "junk.png")
    elif trouble == "names-count":
        (tmp_path / "three.names").write_text("a\nb\nc\n")
        argv += ["--names", str(tmp_path / "three.names")]
    elif trouble == "empty-list":
        (tmp_path / "empty.txt").write_text("\n")
        argv[2] = str(tmp_path / "empty.txt")
    elif trouble == "classifier":
        (tmp_path / "cls.cfg").write_text("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=2\n"
                                          "size=1\nactivation=linear\n")
        import netspec

        netspec.save_darknet_weights(netspec.build(tmp_path / "cls.cfg"), tmp_path / "cls.weights")
        argv = ["detect", str(tmp_path / "cls.cfg"), str(images / "a.png"), "--weights", str(tmp_path / "cls.weights")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_detect_unwritable_output_exit_3(tiny, tmp_path, capsys):
    cfg, weights, images = tiny
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["detect", str(cfg), str(images / "a.png"), "--weights", str(weights), "--out",
                 str(blocker / "out.json")]) == 3
    assert main(["detect", str(cfg), str(images / "a.png"), "--weights", str(weights), "--save-dir",
                 str(blocker / "dir")]) == 3


def test_detect_accepts_safetensors_weights(tiny, tmp_path):
    cfg, weights, images = tiny
    converted = tmp_path / "tiny.safetensors"
    assert main(["convert", str(weights), "--cfg", str(cfg), "-o", str(converted)]) == 0
    outs = []
    for w in (weights, converted):
        out = tmp_path / f"{w.suffix}.json"
        assert main(["detect", str(cfg), str(images / "a.png"), "--weights", str(w), "--out", str(out),
                     "--quiet"]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0] == outs[1] and len(outs[0][0]["objects"]) == 1


def test_yolov1_json_keeps_darknets_pixel_boxes(tmp_path, capsys):
    """Darknet's detector test leaves [detection] (YOLOv1) boxes in image pixels under relative_coordinates;
    --out writes them so (the files compare equal), netspec.darknet_detections keeps them relative."""
    import torch
    from PIL import Image

    import netspec
    from netspec.detection import prepare_images

    cfg = tmp_path / "v1.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n[maxpool]\nsize=8\nstride=8\n[connected]\noutput=48\n"
                   "activation=logistic\n[detection]\nclasses=2\ncoords=4\nnum=2\nside=2\nsoftmax=1\nsqrt=1\n")
    net = netspec.build(cfg, seed=5)
    netspec.save_darknet_weights(net, tmp_path / "v1.weights")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out.json"
    assert main(["detect", str(cfg), str(tmp_path / "a.png"), "--weights", str(tmp_path / "v1.weights"),
                 "--thresh", "0.05", "--out", str(out), "--quiet"]) == 0
    assert "in image pixels" in capsys.readouterr().err
    (frame,) = json.loads(out.read_text())
    batch, sizes = prepare_images(net, [tmp_path / "a.png"])
    (dets,) = netspec.darknet_detections(net.eval(), batch, sizes, thresh=0.05)
    assert frame["objects"] and len(frame["objects"]) == int((dets.probs > 0).sum())
    box, _, _ = dets.objects()
    want = dets.boxes[box] * torch.tensor([60, 40, 60, 40])
    got = torch.tensor([[o["relative_coordinates"][k] for k in ("center_x", "center_y", "width", "height")]
                        for o in frame["objects"]])
    assert torch.allclose(got, want, atol=1e-5)
