"""The box decoding of the detection heads: one decoder per head kind, used by :mod:`netspec.detection`
(Darknet's ``get_network_boxes``) and by the ONNX export (``decode=True``).

Each head module's ``decode_boxes(buffer)`` returns a :class:`HeadBoxes`: every candidate of the head in
Darknet's order (cell-major, then anchor), with Darknet's box (x, y, w, h relative to the network input),
its objectness, and the per-class probabilities before thresholding.  Only tensor operations with
shapes known from the module are used, so the decoding traces into an ONNX graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

# (boxes (K, 4) relative to the network input, image_w, image_h, net_w, net_h, letterbox) -> (K, 4)
Correction = Callable[[torch.Tensor, int, int, int, int, bool], torch.Tensor]


@dataclass
class HeadBoxes:
    """Every candidate box of one head, for a batch."""

    boxes: torch.Tensor  # (B, N, 4): centre x, y, width, height relative to the network input
    objectness: torch.Tensor  # (B, N): Darknet's ``dets[i].objectness``
    probs: torch.Tensor  # (B, N, classes): Darknet's per-class probability before thresholding
    gate: Optional[torch.Tensor]  # (B, N): a detection only where this is > thresh (None: every candidate)
    correct: Optional[Correction]  # maps boxes back onto the original image (None: they already are)
    nms_kind: str = "default"  # the head's nms_kind= (Darknet uses the last head's)
    beta_nms: float = 0.6
    darknet_pixels: bool = False  # Darknet's get_network_boxes leaves these boxes in image pixels (YOLOv1)
    thresholded: bool = True  # Darknet zeroes the probabilities at or below thresh (not for tree= heads)


def _letterbox_size(image_w: int, image_h: int, net_w: int, net_h: int, letterbox: bool) -> tuple[int, int]:
    if not letterbox:
        return net_w, net_h
    if np.float32(net_w) / np.float32(image_w) < np.float32(net_h) / np.float32(image_h):
        return net_w, (image_h * net_w) // image_w
    return (image_w * net_h) // image_h, net_h


def _correct(boxes: torch.Tensor, image_w: int, image_h: int, net_w: int, net_h: int, letterbox: bool,
             size_factor: Callable[[int, int], float]) -> torch.Tensor:
    new_w, new_h = _letterbox_size(image_w, image_h, net_w, net_h, letterbox)
    ratio_w = float(np.float32(new_w) / np.float32(net_w))
    ratio_h = float(np.float32(new_h) / np.float32(net_h))
    x, y, w, h = boxes.unbind(-1)
    # Darknet: b.x = (b.x - deltaw/2./netw) / ratiow, in double (2. is a double), stored as float
    x = ((x.double() - (net_w - new_w) / 2.0 / net_w) / ratio_w).float()
    y = ((y.double() - (net_h - new_h) / 2.0 / net_h) / ratio_h).float()
    w = w * size_factor(new_w, net_w)
    h = h * size_factor(new_h, net_h)
    return torch.stack([x, y, w, h], -1)


def correct_yolo_boxes(boxes: torch.Tensor, image_w: int, image_h: int, net_w: int, net_h: int,
                       letterbox: bool) -> torch.Tensor:
    """Darknet's ``correct_yolo_boxes`` (relative output): undo the letterbox's integer geometry."""
    return _correct(boxes, image_w, image_h, net_w, net_h, letterbox,
                    lambda new, net: float(np.float32(1) / (np.float32(new) / np.float32(net))))


def correct_gaussian_yolo_boxes(boxes: torch.Tensor, image_w: int, image_h: int, net_w: int, net_h: int,
                                letterbox: bool) -> torch.Tensor:
    """Darknet's ``correct_gaussian_yolo_boxes``: the same geometry, sizes scaled by ``(float)netw/new_w``."""
    return _correct(boxes, image_w, image_h, net_w, net_h, letterbox,
                    lambda new, net: float(np.float32(net) / np.float32(new)))


