"""What ``darknet detector map`` computes: per-class AP, mAP, and precision/recall/F1/TP/FP/FN/avg IoU at a threshold.

Darknet's rules (``validate_detector_map``), reproduced here:

- every (box, class) pair whose probability is above 0.005 is a detection; each is matched to the truth of its class
  with the highest IoU above ``iou_thresh`` (the first such truth on ties), whether or not another detection took it;
- detections of the whole set are ranked by probability (stable: ties keep image, box, class order); the first
  detection of a truth in that ranking is a true positive, every other one a false positive;
- AP per class: area under the precision envelope at each unique recall (``points=0``, VOC 2010+), or the mean of
  the envelope at 11 (VOC 2007) or 101 (COCO-style) recall points; mAP is the mean over *all* classes, including
  those without any truth;
- at ``conf_thresh``: a detection above it is a TP when it matched a truth that no detection before it *in the same
  image* (rows in the order Darknet's NMS leaves them, then class order, any probability) matched, else an FP;
  average IoU is the sum of the TPs' IoU over TP + FP.  These are the TP/FP counts Darknet prints per class.

Memory is bounded by the detections kept (a probability, a class and a truth index each), not by the images.
Where Darknet divides by zero (no detection above the threshold), precision, recall, F1 and average IoU are 0.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .nms import overlap_measure

if TYPE_CHECKING:  # pragma: no cover
    from .datasets import LabelledSet
    from .network import Network

KEEP_THRESH = 0.005  # Darknet's fixed detection threshold in validate_detector_map
POINTS = (0, 11, 101)


def darknet_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a`` (D, 4) with every box in ``b`` (N, 4), centre x, y, w, h, as Darknet's float32
    ``box_iou`` computes it (so comparisons with a threshold agree with Darknet's to the last bit)."""
    return overlap_measure(a[:, None, :], b[None, :, :])


def average_precision(tp_in_rank_order: torch.Tensor, truths: int, points: int = 0) -> float:
    """AP of one class from its detections' TP flags in rank order, as Darknet computes it.

    ``points=0``: area under the precision envelope at each unique recall; 11 / 101: the mean of the envelope at
    that many evenly spaced recall points (the envelope at recall r is the best precision at any recall >= r)."""
    if points not in POINTS:
        raise ValueError(f"points must be one of {POINTS}, got {points}")
    tp = tp_in_rank_order.to(torch.float64).flatten()
    if tp.numel() == 0 or truths <= 0:
        return 0.0
    cum_tp = torch.cumsum(tp, 0)
    precision = cum_tp / torch.arange(1, tp.numel() + 1, dtype=torch.float64, device=tp.device)
    recall = cum_tp / float(truths)
    envelope = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])
    if points == 0:
        delta = recall - torch.cat([recall.new_zeros(1), recall[:-1]])
        return float((delta * envelope).sum())
    at = torch.arange(points, dtype=torch.float64, device=tp.device) / (points - 1)
    first = torch.searchsorted(recall, at, side="left")  # first rank whose recall >= the point
    values = torch.where(first < recall.numel(), envelope[first.clamp(max=recall.numel() - 1)],
                         torch.zeros_like(at))
    return float(values.sum() / points)


@dataclass
class ClassResult:
    class_id: int
    name: str
    ap: float
    tp: int  # at conf_thresh, as Darknet prints them
    fp: int
    truths: int
    detections: int  # above 0.005, ranked


