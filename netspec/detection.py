"""Detections as Darknet's ``detector test`` makes them: the heads' boxes (each head module's
``decode_boxes`` hook), thresholds as ``get_network_boxes``, boxes mapped back onto the original images
(``correct_yolo_boxes``' integer letterbox geometry) and the NMS of the last head's ``nms_kind``.

:func:`darknet_detections` returns Darknet's detections (boxes relative to each image, per-class
probabilities); :func:`detect` is the convenience on top: it takes image files, PIL images, arrays or
tensors, sizes them for the network itself and returns corner boxes in pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch

from .errors import NetspecError
from .nms import darknet_nms, overlap_measure

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network


class DetectError(NetspecError, ValueError):
    """Detection was asked of something it cannot work on (not a detector, images of the wrong size, ...)."""


@dataclass
class Dets:
    """Darknet's detections of one image (``dets`` after ``get_network_boxes`` and NMS), the candidates
    left with a probability above the threshold for at least one class."""

    boxes: torch.Tensor  # (K, 4): centre x, y, width, height relative to the original image
    objectness: torch.Tensor  # (K,)
    probs: torch.Tensor  # (K, classes): 0 where <= thresh or suppressed by NMS
    # (K,) rows whose box Darknet reports in image pixels instead (YOLOv1 [detection] heads), or None
    darknet_pixels: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.objectness.numel())

    def objects(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One entry per reported (box, class): ``(box index, class id, confidence)``, box by box."""
        box, cls = torch.nonzero(self.probs > 0, as_tuple=True)
        return box, cls, self.probs[box, cls]


