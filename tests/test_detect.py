"""Box decoding checked against boxes computed independently (plain loops, reference §3.10 formulas)
from Darknet's own [yolo] buffers; NMS and letterbox correction on hand-made cases."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import netspec
from netspec.detection import box_iou, nms

from .conftest import CONFORMANCE


def reference_boxes(buf: np.ndarray, anchors, classes: int, net_w: int, net_h: int, thresh: float):
    """Darknet's get_yolo_box / get_yolo_detections, one loop iteration per cell and anchor."""
    a_n = len(anchors)
    _, h, w = buf.shape
    v = buf.reshape(a_n, 5 + classes, h, w)
    found = []
    for a in range(a_n):
        for row in range(h):
            for col in range(w):
                obj = v[a, 4, row, col]
                if obj <= thresh:
                    continue
                x = (col + v[a, 0, row, col]) / w
                y = (row + v[a, 1, row, col]) / h
                bw = math.exp(v[a, 2, row, col]) * anchors[a][0] / net_w
                bh = math.exp(v[a, 3, row, col]) * anchors[a][1] / net_h
                probs = [obj * v[a, 5 + k, row, col] for k in range(classes)]
                probs = [p if p > thresh else 0.0 for p in probs]
                found.append(((x, y, bw, bh), probs))
    return found


def test_yolo_decoding_matches_reference_formulas_on_darknet_buffers():
    folder = CONFORMANCE / "yolov4-tiny"
    if not folder.exists():
        pytest.skip("../shared/conformance is not present")
    manifest = json.loads((folder / "manifest.json").read_text())
    net = netspec.build(folder / "model.cfg", manifest["width"], manifest["height"])
    thresh = 0.25
    heads, expected = [], []
    for index in net.outputs:
        layer = manifest["layers"][index]
        buf = np.fromfile(folder / layer["file"], dtype="<f4").reshape(layer["out_c"], layer["out_h"], layer["out_w"])
        head = net.layers[index]
        heads.append(torch.from_numpy(buf.copy())[None])
        expected += reference_boxes(buf, head.anchors, head.classes, manifest["width"], manifest["height"], thresh)
    boxes, scores = [], []
    for index, buf in zip(net.outputs, heads):
        hb = net.layers[index].decode_boxes(buf)
        keep = hb.objectness[0] > thresh
        boxes.append(hb.boxes[0][keep])
        scores.append(torch.where(hb.probs[0][keep] > thresh, hb.probs[0][keep], 0))
    got = SimpleNamespace(boxes=torch.cat(boxes), scores=torch.cat(scores))
    assert len(expected) > 0 and got.boxes.shape[0] == len(expected)
    exp_boxes = torch.tensor([b for b, _ in expected], dtype=torch.float32)
    exp_scores = torch.tensor([p for _, p in expected], dtype=torch.float32)
    # candidate order may differ: match by sorting on (x, y)
    def order(t):
        return np.lexsort((t[:, 1].numpy(), t[:, 0].numpy()))
    assert torch.allclose(got.boxes[order(got.boxes)], exp_boxes[order(exp_boxes)], atol=1e-5)
    assert torch.allclose(got.scores[order(got.boxes)], exp_scores[order(exp_boxes)], atol=1e-6)


def test_nms_suppresses_overlaps_per_class():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]])
    scores = torch.tensor([0.8, 0.9, 0.7])
    keep = nms(boxes, scores, 0.45)
    assert keep.tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2]


def test_box_iou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))


