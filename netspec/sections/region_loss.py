"""Darknet's training deltas of ``[region]`` (YOLOv2, ``region_layer.c``), vectorized over cells and anchors.

Every write of Darknet's truth loop sets (rather than adds to) the cell's box, objectness and class deltas, so
where two truths pick the same anchor of the same cell the last one wins; with a class tree (``tree=``) a truth
rewrites only the groups on its path, so those writes run truth index by truth index (a loop bounded by the
truths per image, each step vectorized over the batch)."""

from __future__ import annotations

import torch

from .base import LayerSpec
from .box_math import box_iou
from .head_loss import HeadResult, Truths, anchor_rows, find_file, problem, read_class_map

_PRIOR_SEEN = 12800  # Darknet pulls every box towards its anchor until this many images were seen


def _logistic_gradient(y: torch.Tensor) -> torch.Tensor:
    return (1 - y) * y


class ClassTree:
    """Darknet's ``tree``: each class's parent and its group (a run of classes sharing a parent)."""

    def __init__(self, path: str, classes: int) -> None:
        parents: list[int] = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                fields = line.split()
                if fields:
                    parents.append(int(fields[1]) if len(fields) > 1 else -1)
        if len(parents) != classes:
            raise ValueError(f"the tree lists {len(parents)} classes, the layer has {classes}")
        group = []
        for i, parent in enumerate(parents):
            group.append(group[-1] + (parent != parents[i - 1]) if i else 0)
        self.parents = parents
        self.group = group
        self.depth = 1
        for c in range(classes):
            d, p = 1, parents[c]
            while p >= 0:
                if d > classes:
                    raise ValueError("the tree has a cycle")
                d, p = d + 1, parents[p]
            self.depth = max(self.depth, d)


