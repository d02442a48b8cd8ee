"""Darknet's training deltas of ``[yolo]`` (``yolo_layer.c``) and ``[Gaussian_yolo]`` (``gaussian_yolo_layer.c``).

Darknet walks every cell, anchor and truth in C loops; here the same rules run as tensor operations over all
cells and anchors of the batch, and over all truths at once.  Where Darknet's result depends on the order of
its loops (two truths assigned to one cell), the order is recovered from the truth index:

* box deltas of every assignment add up (Darknet accumulates them), each clipped by ``max_delta`` on its own;
* objectness: the last assignment of a cell writes it (with ``objectness_smooth`` the first, and only where
  the earlier steps left it 0);
* classes: the first assignment of a cell writes the whole class vector (``delta_yolo_class``'s full branch)
  unless an earlier step already wrote it, every later one rewrites only its own class.

Everything is computed in float32 on the input's device, without autograd: the result is Darknet's
``l.delta``, which :mod:`netspec.loss` applies as the gradient."""

from __future__ import annotations

import math

import torch

from .base import LayerSpec
from .box_math import IOU_KINDS, box_giou, box_iou, box_iou_kind, dx_box_iou
from .head_loss import (
    HeadResult,
    Truths,
    anchor_rows,
    class_multipliers,
    problem,
    read_class_map,
    refuse_rolling_net_keys,
)

_SIGMA_CONST = 0.3  # Gaussian YOLOv3's constant added to the predicted sigma
_EPSI = 1e-9
_IOU_CHUNK_ELEMENTS = 1 << 23  # cells x truths compared at once (bounds the memory of the IoU matrix)