@dataclass
class MapResult:
    map: float
    classes: list[ClassResult]
    conf_thresh: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    avg_iou: float
    iou_thresh: float
    points: int
    images: int
    truths: int
    detections: int
    coco: dict[str, float] | None = None

    def to_json(self) -> dict:
        """``{"map", "classes": [{"class_id", "name", "ap", "tp", "fp"}], "at_conf_<t>": {...}}`` (+ ``coco``)."""
        out = {"map": self.map,
               "classes": [{"class_id": c.class_id, "name": c.name, "ap": c.ap, "tp": c.tp, "fp": c.fp}
                           for c in self.classes],
               f"at_conf_{self.conf_thresh:g}": {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                                                 "tp": self.tp, "fp": self.fp, "fn": self.fn,
                                                 "avg_iou": self.avg_iou}}
        if self.coco is not None:
            out["coco"] = dict(self.coco)
        return out

    def darknet_lines(self) -> list[str]:
        """The lines ``darknet detector map`` prints for the same numbers."""
        lines = [f"class_id = {c.class_id}, name = {c.name}, ap = {c.ap * 100:.2f}%   \t (TP = {c.tp}, FP = {c.fp}) "
                 for c in self.classes]
        t = self.conf_thresh
        lines += ["", f" for conf_thresh = {t:.2f}, precision = {self.precision:.2f}, recall = {self.recall:.2f}, "
                  f"F1-score = {self.f1:.2f} ",
                  f" for conf_thresh = {t:.2f}, TP = {self.tp}, FP = {self.fp}, FN = {self.fn}, "
                  f"average IoU = {self.avg_iou * 100:.2f} % ", "",
                  f" IoU threshold = {self.iou_thresh * 100:.0f} %, " +
                  (f"used {self.points} Recall-points " if self.points else
                   "used Area-Under-Curve for each unique Recall "),
                  f" mean average precision (mAP@{self.iou_thresh:.2f}) = {self.map:f}, or {self.map * 100:.2f} % "]
        if self.coco is not None:
            lines += [""] + [f" COCO {k} = {v:.4f}" for k, v in self.coco.items()]
        return lines


@dataclass
class _CocoDetections:
    """Per image: boxes (relative centre), scores, classes, the image's (w, h); at most 100 per image and class."""

    images: list = field(default_factory=list)