class RegionLoss:
    """The loss of one ``[region]`` layer."""

    def __init__(self, spec: LayerSpec, net_params) -> None:
        p = spec.p
        self.label = spec.label
        self.classes, self.num = p.classes, p.num
        self.entries = 5 + p.classes
        values = list(p.anchors or ())[:2 * p.num]
        values += [0.5] * (2 * p.num - len(values))  # Darknet's default for anchors not given
        self.biases = [(values[2 * i], values[2 * i + 1]) for i in range(p.num)]
        self.softmax = bool(p.softmax)
        self.focal_loss = bool(p.focal_loss)
        self.rescore = bool(p.rescore)
        self.bias_match = bool(p.bias_match)
        self.thresh = p.thresh
        self.classfix = int(p.classfix)
        self.max_boxes = p.max
        self.coord_scale, self.object_scale = p.coord_scale, p.object_scale
        self.noobject_scale, self.class_scale = p.noobject_scale, p.class_scale
        # log=, sqrt=, absolute= and mask_scale= are read by Darknet's parser but its [region] loss never uses them
        self.tree = None
        if p.tree is not None:
            path = find_file(p.tree, spec)
            if path is None:
                raise problem(spec, f"tree file {p.tree!r} not found: the hierarchical class loss needs it", "tree")
            try:
                self.tree = ClassTree(path, p.classes)
            except (ValueError, IndexError, OSError) as exc:
                raise problem(spec, f"tree file {p.tree!r}: {exc}", "tree") from None
        self.class_map = read_class_map(spec, p.classes)

    def class_limit(self) -> int:
        return min(self.classes, len(self.class_map)) if self.class_map is not None else self.classes

    def __call__(self, x: torch.Tensor, truths: Truths) -> HeadResult:
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return self._compute(x, truths)

    def _activate(self, v: torch.Tensor) -> torch.Tensor:
        out = v.clone()
        out[:, 4] = torch.sigmoid(v[:, 4])
        cls = v[:, 5:]
        if self.tree is not None:
            group = torch.tensor(self.tree.group, device=v.device)
            for g in range(int(group.max()) + 1):
                idx = (group == g).nonzero()[:, 0]
                out[:, 5 + idx] = torch.softmax(cls[:, idx], -1)
        elif self.softmax:
            out[:, 5:] = torch.softmax(cls, -1)
        return out

    def _boxes(self, out: torch.Tensor, i: torch.Tensor, j: torch.Tensor, anchor: torch.Tensor, lw: int, lh: int):
        return torch.stack(((i + torch.sigmoid(out[:, 0])) / lw, (j + torch.sigmoid(out[:, 1])) / lh,
                            torch.exp(out[:, 2]) * anchor[:, 0] / lw, torch.exp(out[:, 3]) * anchor[:, 1] / lh), -1)

    def _box_delta(self, out, truth, i, j, anchor, lw, lh, scale) -> torch.Tensor:
        """Darknet's ``delta_region_box``: the x, y deltas carry the logistic's derivative."""
        sx, sy = torch.sigmoid(out[:, 0]), torch.sigmoid(out[:, 1])
        tx, ty = truth[:, 0] * lw - i, truth[:, 1] * lh - j
        tw = torch.log(truth[:, 2] * lw / anchor[:, 0])
        th = torch.log(truth[:, 3] * lh / anchor[:, 1])
        return scale * torch.stack(((tx - sx) * _logistic_gradient(sx), (ty - sy) * _logistic_gradient(sy),
                                    tw - out[:, 2], th - out[:, 3]), -1)

    def _flat_classes(self, out_c: torch.Tensor, cls: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``delta_region_class`` without a tree: the whole class vector."""
        onehot = torch.zeros_like(out_c).scatter_(1, cls[:, None], 1.0)
        value = scale[:, None] * (onehot - out_c)
        if self.focal_loss:
            pt = out_c.gather(1, cls[:, None]) + 0.000000000000001
            value = value * (0.5 * -(1 - pt) * (2 * pt * torch.log(pt) + pt - 1))
        return value

    def _tree_classes(self, delta_c, out_c, cls, scale) -> tuple[torch.Tensor, torch.Tensor]:
        """``delta_region_class`` with a tree: every group on the path to the root, and the path's probability."""
        dev = out_c.device
        parents = torch.tensor(self.tree.parents, device=dev)
        group = torch.tensor(self.tree.group, device=dev)
        prob = torch.ones_like(scale)
        c = cls.clone()
        for _ in range(self.tree.depth):
            live = c >= 0
            if not live.any():
                break
            cc = c.clamp(min=0)
            prob = torch.where(live, prob * out_c.gather(1, cc[:, None])[:, 0], prob)
            in_group = (group[None, :] == group[cc][:, None]) & live[:, None]
            delta_c = torch.where(in_group, scale[:, None] * (0 - out_c), delta_c)
            on_path = (torch.arange(self.classes, device=dev)[None, :] == cc[:, None]) & live[:, None]
            delta_c = torch.where(on_path, scale[:, None] * (1 - out_c), delta_c)
            c = torch.where(live, parents[cc], c)
        return delta_c, prob

    def _class_delta(self, delta_c, out_c, cls, scale) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tree is not None:
            return self._tree_classes(delta_c, out_c, cls, scale)
        return self._flat_classes(out_c, cls, scale), out_c.gather(1, cls[:, None])[:, 0]

    def _compute(self, x: torch.Tensor, truths: Truths) -> HeadResult:
        dev = x.device
        b_, _, lh, lw = x.shape
        n_ = self.num
        grid = anchor_rows(x, n_, self.entries, self.label)
        out = self._activate(grid.values)
        delta = torch.zeros_like(out)
        n_rows = out.shape[0]
        cells = n_rows // b_
        ci, cj, ca, cb = grid.i, grid.j, grid.anchor, grid.image
        biases = torch.tensor(self.biases, dtype=torch.float32, device=dev)
        row_anchor = biases[ca]
        cmap = torch.tensor(self.class_map, dtype=torch.long, device=dev) if self.class_map is not None else None

        t_ = min(truths.boxes.shape[1], self.max_boxes)
        tboxes = truths.boxes[:, :t_].float()
        tvalid = truths.valid[:, :t_]
        tcls = truths.classes[:, :t_]
        figures_cat = torch.zeros((), device=dev)
        class_count = torch.zeros((), device=dev)

        # ---- every cell: objectness against the best-overlapping truth, and the pull towards the anchor prior
        o = out[:, 4]
        if t_:
            pred = self._boxes(out, ci, cj, row_anchor, lw, lh).view(b_, cells, 1, 4)
            ious = torch.where(tvalid[:, None, :], box_iou(pred, tboxes[:, None, :]), 0.0)
            best_iou = ious.max(-1).values
            best_t = (ious == best_iou[..., None]).to(torch.uint8).argmax(-1)
            best_iou, best_t = best_iou.reshape(-1), best_t.reshape(-1)
        else:
            best_iou = torch.zeros(n_rows, device=dev)
            best_t = torch.zeros(n_rows, dtype=torch.long, device=dev)
        if self.classfix == -1:
            delta[:, 4] = self.noobject_scale * ((best_iou - o) * _logistic_gradient(o))
        else:
            above = best_iou > self.thresh
            delta[:, 4] = torch.where(above, 0.0, self.noobject_scale * ((0 - o) * _logistic_gradient(o)))
            if self.classfix > 0:
                rows = above.nonzero()[:, 0]
                if rows.numel():
                    scale = torch.full((rows.numel(),), self.class_scale, device=dev)
                    if self.classfix == 2:
                        scale = scale * o[rows]
                    c = tcls[cb[rows], best_t[rows]]  # Darknet does not map this class id
                    dc, cat = self._class_delta(delta[rows, 5:], out[rows, 5:], c, scale)
                    delta[rows, 5:] = dc
                    figures_cat = figures_cat + cat.sum()
                    class_count = class_count + rows.numel()
        if truths.seen < _PRIOR_SEEN:
            prior = torch.stack(((ci + 0.5) / lw, (cj + 0.5) / lh, row_anchor[:, 0] / lw, row_anchor[:, 1] / lh), -1)
            delta[:, :4] = self._box_delta(out, prior, ci, cj, row_anchor, lw, lh, 0.01)

        # ---- every truth: the anchor of its cell whose (predicted or prior) shape fits it best
        ab, at = tvalid.nonzero(as_tuple=True)
        k = ab.numel()
        tot_iou = torch.zeros((), device=dev)
        recall = torch.zeros((), device=dev)
        avg_obj = torch.zeros((), device=dev)
        if k:
            tb = tboxes[ab, at]
            gi = (tb[:, 0] * lw).clamp(max=lw - 1).long()  # an x of exactly 1 stays in the last cell
            gj = (tb[:, 1] * lh).clamp(max=lh - 1).long()
            anchor_ids = torch.arange(n_, device=dev)[None, :]
            rows_all = grid.row_index(ab[:, None], anchor_ids, gj[:, None], gi[:, None])  # (K, anchors)
            if self.bias_match:
                shape_w = (biases[:, 0] / lw)[None, :].expand(k, n_)
                shape_h = (biases[:, 1] / lh)[None, :].expand(k, n_)
            else:
                shape_w = torch.exp(out[rows_all, 2]) * biases[:, 0][None, :] / lw
                shape_h = torch.exp(out[rows_all, 3]) * biases[:, 1][None, :] / lh
            zero = torch.zeros_like(shape_w)
            fit = box_iou(torch.stack((zero, zero, shape_w, shape_h), -1),
                          torch.stack((zero, zero, tb[:, 2:3].expand(k, n_), tb[:, 3:4].expand(k, n_)), -1))
            best_fit = fit.max(-1).values
            best_n = (fit == best_fit[:, None]).to(torch.uint8).argmax(-1)
            arow = rows_all.gather(1, best_n[:, None])[:, 0]
            anchor = biases[best_n]
            pred = self._boxes(out[arow], gi.float(), gj.float(), anchor, lw, lh)
            iou = box_iou(pred, tb)
            tot_iou = iou.sum()
            recall = (iou > 0.5).float().sum()
            avg_obj = out[arow, 4].sum()
            c = cmap[tcls[ab, at]] if cmap is not None else tcls[ab, at]
            box = self._box_delta(out[arow], tb, gi.float(), gj.float(), anchor, lw, lh, self.coord_scale)
            target_obj = iou if self.rescore else torch.ones_like(iou)
            obj = self.object_scale * (target_obj - out[arow, 4]) * _logistic_gradient(out[arow, 4])
            scale = torch.full((k,), self.class_scale, device=dev)
            class_count = class_count + k
            if self.tree is None:
                # every write sets the cell's values: the last truth (highest index) of a cell wins
                last = torch.full((n_rows,), -1, dtype=torch.long, device=dev).scatter_reduce(0, arow, at, "amax")
                win = last[arow] == at
                dc, cat = self._class_delta(None, out[arow[win], 5:], c[win], scale[win])
                figures_cat = figures_cat + out[arow, 5:].gather(1, c[:, None]).sum()
                delta[arow[win], :4] = box[win]
                delta[arow[win], 4] = obj[win]
                delta[arow[win], 5:] = dc
            else:
                for t in range(t_):
                    sel = at == t
                    if not sel.any():
                        continue
                    r = arow[sel]
                    delta[r, :4] = box[sel]
                    delta[r, 4] = obj[sel]
                    dc, cat = self._class_delta(delta[r, 5:], out[r, 5:], c[sel], scale[sel])
                    delta[r, 5:] = dc
                    figures_cat = figures_cat + cat.sum()

        cost = (delta * delta).sum()
        count = torch.tensor(float(k), device=dev)
        n = count.clamp(min=1)
        figures = {"avg_iou": tot_iou / n, "count": count, "recall": recall / n, "avg_obj": avg_obj / n,
                   "avg_noobj": o.sum() / n_rows, "avg_class": figures_cat / class_count.clamp(min=1),
                   "total_loss": cost / b_}
        return HeadResult(grid.to_input_layout(delta), cost, figures)
