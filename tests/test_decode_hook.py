"""One decoder per head kind (the head module's ``decode_boxes``): ``netspec.darknet_detections`` and the
ONNX export's ``decode=True`` graph (run by onnxruntime) give the same boxes and scores for every head kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import netspec
from netspec.detection import darknet_detections
from netspec.onnx_export import export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

NET = "[net]\nwidth={w}\nheight={h}\nchannels=3\n"
YOLO_ANCHORS = "anchors=10,14, 23,27, 37,58, 81,82, 135,169, 344,319\nnum=6\n"

HEADS = {
    "yolo": "[convolutional]\nfilters=21\nsize=1\nactivation=linear\n[yolo]\nmask=3,4,5\nclasses=2\n" + YOLO_ANCHORS,
    "yolo_scale_x_y": "[convolutional]\nfilters=21\nsize=1\nactivation=linear\n[yolo]\nmask=0,1,2\nclasses=2\n"
                      "scale_x_y=1.05\nnms_kind=diounms\nbeta_nms=0.7\n" + YOLO_ANCHORS,
    "new_coords": "[convolutional]\nfilters=21\nsize=1\nactivation=logistic\n[yolo]\nmask=0,1,2\nclasses=2\n"
                  "new_coords=1\nscale_x_y=2.0\n" + YOLO_ANCHORS,
    "Gaussian_yolo": "[convolutional]\nfilters=33\nsize=1\nactivation=linear\n[Gaussian_yolo]\nmask=0,1,2\n"
                     "classes=2\n" + YOLO_ANCHORS,
    "Gaussian_yolo_left_top": "[convolutional]\nfilters=33\nsize=1\nactivation=linear\n[Gaussian_yolo]\n"
                              "mask=0,1,2\nclasses=2\nyolo_point=left_top\n" + YOLO_ANCHORS,
    "region": "[convolutional]\nfilters=35\nsize=1\nactivation=linear\n[region]\nanchors=1.08,1.19, 3.42,4.41, "
              "6.63,11.38, 9.42,5.11, 16.62,10.52\nclasses=2\nnum=5\nsoftmax=1\n",
    "detection": "[maxpool]\nsize=8\nstride=8\n[connected]\noutput={out}\nactivation=logistic\n[detection]\n"
                 "classes=2\ncoords=4\nnum=2\nside=2\nsoftmax=1\nsqrt=1\n",
}


def _net(kind: str, w: int = 32, h: int = 16):
    text = NET.format(w=w, h=h) + HEADS[kind].format(out=2 * 2 * (2 * 5 + 2))
    return netspec.build(text, seed=3).eval()


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_detect_and_onnx_decode_agree(kind, tmp_path):
    net = _net(kind)
    x = torch.rand(2, 3, 16, 32, generator=torch.Generator().manual_seed(4))
    export_onnx(net, tmp_path / "dec.onnx", decode=True, batch=2)
    session = ort.InferenceSession(str(tmp_path / "dec.onnx"), providers=["CPUExecutionProvider"])
    onnx_boxes, onnx_scores = session.run(None, {"images": x.numpy()})
    # every candidate (thresh 0, no NMS), in Darknet's order: the ONNX graph's candidates one for one
    dets = darknet_detections(net, x, thresh=0.0, nms=0)
    for i, d in enumerate(dets):
        assert len(d) == onnx_boxes.shape[1]
        bx, by, bw, bh = d.boxes.unbind(1)
        corners = torch.stack([(bx - bw / 2) * 32, (by - bh / 2) * 16, (bx + bw / 2) * 32, (by + bh / 2) * 16], 1)
        np.testing.assert_allclose(corners.numpy(), onnx_boxes[i], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(d.probs.numpy(), onnx_scores[i], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_decode_hook_exists_on_every_head_kind(kind):
    net = _net(kind)
    for index in net.outputs:
        module = net.layers[index]
        assert module.decodes_boxes
        buf = net(torch.rand(1, 3, 16, 32))[0]
        hb = module.decode_boxes(buf)
        assert hb.boxes.shape[:2] == hb.probs.shape[:2] == hb.objectness.shape


TREE = "a -1\nb -1\nc 0\nd 0\ne 1\nf 2\ng 2\n"  # groups: {a, b}, {c, d} under a, {e} under b, {f, g} under c


def _reference_tree_detections(buf: np.ndarray, parents: list[int], thresh: float) -> list[tuple[int, int, float]]:
    """region_layer.c get_region_boxes with a tree: hierarchy_predictions, then from the last class down the
    first one above 0.5 is kept (its probability, if the objectness is above thresh), the others zeroed."""
    found = []
    h, w, a, _ = buf.shape
    for i in range(h * w):
        for n in range(a):
            v = buf[i // w, i % w, n]
            scale, p = v[4], list(v[5:].astype(np.float64))
            for j in range(len(p)):
                if parents[j] >= 0:
                    p[j] *= p[parents[j]]
            kept = False
            for j in range(len(p) - 1, -1, -1):
                if not kept and p[j] > 0.5:
                    kept = True
                    if scale > thresh:
                        found.append((i * a + n, j, p[j]))
    return found


def _tree_net(tmp_path):
    """A [region] with a 7-class hierarchy, confident enough that some hierarchical products pass 0.5."""
    (tmp_path / "tree.txt").write_text(TREE)
    cfg = tmp_path / "tree.cfg"
    cfg.write_text(NET.format(w=32, h=16) + "[convolutional]\nfilters=24\nsize=1\nactivation=linear\n[region]\n"
                   "anchors=1,1, 2,3\nclasses=7\nnum=2\nsoftmax=1\ntree=tree.txt\n")
    net = netspec.build(cfg, seed=7).eval()
    with torch.no_grad():
        net.layers[0].conv.weight.mul_(8)
    return net, torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(8))


def test_hierarchical_region_decodes_like_darknet(tmp_path):
    net, x = _tree_net(tmp_path)
    with torch.no_grad():
        (buf,) = net(x)
    head = net.layers[net.outputs[0]]
    assert head.decodes_boxes and head.tree_parents == [-1, -1, 0, 0, 1, 2, 2]
    want = _reference_tree_detections(buf[0].numpy(), head.tree_parents, 0.2)
    assert want
    (dets,) = darknet_detections(net, x, thresh=0.2, nms=0)
    hb = head.decode_boxes(buf)
    keep = (hb.probs[0] > 0).any(1) & (hb.gate[0] > 0.2)
    rows = torch.nonzero(keep).flatten().tolist()
    got = [(rows[b], int(k), float(p)) for b, k, p in zip(*dets.objects())]
    assert [(i, k) for i, k, _ in got] == [(i, k) for i, k, _ in want]
    np.testing.assert_allclose([p for *_, p in got], [p for *_, p in want], rtol=1e-5)


def test_hierarchical_region_exports_its_decoding(tmp_path):
    net, x = _tree_net(tmp_path)
    export_onnx(net, tmp_path / "tree.onnx", decode=True)
    session = ort.InferenceSession(str(tmp_path / "tree.onnx"), providers=["CPUExecutionProvider"])
    _, scores = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        hb = net.layers[net.outputs[0]].decode_boxes(net(x)[0])
    assert (scores > 0.5).any()
    np.testing.assert_allclose(scores[0], hb.probs[0].numpy(), rtol=1e-5, atol=1e-6)