class MapAccumulator:
    """Feed it one image at a time (:meth:`add`), then :meth:`result`.

    ``coco=True`` also keeps, per image and class, the 100 best boxes (what COCOeval's ``maxDets=100`` reads) so that
    :meth:`result` can add COCO AP@[.5:.95], AP50, AP75 and the size breakdown (pycocotools)."""

    def __init__(self, classes: int, names: list[str] | None = None, *, iou_thresh: float = 0.5, points: int = 0,
                 conf_thresh: float = 0.25, coco: bool = False, coco_gt: dict | None = None) -> None:
        if points not in POINTS:
            raise ValueError(f"points must be one of {POINTS}, got {points}")
        if classes < 1:
            raise ValueError(f"classes must be at least 1, got {classes}")
        self.classes, self.iou_thresh, self.points, self.conf_thresh = classes, iou_thresh, points, conf_thresh
        self.names = list(names) if names is not None else [str(i) for i in range(classes)]
        if len(self.names) != classes:
            raise ValueError(f"{len(self.names)} names for {classes} classes")
        self._probs: list[torch.Tensor] = []
        self._classes: list[torch.Tensor] = []
        self._truth_index: list[torch.Tensor] = []
        self._truths_per_class = torch.zeros(classes, dtype=torch.int64)
        self._truths = 0
        self._images = 0
        self._tp_at = torch.zeros(classes, dtype=torch.int64)
        self._fp_at = torch.zeros(classes, dtype=torch.int64)
        self._iou_sum = 0.0
        self._coco = _CocoDetections() if coco else None
        self._coco_gt = coco_gt
        self._truth_boxes: list = []  # for the COCO ground truth when none is given

    def add(self, boxes: torch.Tensor, probs: torch.Tensor, truth: torch.Tensor, *,
            image_size: tuple[int, int] | None = None, difficult: torch.Tensor | None = None,
            image_id: int | None = None) -> None:
        """One image: ``boxes`` (K, 4) centre x, y, w, h relative to the image, ``probs`` (K, classes) Darknet's
        per-class probabilities after NMS (what ``netspec.detection.darknet_detections`` returns; values at or below
        0.005 are not detections), rows in Darknet's order; ``truth`` (N, 5) ``class, x, y, w, h`` relative.
        ``difficult`` (M, 5): Darknet's ``difficult=`` list — unmatched detections on them leave the ranking."""
        probs = probs.detach().float()
        if probs.ndim != 2 or probs.shape[1] != self.classes:
            raise ValueError(f"probs must be (K, {self.classes}), got {tuple(probs.shape)}")
        if boxes.shape != (probs.shape[0], 4):
            raise ValueError(f"boxes must be ({probs.shape[0]}, 4), got {tuple(boxes.shape)}")
        truth = truth.detach().float().to(probs.device).reshape(-1, 5)
        boxes = boxes.detach().float().to(probs.device)
        row, cls = torch.nonzero(probs > KEEP_THRESH, as_tuple=True)  # row-major: Darknet's box-then-class loop
        p = probs[row, cls]
        det_boxes = boxes[row]
        n = truth.shape[0]
        truth_class = truth[:, 0].long()
        if n and (int(truth_class.min()) < 0 or int(truth_class.max()) >= self.classes):
            raise ValueError(f"truth class ids must be in 0..{self.classes - 1}")
        truth_index = torch.full_like(cls, -1)
        best_iou = torch.zeros_like(p)
        candidates = torch.nonzero(torch.isin(cls, truth_class), as_tuple=True)[0] if n else cls[:0]
        if candidates.numel():  # IoU only for detections of a class present in this image's truth
            iou = darknet_box_iou(det_boxes[candidates], truth[:, 1:5])
            valid = (iou > self.iou_thresh) & (cls[candidates, None] == truth_class[None, :])
            best = torch.argmax(torch.where(valid, iou, torch.full_like(iou, -1.0)), 1)  # first best on ties
            matched = valid.any(1)
            truth_index[candidates] = torch.where(matched, best, truth_index[candidates])
            best_iou[candidates] = torch.where(matched, iou.gather(1, best[:, None])[:, 0], best_iou[candidates])
        matched = truth_index >= 0
        # At conf_thresh: TP when no earlier detection of this image (any probability) matched the same truth.
        position = torch.arange(p.numel(), device=p.device)
        first = torch.full((max(n, 1),), p.numel(), dtype=torch.int64, device=p.device)
        first = first.scatter_reduce(0, truth_index[matched], position[matched], reduce="amin")
        is_first = matched & (first[truth_index.clamp(min=0)] == position)
        above = p > self.conf_thresh
        tp_at = above & is_first
        self._tp_at += torch.bincount(cls[tp_at], minlength=self.classes).cpu()
        self._fp_at += torch.bincount(cls[above & ~is_first], minlength=self.classes).cpu()
        self._iou_sum += float(best_iou[tp_at].double().sum())
        # Darknet drops unmatched detections that hit a "difficult" object from the ranking (after counting them).
        ranked = torch.ones_like(matched)
        if difficult is not None and difficult.numel() and p.numel():
            difficult = difficult.detach().float().to(p.device).reshape(-1, 5)
            hit = (darknet_box_iou(det_boxes, difficult[:, 1:5]) > self.iou_thresh) & \
                  (cls[:, None] == difficult[:, 0].long()[None, :])
            ranked = matched | ~hit.any(1)
        self._probs.append(p[ranked].cpu())
        self._classes.append(cls[ranked].to(torch.int16 if self.classes < 32768 else torch.int32).cpu())
        offset_index = torch.where(truth_index >= 0, truth_index + self._truths, truth_index)
        self._truth_index.append(offset_index[ranked].cpu())
        self._truths_per_class += torch.bincount(truth_class, minlength=self.classes).cpu()
        self._truths += n
        if self._coco is not None:
            self._keep_for_coco(det_boxes[ranked], p[ranked], cls[ranked], truth, image_size, image_id)
        self._images += 1

    def _keep_for_coco(self, boxes, scores, classes, truth, image_size, image_id) -> None:
        if image_size is None:
            raise ValueError("coco=True needs the image_size (w, h) of every image")
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[torch.argsort(classes[order], stable=True)]
        cls_sorted = classes[order]
        counts = torch.bincount(cls_sorted, minlength=self.classes)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.numel(), device=order.device) - starts[cls_sorted]
        keep = order[rank < 100]
        self._coco.images.append((boxes[keep].cpu(), scores[keep].cpu(), classes[keep].cpu(), image_size, image_id))
        if self._coco_gt is None:
            self._truth_boxes.append(truth.cpu())

    def result(self) -> MapResult:
        probs = torch.cat(self._probs) if self._probs else torch.zeros(0)
        classes = torch.cat(self._classes).long() if self._classes else torch.zeros(0, dtype=torch.int64)
        truth_index = torch.cat(self._truth_index) if self._truth_index else torch.zeros(0, dtype=torch.int64)
        order = torch.argsort(probs, descending=True, stable=True)
        classes, truth_index = classes[order], truth_index[order]
        d = order.numel()
        position = torch.arange(d)
        matched = truth_index >= 0
        first = torch.full((max(self._truths, 1),), d, dtype=torch.int64)
        first = first.scatter_reduce(0, truth_index[matched], position[matched], reduce="amin")
        is_tp = matched & (first[truth_index.clamp(min=0)] == position)
        by_class = torch.argsort(classes, stable=True)  # rank order kept within each class
        tp_by_class = is_tp[by_class].split(torch.bincount(classes, minlength=self.classes).tolist())
        per_class = []
        for c, tp_flags in enumerate(tp_by_class):
            ap = average_precision(tp_flags, int(self._truths_per_class[c]), self.points)
            per_class.append(ClassResult(c, self.names[c], ap, int(self._tp_at[c]), int(self._fp_at[c]),
                                         int(self._truths_per_class[c]), tp_flags.numel()))
        tp, fp = int(self._tp_at.sum()), int(self._fp_at.sum())
        fn = self._truths - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / self._truths if self._truths else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        result = MapResult(map=sum(c.ap for c in per_class) / self.classes, classes=per_class,
                           conf_thresh=self.conf_thresh, precision=precision, recall=recall, f1=f1, tp=tp, fp=fp,
                           fn=fn, avg_iou=self._iou_sum / (tp + fp) if tp + fp else 0.0, iou_thresh=self.iou_thresh,
                           points=self.points, images=self._images, truths=self._truths, detections=d)
        if self._coco is not None:
            result.coco = coco_metrics(*self.coco_json())
        return result

    def coco_json(self) -> tuple[dict, list[dict]]:
        """The COCO ground truth (the given COCO file, or one built from the labels) and the detections as
        COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in pixels, ``score``)."""
        if self._coco is None:
            raise ValueError("this accumulator was made without coco=True")
        gt = self._coco_gt
        if gt is not None:
            category_ids = gt.get("_netspec_category_ids") or sorted(int(c["id"]) for c in gt["categories"])
            image_ids = gt.get("_netspec_image_ids") or [int(i["id"]) for i in gt["images"]]
            gt = {k: v for k, v in gt.items() if not k.startswith("_netspec")}
        else:
            category_ids = list(range(1, self.classes + 1))  # COCOeval treats id 0 as "no match": start at 1
            image_ids = list(range(1, len(self._coco.images) + 1))
            gt = {"images": [], "categories": [{"id": category_ids[c], "name": self.names[c]}
                                               for c in range(self.classes)], "annotations": []}
            for n, ((_, _, _, (w, h), _), truth) in enumerate(zip(self._coco.images, self._truth_boxes)):
                gt["images"].append({"id": image_ids[n], "width": w, "height": h, "file_name": str(image_ids[n])})
                for cls, x, y, bw, bh in truth.tolist():
                    gt["annotations"].append({
                        "id": len(gt["annotations"]) + 1, "image_id": image_ids[n],
                        "category_id": category_ids[int(cls)], "bbox": [(x - bw / 2) * w, (y - bh / 2) * h, bw * w,
                                                                        bh * h],
                        "area": bw * w * bh * h, "iscrowd": 0})
        results = []
        for n, (boxes, scores, classes, (w, h), image_id) in enumerate(self._coco.images):
            image_id = image_ids[n] if image_id is None else image_id
            for (x, y, bw, bh), s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist()):
                results.append({"image_id": image_id, "category_id": category_ids[c],
                                "bbox": [(x - bw / 2) * w, (y - bh / 2) * h, bw * w, bh * h], "score": s})
        return gt, results


