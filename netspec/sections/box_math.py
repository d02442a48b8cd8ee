"""Darknet's box arithmetic for the training losses (``box.c``), vectorized: boxes are ``(..., 4)`` tensors of
centre x, y, width, height, and every function works elementwise over the leading dimensions.

The formulas follow Darknet's float code step by step (including its guards against empty unions and
enclosing boxes) so that thresholds compared against these values fall on the same side as in Darknet."""

from __future__ import annotations

import math

import torch

IOU_KINDS = ("iou", "giou", "diou", "ciou")
_PI = math.pi


def _edges(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(left, right, top, bottom)`` of centre-size boxes."""
    x, y, w, h = b.unbind(-1)
    return x - w / 2, x + w / 2, y - h / 2, y + h / 2


def box_intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    al, ar, at, ab = _edges(a)
    bl, br, bt, bb = _edges(b)
    w = torch.minimum(ar, br) - torch.maximum(al, bl)
    h = torch.minimum(ab, bb) - torch.maximum(at, bt)
    return torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Darknet's ``box_iou``: 0 where the intersection or the union is 0."""
    inter = box_intersection(a, b)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    ok = (inter != 0) & (union != 0)
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)), torch.zeros_like(inter))


def _enclosing(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    al, ar, at, ab = _edges(a)
    bl, br, bt, bb = _edges(b)
    return torch.maximum(ar, br) - torch.minimum(al, bl), torch.maximum(ab, bb) - torch.minimum(at, bt)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / torch.where(den == 0, torch.ones_like(den), den)


def box_giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cw, ch = _enclosing(a, b)
    c = cw * ch
    iou = box_iou(a, b)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - box_intersection(a, b)
    return torch.where(c == 0, iou, iou - _safe_div(c - union, c))


def _centre_distance_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[..., 0] - b[..., 0]) ** 2 + (a[..., 1] - b[..., 1]) ** 2


def box_diou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cw, ch = _enclosing(a, b)
    c = cw * cw + ch * ch
    iou = box_iou(a, b)
    return torch.where(c == 0, iou, iou - _safe_div(_centre_distance_sq(a, b), c) ** 0.6)


