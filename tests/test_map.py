"""`netspec map`: the shared Darknet map vector (three runs), COCOeval equality, and bad input on the CLI."""

from __future__ import annotations

import json
import lzma
import os

import pytest
import torch

from netspec import cli
from netspec.datasets import labelled_set, read_data_config
from netspec.evaluate import MapAccumulator, coco_metrics

from .conftest import CONFORMANCE, SHARED, need_shared

VECTOR = SHARED / "map-vectors" / "yolov4-tiny"


def fp_tolerance(expected: int) -> float:
    # ~400,000 detections go through DIoU NMS with pairs within float noise of 0.45 (see the vector's README)
    return max(2, 0.005 * expected)


@pytest.fixture(scope="module")
def vector(tmp_path_factory):
    """The map vector's detections, computed once for the module (the forward + NMS is the slow part)."""
    need_shared(VECTOR)
    need_shared(CONFORMANCE / "yolov4-tiny")
    import netspec
    from netspec.detection import darknet_detections
    from netspec.evaluate import _Images

    weights = tmp_path_factory.mktemp("map") / "yolov4-tiny.weights"
    weights.write_bytes(lzma.open(CONFORMANCE / "yolov4-tiny" / "weights.weights.xz").read())
    net = netspec.build(VECTOR / "model.cfg")
    netspec.load_darknet_weights(net, weights)
    net.fuse()
    net.eval()
    data = read_data_config(VECTOR / "obj.data")
    labelled = labelled_set(data.valid, data.classes, data.names)
    samples = [_Images(labelled, 416, 416, letterbox=False)[i] for i in range(len(labelled))]
    images = torch.stack([s[1] for s in samples])
    sizes = [s[2] for s in samples]
    with torch.inference_mode():
        dets = darknet_detections(net, images, sizes, thresh=0.005, hier_thresh=0, nms=0.45, letterbox=False,
                                  darknet_order=True)
    expected = json.loads((VECTOR / "darknet-map.json").read_text())
    return {"weights": weights, "data": data, "labelled": labelled, "images": images, "sizes": sizes, "dets": dets,
            "runs": expected["runs"]}


def evaluate(vector, **kwargs):
    acc = MapAccumulator(vector["data"].classes, vector["data"].names, **kwargs)
    for i, d in enumerate(vector["dets"]):
        acc.add(d.boxes, d.probs, vector["labelled"].read_labels(i), image_size=vector["sizes"][i])
    return acc


def check_against_darknet(out: dict, run: dict) -> None:
    assert out["map"] == pytest.approx(run["map"], abs=1e-6 + 5e-7)  # Darknet prints %f
    assert len(out["classes"]) == len(run["classes"]) == 80
    for mine, theirs in zip(out["classes"], run["classes"]):
        assert (mine["class_id"], mine["name"]) == (theirs["class_id"], theirs["name"])
        assert mine["ap"] == pytest.approx(theirs["ap"], abs=1e-3), theirs
        assert mine["tp"] == theirs["tp"], theirs
        assert abs(mine["fp"] - theirs["fp"]) <= fp_tolerance(theirs["fp"]), theirs
    mine, theirs = out["at_conf_0.25"], run["at_conf_0.25"]
    assert (mine["tp"], mine["fn"]) == (theirs["tp"], theirs["fn"])
    assert abs(mine["fp"] - theirs["fp"]) <= fp_tolerance(theirs["fp"])
    for key in ("precision", "recall", "f1"):  # printed with 2 decimals
        assert mine[key] == pytest.approx(theirs[key], abs=0.005 + 1e-9)
    assert mine["avg_iou"] == pytest.approx(theirs["avg_iou"], abs=0.00005 + 1e-9)  # printed as %2.2f %%


@pytest.mark.parametrize("run_index", [0, 1, 2])
def test_every_darknet_map_run(vector, run_index):
    run = vector["runs"][run_index]
    out = evaluate(vector, points=run["points"], iou_thresh=run["iou_thresh"]).result().to_json()
    check_against_darknet(out, run)