COCO_STATS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
              "ar_1", "ar_10", "ar_100", "ar_small", "ar_medium", "ar_large")


def coco_metrics(gt: dict, results: list[dict]) -> dict[str, float]:
    """COCOeval (pycocotools, ``pip install netspec[coco]``) on a ground-truth dict and a results list: AP@[.5:.95],
    AP50, AP75, AP small/medium/large and the AR numbers, as ``COCOeval.summarize`` reports them (-1: no truth)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:  # pragma: no cover - depends on the environment
        from .errors import NetspecError

        raise NetspecError("--coco needs pycocotools: pip install 'netspec[coco]'") from None
    if not results:
        return {k: 0.0 for k in COCO_STATS}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and the table
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(COCO_STATS, ev.stats)}


def evaluate_map(samples, classes: int, names: list[str] | None = None, **kwargs) -> MapResult:
    """mAP over an iterable of ``(boxes, probs, truth)`` per image (see :meth:`MapAccumulator.add`)."""
    acc = MapAccumulator(classes, names, **kwargs)
    for sample in samples:
        boxes, probs, truth, *rest = sample
        acc.add(boxes, probs, truth, image_size=rest[0] if rest else None)
    return acc.result()


# ----------------------------------------------------------------- a labelled set through a network
class _Images:
    """The labelled set as a torch Dataset: (index, network-sized image, (w, h), labels, error message)."""

    def __init__(self, labelled, width: int, height: int, letterbox: bool, difficult: list[str] | None = None) -> None:
        self.labelled, self.width, self.height, self.letterbox = labelled, width, height, letterbox
        self.difficult = difficult

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, index: int):
        from .datasets import read_labels
        from .errors import NetspecError
        from .images import letterbox, load_image, resize_image

        try:
            image = load_image(self.labelled.images[index])
            size = (int(image.shape[2]), int(image.shape[1]))
            fit = letterbox if self.letterbox else resize_image
            labels = self.labelled.read_labels(index)
            difficult = None
            if self.difficult is not None:
                difficult = read_labels(self.difficult[index], self.labelled.classes)
            return index, fit(image, self.width, self.height), size, labels, difficult, None
        except NetspecError as exc:  # reported by the main process as one line (not a worker traceback)
            return index, None, None, None, None, str(exc)


def _collate(samples):
    return samples


def evaluate_set(net: Network, labelled: LabelledSet, acc: MapAccumulator, *, letterbox: bool, batch: int = 8,
                 workers: int = 0, device: str | torch.device | None = None,
                 progress: bool = False, difficult: list[str] | None = None) -> None:
    """Stream ``labelled`` (a :class:`~netspec.datasets.LabelledSet`) through ``net`` (eval mode) into ``acc``
    (a :class:`~netspec.evaluate.MapAccumulator`); ``difficult``: label files parallel to the images."""
    import os
    import sys

    from torch.utils.data import DataLoader

    from .detection import darknet_detections
    from .errors import NetspecError

    _, height, width = net.input_shape
    device = device or next(net.parameters()).device
    workers = min(workers, os.cpu_count() or 1, len(labelled))
    loader = DataLoader(_Images(labelled, width, height, letterbox, difficult), batch_size=batch,
                        num_workers=max(workers, 0), collate_fn=_collate)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(labelled), unit="img", file=sys.stderr, desc="map")
    try:
        for samples in loader:
            for *_, error in samples:
                if error is not None:
                    raise NetspecError(error)
            images = torch.stack([s[1] for s in samples]).to(device)
            sizes = [s[2] for s in samples]
            with torch.inference_mode():
                dets = darknet_detections(net, images, sizes, thresh=0.005, hier_thresh=0, nms=0.45,
                                          letterbox=letterbox, darknet_order=True)
            for (index, _, size, labels, hard, _), d in zip(samples, dets):
                image_id = labelled.coco["_netspec_image_ids"][index] if labelled.coco else None
                acc.add(d.boxes, d.probs, labels, image_size=size, image_id=image_id, difficult=hard)
            if bar is not None:
                bar.update(len(samples))
    finally:
        if bar is not None:
            bar.close()
