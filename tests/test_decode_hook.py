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
