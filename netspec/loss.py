"""``DetectionLoss``: Darknet's detection training loss for a whole network.

Each head layer's section supplies its own loss (its ``loss(spec, net_params)`` hook, in ``netspec/sections/``),
which returns Darknet's ``l.delta`` for the layer.  This module checks the targets, hands them to every head,
and turns the deltas into a gradient: ``loss.backward()`` gives each head input ``x`` the gradient
``-delta / batch`` (times the head's ``delta_normalizer``), exactly what Darknet back-propagates.  The loss's
value is what Darknet reports for the batch: the mean of the heads' ``l.cost`` divided by the batch size."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import torch

from .errors import CfgError, NetspecError, Problem
from .sections.head_loss import HeadResult, Truths

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network


class TargetError(NetspecError, ValueError):
    """Training targets that are not ``(M, 6)`` rows of ``[image, class, x, y, w, h]`` a head can use."""


class _DarknetDelta(torch.autograd.Function):
    """Returns ``value``; its backward gives each head input ``-scale * delta / batch``."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, batch: int, scales: tuple[float, ...], *pairs: torch.Tensor):
        ctx.batch = batch
        ctx.scales = scales
        ctx.dtypes = [x.dtype for x in pairs[0::2]]
        ctx.save_for_backward(*pairs[1::2])
        return value.clone()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grads: list[Any] = [None, None, None]
        for delta, scale, dtype in zip(ctx.saved_tensors, ctx.scales, ctx.dtypes):
            grads.append((delta * (grad_out * (-scale / ctx.batch))).to(dtype))
            grads.append(None)
        return tuple(grads)


def targets_from_darknet_truth(truth: torch.Tensor) -> torch.Tensor:
    """Darknet's truth buffer ``(B, max_boxes, truth_size)`` (rows ``x, y, w, h, class[, track_id]``; an image's
    rows end at the first row whose ``x`` is 0) as ``(M, 6)`` targets ``[image, class, x, y, w, h]``."""
    truth = torch.as_tensor(truth, dtype=torch.float32)
    if truth.dim() != 3 or truth.shape[-1] < 5:
        raise TargetError(f"a Darknet truth buffer is (batch, max_boxes, truth_size >= 5), got {tuple(truth.shape)}")
    b, n, _ = truth.shape
    live = torch.cumprod((truth[..., 0] != 0).to(torch.int32), dim=1).bool()
    image = torch.arange(b, device=truth.device, dtype=torch.float32)[:, None].expand(b, n)
    rows = torch.stack((image, truth[..., 4], truth[..., 0], truth[..., 1], truth[..., 2], truth[..., 3]), -1)
    return rows[live]


