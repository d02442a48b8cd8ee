"""Detections from a detector's head buffers: decode ``[yolo]``/``[Gaussian_yolo]``/``[region]``/``[detection]``
outputs into boxes (reference §3.10–§3.13), undo letterboxing, and apply per-class NMS in torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sections.heads import DetectionBuffer, RegionBuffer, YoloBuffer


@dataclass
class Detections:
    """Boxes of one image: ``boxes`` (N, 4) as x1, y1, x2, y2 in pixels, ``scores`` (N,), ``classes`` (N,)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())


@dataclass
class Candidates:
    """Decoded boxes of one image before NMS: centre boxes relative to the input (0..1) and class scores."""

    boxes: torch.Tensor  # (N, 4): x, y, w, h relative to the network input
    scores: torch.Tensor  # (N, classes): Darknet's per-class probability (0 where <= thresh)


def _grid(h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.arange(h, device=device, dtype=torch.float32).view(h, 1).expand(h, w)
    cols = torch.arange(w, device=device, dtype=torch.float32).view(1, w).expand(h, w)
    return rows, cols


def _decode_yolo(head: YoloBuffer, buf: torch.Tensor, thresh: float) -> list[Candidates]:
    b, _, h, w = buf.shape
    a, e = head.n_anchors, head.entries
    v = buf.float().reshape(b, a, e, h, w)
    rows, cols = _grid(h, w, buf.device)
    anchors = torch.tensor(head.anchors, dtype=torch.float32, device=buf.device).view(1, a, 2, 1, 1)
    net_w, net_h = head.net_size
    if head.kind == "Gaussian_yolo":
        tx, ty, tw, th, obj, cls = v[:, :, 0], v[:, :, 2], v[:, :, 4], v[:, :, 6], v[:, :, 8], v[:, :, 9:]
        uncertainty = (v[:, :, 1] + v[:, :, 3] + v[:, :, 5] + v[:, :, 7]) / 4
    else:
        tx, ty, tw, th, obj, cls = v[:, :, 0], v[:, :, 1], v[:, :, 2], v[:, :, 3], v[:, :, 4], v[:, :, 5:]
        uncertainty = None
    bx = (cols + tx) / w
    by = (rows + ty) / h
    if head.new_coords:
        bw = tw * tw * 4 * anchors[:, :, 0] / net_w
        bh = th * th * 4 * anchors[:, :, 1] / net_h
    else:
        bw = torch.exp(tw) * anchors[:, :, 0] / net_w
        bh = torch.exp(th) * anchors[:, :, 1] / net_h
    point = head.extra.get("yolo_point", "center")
    if point == "left_top":
        bx, by = bx + bw / 2, by + bh / 2
    elif point == "right_bottom":
        bx, by = bx - bw / 2, by - bh / 2
    prob = obj[:, :, None] * cls
    if uncertainty is not None:
        prob = prob * (1 - uncertainty[:, :, None])
    prob = torch.where(prob > thresh, prob, torch.zeros_like(prob))
    out = []
    for i in range(b):
        keep = obj[i] > thresh  # (a, h, w)
        boxes = torch.stack([bx[i][keep], by[i][keep], bw[i][keep], bh[i][keep]], 1)
        scores = prob[i].permute(0, 2, 3, 1)[keep]
        out.append(Candidates(boxes, scores))
    return out


def _decode_region(head: RegionBuffer, buf: torch.Tensor, thresh: float) -> list[Candidates]:
    b, h, w, n, _ = buf.shape
    rows, cols = _grid(h, w, buf.device)
    anchors = torch.tensor(head.anchors, dtype=torch.float32, device=buf.device)  # (n, 2) grid cells
    bx = (cols[:, :, None] + torch.sigmoid(buf[..., 0])) / w
    by = (rows[:, :, None] + torch.sigmoid(buf[..., 1])) / h
    bw = torch.exp(buf[..., 2]) * anchors[:, 0] / w
    bh = torch.exp(buf[..., 3]) * anchors[:, 1] / h
    obj = buf[..., 4]
    prob = obj[..., None] * buf[..., 5:]
    prob = torch.where(prob > thresh, prob, torch.zeros_like(prob))
    out = []
    for i in range(b):
        keep = obj[i] > thresh
        out.append(Candidates(torch.stack([bx[i][keep], by[i][keep], bw[i][keep], bh[i][keep]], 1), prob[i][keep]))
    return out


def _decode_detection(head: DetectionBuffer, buf: torch.Tensor, thresh: float) -> list[Candidates]:
    b = buf.shape[0]
    s, k, n = head.side, head.classes, head.num
    flat = buf.float().reshape(b, -1)
    probs = flat[:, : s * s * k].reshape(b, s * s, 1, k)
    conf = flat[:, s * s * k: s * s * (k + n)].reshape(b, s * s, n)
    coords = flat[:, s * s * (k + n):].reshape(b, s * s, n, 4)
    cell = torch.arange(s * s, device=buf.device)
    col = (cell % s).float().view(1, -1, 1)
    row = (cell // s).float().view(1, -1, 1)
    bx = (coords[..., 0] + col) / s
    by = (coords[..., 1] + row) / s
    power = 2 if head.sqrt else 1
    bw = coords[..., 2] ** power
    bh = coords[..., 3] ** power
    prob = conf[..., None] * probs
    prob = torch.where(prob > thresh, prob, torch.zeros_like(prob))
    out = []
    for i in range(b):
        boxes = torch.stack([bx[i], by[i], bw[i], bh[i]], -1).reshape(-1, 4)
        scores = prob[i].reshape(-1, k)
        keep = scores.amax(1) > 0
        out.append(Candidates(boxes[keep], scores[keep]))
    return out


def decode(net, head_outputs: list[torch.Tensor], thresh: float = 0.25) -> list[Candidates]:
    """Candidate boxes per image from the head buffers ``net(x)`` returned (Darknet's decoding)."""
    per_image: list[list[Candidates]] = []
    for index, buf in zip(net.outputs, head_outputs):
        head = net.layers[index]
        if isinstance(head, YoloBuffer):
            found = _decode_yolo(head, buf, thresh)
        elif isinstance(head, RegionBuffer):
            found = _decode_region(head, buf, thresh)
        elif isinstance(head, DetectionBuffer):
            found = _decode_detection(head, buf, thresh)
        else:
            raise TypeError(f"layer {index} is not a detection head")
        per_image.append(found)
    merged = []
    for parts in zip(*per_image):
        merged.append(Candidates(torch.cat([p.boxes for p in parts]), torch.cat([p.scores for p in parts])))
    return merged


def _corners(boxes: torch.Tensor) -> torch.Tensor:
    x, y, w, h = boxes.unbind(1)
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], 1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of corner boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def _diou(a: torch.Tensor, b: torch.Tensor, beta: float) -> torch.Tensor:
    iou = box_iou(a, b)
    ca = (a[:, :2] + a[:, 2:]) / 2
    cb = (b[:, :2] + b[:, 2:]) / 2
    d2 = ((ca[:, None] - cb[None]) ** 2).sum(2)
    lt = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    c2 = ((rb - lt) ** 2).sum(2).clamp(min=1e-12)
    return iou - (d2 / c2) ** beta


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float, kind: str = "default",
        beta: float = 0.6) -> torch.Tensor:
    """Indices kept by greedy NMS (Darknet's do_nms_sort for one class; ``diounms``/``greedynms`` use DIoU)."""
    order = torch.argsort(scores, descending=True, stable=True)
    corners = _corners(boxes[order])
    overlap = _diou(corners, corners, beta if kind == "diounms" else 0.6) if kind in (
        "diounms", "greedynms") else box_iou(corners, corners)
    alive = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if alive[i]:
            alive[i + 1:] &= ~(overlap[i, i + 1:] > iou_thresh)
    return order[alive]


