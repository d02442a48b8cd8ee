"""Darknet's training deltas of YOLOv1's ``[detection]`` (``detection_layer.c``), vectorized over cells and boxes.

Darknet's data loader (``fill_truth_region``) keeps one truth per grid cell, the first one in the truth order
(and drops boxes under 0.001 wide or high); the same rule builds the per-cell truth here."""

from __future__ import annotations

import torch

from .base import LayerSpec
from .box_math import box_iou
from .head_loss import HeadResult, Truths, problem

_RANDOM_SEEN = 64000  # with random=1 Darknet trains a random box of each cell until this many images were seen


class YoloV1Loss:
    """The loss of one ``[detection]`` layer (flat input: class scores, objectness, boxes per cell)."""

    def __init__(self, spec: LayerSpec, net_params) -> None:
        p = spec.p
        if p.coords != 4:
            raise problem(spec, f"training needs coords=4 (Darknet's loss reads 4 box values per box), got "
                          f"coords={p.coords}", "coords")
        if p.forced and p.num < 2:
            raise problem(spec, "forced=1 trains box 1 for small truths: it needs num >= 2", "forced")
        self.label = spec.label
        self.side, self.num, self.classes = p.side, p.num, p.classes
        self.sqrt, self.softmax, self.rescore, self.forced = bool(p.sqrt), bool(p.softmax), bool(p.rescore), \
            bool(p.forced)
        self.random = bool(p.random)
        self.object_scale, self.noobject_scale = p.object_scale, p.noobject_scale
        self.class_scale, self.coord_scale = p.class_scale, p.coord_scale

    def class_limit(self) -> int:
        return self.classes

    def __call__(self, x: torch.Tensor, truths: Truths) -> HeadResult:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return self._compute(x, truths)

    def _cell_truths(self, truths: Truths, dev):
        """Darknet's per-cell truth: (present, class, box with x, y relative to the cell) per (image, cell)."""
        s = self.side
        b_ = truths.batch
        boxes, valid = truths.boxes.float(), truths.valid.clone()
        valid &= (boxes[..., 2] >= 0.001) & (boxes[..., 3] >= 0.001)
        col = (boxes[..., 0] * s).long().clamp(max=s - 1)  # an x of exactly 1 stays in the last cell
        row = (boxes[..., 1] * s).long().clamp(max=s - 1)
        cell = row * s + col
        t_ = boxes.shape[1]
        key = torch.where(valid, torch.arange(t_, device=dev)[None, :].expand_as(cell), t_)
        first = torch.full((b_, s * s), t_, dtype=torch.long, device=dev).scatter_reduce(1, cell, key, "amin")
        present = first < t_
        pick = first.clamp(max=max(t_ - 1, 0))
        if t_ == 0:
            return present, torch.zeros_like(first), torch.zeros(b_, s * s, 4, device=dev)
        cls = truths.classes.gather(1, pick)
        box = boxes.gather(1, pick[..., None].expand(b_, s * s, 4)).clone()
        cells = torch.arange(s * s, device=dev)
        box[..., 0] = box[..., 0] * s - (cells % s).float()
        box[..., 1] = box[..., 1] * s - (cells // s).float()
        return present, cls, box

    def _compute(self, x: torch.Tensor, truths: Truths) -> HeadResult:
        dev = x.device
        b_ = x.shape[0]
        s, n_, c_ = self.side, self.num, self.classes
        loc = s * s
        flat = x.detach().float().reshape(b_, -1)
        if flat.shape[1] != loc * ((1 + 4) * n_ + c_):
            raise ValueError(f"{self.label}: the head input has {flat.shape[1]} values per image, expected "
                             f"{loc * (5 * n_ + c_)}")
        cls_out = flat[:, :loc * c_].reshape(b_, loc, c_)
        if self.softmax:
            cls_out = torch.softmax(cls_out, -1)
        obj_out = flat[:, loc * c_:loc * (c_ + n_)].reshape(b_, loc, n_)
        box_out = flat[:, loc * (c_ + n_):].reshape(b_, loc, n_, 4)
        present, tcls, tbox = self._cell_truths(truths, dev)

        d_obj = self.noobject_scale * (0 - obj_out)
        onehot = torch.zeros_like(cls_out).scatter_(2, tcls[..., None], 1.0)
        d_cls = torch.where(present[..., None], self.class_scale * (onehot - cls_out), 0.0)

        # which box of the cell trains: the best IoU, else (no overlap at all) the smallest RMSE below 20
        truth_abs = torch.stack((tbox[..., 0] / s, tbox[..., 1] / s, tbox[..., 2], tbox[..., 3]), -1)[:, :, None, :]
        pred = box_out.clone()
        pred[..., 0] = pred[..., 0] / s
        pred[..., 1] = pred[..., 1] / s
        if self.sqrt:
            pred[..., 2] = pred[..., 2] * pred[..., 2]
            pred[..., 3] = pred[..., 3] * pred[..., 3]
        iou = box_iou(pred, truth_abs)  # (B, loc, n)
        rmse = ((pred - truth_abs) ** 2).sum(-1).sqrt()
        best_iou = iou.max(-1).values
        by_iou = (iou == best_iou[..., None]).to(torch.uint8).argmax(-1)
        by_rmse = torch.where(rmse < 20, rmse, torch.full_like(rmse, 20)).argmin(-1)
        best = torch.where(best_iou > 0, by_iou, by_rmse)
        if self.forced:
            small = tbox[..., 2] * tbox[..., 3] < 0.1
            best = torch.where(small, torch.ones_like(best), torch.zeros_like(best))
        if self.random and truths.seen < _RANDOM_SEEN:
            best = torch.randint(0, n_, best.shape, device=dev)
        chosen = torch.arange(n_, device=dev)[None, None, :] == best[..., None]  # (B, loc, n)
        hit = chosen & present[..., None]
        iou_best = iou.gather(2, best[..., None])[..., 0]
        target_obj = iou_best if self.rescore else torch.ones_like(iou_best)
        d_obj = torch.where(hit, self.object_scale * (target_obj[..., None] - obj_out), d_obj)
        tgt = tbox.clone()
        if self.sqrt:
            tgt[..., 2] = tgt[..., 2].sqrt()
            tgt[..., 3] = tgt[..., 3].sqrt()
        d_box = torch.where(hit[..., None], self.coord_scale * (tgt[:, :, None, :] - box_out), 0.0)

        delta = torch.cat((d_cls.reshape(b_, -1), d_obj.reshape(b_, -1), d_box.reshape(b_, -1)), 1)
        cost = (delta * delta).sum()
        count = present.sum().float()
        n = count.clamp(min=1)
        pres = present.float()
        figures = {"avg_iou": (iou_best * pres).sum() / n, "count": count,
                   "pos_class": ((cls_out * onehot).sum(-1) * pres).sum() / n,
                   "all_class": (cls_out.sum(-1) * pres).sum() / (n * c_),
                   "pos_obj": ((obj_out * chosen).sum(-1) * pres).sum() / n,
                   "any_obj": obj_out.mean(), "total_loss": cost / b_}
        return HeadResult(delta.reshape(x.shape), cost, figures)