class DetectionLoss:
    """Darknet's loss for every head of ``net``: ``loss, stats = DetectionLoss(net)(net(x), targets)``.

    ``heads``: what a detector returns from ``net(x)`` in training mode (the tensors fed into its head layers, in
    cfg order).  ``targets``: ``(M, 6)`` rows ``[image_index, class_id, x, y, w, h]``, normalized to the network
    input, in Darknet's truth order.  A bad row (class out of range, box outside [0, 1], NaN/Inf, image index
    beyond the batch) raises :class:`TargetError`; with ``strict=False`` it is printed and skipped as Darknet does.
    A training key a head cannot honour is a :class:`netspec.CfgError` here, at construction.  ``layers`` trains
    only the given head layers (``heads`` then holds their inputs only)."""

    def __init__(self, net: Network, strict: bool = True, layers: list[int] | None = None) -> None:
        self.strict = strict
        self.heads: list[tuple[int, str, Any]] = []
        problems: list[Problem] = []
        if layers is not None:
            unknown = [i for i in layers if i not in net.outputs]
            if unknown:
                raise ValueError(f"layers {unknown} are not head layers of this network (heads: {list(net.outputs)})")
        for index in net.outputs if layers is None else layers:
            spec = net.spec.layers[index]
            hook = getattr(spec.section, "loss", None)
            if hook is None or not spec.section.is_head:
                problems.append(spec.problem(f"this network's output layer {spec.label} has no detection loss "
                                             "(DetectionLoss trains detectors)"))
                continue
            try:
                self.heads.append((index, spec.type, hook(spec, net.spec.net)))
            except CfgError as exc:
                problems.extend(exc.problems)
        if problems:
            raise CfgError(problems)
        self.class_limit = min(h.class_limit() for _, _, h in self.heads)
        # Darknet's net.seen (images trained on), which early-training rules of [region]/[detection] read;
        # starts at [net] seen= and grows by the batch on every call (set it when resuming a run)
        self.seen = int(getattr(net.spec.net, "seen", 0) or 0)

    # ------------------------------------------------------------------ targets
    def _check_targets(self, targets: torch.Tensor, batch: int) -> torch.Tensor:
        if not isinstance(targets, torch.Tensor):
            targets = torch.as_tensor(targets, dtype=torch.float32)
        if targets.dim() != 2 or targets.shape[1] != 6:
            raise TargetError(f"targets must be (M, 6) rows [image_index, class_id, x, y, w, h], got shape "
                              f"{tuple(targets.shape)}")
        t = targets.detach().float()
        img, cls, x, y, w, h = t.unbind(1)
        reasons = [
            (~torch.isfinite(t).all(1), "has NaN or Inf"),
            ((img != img.floor()) | (img < 0) | (img >= batch), f"has an image index outside [0, {batch})"),
            ((cls != cls.floor()) | (cls < 0) | (cls >= self.class_limit),
             f"has a class id outside [0, {self.class_limit})"),
            ((x < 0) | (x > 1) | (y < 0) | (y > 1), "has a centre outside [0, 1]"),
            # Darknet's own check ("Wrong label"); its augmentation can leave a box a little wider than the image
            ((w <= 0) | (h <= 0), "has a width or height that is not positive"),
        ]
        bad = torch.zeros_like(img, dtype=torch.bool)
        for mask, _ in reasons:
            bad |= mask
        if bool(bad.any()):
            rows = bad.nonzero()[:, 0].tolist()
            lines = []
            for r in rows[:10]:
                why = next(text for mask, text in reasons if bool(mask[r]))
                lines.append(f"targets row {r} {why}: {[round(v, 6) for v in t[r].tolist()]}")
            more = f" (and {len(rows) - 10} more rows)" if len(rows) > 10 else ""
            if self.strict:
                raise TargetError("; ".join(lines) + more)
            for line in lines:
                print(f"Wrong label, skipped: {line}", file=sys.stderr)
            t = t[~bad]
        return t

    @staticmethod
    def _pad(t: torch.Tensor, batch: int, device: torch.device) -> Truths:
        t = t.to(device)
        img = t[:, 0].long()
        order = torch.sort(img, stable=True).indices
        t, img = t[order], img[order]
        counts = torch.bincount(img, minlength=batch)
        most = int(counts.max()) if t.shape[0] else 0
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(t.shape[0], device=device) - start[img]
        boxes = torch.zeros(batch, most, 4, device=device)
        classes = torch.zeros(batch, most, dtype=torch.long, device=device)
        valid = torch.zeros(batch, most, dtype=torch.bool, device=device)
        boxes[img, slot] = t[:, 2:6]
        classes[img, slot] = t[:, 1].long()
        valid[img, slot] = True
        return Truths(boxes, classes, valid)

    # ------------------------------------------------------------------ the loss
    def __call__(self, heads, targets, seen: int | None = None) -> tuple[torch.Tensor, dict]:
        """``seen``: images trained on before this batch (default: counted by this object)."""
        if isinstance(heads, torch.Tensor):
            heads = [heads]
        heads = list(heads)
        if len(heads) != len(self.heads):
            raise ValueError(f"DetectionLoss expects {len(self.heads)} head tensors (one per head layer), got "
                             f"{len(heads)}: pass what the network returns in training mode")
        batch = heads[0].shape[0]
        device = heads[0].device
        truths = self._pad(self._check_targets(targets, batch), batch, device)
        self.seen = (self.seen if seen is None else int(seen)) + batch  # Darknet counts the batch before forward
        truths.seen = self.seen
        results: list[HeadResult] = [head(x, truths) for x, (_, _, head) in zip(heads, self.heads)]
        value = torch.stack([r.cost for r in results]).mean() / batch
        pairs: list[torch.Tensor] = []
        for x, r in zip(heads, results):
            pairs += [x, r.delta]
        loss = _DarknetDelta.apply(value, batch, tuple(r.delta_scale for r in results), *pairs)
        return loss, self._stats(value, results)

    def _stats(self, value: torch.Tensor, results: list[HeadResult]) -> dict:
        values = [value.detach()]
        for r in results:
            values.append(r.cost.detach().float())
            values += [r.figures[k].detach().float() for k in sorted(r.figures)]
        flat = torch.stack(values).tolist()  # one device sync for every figure
        loss_value, offset = flat[0], 1
        per_head = []
        for (index, kind, _), r in zip(self.heads, results):
            names = ["cost"] + sorted(r.figures)
            row = dict(zip(names, flat[offset:offset + len(names)]))
            offset += len(names)
            row["count"] = int(row.get("count", 0))
            per_head.append({"layer": index, "type": kind, **row})
        count = sum(h["count"] for h in per_head)
        total = {"loss": loss_value, "count": count,
                 "avg_iou": sum(h.get("avg_iou", 0.0) * h["count"] for h in per_head) / max(count, 1)}
        for key in ("class_loss", "iou_loss", "uc_loss", "total_loss"):
            if any(key in h for h in per_head):
                total[key] = sum(h.get(key, 0.0) for h in per_head)
        return {**total, "heads": per_head}


def format_stats(stats: dict) -> str:
    """Darknet-style lines: one per head, then the batch's loss."""
    lines = []
    for h in stats["heads"]:
        extra = f", uc_loss = {h['uc_loss']:f}" if "uc_loss" in h else ""
        lines.append(f"[{h['type']}] #{h['layer']}: Avg (IOU: {h.get('avg_iou', 0.0):f}), count: {h['count']}, "
                     f"class_loss = {h.get('class_loss', 0.0):f}, iou_loss = {h.get('iou_loss', 0.0):f}{extra}, "
                     f"total_loss = {h.get('total_loss', 0.0):f}")
    lines.append(f"loss = {stats['loss']:f}")
    return "\n".join(lines)