def _first_max(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over the last dim and the FIRST index reaching it (Darknet keeps the first of equal scores)."""
    best, index = values.max(-1)  # torch documents the first maximal index
    return best, index


def _best_truth(pred: torch.Tensor, tboxes: torch.Tensor, tvalid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every predicted box ``(B, cells, 1, 4)``: the best IoU with a truth of its image and the first truth
    reaching it, flattened to ``(B * cells,)``.  Truths are taken in chunks so memory stays bounded."""
    b_, cells = pred.shape[:2]
    t_ = tboxes.shape[1]
    step = max(1, _IOU_CHUNK_ELEMENTS // max(1, b_ * cells))
    best_iou = best_t = None
    for s in range(0, t_, step):
        ious = torch.where(tvalid[:, None, s:s + step], box_iou(pred, tboxes[:, None, s:s + step]), 0.0)
        chunk_iou, chunk_t = _first_max(ious)
        if best_iou is None:
            best_iou, best_t = chunk_iou, chunk_t
        else:
            better = chunk_iou > best_iou  # strictly: an earlier truth keeps a tie
            best_iou = torch.where(better, chunk_iou, best_iou)
            best_t = torch.where(better, chunk_t + s, best_t)
    return best_iou.reshape(-1), best_t.reshape(-1)


class YoloLoss:
    """The loss of one ``[yolo]`` or ``[Gaussian_yolo]`` layer.  ``gaussian`` selects Gaussian YOLOv3's
    layout (``x, σx, y, σy, w, σw, h, σh, obj, classes``) and its rules."""

    def __init__(self, spec: LayerSpec, net_params, gaussian: bool) -> None:
        p = spec.p
        self.label = spec.label
        self.gaussian = gaussian
        refuse_rolling_net_keys(net_params, spec.path, f"[{spec.type}]")
        for key in ("iou_loss", "iou_thresh_kind"):
            if getattr(p, key) not in (("mse",) if key == "iou_loss" else ()) + IOU_KINDS:
                allowed = ("mse, " if key == "iou_loss" else "") + ", ".join(IOU_KINDS)
                raise problem(spec, f"{key}={getattr(p, key)} is not one of {allowed} (Darknet would silently "
                              "use iou)", key)
        if gaussian:
            for key in ("focal_loss", "show_details"):
                if p.given(key):
                    raise problem(spec, f"Darknet's [Gaussian_yolo] does not read {key}= (its loss has no such "
                                  "option); remove it", key)
        self.classes = p.classes
        self.mask = list(p.mask)
        self.n_mask = len(self.mask)
        self.entries = (9 if gaussian else 5) + p.classes
        self.box_entries = 8 if gaussian else 4
        self.obj_entry = 8 if gaussian else 4
        self.new_coords = bool(getattr(p, "new_coords", 0))
        self.yolo_point = getattr(p, "yolo_point", "center")
        values = list(p.anchors or ())
        limit = max(2 * p.num, 2 * (max(self.mask) + 1))
        values += [0.5] * (limit - len(values))  # Darknet's default for anchors not given
        self.biases = [(values[2 * i], values[2 * i + 1]) for i in range(limit // 2)]
        self.total = p.num  # anchors searched for each truth's best match
        self.mask_pos = [self.mask.index(n) if n in self.mask else -1 for n in range(self.total)]
        self.max_boxes = p.max
        self.scale_x_y = p.scale_x_y
        self.ignore_thresh = p.ignore_thresh
        self.truth_thresh = p.truth_thresh
        self.iou_thresh = p.iou_thresh
        self.iou_thresh_kind = p.iou_thresh_kind
        self.iou_loss = p.iou_loss
        self.iou_normalizer = p.iou_normalizer
        self.obj_normalizer = p.obj_normalizer
        self.cls_normalizer = p.cls_normalizer
        self.delta_normalizer = p.delta_normalizer
        self.uc_normalizer = getattr(p, "uc_normalizer", 1.0)
        self.label_smooth_eps = p.label_smooth_eps
        self.objectness_smooth = bool(p.objectness_smooth)
        self.focal_loss = bool(p.focal_loss) and not gaussian
        self.max_delta = p.max_delta if p.max_delta is not None else math.inf
        self.show_details = bool(getattr(p, "show_details", 1)) or gaussian
        self.multipliers = class_multipliers(spec, p.classes, self.max_delta)
        self.class_map = read_class_map(spec, p.classes)
        _, self.built_h, self.built_w = spec.out_shape
        self.net_w, self.net_h = net_params.width, net_params.height
        if self.gaussian:
            self.logistic = (0, 1, 2, 3, 5, 7, *range(8, self.entries))
            self.affine = (0, 2)
        else:
            self.logistic = () if self.new_coords else (0, 1, *range(4, self.entries))
            self.affine = (0, 1)

    # ------------------------------------------------------------------ helpers
    def class_limit(self) -> int:
        """Class ids a truth may carry (the map's domain when map= is given)."""
        return min(self.classes, len(self.class_map)) if self.class_map is not None else self.classes

    def _activate(self, v: torch.Tensor) -> torch.Tensor:
        """Darknet's training-mode ``l.output`` from the rows of the head input (``v`` is a fresh copy)."""
        if self.logistic:
            raw = [e for e in range(self.entries) if e not in self.logistic]  # w, h (and nothing else)
            out = torch.sigmoid(v)
            out[:, raw] = v[:, raw]
        else:
            out = v
        s = self.scale_x_y
        if s != 1:
            idx = list(self.affine)
            out[:, idx] = out[:, idx] * s - 0.5 * (s - 1)
        return out

    def _pred_boxes(self, out: torch.Tensor, i: torch.Tensor, j: torch.Tensor, anchor_wh: torch.Tensor,
                    lw: int, lh: int, net_w: float, net_h: float) -> torch.Tensor:
        """Darknet's ``get_yolo_box`` / ``get_gaussian_yolo_box`` for rows of ``out`` at cells ``(i, j)``."""
        if self.gaussian:
            bw = torch.exp(out[:, 4]) * anchor_wh[:, 0] / net_w
            bh = torch.exp(out[:, 6]) * anchor_wh[:, 1] / net_h
            bx = (i + out[:, 0]) / lw
            by = (j + out[:, 2]) / lh
            if self.yolo_point == "left_top":
                bx, by = bx + bw / 2, by + bh / 2
            elif self.yolo_point == "right_bottom":
                bx, by = bx - bw / 2, by - bh / 2
        else:
            bx = (i + out[:, 0]) / lw
            by = (j + out[:, 1]) / lh
            if self.new_coords:
                bw = out[:, 2] * out[:, 2] * 4 * anchor_wh[:, 0] / net_w
                bh = out[:, 3] * out[:, 3] * 4 * anchor_wh[:, 1] / net_h
            else:
                bw = torch.exp(out[:, 2]) * anchor_wh[:, 0] / net_w
                bh = torch.exp(out[:, 3]) * anchor_wh[:, 1] / net_h
        return torch.stack((bx, by, bw, bh), -1)

    def _box_delta(self, out: torch.Tensor, truth: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                   anchor_wh: torch.Tensor, mult: torch.Tensor, geo) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Darknet's ``delta_yolo_box`` / ``delta_gaussian_yolo_box`` for K assignments: the box deltas to
        add ``(K, box_entries)``, and the IoU and GIoU of the prediction with its truth."""
        lw, lh, net_w, net_h = geo
        pred = self._pred_boxes(out, i, j, anchor_wh, lw, lh, net_w, net_h)
        iou = box_iou(pred, truth)
        giou = box_giou(pred, truth)
        # avoid NaN in dx_box_iou
        pred = torch.stack((pred[:, 0], pred[:, 1], torch.where(pred[:, 2] == 0, 1.0, pred[:, 2]),
                            torch.where(pred[:, 3] == 0, 1.0, pred[:, 3])), -1)
        scale = 2 - truth[:, 2] * truth[:, 3]
        norm = self.iou_normalizer * mult
        tx = truth[:, 0] * lw - i
        ty = truth[:, 1] * lh - j
        if self.gaussian and self.yolo_point != "center":
            sign = -1 if self.yolo_point == "left_top" else 1
            tx = (truth[:, 0] + sign * truth[:, 2] / 2) * lw - i
            ty = (truth[:, 1] + sign * truth[:, 3] / 2) * lh - j
        if self.gaussian:
            return self._gaussian_box_delta(out, truth, pred, tx, ty, anchor_wh, scale, norm, geo), iou, giou
        if self.iou_loss == "mse":
            if self.new_coords:
                tw = torch.sqrt(truth[:, 2] * net_w / (4 * anchor_wh[:, 0]))
                th = torch.sqrt(truth[:, 3] * net_h / (4 * anchor_wh[:, 1]))
            else:
                tw = torch.log(truth[:, 2] * net_w / anchor_wh[:, 0])
                th = torch.log(truth[:, 3] * net_h / anchor_wh[:, 1])
            target = torch.stack((tx, ty, tw, th), -1)
            # no NaN fix and no max_delta clip on this path, as in Darknet
            return (scale * norm).unsqueeze(-1) * (target - out[:, :4]), iou, giou
        d = dx_box_iou(pred, truth, self.iou_loss)
        if not self.new_coords:
            d = torch.cat((d[:, :2], d[:, 2:] * torch.exp(out[:, 2:4])), -1)
        return self._fix_clip(d * norm.unsqueeze(-1)), iou, giou

    def _fix_clip(self, d: torch.Tensor) -> torch.Tensor:
        d = torch.where(torch.isfinite(d), d, torch.zeros_like(d))
        if math.isfinite(self.max_delta):
            d = d.clamp(-self.max_delta, self.max_delta)
        return d

    def _gaussian_box_delta(self, out, truth, pred, tx, ty, anchor_wh, scale, norm, geo) -> torch.Tensor:
        lw, lh, net_w, net_h = geo
        tw = torch.log(truth[:, 2] * net_w / anchor_wh[:, 0])
        th = torch.log(truth[:, 3] * net_h / anchor_wh[:, 1])
        mu = out[:, [0, 2, 4, 6]]
        sigma = out[:, [1, 3, 5, 7]]
        diff = torch.stack((tx, ty, tw, th), -1) - mu
        in_exp = diff / sigma
        in_exp_sq = in_exp ** 2
        normal = torch.exp(in_exp_sq * -0.5) / (math.sqrt(math.pi * 2.0) * (sigma + _SIGMA_CONST))
        temp = 0.5 / (normal + _EPSI) * normal * scale.unsqueeze(-1)
        d_mu = temp * in_exp * (1.0 / sigma)
        d_sigma = temp * (in_exp_sq / sigma - 1.0 / (sigma + _SIGMA_CONST))
        if self.iou_loss != "mse":
            d = dx_box_iou(pred, truth, self.iou_loss)
            dx, dy, dw, dh = d.unbind(-1)
            if self.yolo_point == "left_top":
                dx, dy = dx - dw / 2, dy - dh / 2
            elif self.yolo_point == "right_bottom":
                dx, dy = dx + dw / 2, dy + dh / 2
            d_mu = torch.stack((dx, dy, dw * torch.exp(out[:, 4]), dh * torch.exp(out[:, 6])), -1)
        d_mu = self._fix_clip(d_mu * norm.unsqueeze(-1))
        d_sigma = self._fix_clip(d_sigma * self.uc_normalizer)
        return torch.stack((d_mu[:, 0], d_sigma[:, 0], d_mu[:, 1], d_sigma[:, 1],
                            d_mu[:, 2], d_sigma[:, 2], d_mu[:, 3], d_sigma[:, 3]), -1)

    def _y_true(self, positive: bool) -> float:
        eps = self.label_smooth_eps
        y = 1.0 if positive else 0.0
        return y * (1 - eps) + 0.5 * eps if eps else y

    def _set_one_class(self, delta_c: torch.Tensor, out_c: torch.Tensor, cls: torch.Tensor,
                       mult: torch.Tensor) -> torch.Tensor:
        """``delta_yolo_class``'s branch for a cell that already has class deltas: only ``cls`` is rewritten.
        Returns the new value of entry ``cls`` for each row."""
        old = delta_c.gather(1, cls[:, None])[:, 0]
        o = out_c.gather(1, cls[:, None])[:, 0]
        value = self._y_true(True) - o
        if not self.gaussian:
            value = torch.where(torch.isfinite(value), value, old)
        return value * mult if self.multipliers is not None else value

    def _full_classes(self, delta_c: torch.Tensor, out_c: torch.Tensor, cls: torch.Tensor,
                      mult: torch.Tensor) -> torch.Tensor:
        """``delta_yolo_class``'s branch for a cell without class deltas: the whole class vector."""
        onehot = torch.zeros_like(out_c).scatter_(1, cls[:, None], 1.0).bool()
        if self.focal_loss:
            pt = out_c.gather(1, cls[:, None]) + 0.000000000000001
            grad = -(1 - pt) * (2 * pt * torch.log(pt) + pt - 1)
            return (onehot.to(out_c.dtype) - out_c) * (0.5 * grad)
        y = torch.where(onehot, self._y_true(True), self._y_true(False))
        value = y - out_c
        if not self.gaussian:
            value = torch.where(torch.isfinite(value), value, delta_c)
        if self.multipliers is not None:
            value = torch.where(onehot, value * (mult * self.cls_normalizer)[:, None], value)
        return value

    def _class_delta(self, delta_c: torch.Tensor, out_c: torch.Tensor, cls: torch.Tensor,
                     mult: torch.Tensor) -> torch.Tensor:
        """Darknet's ``delta_yolo_class`` / ``delta_gaussian_yolo_class`` on rows (one call per row)."""
        check = delta_c.gather(1, cls[:, None])[:, 0] if not self.gaussian else delta_c[:, 0]
        full = self._full_classes(delta_c, out_c, cls, mult)
        one = delta_c.scatter(1, cls[:, None], self._set_one_class(delta_c, out_c, cls, mult)[:, None])
        return torch.where((check != 0)[:, None], one, full)

    # ------------------------------------------------------------------ the loss
    def __call__(self, x: torch.Tensor, truths: Truths) -> HeadResult:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return self._compute(x, truths)

    def _compute(self, x: torch.Tensor, truths: Truths) -> HeadResult:
        dev = x.device
        b_, _, lh, lw = x.shape
        a_ = self.n_mask
        net_w = self.net_w * lw / self.built_w  # multi-scale training resizes the net with the grid
        net_h = self.net_h * lh / self.built_h
        geo = (lw, lh, net_w, net_h)
        grid = anchor_rows(x, a_, self.entries, self.label)
        out = self._activate(grid.values)
        delta = torch.zeros_like(out)
        n_rows = out.shape[0]
        cells = n_rows // b_
        ob = self.obj_entry
        cls0 = ob + 1
        biases = torch.tensor(self.biases, dtype=torch.float32, device=dev)
        mults = (torch.tensor(self.multipliers, dtype=torch.float32, device=dev)
                 if self.multipliers is not None else None)
        cmap = torch.tensor(self.class_map, dtype=torch.long, device=dev) if self.class_map is not None else None

        t_ = min(truths.boxes.shape[1], self.max_boxes)
        tboxes = truths.boxes[:, :t_].float()
        tvalid = truths.valid[:, :t_]
        tcls_raw = truths.classes[:, :t_]
        tcls = cmap[tcls_raw.clamp(0, len(self.class_map) - 1)] if cmap is not None else tcls_raw
        tmult = mults[tcls.clamp(0, self.classes - 1)] if mults is not None else torch.ones_like(tboxes[..., 0])

        ci, cj, ca, cb = grid.i, grid.j, grid.anchor, grid.image
        mask_t = torch.tensor(self.mask, dtype=torch.long, device=dev)
        row_anchor = biases[mask_t[ca]]

        # ---- every cell: the best truth it overlaps (objectness ignore / truth_thresh)
        has_truth = tvalid.any(1)
        if t_ > 0:
            if not self.gaussian:  # Darknet zeroes a NaN/Inf objectness once it meets a truth
                bad = ~torch.isfinite(out[:, ob]) & has_truth[cb]
                out[:, ob] = torch.where(bad, torch.zeros_like(out[:, ob]), out[:, ob])
            pred = self._pred_boxes(out, ci, cj, row_anchor, lw, lh, net_w, net_h).view(b_, cells, 1, 4)
            best_iou, best_t = _best_truth(pred, tboxes, tvalid)
        else:
            best_iou = torch.zeros(n_rows, device=dev)
            best_t = torch.zeros(n_rows, dtype=torch.long, device=dev)
        class_match = (out[:, cls0:] > 0.25).any(1)
        best_match = torch.where(class_match, best_iou, torch.zeros_like(best_iou))
        o = out[:, ob]
        d_obj = self.obj_normalizer * (0 - o)
        ignore = best_match > self.ignore_thresh
        if self.objectness_smooth and self.gaussian:
            d_obj = torch.where(ignore, self.obj_normalizer * (best_match * best_match - o), d_obj)
        elif self.objectness_smooth:
            d_obj = torch.where(ignore, torch.maximum(d_obj, self.obj_normalizer * (best_match - o)), d_obj)
        else:
            d_obj = torch.where(ignore, torch.zeros_like(d_obj), d_obj)
        delta[:, ob] = d_obj
        if self.objectness_smooth and self.gaussian:
            rows = ignore.nonzero()[:, 0]
            if rows.numel():
                c = tcls[cb[rows], best_t[rows]]
                delta[rows, cls0:] = self._class_delta(delta[rows, cls0:], out[rows, cls0:], c, tmult[cb[rows],
                                                       best_t[rows]])
        rows = (best_iou > self.truth_thresh).nonzero()[:, 0]
        if rows.numel():
            rb, rt = cb[rows], best_t[rows]
            c, m = tcls[rb, rt], tmult[rb, rt]
            bi = best_iou[rows]
            o_r = out[rows, ob]
            delta[rows, ob] = self.obj_normalizer * ((bi * bi if self.objectness_smooth else 1.0) - o_r)
            dc = self._class_delta(delta[rows, cls0:], out[rows, cls0:], c, m)
            if self.objectness_smooth:
                oc = out[rows, cls0:].gather(1, c[:, None])[:, 0]
                dc = dc.scatter(1, c[:, None], (m * (bi * bi - oc))[:, None])
            delta[rows, cls0:] = dc
            d_box, _, _ = self._box_delta(out[rows], tboxes[rb, rt], ci[rows], cj[rows], row_anchor[rows], m, geo)
            delta[rows, :self.box_entries] += d_box

        # ---- every truth: its best anchor (and, with iou_thresh < 1, every anchor close enough)
        assigned = self._assignments(tboxes, tvalid, lw, lh, net_w, net_h, dev)
        ab, at, aa, an, ai, aj = assigned
        k = ab.numel()
        tot_iou = torch.zeros((), device=dev)
        tot_giou_loss = torch.zeros((), device=dev)
        tot_iou_loss = torch.zeros((), device=dev)
        if k:
            arow = grid.row_index(ab, aa, aj, ai)
            c, m = tcls[ab, at], tmult[ab, at]
            d_box, iou, giou = self._box_delta(out[arow], tboxes[ab, at], ai.float(), aj.float(), biases[an], m, geo)
            # the state the truths loop starts from, where it is read (box deltas do not touch these entries)
            obj_before = delta[arow, ob]
            delta[:, :self.box_entries].index_add_(0, arow, d_box)
            # Gaussian YOLO's average reports the GIoU when it trains with an IoU-family loss
            tot_iou = giou.sum() if self.gaussian and self.iou_loss != "mse" else iou.sum()
            tot_iou_loss = (1 - iou).sum()
            tot_giou_loss = (1 - giou).sum()
            # which assignment of its cell each one is, in Darknet's order (truth index)
            big = torch.iinfo(torch.long).max
            first_t = torch.full((n_rows,), big, dtype=torch.long, device=dev).scatter_reduce(
                0, arow, at, "amin")
            last_t = torch.full((n_rows,), -1, dtype=torch.long, device=dev).scatter_reduce(0, arow, at, "amax")
            is_first = first_t[arow] == at
            is_last = last_t[arow] == at
            value_obj = m * self.obj_normalizer * (1 - out[arow, ob])
            if self.objectness_smooth and not self.gaussian:
                sel = is_first & (obj_before == 0)
            else:
                sel = is_last
            delta[arow[sel], ob] = value_obj[sel]
            # classes: the first assignment of each cell takes delta_yolo_class from the state before the loop;
            # every later one rewrites only its own class
            fr = arow[is_first]
            cls_before = delta[fr, cls0:]
            delta[fr, cls0:] = self._class_delta(cls_before, out[fr, cls0:], c[is_first], m[is_first])
            check = cls_before.gather(1, c[is_first][:, None])[:, 0] if not self.gaussian else cls_before[:, 0]
            first_full = torch.zeros(k, dtype=torch.bool, device=dev)
            first_full[is_first.nonzero()[:, 0]] = check == 0
            later = ~first_full
            if later.any():
                lr, lc, lm = arow[later], c[later], m[later]
                value = self._set_one_class(delta[lr, cls0:], out[lr, cls0:], lc, lm)
                delta[lr, cls0 + lc] = value  # idempotent: duplicates write the same value
        # Darknet's averaging of box deltas over the classes a cell was assigned
        if self.gaussian or self.iou_thresh < 1.0:
            n_pos = (delta[:, cls0:] > 0).sum(1)
            avg = (n_pos > 0) if self.gaussian else (n_pos > 0) & (delta[:, ob] != 0)
            divisor = torch.where(avg, n_pos.float(), torch.ones_like(delta[:, 0]))
            delta[:, :self.box_entries] /= divisor[:, None]

        count = torch.tensor(float(k), device=dev)
        return self._result(grid, delta, b_, tot_iou, tot_iou_loss, tot_giou_loss, count)

    def _assignments(self, tboxes, tvalid, lw, lh, net_w, net_h, dev):
        """(image, truth, mask position, anchor, i, j) of every (truth, anchor) pair that trains a box."""
        b_, t_ = tvalid.shape
        if t_ == 0:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            return (empty,) * 6
        tx, ty, tw, th = tboxes.unbind(-1)
        if self.gaussian and self.yolo_point != "center":
            sign = -1 if self.yolo_point == "left_top" else 1
            gi = ((tx + sign * tw / 2) * lw).clamp(0, lw - 1)
            gj = ((ty + sign * th / 2) * lh).clamp(0, lh - 1)
        else:
            # Darknet's (int)(x * w); a box centred exactly on the right/bottom edge is kept in the last cell
            # (Darknet would write past the row)
            gi = (tx * lw).clamp(max=lw - 1)
            gj = (ty * lh).clamp(max=lh - 1)
        gi, gj = gi.long(), gj.long()
        anchors = torch.tensor(self.biases[:self.total], dtype=torch.float32, device=dev)
        zero = torch.zeros_like(tw)
        truth_shift = torch.stack((zero, zero, tw, th), -1)[:, :, None, :]  # (B, T, 1, 4)
        anchor_box = torch.stack((torch.zeros_like(anchors[:, 0]), torch.zeros_like(anchors[:, 0]),
                                  anchors[:, 0] / net_w, anchors[:, 1] / net_h), -1)  # (N, 4)
        anchor_iou = box_iou(anchor_box, truth_shift)  # (B, T, N)
        best_iou, best_n = _first_max(anchor_iou)
        best_n = torch.where(best_iou > 0, best_n, torch.zeros_like(best_n))
        mask_pos = torch.tensor(self.mask_pos, dtype=torch.long, device=dev)
        n_idx = torch.arange(self.total, device=dev)
        take = (n_idx == best_n[..., None]) & (mask_pos >= 0)  # (B, T, N)
        if self.iou_thresh < 1.0:
            kind_iou = box_iou_kind(anchor_box, truth_shift, self.iou_thresh_kind)
            take = take | ((kind_iou > self.iou_thresh) & (mask_pos >= 0) & (n_idx != best_n[..., None]))
        take &= tvalid[..., None]
        ab, at, an = take.nonzero(as_tuple=True)
        return ab, at, mask_pos[an], an, gi[ab, at], gj[ab, at]

    def _result(self, grid, delta, b_, tot_iou, tot_iou_loss, tot_giou_loss, count) -> HeadResult:
        sq = delta * delta
        loss = sq.sum()
        class_loss = sq[:, self.box_entries:].sum()
        n = torch.clamp(count, min=1)
        figures = {"avg_iou": tot_iou / n, "count": count}
        if self.gaussian:
            box_mu_sq = sq[:, :4].sum()  # Darknet's "iou_loss" clears entries 4..7 (w, h and their sigmas)
            cost = loss
            figures.update(class_loss=class_loss / b_, iou_loss=box_mu_sq / b_,
                           uc_loss=(sq[:, 4:8].sum()) / b_, total_loss=loss / b_)
        else:
            class_loss = self.obj_normalizer * class_loss
            if not self.show_details or self.iou_loss == "mse":
                cost = loss
            else:
                tot = tot_giou_loss if self.iou_loss == "giou" else tot_iou_loss
                cost = self.iou_normalizer * tot / n + class_loss
            figures.update(class_loss=class_loss / b_, iou_loss=(loss - class_loss) / b_, total_loss=loss / b_)
        return HeadResult(grid.to_input_layout(delta), cost, figures, self.delta_normalizer)