def test_cli_json_on_the_vector(vector, monkeypatch, capsys):
    """The whole CLI path (obj.data, list, labels, loading, resizing, streaming, JSON) on the vector; the
    detections of the module's forward are reused when the CLI hands over the very same input tensors."""
    import netspec.detection

    def cached(net, images, sizes, **kwargs):
        assert kwargs == {"thresh": 0.005, "hier_thresh": 0, "nms": 0.45, "letterbox": False, "darknet_order": True}
        index = [i for i in range(len(vector["sizes"])) if torch.equal(vector["images"][i], images[0])][0]
        assert torch.equal(images, vector["images"][index:index + len(images)])
        assert list(sizes) == vector["sizes"][index:index + len(images)]
        return vector["dets"][index:index + len(images)]

    monkeypatch.setattr(netspec.detection, "darknet_detections", cached)
    code = cli.main(["map", str(VECTOR / "obj.data"), str(VECTOR / "model.cfg"), "--weights", str(vector["weights"]),
                     "--json", "--batch", "2", "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 0
    check_against_darknet(json.loads(out), vector["runs"][0])


@pytest.mark.slow
def test_coco_equals_cocoeval_on_all_the_vectors_detections(vector):
    """netspec keeps the 100 best boxes per image and class; COCOeval given every detection picks the same."""
    pytest.importorskip("pycocotools")
    result = evaluate(vector, coco=True).result()
    gt = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": n}
                                                          for c, n in enumerate(vector["data"].names)]}
    dets = []
    for i, (d, (w, h)) in enumerate(zip(vector["dets"], vector["sizes"])):
        gt["images"].append({"id": i + 1, "width": w, "height": h})
        for c, x, y, bw, bh in vector["labelled"].read_labels(i).tolist():
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                                      "bbox": [(x - bw / 2) * w, (y - bh / 2) * h, bw * w, bh * h],
                                      "area": bw * w * bh * h, "iscrowd": 0})
        for k, c in torch.nonzero(d.probs > 0.005).tolist():
            x, y, bw, bh = d.boxes[k].tolist()
            dets.append({"image_id": i + 1, "category_id": c + 1, "score": float(d.probs[k, c]),
                         "bbox": [(x - bw / 2) * w, (y - bh / 2) * h, bw * w, bh * h]})
    assert result.coco == pytest.approx(coco_metrics(gt, dets), abs=1e-12)


# ------------------------------------------------------------------------------------------- CLI, small net
TINY_CFG = """[net]
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
filters=21
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,4, 8,8, 16,16
classes=2
num=3
"""


@pytest.fixture
def tiny(tmp_path):
    """A tiny detector with random weights, two labelled images and an obj.data."""
    from PIL import Image

    import netspec

    (tmp_path / "tiny.cfg").write_text(TINY_CFG)
    net = netspec.build(tmp_path / "tiny.cfg")
    netspec.save_darknet_weights(net, tmp_path / "tiny.weights")
    gen = torch.Generator().manual_seed(0)
    for name, (w, h) in {"a.png": (40, 30), "b.jpg": (24, 36)}.items():
        pixels = (torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / name)
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.4 0.4\n1 0.3 0.3 0.2 0.2\n")
    (tmp_path / "b.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (tmp_path / "valid.txt").write_text("a.png\nb.jpg\n")
    (tmp_path / "obj.names").write_text("cat\ndog\n")
    (tmp_path / "obj.data").write_text("classes=2\nvalid=valid.txt\nnames=obj.names\n")
    return tmp_path


def run_map(folder, *extra):
    return cli.main(["map", str(folder / "obj.data"), str(folder / "tiny.cfg"), "--weights",
                     str(folder / "tiny.weights"), "--workers", "0", *extra])


def test_cli_small_net_end_to_end(tiny, capsys):
    assert run_map(tiny, "--json", "--thresh", "0.5", "--points", "11") == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["map", "classes", "at_conf_0.5"]
    assert [c["name"] for c in out["classes"]] == ["cat", "dog"]
    assert out["at_conf_0.5"]["tp"] + out["at_conf_0.5"]["fn"] == 3
    assert run_map(tiny, "--letter-box", "--coco") == 0
    text = capsys.readouterr().out
    assert "class_id = 1, name = dog, ap = " in text and "mean average precision (mAP@0.50) = " in text
    assert "COCO ap50 = " in text


def test_cli_library_agree(tiny, capsys):
    import netspec
    from netspec.evaluate import evaluate_set

    assert run_map(tiny, "--json", "--batch", "2") == 0
    out = json.loads(capsys.readouterr().out)
    net = netspec.build(tiny / "tiny.cfg")
    netspec.load_darknet_weights(net, tiny / "tiny.weights")
    net.fuse()
    data = read_data_config(tiny / "obj.data")
    acc = MapAccumulator(2, data.names)
    evaluate_set(net.eval(), labelled_set(data.valid, 2, data.names), acc, letterbox=False, batch=2)
    assert json.loads(json.dumps(acc.result().to_json())) == out


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "a.txt").write_text("0 0.5 0.5 0.4\n"), "a.txt:1: expected 'class x_center"),
    (lambda d: (d / "b.txt").write_text("0 .5 .5 .1 .1\n2 0.5 0.5 0.5 0.5\n"), "b.txt:2: class id 2 is beyond"),
    (lambda d: (d / "valid.txt").write_text("\n"), "valid.txt: image list is empty"),
    (lambda d: (d / "obj.names").write_text("cat\ndog\nbird\n"), "obj.data:3: names file"),
    (lambda d: (d / "b.jpg").write_bytes(b"not a jpeg"), "b.jpg"),
    (lambda d: (d / "valid.txt").write_text("a.png\nmissing.png\n"), "missing.png"),
    (lambda d: (d / "obj.data").write_text("classes=3\nvalid=valid.txt\n"), "obj.data:1: classes=3 but the cfg"),
])
def test_cli_bad_input_is_one_line_and_exit_1(tiny, capsys, change, message):
    change(tiny)
    assert run_map(tiny, "--json") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if not line.startswith("warning:")]
    assert len(errors) == 1 and message in errors[0], captured.err
    assert "Traceback" not in captured.err


