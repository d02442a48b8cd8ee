"""Darknet's NMS (``do_nms_sort`` and ``diounms_sort``), exact and vectorized over boxes and classes.

Darknet, for each class ``k``: sorts the detections by ``prob[k]`` and walks them in order; a detection
whose ``prob[k]`` is still non-zero zeroes ``prob[k]`` of every later one it overlaps by more than the
threshold (IoU; ``greedynms`` DIoU with exponent 0.6; ``diounms`` DIoU with ``beta_nms``).  So a
(box, class) entry survives exactly when no surviving higher-ranked entry of its class overlaps it.

Here every non-zero (box, class) entry is an item.  Crowded classes (many candidate pairs per item) first
walk Darknet's order for a few rounds, all classes at once: each round keeps every class's best undecided
item and drops the undecided items of its class that it overlaps.  What is left is resolved at once.
Overlapping pairs of the same class are found by a sort-and-sweep on the left edges (an IoU above
``t >= 0`` needs the next box's left edge before ``right - t*width``), or, when boxes carry many classes,
once per pair of boxes for all classes; then the survivors are resolved on that sparse graph: an item is
kept when all its higher-ranked neighbours are suppressed, suppressed when one of them is kept, repeated
until every item is decided (as many rounds as the longest chain of suppressions).  All of it runs on the
tensors' device.

Boxes with many classes each (``netspec map``'s 0.005 threshold: ~80 per box) take another way: the
overlapping box pairs are found once for all classes, each class's walk order is Darknet's chain of stable
sorts, and the same-class pairs are resolved on that sparse graph as above or, when it would be large, by a
sweep of all classes at once over a bit matrix of box overlaps, 64 ranks at a time (each band resolved in a
few rounds, its kept boxes' rows then clear the boxes they overlap).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NMS_KINDS = ("default", "greedynms", "diounms", "cornersnms")


def _take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, index)  # much faster than t[index] (aten::index) for large gathers


def _keep(mask: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The rows of each tensor where ``mask`` holds (one nonzero() shared by all of them)."""
    index = torch.nonzero(mask).squeeze(1)
    return [t.index_select(0, index) for t in tensors]


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


_PAIR_BUDGET = 1 << 22  # candidate pairs materialized at a time (memory stays bounded in the dense case)