@dataclass
class Detections:
    """Boxes of one image: ``boxes`` (N, 4) as x1, y1, x2, y2 in pixels, ``scores`` (N,), ``classes`` (N,)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.numel())


def _describe(net, index: int) -> str:
    spec = net.spec.layers[index]
    where = f"{spec.path}:{spec.block.line}" if spec.path else f"line {spec.block.line}"
    return f"[{spec.type}] #{index} ({where})"


def _heads(net) -> list:
    if not getattr(net, "is_detector", False):
        raise DetectError("detection needs a network with [yolo], [Gaussian_yolo], [region] or [detection] heads")
    modules = []
    classes = set()
    for index in net.outputs:
        module = net.layers[index]
        if not getattr(module, "decodes_boxes", False):
            raise DetectError(f"{_describe(net, index)}: netspec cannot decode this head into boxes "
                              "(a tree= head whose hierarchy file could not be read, or a head without a decoder)")
        modules.append(module)
        classes.add(int(module.classes))
    if len(classes) > 1:
        raise DetectError(f"the heads have different numbers of classes ({sorted(classes)}); Darknet's detections "
                          "need one class list")
    return modules


def _forward(net, images: torch.Tensor) -> list[torch.Tensor]:
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            return net(images)
    finally:
        net.train(was_training)


def _check_input(net, images: torch.Tensor) -> None:
    c, h, w = net.input_shape
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise DetectError("expected the network input as a tensor (N, C, H, W)")
    if tuple(images.shape[1:]) != (c, h, w):
        raise DetectError(f"the images are {images.shape[1]}x{images.shape[2]}x{images.shape[3]} (CxHxW) but the "
                          f"network takes {c}x{h}x{w}: pass the original images (paths, PIL images, arrays) to "
                          "detect() so that it resizes them, or resize/letterbox them first "
                          "(netspec.resize_image / netspec.letterbox) and give image_sizes")


@torch.no_grad()
def darknet_detections(net: Network, images: torch.Tensor, image_sizes: Sequence[tuple[int, int]] | None = None,
                       thresh: float = 0.25, hier_thresh: float = 0.5, nms: float = 0.45,
                       letterbox: bool = False, darknet_order: bool = False) -> list[Dets]:
    """Darknet's ``get_network_boxes`` + NMS for a batch ``images`` (N, C, H, W) already sized to the network.

    ``image_sizes`` ``[(width, height), ...]`` are the original images' sizes (default: the network's, i.e.
    boxes relative to the input); ``letterbox`` says the inputs were made by :func:`netspec.letterbox`
    (``[net] letter_box=1`` implies it, as in Darknet).  A candidate exists where the objectness is above
    ``thresh`` ([yolo]-type heads; every candidate of [region]/[detection] heads), its per-class probability
    is kept where above ``thresh``; NMS follows the last head's ``nms_kind``/``beta_nms`` (``nms=0``: none,
    as Darknet's ``if (nms)``).  ``darknet_order=True`` returns the rows in the order Darknet's NMS leaves
    its ``dets`` (one stable sort by each class's probability in turn, so the last class's decides: the
    order ``detector map`` walks when it counts at-threshold TPs); otherwise in candidate order.
    ``hier_thresh`` is accepted for Darknet's signature: its ``detector test`` decodes hierarchical (tree=)
    heads without it (the deepest class above 0.5), and so does netspec.  Everything stays on the device of
    ``images``.
    """
    heads = _heads(net)
    _check_input(net, images)
    _, net_h, net_w = net.input_shape
    n = images.shape[0]
    if image_sizes is None:
        image_sizes = [(net_w, net_h)] * n
    if len(image_sizes) != n:
        raise DetectError(f"{n} images but {len(image_sizes)} image_sizes")
    letterbox = bool(letterbox or net.net.letter_box)
    if n == 0:
        return []
    decoded = [module.decode_boxes(buf) for module, buf in zip(heads, _forward(net, images))]
    last = decoded[-1]
    any_pixels = any(hb.darknet_pixels for hb in decoded)
    results = []
    for i, (img_w, img_h) in enumerate(image_sizes):
        if int(img_w) < 1 or int(img_h) < 1:
            raise DetectError(f"image_sizes[{i}] = {image_sizes[i]!r} is not a (width, height) in pixels")
        boxes, objectness, probs, pixels = [], [], [], []
        for hb in decoded:
            p = hb.probs[i]
            if hb.thresholded:
                p = torch.where(p > thresh, p, torch.zeros_like(p))
            keep = (p > 0).any(1)
            if hb.gate is not None:
                keep &= hb.gate[i] > thresh
            b = hb.boxes[i][keep]
            if hb.correct is not None:
                b = hb.correct(b, int(img_w), int(img_h), net_w, net_h, letterbox)
            boxes.append(b)
            objectness.append(hb.objectness[i][keep])
            probs.append(p[keep])
            pixels.append(torch.full((b.shape[0],), hb.darknet_pixels, dtype=torch.bool, device=b.device))
        b, o, p, px = torch.cat(boxes), torch.cat(objectness), torch.cat(probs), torch.cat(pixels)
        if nms:
            raw = p
            p = darknet_nms(b, p, nms, last.nms_kind, last.beta_nms)
            if darknet_order:
                order = darknet_nms_order(raw)
                b, o, p, px = b[order], o[order], p[order], px[order]
            alive = (p > 0).any(1)
            b, o, p, px = b[alive], o[alive], p[alive], px[alive]
        results.append(Dets(b, o, p, px if any_pixels else None))
    return results


def darknet_nms_order(probs: torch.Tensor) -> torch.Tensor:
    """The row order ``do_nms_sort``/``diounms_sort`` leave: for each class k in turn, a stable sort by the
    (not yet suppressed) ``probs[:, k]``, descending (glibc's ``qsort`` is a stable merge sort)."""
    order = torch.arange(probs.shape[0], device=probs.device)
    for k in range(probs.shape[1]):
        column = probs[order, k]
        if bool((column > 0).any()):  # an all-zero column is a no-op sort
            order = order[torch.argsort(column, descending=True, stable=True)]
    return order


# ---------------------------------------------------------------------------------------------- images
def _is_image_item(item: Any) -> bool:
    import numpy as np

    if isinstance(item, (str, os.PathLike, np.ndarray)):
        return True
    if isinstance(item, torch.Tensor):
        return item.dim() == 3
    return hasattr(item, "mode") and hasattr(item, "convert")  # a PIL image


def _device_of(net) -> torch.device:
    for t in net.parameters():
        return t.device
    for t in net.buffers():
        return t.device
    return torch.device("cpu")


def prepare_images(net: Network, images: Sequence[Any], letterbox: bool | None = None,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Decode and size ``images`` (paths, PIL images, uint8 arrays, float (C, H, W) tensors in [0, 1]) for
    ``net`` as Darknet's ``detector test`` does: ``resize_image``, or ``letterbox_image`` when ``letterbox``
    (default ``[net] letter_box``).  Returns the batch and the original ``(width, height)`` of each."""
    from .images import letterbox as letterbox_image
    from .images import load_image, resize_image

    c, h, w = net.input_shape
    if letterbox is None:
        letterbox = bool(net.net.letter_box)
    device = torch.device(device) if device is not None else _device_of(net)
    sized, sizes = [], []
    for item in images:
        img = item.float() if isinstance(item, torch.Tensor) else load_image(item)
        if img.dim() != 3 or img.shape[0] != 3:
            raise DetectError(f"an image tensor must be (3, H, W), got {tuple(img.shape)}")
        if c != 3:
            raise DetectError(f"the network takes {c} channels; netspec.detect reads RGB images (3 channels)")
        sizes.append((int(img.shape[2]), int(img.shape[1])))
        img = img.to(device)
        sized.append(letterbox_image(img, w, h) if letterbox else resize_image(img, w, h))
    if not sized:
        return torch.zeros(0, c, h, w, device=device), []
    return torch.stack(sized), sizes


def to_detections(dets: Dets, image_size: tuple[int, int]) -> Detections:
    """One row per reported (box, class), corner boxes in pixels of an image of ``image_size`` (w, h)."""
    box, cls, score = dets.objects()
    x, y, bw, bh = dets.boxes[box].unbind(1) if box.numel() else dets.boxes.new_zeros(4, 0).unbind(0)
    img_w, img_h = image_size
    corners = torch.stack([(x - bw / 2) * img_w, (y - bh / 2) * img_h, (x + bw / 2) * img_w,
                           (y + bh / 2) * img_h], 1)
    order = torch.argsort(score, descending=True, stable=True)
    return Detections(corners[order], score[order], cls[order])


@torch.no_grad()
def detect(net: Network, images: Any, conf_thresh: float = 0.25, nms_thresh: float = 0.45,
           image_sizes: Optional[Sequence[tuple[int, int]]] = None, letterbox: bool | None = None,
           hier_thresh: float = 0.5) -> list[Detections]:
    """Run a detector and return the boxes of each image (pixels, x1, y1, x2, y2; one row per class).

    ``images`` is one image or a list of them: file paths, PIL images, uint8 (H, W[, C]) arrays or float
    (3, H, W) tensors in [0, 1], of any size: each is resized (or letterboxed: ``letterbox``, default
    ``[net] letter_box``) exactly as Darknet does, and its boxes come back in its own pixels.  Or the
    network input itself, a tensor (N, C, H, W) of the network's size: boxes in input pixels, or in the
    originals' pixels when ``image_sizes`` ``[(width, height), ...]`` gives them.  A 4-D tensor of
    another size is an error (:class:`DetectError`), never boxes in the wrong coordinates.
    """
    _heads(net)
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        _check_input(net, images)
        _, h, w = net.input_shape
        sizes = list(image_sizes) if image_sizes is not None else [(w, h)] * images.shape[0]
        if letterbox is None:
            letterbox = bool(net.net.letter_box)
        batch = images
        letterbox = bool(letterbox and image_sizes is not None)
    else:
        if image_sizes is not None:
            raise DetectError("image_sizes goes with a network-sized tensor batch; images given as files, arrays "
                              "or (3, H, W) tensors are measured and resized by detect() itself")
        items = [images] if _is_image_item(images) else list(images)
        if letterbox is None:
            letterbox = bool(net.net.letter_box)
        batch, sizes = prepare_images(net, items, letterbox)
    dets = darknet_detections(net, batch, sizes, conf_thresh, hier_thresh, nms_thresh, letterbox)
    return [to_detections(d, size) for d, size in zip(dets, sizes)]


# ---------------------------------------------------------------------------------------------- helpers
def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of corner boxes ``a`` (N, 4) and ``b`` (M, 4)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float, kind: str = "default",
        beta: float = 0.6) -> torch.Tensor:
    """Indices of the centre boxes (N, 4) kept by Darknet's NMS of one class, by descending score."""
    kept = darknet_nms(boxes, scores.reshape(-1, 1), iou_thresh, kind, beta)[:, 0] > 0  # scores <= 0: absent
    order = torch.argsort(scores, descending=True, stable=True)
    return order[kept[order]]


__all__ = ["Dets", "Detections", "DetectError", "darknet_detections", "detect", "prepare_images", "to_detections",
           "box_iou", "nms", "overlap_measure"]