def test_cli_missing_labels_warn_once_with_the_count(tiny, capsys):
    os.remove(tiny / "a.txt")
    assert run_map(tiny, "--json") == 0
    err = capsys.readouterr().err
    assert err.count("warning: 1 of 2 images have no label file") == 1


def test_cli_usage_errors(tiny, capsys):
    with pytest.raises(SystemExit) as info:
        run_map(tiny, "--points", "5")
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        run_map(tiny, "--iou-thresh", "1.5")


def test_cli_difficult_list(tiny, capsys):
    (tiny / "hard").mkdir()
    for name in ("a.png", "b.jpg"):
        (tiny / "hard" / name).write_bytes((tiny / name).read_bytes())
    (tiny / "hard" / "a.txt").write_text("0 0.5 0.5 1 1\n1 0.5 0.5 1 1\n")  # everything on a.png is difficult
    (tiny / "hard.txt").write_text("hard/a.png\nhard/b.jpg\n")
    assert run_map(tiny, "--json") == 0
    plain = json.loads(capsys.readouterr().out)
    (tiny / "obj.data").write_text("classes=2\nvalid=valid.txt\nnames=obj.names\ndifficult=hard.txt\n")
    assert run_map(tiny, "--json") == 0
    hard = json.loads(capsys.readouterr().out)
    assert hard["at_conf_0.25"] == plain["at_conf_0.25"]  # Darknet counts them at the threshold all the same
    import netspec
    from netspec.evaluate import evaluate_set

    net = netspec.build(tiny / "tiny.cfg")
    netspec.load_darknet_weights(net, tiny / "tiny.weights")
    counts = []
    for difficult in (None, [str(tiny / "hard" / "a.txt"), str(tiny / "hard" / "b.txt")]):
        acc = MapAccumulator(2, iou_thresh=0.01)  # any box overlapping the whole-image difficult objects
        evaluate_set(net.fuse().eval(), labelled_set(tiny / "valid.txt", 2), acc, letterbox=False,
                     difficult=difficult)
        counts.append((acc.result().detections, acc._images))
    assert counts[1][0] < counts[0][0] and counts[0][1] == counts[1][1] == 2  # a.png's unmatched ones left
    (tiny / "hard.txt").write_text("hard/a.png\n")
    assert run_map(tiny, "--json") == 1
    assert "obj.data:4: the difficult list has 1 images but valid has 2" in capsys.readouterr().err