def _aspect_term(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``atan(w_gt/h_gt) - atan(w_pred/h_pred)``, the angle CIoU's aspect penalty is built on."""
    return torch.atan(truth[..., 2] / truth[..., 3]) - torch.atan(pred[..., 2] / pred[..., 3])


def box_ciou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Darknet's ``box_ciou(pred=a, truth=b)``."""
    cw, ch = _enclosing(a, b)
    c = cw * cw + ch * ch
    iou = box_iou(a, b)
    d = _safe_div(_centre_distance_sq(a, b), c)
    ar_loss = 4 / (_PI * _PI) * _aspect_term(a, b) ** 2
    alpha = ar_loss / (1 - iou + ar_loss + 0.000001)
    return torch.where(c == 0, iou, iou - (d + alpha * ar_loss))


def box_iou_kind(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    return {"iou": box_iou, "giou": box_giou, "diou": box_diou, "ciou": box_ciou}[kind](a, b)


def dx_box_iou(pred: torch.Tensor, truth: torch.Tensor, kind: str) -> torch.Tensor:
    """Darknet's ``dx_box_iou``: the (x, y, w, h) "gradient" of the IoU-family score that Darknet applies as
    the box delta (an ascent direction; it is not the exact derivative for GIoU/DIoU/CIoU).  ``(..., 4)``."""
    pl0, pr0, pt0, pb0 = _edges(pred)
    pt, pb = torch.minimum(pt0, pb0), torch.maximum(pt0, pb0)
    pl, pr = torch.minimum(pl0, pr0), torch.maximum(pl0, pr0)
    tl, tr, tt, tb = _edges(truth)
    zero = torch.zeros_like(pt)

    area_pred = (pb - pt) * (pr - pl)
    area_truth = (tb - tt) * (tr - tl)
    ih = torch.minimum(pb, tb) - torch.maximum(pt, tt)
    iw = torch.minimum(pr, tr) - torch.maximum(pl, tl)
    inter = iw * ih
    union = area_pred + area_truth - inter
    dist_sq = _centre_distance_sq(pred, truth)
    giou_cw = torch.maximum(pr, tr) - torch.minimum(pl, tl)
    giou_ch = torch.maximum(pb, tb) - torch.minimum(pt, tt)
    giou_c = giou_cw * giou_ch

    # derivatives of the prediction's area, the intersection, the union and the enclosing area wrt t, b, l, r
    dx_t, dx_b, dx_l, dx_r = -(pr - pl), pr - pl, -(pb - pt), pb - pt
    di_t = torch.where(pt > tt, -iw, zero)
    di_b = torch.where(pb < tb, iw, zero)
    di_l = torch.where(pl > tl, -ih, zero)
    di_r = torch.where(pr < tr, ih, zero)
    du = [dx_t - di_t, dx_b - di_b, dx_l - di_l, dx_r - di_r]
    dc = [torch.where(pt < tt, -giou_cw, zero), torch.where(pb > tb, giou_cw, zero),
          torch.where(pl < tl, -giou_ch, zero), torch.where(pr > tr, giou_ch, zero)]

    u_pos = union > 0
    u_sq = torch.where(u_pos, union * union, torch.ones_like(union))
    p = [torch.where(u_pos, (union * di - inter * d_u) / u_sq, zero) for di, d_u in zip((di_t, di_b, di_l, di_r), du)]
    top_ok = pt0 < pb0
    left_ok = pl0 < pr0
    p_t, p_b, p_l, p_r = p
    p_t, p_b = torch.where(top_ok, p_t, p_b), torch.where(top_ok, p_b, p_t)
    p_l, p_r = torch.where(left_ok, p_l, p_r), torch.where(left_ok, p_r, p_l)

    no_overlap = (iw <= 0) | (ih <= 0)
    if kind == "giou":
        c_sq = giou_c * giou_c
        g = [(giou_c * d_u - union * d_c) / c_sq for d_u, d_c in zip(du, dc)]
        c_pos = giou_c > 0
        p_t, p_b, p_l, p_r = (torch.where(no_overlap, gi, torch.where(c_pos, pi + gi, pi))
                              for pi, gi in zip((p_t, p_b, p_l, p_r), g))

    out_x = p_l + p_r
    out_y = p_t + p_b
    out_w = p_r - p_l
    out_h = p_b - p_t

    if kind in ("diou", "ciou"):
        cl = torch.minimum(pred[..., 0] - pred[..., 2] / 2, truth[..., 0] - truth[..., 2] / 2)
        cr = torch.maximum(pred[..., 0] + pred[..., 2] / 2, truth[..., 0] + truth[..., 2] / 2)
        ct = torch.minimum(pred[..., 1] - pred[..., 3] / 2, truth[..., 1] - truth[..., 3] / 2)
        cb = torch.maximum(pred[..., 1] + pred[..., 3] / 2, truth[..., 1] + truth[..., 3] / 2)
        cw, ch = cr - cl, cb - ct
        c = cw * cw + ch * ch
        one = torch.ones_like(c)
        # which enclosing edges the prediction defines
        dct = (pt < tt).to(c.dtype)
        dcb = (pb > tb).to(c.dtype)
        dcl = (pl < tl).to(c.dtype)
        dcr = (pr > tr).to(c.dtype)
        dcw_dx, dcw_dw = dcr - dcl, 0.5 * dcr + 0.5 * dcl
        dch_dy, dch_dh = dcb - dct, 0.5 * dcb + 0.5 * dct
        c_sq = torch.where(c > 0, c * c, one)
        dist_x = (2 * (truth[..., 0] - pred[..., 0]) * c - 2 * cw * dcw_dx * dist_sq) / c_sq
        dist_y = (2 * (truth[..., 1] - pred[..., 1]) * c - 2 * ch * dch_dy * dist_sq) / c_sq
        dist_w = 2 * cw * dcw_dw * dist_sq / c_sq
        dist_h = 2 * ch * dch_dh * dist_sq / c_sq
        if kind == "ciou":
            angle = _aspect_term(pred, truth)
            ar_loss = 4 / (_PI * _PI) * angle * angle
            alpha = ar_loss / (1 - _safe_div(inter, union) + ar_loss + 0.000001)
            dist_w = dist_w + alpha * (8 / (_PI * _PI) * angle * pred[..., 3])
            dist_h = dist_h + alpha * (-8 / (_PI * _PI) * angle * pred[..., 2])
        c_pos = c > 0
        out_x, out_y, out_w, out_h = (torch.where(no_overlap, di, torch.where(c_pos, pi + di, pi))
                                      for pi, di in zip((out_x, out_y, out_w, out_h),
                                                        (dist_x, dist_y, dist_w, dist_h)))
    return torch.stack((out_x, out_y, out_w, out_h), -1)
