"""The offline demo: the shapes dataset generator (netspec/demo_shapes.py, ``netspec demo-data``) and the
small detector cfg shipped for it (cfgs/shapes-tiny.cfg)."""

from __future__ import annotations

import re

import pytest

import netspec
from netspec.cli import main
from netspec.demo_shapes import CLASS_NAMES, make_image, make_shapes_dataset

from .conftest import CFGS


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_writes_darknet_layout(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["demo-data", str(out), "--train", "6", "--valid", "3", "--seed", "5"]) == 0
    assert "6 training and 3 validation images" in capsys.readouterr().out
    train = (out / "train.txt").read_text().splitlines()
    valid = (out / "valid.txt").read_text().splitlines()
    assert len(train) == 6 and len(valid) == 3 and not set(train) & set(valid)
    assert (out / "obj.names").read_text().split() == list(CLASS_NAMES)
    data = dict(re.findall(r"^(\w+) = (.*)$", (out / "obj.data").read_text(), re.M))
    assert data["classes"] == str(len(CLASS_NAMES))
    assert data["train"] == str(out / "train.txt") and data["valid"] == str(out / "valid.txt")
    assert data["names"] == str(out / "obj.names") and (out / "backup").is_dir()
    from PIL import Image

    for path in train + valid:
        with Image.open(path) as img:
            assert img.mode == "RGB" and img.size == (160, 160)
        label = path.replace("/images/", "/labels/").replace(".jpg", ".txt")
        rows = [line.split() for line in open(label).read().splitlines()]
        assert 1 <= len(rows) <= 4
        for cls, *xywh in rows:
            x, y, w, h = map(float, xywh)
            assert int(cls) in range(len(CLASS_NAMES))
            assert 0 < x - w / 2 and x + w / 2 < 1 and 0 < y - h / 2 and y + h / 2 < 1
            assert 14 * 0.8 / 160 < max(w, h) < 56 * 1.2 / 160


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a, b, c = (make_shapes_dataset(tmp_path / n, 3, 2, seed=s).root for n, s in (("a", 1), ("b", 1), ("c", 2)))
    fa, fb, fc = _files(a), _files(b), _files(c)
    strip = {k: v for k, v in fa.items() if not k.endswith((".txt", ".data"))}  # list files hold the folder name
    assert strip == {k: v for k, v in fb.items() if not k.endswith((".txt", ".data"))}
    assert all(fa[k] == fb[k] for k in fa if k.startswith("labels/"))
    assert any(fa[k] != fc[k] for k in fa if k.startswith("images/"))


def test_labels_are_the_tight_boxes_of_the_drawn_shapes():
    """The label box is where the shape's pixels are (the background never equals the fill exactly)."""
    import numpy as np

    img, labels = make_image(3, "train", 0)
    a = np.asarray(img).astype(int)
    for cls, x, y, w, h in labels:
        x0, x1 = int(round((x - w / 2) * 160)), int(round((x + w / 2) * 160))
        y0, y1 = int(round((y - h / 2) * 160)), int(round((y + h / 2) * 160))
        inside = a[y0:y1, x0:x1]
        centre = a[int(y * 160), int(x * 160)]
        same = (np.abs(inside - centre).sum(-1) < 6)
        ys, xs = np.nonzero(same)
        # the filled region of the centre colour reaches (within 2 px) all four sides of the box
        assert xs.min() <= 2 and xs.max() >= x1 - x0 - 3 and ys.min() <= 2 and ys.max() >= y1 - y0 - 3, cls


def test_bad_sizes_are_usage_errors(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--size", "32", "32"]) == 2
    assert "at least 64x64" in capsys.readouterr().err
    with pytest.raises(ValueError):
        make_shapes_dataset(tmp_path / "e", 0, 1)


def test_unwritable_output_exits_3(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["demo-data", str(blocker / "sub"), "--train", "1", "--valid", "1"]) == 3
    assert "cannot write" in capsys.readouterr().err


def test_demo_cfg_builds_and_fits_the_dataset():
    path = CFGS / "shapes-tiny.cfg"
    spec = netspec.build_spec(path)
    assert spec.warnings == [] and spec.input_shape == (3, 128, 128)
    heads = [s for s in spec.layers if s.section.is_head]
    assert len(heads) == 2 and all(h.p.classes == len(CLASS_NAMES) for h in heads)
    header = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
    m = re.search(r"(\d+) layers, ([\d,]+) parameters, ([\d,]+) \.weights floats, ([\d.]+) BFLOPs at 128x128", header)
    assert header.startswith("shapes-tiny.cfg") and "demo-data" in header and m, header
    assert len(spec.layers) == int(m.group(1))
    assert spec.total_params == int(m.group(2).replace(",", ""))
    assert spec.total_weights_floats == int(m.group(3).replace(",", ""))
    assert f"{spec.total_bflops:.3f}" == m.group(4)