def test_darknet_order_is_the_order_darknets_nms_sorts_leave(tiny):
    """darknet_detections(darknet_order=True): rows as do_nms_sort leaves dets (a stable sort per class in turn,
    by the probabilities before suppression), the same rows as in candidate order."""
    import netspec
    from netspec.detection import darknet_detections

    net = netspec.build(tiny / "tiny.cfg")
    netspec.load_darknet_weights(net, tiny / "tiny.weights")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    raw = darknet_detections(net.eval(), x, thresh=0.005, nms=0)
    plain = darknet_detections(net, x, thresh=0.005, nms=0.45)
    ordered = darknet_detections(net, x, thresh=0.005, nms=0.45, darknet_order=True)
    for r, p, o in zip(raw, plain, ordered):
        rows = list(range(len(r)))
        for k in range(r.probs.shape[1]):
            rows.sort(key=lambda i: -float(r.probs[i, k]))  # Python's sort is stable, as glibc's qsort
        survivor = {tuple(b): n for n, b in enumerate(p.boxes.tolist())}  # candidate row -> row in plain
        candidate = [survivor.get(tuple(b)) for b in r.boxes.tolist()]
        expected = [candidate[i] for i in rows if candidate[i] is not None]
        assert len(o) == len(p) == len(expected) > 1 and expected != sorted(expected)
        assert torch.equal(o.boxes, p.boxes[expected]) and torch.equal(o.probs, p.probs[expected])


def test_cli_coco_json_as_the_labelled_set(tiny, capsys):
    """valid= a COCO instances json: the same Darknet numbers as the YOLO labels it was made from, and --coco reads
    the json itself as ground truth (its own image and category ids)."""
    from PIL import Image

    assert run_map(tiny, "--json", "--coco") == 0
    from_labels = json.loads(capsys.readouterr().out)
    coco = {"images": [], "annotations": [], "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}]}
    for image_id, name in ((10, "a.png"), (20, "b.jpg")):
        w, h = Image.open(tiny / name).size
        coco["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
        for line in (tiny / name).with_suffix(".txt").read_text().splitlines():
            c, x, y, bw, bh = (float(v) for v in line.split())
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": (5, 9)[int(c)], "iscrowd": 0, "area": bw * w * bh * h,
                                        "bbox": [(x - bw / 2) * w, (y - bh / 2) * h, bw * w, bh * h]})
    (tiny / "annotations").mkdir()
    (tiny / "annotations" / "instances_val.json").write_text(json.dumps(coco))
    (tiny / "obj.data").write_text("classes=2\nvalid=annotations/instances_val.json\nnames=obj.names\n")
    for name in ("a.txt", "b.txt"):
        os.remove(tiny / name)  # only the json holds the truth now
    assert cli.main(["map", str(tiny / "obj.data"), str(tiny / "tiny.cfg"), "--weights", str(tiny / "tiny.weights"),
                     "--workers", "2", "--json", "--coco"]) == 0
    from_coco = json.loads(capsys.readouterr().out)
    assert from_coco["map"] == pytest.approx(from_labels["map"], abs=1e-6)
    assert [c["tp"] for c in from_coco["classes"]] == [c["tp"] for c in from_labels["classes"]]
    assert from_coco["at_conf_0.25"] == pytest.approx(from_labels["at_conf_0.25"], abs=1e-6)
    assert from_coco["coco"] == pytest.approx(from_labels["coco"], abs=1e-6)


def test_bad_image_in_a_worker_is_one_line(tiny, capsys):
    (tiny / "b.jpg").write_bytes(b"not a jpeg")
    assert cli.main(["map", str(tiny / "obj.data"), str(tiny / "tiny.cfg"), "--weights", str(tiny / "tiny.weights"),
                     "--workers", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b.jpg" in err[0]


def test_progress_bar_goes_to_stderr(tiny, capsys):
    import netspec
    from netspec.evaluate import evaluate_set

    net = netspec.build(tiny / "tiny.cfg")
    acc = MapAccumulator(2)
    evaluate_set(net.fuse().eval(), labelled_set(tiny / "valid.txt", 2), acc, letterbox=False, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "2/2" in captured.err


def test_cli_lenient_data_file(tiny, capsys):
    (tiny / "obj.data").write_text("classes=2\nvalid=valid.txt\nnames=obj.names\neval=coco\nvalidd=x\n")
    assert run_map(tiny, "--json") == 1
    assert "obj.data:5: unknown key 'validd' (did you mean 'valid'?)" in capsys.readouterr().err
    assert run_map(tiny, "--json", "--lenient") == 0
    assert "warning: " in capsys.readouterr().err
