"""Darknet's NMS (``do_nms_sort`` and ``diounms_sort``), exact and vectorized over boxes and classes.

Darknet, for each class ``k``: sorts the detections by ``prob[k]`` and walks them in order; a detection
whose ``prob[k]`` is still non-zero zeroes ``prob[k]`` of every later one it overlaps by more than the
threshold (IoU; ``greedynms`` DIoU with exponent 0.6; ``diounms`` DIoU with ``beta_nms``).  So a
(box, class) entry survives exactly when no surviving higher-ranked entry of its class overlaps it.

Here every non-zero (box, class) entry is an item.  Overlapping pairs of the same class are found by a
sort-and-sweep on the left edges (an IoU above ``t >= 0`` needs the next box's left edge before
``right - t*width``), then the survivors are resolved on that sparse graph all at once: an item is
kept when all its higher-ranked neighbours are suppressed, suppressed when one of them is kept,
repeated until every item is decided (as many rounds as the longest chain of suppressions).  All of it
runs on the tensors' device.
"""

from __future__ import annotations

import torch

NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")


def _edges_xyxy(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = w / 2
    return x - half, x + half


def overlap_measure(a: torch.Tensor, b: torch.Tensor, kind: str = "default", beta: float = 0.6) -> torch.Tensor:
    """Darknet's ``box_iou`` (or ``box_diou`` / ``box_diounms``) of centre boxes ``a`` and ``b`` (..., 4),
    element-wise, in float32 like box.c."""
    ax, ay, aw, ah = a.float().unbind(-1)
    bx, by, bw, bh = b.float().unbind(-1)
    al, ar = _edges_xyxy(ax, aw)
    bl, br = _edges_xyxy(bx, bw)
    at, ab = _edges_xyxy(ay, ah)
    bt, bb = _edges_xyxy(by, bh)
    ow = torch.minimum(ar, br) - torch.maximum(al, bl)
    oh = torch.minimum(ab, bb) - torch.maximum(at, bt)
    inter = torch.where((ow < 0) | (oh < 0), torch.zeros_like(ow), ow * oh)
    union = aw * ah + bw * bh - inter
    iou = torch.where((inter == 0) | (union == 0), torch.zeros_like(inter), inter / torch.where(union == 0,
                                                                                                 1, union))
    if kind not in ("greedynms", "diounms"):
        return iou
    cw = torch.maximum(ar, br) - torch.minimum(al, bl)
    ch = torch.maximum(ab, bb) - torch.minimum(at, bt)
    c = cw * cw + ch * ch
    d = (ax - bx) * (ax - bx) + (ay - by) * (ay - by)
    exponent = 0.6 if kind == "greedynms" else beta
    # C's pow() works in double; the term is stored as float
    term = torch.pow((d / torch.where(c == 0, 1, c)).double(), exponent).float()
    return torch.where(c == 0, iou, iou - term)


def _candidate_pairs(left: torch.Tensor, right: torch.Tensor, width: torch.Tensor, cls: torch.Tensor,
                     thresh: float, dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (i, j) of items of the same class that may overlap by more than ``thresh`` (each once)."""
    m = left.numel()
    dev = left.device
    if m < 2:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty
    if dense:  # every pair within a class
        order = torch.argsort(cls, stable=True)
        key = cls[order].double()
        bound = key + 0.5
    else:
        # Sweep on left edges with classes laid side by side: key = class * span + left.
        lo = left.min().double()
        span = float((right.max().double() - lo).item()) * 2 + 1
        key_all = cls.double() * span + (left.double() - lo)
        order = torch.argsort(key_all, stable=True)
        key = key_all[order]
        # IoU > t >= 0 needs the next left edge before right - t*width; a relative slack keeps it conservative
        reach = (right.double() - left.double()) - thresh * width.double()
        bound = key + reach[order] * (1 + 1e-6) + 1e-12 * span
    ends = torch.searchsorted(key, bound, side="left")
    start = torch.arange(m, device=dev) + 1
    counts = (ends - start).clamp(min=0)
    total = int(counts.sum().item())
    if total == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty
    first = torch.repeat_interleave(torch.arange(m, device=dev), counts, output_size=total)
    offsets = torch.cumsum(counts, 0) - counts
    second = torch.arange(total, device=dev) - torch.repeat_interleave(offsets, counts, output_size=total) \
        + start[first]
    return order[first], order[second]


def _resolve(m: int, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Greedy NMS outcome on a DAG of suppressions (edges from higher- to lower-ranked items): kept mask."""
    dev = src.device
    state = torch.zeros(m, dtype=torch.int8, device=dev)  # 0 undecided, 1 kept, 2 suppressed
    while src.numel():
        src_state = state[src]
        killed = torch.zeros(m, dtype=torch.bool, device=dev)
        killed[dst[src_state == 1]] = True
        blockers = torch.zeros(m, dtype=torch.int32, device=dev)
        blockers.index_add_(0, dst, (src_state != 2).to(torch.int32))
        undecided = state == 0
        state = torch.where(undecided & killed, torch.full_like(state, 2), state)
        state = torch.where(undecided & ~killed & (blockers == 0), torch.ones_like(state), state)
        live = (state[dst] == 0) & (state[src] != 2)
        src, dst = src[live], dst[live]
    return state != 2


def darknet_nms(boxes: torch.Tensor, probs: torch.Tensor, thresh: float, kind: str = "default",
                beta: float = 0.6) -> torch.Tensor:
    """Darknet's per-class NMS on ``boxes`` (K, 4) centre x, y, w, h and ``probs`` (K, C) (0 = absent):
    returns ``probs`` with the suppressed entries set to 0 (``do_nms_sort`` for ``default``/``cornersnms``,
    ``diounms_sort`` for ``greedynms``/``diounms``).  Equal scores rank by box index."""
    if kind not in NMS_KINDS:
        raise ValueError(f"unknown nms_kind {kind!r} (expected one of {', '.join(NMS_KINDS)})")
    out = probs.clone()
    box_index, cls = torch.nonzero(probs > 0, as_tuple=True)
    m = box_index.numel()
    if m < 2:
        return out
    score = probs[box_index, cls]
    # Darknet's order within a class: descending probability (ties: box index, nonzero()'s order)
    by_score = torch.argsort(-score, stable=True)
    ranked = by_score[torch.argsort(cls[by_score], stable=True)]
    rank = torch.empty_like(ranked)
    rank[ranked] = torch.arange(m, device=ranked.device)
    b = boxes.float()[box_index]
    x, w = b[:, 0], b[:, 2]
    left, right = _edges_xyxy(x, w)
    dense = thresh < 0 or not bool(torch.isfinite(b).all() and (b[:, 2:] > 0).all())
    first, second = _candidate_pairs(left, right, w, cls, thresh, dense)
    if first.numel():
        hit = overlap_measure(b[first], b[second], kind, beta) > thresh
        first, second = first[hit], second[hit]
        earlier = rank[first] < rank[second]
        src = torch.where(earlier, first, second)
        dst = torch.where(earlier, second, first)
        kept = _resolve(m, src, dst)
        gone = ~kept
        out[box_index[gone], cls[gone]] = 0
    return out