def _letterbox_correct(boxes: torch.Tensor, net_size: tuple[int, int], image_size: tuple[int, int],
                       letterbox: bool) -> torch.Tensor:
    """Relative centre boxes on the network input → corner boxes in pixels of the original image."""
    net_w, net_h = net_size
    img_w, img_h = image_size
    if letterbox:
        if net_w / img_w < net_h / img_h:
            new_w, new_h = net_w, img_h * net_w / img_w
        else:
            new_w, new_h = img_w * net_h / img_h, net_h
        x, y, w, h = boxes.unbind(1)
        x = (x - (net_w - new_w) / 2 / net_w) / (new_w / net_w)
        y = (y - (net_h - new_h) / 2 / net_h) / (new_h / net_h)
        w = w * net_w / new_w
        h = h * net_h / new_h
        boxes = torch.stack([x, y, w, h], 1)
    corners = _corners(boxes)
    return corners * torch.tensor([img_w, img_h, img_w, img_h], dtype=corners.dtype, device=corners.device)


@torch.no_grad()
def detect(net, images: torch.Tensor, conf_thresh: float = 0.25, nms_thresh: float = 0.45,
           image_sizes: list[tuple[int, int]] | None = None, letterbox: bool | None = None) -> list[Detections]:
    """Run a detector on ``images`` (N, C, H, W, RGB in [0, 1]) and return boxes per image.

    Boxes are in pixels of the network input, or of the original images when ``image_sizes``
    ``[(width, height), ...]`` is given (then ``letterbox`` — default ``[net] letter_box`` — says
    whether the images were letterboxed rather than stretched).  NMS is per class, with the last
    head's ``nms_kind``.
    """
    if not net.is_detector:
        raise ValueError("detect() needs a network with [yolo], [region] or [detection] heads")
    was_training = net.training
    net.eval()
    try:
        heads = net(images)
    finally:
        net.train(was_training)
    c, h, w = net.input_shape
    letterbox = bool(net.net.letter_box) if letterbox is None else letterbox
    last = net.layers[net.outputs[-1]]
    extra = getattr(last, "extra", {})
    kind, beta = extra.get("nms_kind", "default"), extra.get("beta_nms", 0.6)
    results = []
    for i, cand in enumerate(decode(net, heads, conf_thresh)):
        size = image_sizes[i] if image_sizes is not None else (w, h)
        boxes, classes, scores = [], [], []
        for k in range(cand.scores.shape[1] if cand.scores.numel() else 0):
            col = cand.scores[:, k]
            idx = torch.nonzero(col > 0).flatten()
            if idx.numel() == 0:
                continue
            keep = idx[nms(cand.boxes[idx], col[idx], nms_thresh, kind, beta)]
            boxes.append(cand.boxes[keep])
            scores.append(col[keep])
            classes.append(torch.full((len(keep),), k, dtype=torch.long))
        if boxes:
            rel = torch.cat(boxes)
            pix = _letterbox_correct(rel, (w, h), size, letterbox and image_sizes is not None)
            score = torch.cat(scores)
            order = torch.argsort(score, descending=True)
            results.append(Detections(pix[order], score[order], torch.cat(classes)[order]))
        else:
            results.append(Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)))
    return results