def _sweep(left: torch.Tensor, right: torch.Tensor, width: torch.Tensor, cls: torch.Tensor, thresh: float,
           dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Items sorted class by class on their left edge, and for each (in that order) the end of its window:
    the later items of its class that may overlap it by more than ``thresh``."""
    if dense:  # every later item of the same class
        order = torch.argsort(cls, stable=True)
        key = _take(cls, order).double()
        return order, torch.searchsorted(key, key + 0.5, side="left")
    # Classes laid side by side (key = class * span + left), then a sweep on the left edges: IoU > t >= 0
    # needs the later box's left edge before right - t*width; the small slack keeps the test conservative.
    lo = left.min().double()
    span = float((right.max().double() - lo).item()) * 2 + 1
    key = cls.double() * span + (left.double() - lo)
    order = torch.argsort(key, stable=True)
    key = _take(key, order)
    reach = _take(right.double() - left.double() - thresh * width.double(), order)
    return order, torch.searchsorted(key, key + reach * (1 + 1e-6) + 1e-12 * span, side="left")


def _pairs(order: torch.Tensor, ends: torch.Tensor, begin: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate pairs (item ids) of the sorted positions ``begin..stop-1``."""
    dev = order.device
    pos = torch.arange(begin, stop, device=dev)
    counts = (ends[begin:stop] - pos - 1).clamp(min=0)
    total = int(counts.sum().item())
    first = torch.repeat_interleave(pos, counts, output_size=total)
    offsets = torch.cumsum(counts, 0) - counts
    second = torch.arange(total, device=dev) - torch.repeat_interleave(offsets - pos - 1, counts, output_size=total)
    return _take(order, first), _take(order, second)


def _chunks(ends: torch.Tensor) -> list[tuple[int, int]]:
    """Ranges of sorted positions whose candidate pairs number about ``_PAIR_BUDGET`` each."""
    m = ends.numel()
    counts = (ends - torch.arange(m, device=ends.device) - 1).clamp(min=0)
    total = int(counts.sum().item())
    if total <= _PAIR_BUDGET:
        return [(0, m)] if total else []
    cum = torch.cumsum(counts, 0).cpu()
    cuts = torch.searchsorted(cum, torch.arange(_PAIR_BUDGET, total, _PAIR_BUDGET, dtype=cum.dtype)).tolist()
    bounds = [0] + [c + 1 for c in cuts if 0 <= c < m - 1] + [m]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _resolve(m: int, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Greedy NMS outcome on a DAG of suppressions (edges from higher- to lower-ranked items): kept mask."""
    dev = src.device
    state = torch.zeros(m, dtype=torch.int8, device=dev)  # 0 undecided, 1 kept, 2 suppressed
    while src.numel():
        src_state = _take(state, src)
        killed = torch.zeros(m, dtype=torch.int32, device=dev)
        killed.index_add_(0, dst, (src_state == 1).to(torch.int32))
        blockers = torch.zeros(m, dtype=torch.int32, device=dev)
        blockers.index_add_(0, dst, (src_state != 2).to(torch.int32))
        undecided = state == 0
        state = torch.where(undecided & (killed > 0), torch.full_like(state, 2), state)
        state = torch.where(undecided & (killed == 0) & (blockers == 0), torch.ones_like(state), state)
        src, dst = _keep((_take(state, dst) == 0) & (_take(state, src) != 2), src, dst)
    return state != 2


def _overlapping(first: torch.Tensor, second: torch.Tensor, g: dict, thresh: float, kind: str, beta: float,
                 dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate pairs whose Darknet overlap measure is above ``thresh``."""
    if not dense:
        # IoU > t needs the overlap along each axis above t times either box's size: a cheap cut first
        slack = thresh * (1 - 1e-5)
        def pair(name):
            return _take(g[name], first), _take(g[name], second)

        (t1, t2), (b1, b2) = pair("top"), pair("bottom")
        oh = torch.minimum(b1, b2) - torch.maximum(t1, t2)
        h1, h2 = pair("h")
        first, second = _keep(oh > slack * torch.maximum(h1, h2), first, second)
        (l1, l2), (r1, r2), (w1, w2) = pair("left"), pair("right"), pair("w")
        ow = torch.minimum(r1, r2) - torch.maximum(l1, l2)
        first, second = _keep(ow > slack * torch.maximum(w1, w2), first, second)
    hit = overlap_measure(_take(g["boxes"], first), _take(g["boxes"], second), kind, beta) > thresh
    return _keep(hit, first, second)


def _geometry(b: torch.Tensor) -> dict:
    x, y, w, h = b.unbind(1)
    left, right = _edges_xyxy(x, w)
    top, bottom = _edges_xyxy(y, h)
    return {"boxes": b, "w": w, "h": h, "left": left, "right": right, "top": top, "bottom": bottom}


@dataclass
class _Sweep:
    """Items in sweep order and the end of each one's window."""

    order: torch.Tensor
    ends: torch.Tensor

    def candidates(self) -> int:
        m = self.ends.numel()
        return int((self.ends - torch.arange(m, device=self.ends.device) - 1).clamp(min=0).sum().item())


def _plan(g: dict, cls: torch.Tensor, thresh: float, dense: bool) -> _Sweep:
    return _Sweep(*_sweep(g["left"], g["right"], g["w"], cls, thresh, dense))


def _all_pairs(g: dict, cls: torch.Tensor, thresh: float, kind: str, beta: float, dense: bool,
               plan: _Sweep | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair of the same ``cls`` overlapping by more than ``thresh``, in bounded chunks."""
    plan = plan or _plan(g, cls, thresh, dense)
    firsts, seconds = [], []
    for begin, stop in _chunks(plan.ends):
        f, s = _overlapping(*_pairs(plan.order, plan.ends, begin, stop), g, thresh, kind, beta, dense)
        firsts.append(f)
        seconds.append(s)
    if not firsts:
        empty = torch.zeros(0, dtype=torch.long, device=cls.device)
        return empty, empty
    return torch.cat(firsts), torch.cat(seconds)


def _directed(first: torch.Tensor, second: torch.Tensor, score: torch.Tensor,
              tie: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Darknet walks a class by descending probability; equal ones in the order its sorts left them (tie)
    s1, s2 = _take(score, first), _take(score, second)
    earlier = (s1 > s2) | ((s1 == s2) & (_take(tie, first) < _take(tie, second)))
    return torch.where(earlier, first, second), torch.where(earlier, second, first)


def _tie_order(probs: torch.Tensor, box_index: torch.Tensor, cls: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Each item's place among equal probabilities of its class, as Darknet's NMS meets them.

    Darknet sorts all its detections by class 0's probability, walks them, then sorts that order by class 1's,
    and so on; glibc's qsort is a stable merge sort, so equal probabilities of class k keep the order the
    sorts of classes 0..k-1 left.  Without equal probabilities (the usual case) the box order serves."""
    # one integer sort by (class, float32 bits) brings equal probabilities of a class side by side (positive
    # floats order as their bits; values that only round alike take the exact path below, as ties would)
    key = (cls.long() << 32) | score.float().view(torch.int32).long()
    walk = torch.argsort(key)
    s, c = _take(score.float(), walk), _take(cls, walk)
    if not bool(((s[1:] == s[:-1]) & (c[1:] == c[:-1])).any()):
        return box_index
    tied = torch.unique(_take(c, torch.nonzero((s[1:] == s[:-1]) & (c[1:] == c[:-1])).squeeze(1)))
    tied_set = set(tied.tolist())
    order = torch.arange(probs.shape[0], device=probs.device)
    place = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    tie = box_index.clone()
    for k in range(probs.shape[1]):
        if k in tied_set:  # where each box stands just before class k's sort
            place[order] = torch.arange(order.numel(), device=probs.device)
            mine = cls == k
            tie[mine] = _take(place, box_index[mine])
        column = _take(probs[:, k], order)
        if bool((column > 0).any()):  # an all-zero column is a no-op sort
            order = _take(order, torch.argsort(column, descending=True, stable=True))
    return tie


def _crowded(plan: _Sweep, m: int) -> bool:
    """Whether the sweep would examine many candidate pairs per item (clusters of overlapping boxes)."""
    return plan.candidates() > 64 * m


_ROUNDS = 64  # Darknet's walk for crowded classes: rounds of "keep each class's best, drop its overlaps"


def _greedy_rounds(boxes: torch.Tensor, cls: torch.Tensor, score: torch.Tensor, tie: torch.Tensor, thresh: float,
                   kind: str, beta: float, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Darknet's walk, every class at once: each round keeps the best undecided item of each class and
    suppresses the undecided items of its class that it overlaps.  Returns the suppressed mask and the items
    still undecided (all ranked below every kept one, so they form an NMS problem of their own)."""
    m = cls.numel()
    dev = cls.device
    by_tie = torch.argsort(tie, stable=True)
    by_score = _take(by_tie, torch.argsort(-_take(score, by_tie), stable=True))
    live = _take(by_score, torch.argsort(_take(cls, by_score), stable=True))  # walk order, class by class
    gone = torch.zeros(m, dtype=torch.bool, device=dev)
    top_of = torch.zeros(int(cls.max().item()) + 1, dtype=torch.long, device=dev)
    for _ in range(rounds):
        if live.numel() == 0:
            break
        live_cls = _take(cls, live)
        first = torch.ones_like(live_cls, dtype=torch.bool)
        first[1:] = live_cls[1:] != live_cls[:-1]
        (tops,) = _keep(first, live)
        top_of.index_copy_(0, _take(cls, tops), tops)
        rivals = _take(top_of, live_cls)
        others, rivals = _keep(live != rivals, live, rivals)
        hit = overlap_measure(_take(boxes, rivals), _take(boxes, others), kind, beta) > thresh
        (dropped,) = _keep(hit, others)
        gone.index_fill_(0, dropped, True)
        (live,) = _keep(~hit, others)
    return gone, live


_SHARED_BOXES = 8192  # the box-overlap bit matrix (n x n / 8 bytes) is built up to this many boxes
_BAND = 64  # ranks swept at a time by the bit-matrix sweep
_BAND_BYTES = 1 << 23  # overlap rows gathered per band: classes are swept in groups that stay under this
_EDGES_PER_ITEM = 16  # up to this many same-class overlapping pairs per item, the sparse resolution is cheaper


def _walk_orders(p: torch.Tensor) -> torch.Tensor:
    """Darknet's walk order for each class (G, n): its detections sorted by ``p[k]``, descending, a stable
    sort of the order the previous class's sort left (glibc's qsort is a stable merge sort), so that equal
    probabilities rank as Darknet meets them."""
    walk = torch.arange(p.shape[1], device=p.device)
    orders = []
    for column in p:
        walk = _take(walk, torch.argsort(_take(column, walk), descending=True, stable=True))
        orders.append(walk)
    return torch.stack(orders)


_BYTE_BITS = (1, 2, 4, 8, 16, 32, 64, 128)


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool (..., 8 * w) -> uint8 (..., w): column j is bit ``j & 7`` of byte ``j >> 3``."""
    weights = torch.tensor(_BYTE_BITS, dtype=torch.uint8, device=mask.device)
    return (mask.unflatten(-1, (-1, 8)).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


def _bits_at(packed: torch.Tensor, byte: torch.Tensor, bit: torch.Tensor, dim: int) -> torch.Tensor:
    return ((packed.gather(dim, byte) >> bit) & 1).bool()


def _band_greedy(conflict: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """Darknet's walk over one band of ranks, every class at once: ``conflict`` (G, B, B) says rank a
    overlaps a later rank c (both alive); an item is kept once every earlier neighbour is suppressed,
    suppressed once one is kept (at most B rounds, usually a few).  Returns the kept mask (G, B)."""
    undecided = live.clone()
    kept = torch.zeros_like(live)
    conflict = conflict.float()
    while bool(undecided.any()):
        # one product gives, per item, its undecided-or-kept earlier neighbours and its kept ones
        counts = torch.bmm(torch.stack([undecided | kept, kept], 1).float(), conflict)
        new_kept = undecided & (counts[:, 0] == 0)
        kept |= new_kept
        undecided &= ~new_kept & (counts[:, 1] == 0)
    return kept


def _bit_sweep(first: torch.Tensor, second: torch.Tensor, p: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Darknet's walk for every class at once over a bit matrix of box overlaps (pairs ``first``/``second``),
    ``_BAND`` ranks at a time.  A box still alive when its rank comes suppresses every box it overlaps: the
    earlier ones it overlaps are already suppressed (a kept one would have suppressed it), so no rank test is
    needed.  Returns the kept mask (G, n)."""
    dev = p.device
    n = p.shape[1]
    width = (n + 8) // 8  # one spare column: box n pads the last band, overlaps nothing, is never alive
    overlap = torch.zeros(n + 1, width * 8, dtype=torch.bool, device=dev)
    overlap[torch.cat([first, second]), torch.cat([second, first])] = True
    overlap = _pack_bits(overlap)
    ranks = int((p > 0).sum(1).max().item())
    steps = -(-ranks // _BAND)
    orders = torch.cat([orders[:, :ranks], orders.new_full((orders.shape[0], steps * _BAND - ranks), n)], 1)
    byte, bit = orders >> 3, (orders & 7).to(torch.uint8)
    alive = _pack_bits(torch.cat([p > 0, p.new_zeros(p.shape[0], width * 8 - n, dtype=torch.bool)], 1))
    later = torch.ones(_BAND, _BAND, dtype=torch.bool, device=dev).triu(1)
    group = max(1, _BAND_BYTES // (_BAND * max(width, _BAND)))
    for g0 in range(0, p.shape[0], group):
        live_bits = alive[g0:g0 + group]
        g = live_bits.shape[0]
        for step in range(steps):
            band = slice(g0, g0 + g), slice(step * _BAND, (step + 1) * _BAND)
            by, bt = byte[band], bit[band]
            live = _bits_at(live_bits, by, bt, 1)
            if not bool(live.any()):
                continue
            rows = overlap.index_select(0, orders[band].reshape(-1)).view(g, _BAND, width)
            conflict = _bits_at(rows, by[:, None, :].expand(g, _BAND, _BAND), bt[:, None, :], 2)
            conflict &= later & live[:, :, None] & live[:, None, :]
            rows = rows & (_band_greedy(conflict, live).to(torch.uint8) * 255)[:, :, None]
            half = _BAND
            while half > 1:  # OR of the kept items' rows
                half //= 2
                rows = rows[:, :half] | rows[:, half:2 * half]
            live_bits &= ~rows[:, 0]
        alive[g0:g0 + g] = live_bits
    column = torch.arange(n, device=dev)
    return ((alive[:, column >> 3] >> (column & 7).to(torch.uint8)) & 1).bool()


def _shared_overlaps(boxes: torch.Tensor, probs: torch.Tensor, thresh: float, kind: str, beta: float,
                     dense: bool) -> torch.Tensor:
    """NMS when boxes carry many classes: the overlapping box pairs are found once for all classes, then
    resolved on the sparse graph of same-class pairs or, when that graph is large, by the bit-matrix sweep."""
    dev = probs.device
    present = probs > 0
    active = torch.nonzero(present.any(1)).squeeze(1)
    columns = torch.nonzero(present.any(0)).squeeze(1)
    bi, bj = _all_pairs(_geometry(_take(boxes, active)), torch.zeros_like(active), thresh, kind, beta, dense)
    p = _take(_take(probs, active).t(), columns).contiguous()  # (G, n): each present class's probabilities
    g, n = p.shape
    orders = _walk_orders(p)
    if bi.numel() * g <= _EDGES_PER_ITEM * int(present.sum().item()):
        rank = torch.empty_like(orders)
        rank.scatter_(1, orders, torch.arange(n, device=dev).expand(g, n))
        item = torch.where(p > 0, torch.arange(g * n, device=dev).view(g, n), -1).t().contiguous()
        rank, gone = rank.reshape(-1), torch.zeros(g * n, dtype=torch.bool, device=dev)
        group = max(1, _PAIR_BUDGET // max(bi.numel(), 1))
        for k0 in range(0, g if bi.numel() else 0, group):
            items = item[:, k0:k0 + group].contiguous()
            a, c = _take(items, bi).reshape(-1), _take(items, bj).reshape(-1)
            a, c = _keep((a >= 0) & (c >= 0), a, c)
            earlier = _take(rank, a) < _take(rank, c)
            gone |= ~_resolve(g * n, torch.where(earlier, a, c), torch.where(earlier, c, a))
        kept = ~gone.view(g, n)
    else:
        kept = _bit_sweep(bi, bj, p, orders)
    out = probs.clone()
    suppressed = torch.zeros_like(present)
    suppressed[active[:, None], columns[None, :]] = ~kept.t()
    return out.masked_fill_(suppressed & present, 0)


def darknet_nms(boxes: torch.Tensor, probs: torch.Tensor, thresh: float, kind: str = "default",
                beta: float = 0.6) -> torch.Tensor:
    """Darknet's per-class NMS on ``boxes`` (K, 4) centre x, y, w, h and ``probs`` (K, C) (0 = absent):
    returns ``probs`` with the suppressed entries set to 0 (``do_nms_sort`` for ``default``/``cornersnms``,
    ``diounms_sort`` for ``greedynms``/``diounms``).  Equal probabilities rank as Darknet's chain of stable
    sorts leaves them."""
    if kind not in NMS_KINDS:
        raise ValueError(f"unknown nms_kind {kind!r} (expected one of {', '.join(NMS_KINDS)})")
    out = probs.clone()
    box_index, cls = torch.nonzero(probs > 0, as_tuple=True)  # items, box by box (the tie order)
    m = box_index.numel()
    if m < 2:
        return out
    score = probs[box_index, cls]
    b = boxes.float()
    dense = thresh < 0 or not bool((torch.isfinite(b).all() & (b[:, 2:] > 0).all()).item())
    boxes_used = int((probs > 0).any(1).sum().item())
    if m > 6 * boxes_used and boxes_used <= _SHARED_BOXES:
        return _shared_overlaps(b, probs, thresh, kind, beta, dense)
    item_boxes = _take(b, box_index)
    tie = _tie_order(probs, box_index, cls, score)
    gone = torch.zeros(m, dtype=torch.bool, device=probs.device)
    rest = torch.arange(m, device=probs.device)
    geometry = _geometry(item_boxes)
    plan = None if dense else _plan(geometry, cls, thresh, dense)
    if plan is not None and _crowded(plan, m):
        # crowded classes: walk Darknet's order for a few rounds first; what is left is resolved at once
        gone, rest = _greedy_rounds(item_boxes, cls, score, tie, thresh, kind, beta, _ROUNDS)
        geometry, plan = _geometry(_take(item_boxes, rest)), None
    boxes_left = torch.zeros(probs.shape[0], dtype=torch.bool, device=probs.device)
    boxes_left.index_fill_(0, _take(box_index, rest), True)
    if rest.numel() < 2:
        pass
    elif rest.numel() <= 6 * int(boxes_left.sum().item()):
        # few classes per box: sweep the items themselves, classes side by side
        first, second = _all_pairs(geometry, _take(cls, rest), thresh, kind, beta, dense, plan)
        if first.numel():
            gone |= ~_resolve(m, *_directed(_take(rest, first), _take(rest, second), score, tie))
    else:
        # many classes per box: overlaps are found once per pair of boxes, then shared by the classes
        active = torch.nonzero(boxes_left).squeeze(1)
        bi, bj = _all_pairs(_geometry(_take(b, active)), torch.zeros_like(active), thresh, kind, beta, dense)
        bi, bj = _take(active, bi), _take(active, bj)
        item = torch.full(probs.shape, -1, dtype=torch.long, device=probs.device)
        item[_take(box_index, rest), _take(cls, rest)] = rest
        classes = probs.shape[1]
        group = max(1, _PAIR_BUDGET // max(bi.numel(), 1))
        for k0 in range(0, classes if bi.numel() else 0, group):
            columns = item[:, k0:k0 + group].contiguous()  # slice first: the gathers copy only these classes
            a = _take(columns, bi).reshape(-1)
            c = _take(columns, bj).reshape(-1)
            first, second = _keep((a >= 0) & (c >= 0), a, c)
            if first.numel():
                gone |= ~_resolve(m, *_directed(first, second, score, tie))
    out[box_index[gone], cls[gone]] = 0
    return out