TINY = """
[net]
width=64
height=32
channels=3
letter_box=1
[convolutional]
filters=21
size=1
activation=linear
[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""


def test_detect_end_to_end_with_letterbox():
    net = netspec.build(TINY)
    with torch.no_grad():
        conv = net.layers[0].conv
        conv.weight.zero_()
        conv.bias.fill_(-10.0)  # every box improbable ...
        conv.bias[2:4] = 0.0  # anchor 0: w, h = exactly the anchor
        conv.bias[6] = 10.0  # class 1 certain
        conv.weight[4, 0] = 20.0  # ... objectness high only where input channel 0 is lit
    x = torch.zeros(1, 3, 32, 64)
    x[0, 0, 8, 40] = 1.0
    (dets,) = netspec.detect(net, x, conf_thresh=0.5)
    assert len(dets) == 1
    assert dets.classes[0].item() == 1 and dets.scores[0].item() > 0.99
    # in network-input pixels: anchor 0 is 10x14 pixels
    box = dets.boxes[0]
    assert ((box[0] + box[2]) / 2).item() == pytest.approx(40.0, abs=1e-3)  # (col 40 + sigmoid(-10)) / 64 * 64
    assert box[2] - box[0] == pytest.approx(10, rel=1e-4)
    assert box[3] - box[1] == pytest.approx(14, rel=1e-4)
    # the same image letterboxed from 128x128 (scaled to 32x32, padded left/right by 16 pixels)
    (orig,) = netspec.detect(net, x, conf_thresh=0.5, image_sizes=[(128, 128)])
    ob = orig.boxes[0]
    assert (ob[3] - ob[1]).item() == pytest.approx(14 * 128 / 32, rel=1e-4)
    cx = ((box[0] + box[2]) / 2).item()
    assert ((ob[0] + ob[2]) / 2).item() == pytest.approx((cx - 16) * 128 / 32, rel=1e-4)


def _tiny_detector():
    """A small detector whose weights make one confident class-1 box where the red channel is lit."""
    net = netspec.build(TINY.replace("letter_box=1\n", ""))
    with torch.no_grad():
        conv = net.layers[0].conv
        conv.weight.zero_()
        conv.bias.fill_(-10.0)
        conv.bias[2:4] = 0.0
        conv.bias[6] = 10.0
        conv.weight[4, 0] = 20.0
    return net


def red_square() -> np.ndarray:
    """A 128x64 picture, black but for a red square centred at (82, 18): one detection of _tiny_detector."""
    pixels = np.zeros((64, 128, 3), np.uint8)
    pixels[16:20, 80:84, 0] = 255
    return pixels


def test_detect_takes_paths_pil_images_and_arrays(tmp_path):
    from PIL import Image

    net = _tiny_detector()
    pixels = red_square()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    results = [netspec.detect(net, item, conf_thresh=0.5) for item in
               (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(pixels), pixels,
                netspec.load_image(pixels))]
    results.append(netspec.detect(net, [pixels, tmp_path / "a.png"], conf_thresh=0.5)[1:])
    for (dets,) in results:
        assert len(dets) == 1 and dets.classes.tolist() == [1]
        x1, y1, x2, y2 = dets.boxes[0].tolist()
        assert (x1 + x2) / 2 == pytest.approx(82, abs=2) and (y1 + y2) / 2 == pytest.approx(18, abs=2)
        assert torch.equal(dets.boxes, results[0][0].boxes)


def test_detect_refuses_a_tensor_of_another_size():
    net = _tiny_detector()
    with pytest.raises(netspec.NetspecError, match="network takes 3x32x64"):
        netspec.detect(net, torch.zeros(1, 3, 64, 128))
    with pytest.raises(netspec.NetspecError, match="network takes 3x32x64"):
        netspec.darknet_detections(net, torch.zeros(1, 3, 64, 128))
    with pytest.raises(netspec.NetspecError, match="image_sizes goes with"):
        netspec.detect(net, [np.zeros((8, 8, 3), np.uint8)], image_sizes=[(8, 8)])
    classifier = netspec.build("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=2\nsize=1\n")
    with pytest.raises(netspec.NetspecError, match="needs a network with"):
        netspec.detect(classifier, torch.zeros(1, 3, 8, 8))


def test_darknet_detections_letterbox_geometry():
    """A box decoded at the centre of the network input maps back through Darknet's integer letterbox."""
    net = _tiny_detector()
    x = torch.zeros(1, 3, 32, 64)
    x[0, 0, 8, 40] = 1.0
    (plain,) = netspec.darknet_detections(net, x, thresh=0.5)
    (boxed,) = netspec.darknet_detections(net, x, [(100, 100)], thresh=0.5, letterbox=True)
    # 100x100 into 64x32: new size 32x32 (integer), offset 16 px on each side
    px, py, pw, ph = plain.boxes[0].tolist()
    bx, by, bw, bh = boxed.boxes[0].tolist()
    assert bx == pytest.approx((px - 16 / 64) / (32 / 64), abs=1e-6)
    assert by == pytest.approx(py, abs=1e-6) and bh == pytest.approx(ph, abs=1e-6)
    assert bw == pytest.approx(pw * 2, abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_detections_stay_on_the_device():
    net = _tiny_detector().cuda()
    x = torch.zeros(2, 3, 32, 64, device="cuda")
    x[0, 0, 8, 40] = 1.0
    dets = netspec.darknet_detections(net, x, thresh=0.5)
    assert all(d.boxes.is_cuda and d.probs.is_cuda and d.objectness.is_cuda for d in dets)
    assert len(dets[0]) == 1 and len(dets[1]) == 0
    (found,) = netspec.detect(net, torch.zeros(1, 3, 32, 64, device="cuda"), conf_thresh=0.5)
    assert found.boxes.is_cuda and found.classes.is_cuda


class _FactoryDevices(torch.overrides.TorchFunctionMode):
    """Records the factory calls (zeros, arange, full, tensor, ...) made without an explicit device."""

    FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.tensor, torch.linspace,
                 torch.eye, torch.randn, torch.rand}

    def __init__(self):
        super().__init__()
        self.missing = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.FACTORIES and kwargs.get("device") is None:
            self.missing.append(func.__name__)
        return func(*args, **kwargs)


def test_detection_creates_every_tensor_on_the_input_device():
    """CUDA inputs must not meet CPU tensors: every tensor the decoding and NMS make names the device."""
    from netspec.nms import darknet_nms

    net = _tiny_detector()
    x = torch.zeros(2, 3, 32, 64)
    x[0, 0, 8, 40] = 1.0
    x[0, 0, 9, 41] = 1.0
    boxes = torch.rand(50, 4) * 0.3 + 0.2
    probs = torch.rand(50, 3)
    with _FactoryDevices() as mode:
        netspec.darknet_detections(net, x, thresh=0.5)
        netspec.detect(net, x, conf_thresh=0.5)
        darknet_nms(boxes, probs, 0.45)
        darknet_nms(boxes, probs.repeat(1, 10), 0.45, "diounms")
        darknet_nms(boxes, probs, -0.5)
        darknet_nms(boxes[:0], probs[:0], 0.45)
    assert mode.missing == []