def _grid(h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row indices shaped (1, H, W, 1) for buffers laid out (B, H, W, A, ...)."""
    cols = torch.arange(w, dtype=torch.float32, device=like.device).view(1, 1, w, 1)
    rows = torch.arange(h, dtype=torch.float32, device=like.device).view(1, h, 1, 1)
    return cols, rows


def decode_yolo(head, buf: torch.Tensor) -> HeadBoxes:
    """``[yolo]`` / ``[Gaussian_yolo]``: get_yolo_box / get_gaussian_yolo_box over every cell and anchor."""
    _, _, h, w = buf.shape
    a, e = head.n_anchors, head.entries
    v = buf.float().reshape(-1, a, e, h, w).permute(0, 3, 4, 1, 2)  # (B, H, W, A, E)
    gaussian = head.kind == "Gaussian_yolo"
    ix, iy, iw, ih, iobj = (0, 2, 4, 6, 8) if gaussian else (0, 1, 2, 3, 4)
    cols, rows = _grid(h, w, buf)
    anchors = torch.tensor(head.anchors, dtype=torch.float32, device=buf.device)  # (A, 2) input pixels
    net_w, net_h = head.net_size
    bx = (cols + v[..., ix]) / w
    by = (rows + v[..., iy]) / h
    if head.new_coords:
        bw = v[..., iw] * v[..., iw] * 4 * anchors[:, 0] / net_w
        bh = v[..., ih] * v[..., ih] * 4 * anchors[:, 1] / net_h
    else:
        bw = torch.exp(v[..., iw]) * anchors[:, 0] / net_w
        bh = torch.exp(v[..., ih]) * anchors[:, 1] / net_h
    obj = v[..., iobj]
    probs = obj[..., None] * v[..., iobj + 1:]
    if gaussian:
        point = head.extra.get("yolo_point", "center")
        if point == "left_top":
            bx, by = bx + bw / 2, by + bh / 2
        elif point == "right_bottom":
            bx, by = bx - bw / 2, by - bh / 2
        uncertainty = (v[..., 1] + v[..., 3] + v[..., 5] + v[..., 7]) / 4
        probs = probs * (1 - uncertainty)[..., None]
    n = h * w * a
    boxes = torch.stack([bx, by, bw, bh], -1).reshape(-1, n, 4)
    extra = head.extra
    return HeadBoxes(boxes, obj.reshape(-1, n), probs.reshape(-1, n, head.classes), obj.reshape(-1, n),
                     correct_gaussian_yolo_boxes if gaussian else correct_yolo_boxes,
                     extra.get("nms_kind", "default"), extra.get("beta_nms", 0.6))


def decode_region(head, buf: torch.Tensor) -> HeadBoxes:
    """``[region]`` (flat softmax): get_region_boxes as AlexeyAB's custom_get_region_detections calls it
    (boxes relative, objectness 1, probability ``scale * class``), corrected like ``[yolo]``."""
    _, h, w, a, _ = buf.shape
    v = buf.float()
    cols, rows = _grid(h, w, buf)
    anchors = torch.tensor(head.anchors, dtype=torch.float32, device=buf.device)  # (A, 2) grid cells
    bx = (cols + torch.sigmoid(v[..., 0])) / w
    by = (rows + torch.sigmoid(v[..., 1])) / h
    bw = torch.exp(v[..., 2]) * anchors[:, 0] / w  # Darknet's DOABS
    bh = torch.exp(v[..., 3]) * anchors[:, 1] / h
    n = h * w * a
    boxes = torch.stack([bx, by, bw, bh], -1).reshape(-1, n, 4)
    ones = torch.ones_like(v[..., 4]).reshape(-1, n)
    if head.tree is None:
        probs = v[..., 4:5] * v[..., 5:]
        return HeadBoxes(boxes, ones, probs.reshape(-1, n, head.classes), None, correct_yolo_boxes)
    # tree=: hierarchy_predictions (each class times its ancestors), then the deepest class above 0.5 (the
    # last one in file order) alone, its probability not scaled by the objectness, which gates it instead
    probs = _tree_probabilities(v[..., 5:], head.tree_parents).reshape(-1, n, head.classes)
    return HeadBoxes(boxes, ones, probs, v[..., 4].reshape(-1, n), correct_yolo_boxes, thresholded=False)


def _tree_probabilities(cls: torch.Tensor, parents: list[int]) -> torch.Tensor:
    k = cls.shape[-1]
    parent = torch.tensor(parents, dtype=torch.long, device=cls.device)
    has_parent = parent >= 0
    safe = parent.clamp(min=0)
    depth, level = 0, parent.tolist()
    while any(p >= 0 for p in level) and depth < k:  # the longest chain of ancestors
        level = [parents[p] if p >= 0 else -1 for p in level]
        depth += 1
    p = cls
    for _ in range(depth):  # p[j] = cls[j] * p[parent[j]], settled from the roots down
        p = cls * torch.where(has_parent, p.index_select(-1, safe), torch.ones_like(p))
    above = p > 0.5
    index = torch.arange(k, device=cls.device)
    last = torch.where(above, index, torch.full_like(index, -1)).amax(-1, keepdim=True)
    return torch.where(index == last, p, torch.zeros_like(p))


def decode_detection(head, buf: torch.Tensor) -> HeadBoxes:
    """YOLOv1 ``[detection]``: get_detection_detections.  Darknet scales these boxes by the image size but
    not back (its output is in pixels there); netspec keeps them relative, like every other head."""
    s, k, n = head.side, head.classes, head.num
    cells = s * s
    flat = buf.float().reshape(-1, cells * (k + n * (1 + head.coords)))
    cls = flat[:, :cells * k].reshape(-1, cells, 1, k)
    scale = flat[:, cells * k:cells * (k + n)].reshape(-1, cells, n)
    # Darknet reads 4 box values per box whatever coords= says
    coords = flat[:, cells * (k + n):cells * (k + n + 4 * n)].reshape(-1, cells, n, 4)
    index = torch.arange(cells, dtype=torch.float32, device=buf.device).view(1, cells, 1)
    cols = torch.remainder(index, s)
    rows = torch.div(index - cols, s)
    bx = (coords[..., 0] + cols) / s
    by = (coords[..., 1] + rows) / s
    bw, bh = coords[..., 2], coords[..., 3]
    if head.sqrt:
        bw, bh = bw * bw, bh * bh
    boxes = torch.stack([bx, by, bw, bh], -1).reshape(-1, cells * n, 4)
    probs = (scale[..., None] * cls).reshape(-1, cells * n, k)
    return HeadBoxes(boxes, scale.reshape(-1, cells * n), probs, None, None, darknet_pixels=True)
