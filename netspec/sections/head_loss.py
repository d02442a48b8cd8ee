"""What a head section's loss hook receives and returns (shared by every head type).

A head section's ``loss(spec, net_params, cfg_dir)`` hook returns an object with ``__call__(x, truths) ->
HeadResult``: ``x`` is the tensor fed into the head, ``truths`` the batch's ground truth.  The result holds
Darknet's ``l.delta`` for the layer (the training gradient is ``-delta / batch``), Darknet's ``l.cost`` and the
figures Darknet prints for the layer.  :mod:`netspec.loss` gathers the heads and turns the deltas into a
gradient; it never needs to know which head type produced them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..errors import CfgError, Problem
from .base import LayerSpec


@dataclass
class Truths:
    """The ground truth of one batch, padded per image: image ``b`` has its boxes in rows ``valid[b]``
    (always a prefix), in the order given (Darknet's truth order matters where two boxes share a cell)."""

    boxes: torch.Tensor  # (B, T, 4) float32: centre x, y, width, height relative to the network input
    classes: torch.Tensor  # (B, T) int64
    valid: torch.Tensor  # (B, T) bool
    seen: int = 0  # Darknet's net.seen: images trained on so far, this batch included (early-training rules)

    @property
    def batch(self) -> int:
        return self.boxes.shape[0]


@dataclass
class HeadResult:
    delta: torch.Tensor  # Darknet's l.delta, float32, the head input's shape
    cost: torch.Tensor  # 0-d float32: Darknet's l.cost for the layer
    figures: dict[str, torch.Tensor] = field(default_factory=dict)  # 0-d tensors: Darknet's printed figures
    delta_scale: float = 1.0  # what Darknet's backward multiplies the delta by (delta_normalizer)


def problem(spec: LayerSpec, message: str, key: str | None = None) -> CfgError:
    """A located error for a key a head's loss cannot train with."""
    return CfgError(spec.problem(message, key))


def net_problem(net_params, path: str | None, key: str, message: str) -> CfgError:
    opt = net_params.option(key)
    return CfgError(Problem(f"[net]: {message}", path, opt.line if opt else None, opt.col if opt else None))


def find_file(name: str, spec: LayerSpec) -> str | None:
    """``name`` as Darknet opens it (from the working directory), else beside the cfg."""
    candidates = [name]
    if spec.path and not os.path.isabs(name):
        candidates.append(os.path.join(os.path.dirname(spec.path), name))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return None


def read_class_map(spec: LayerSpec, classes: int) -> list[int] | None:
    """The ``map=`` file (one class id per line, Darknet's ``read_map``), checked against ``classes``."""
    name = spec.p.map
    if name is None:
        return None
    path = find_file(name, spec)
    if path is None:
        raise problem(spec, f"map file {name!r} not found (looked in the working directory and beside the cfg)",
                      "map")
    values: list[int] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            text = line.strip()
            try:
                value = int(text.split()[0]) if text else 0  # Darknet's atoi of an empty line
            except ValueError:
                raise CfgError(Problem(f"map file line is not a class id: {text[:40]!r}", path, number)) from None
            if not 0 <= value < classes:
                raise CfgError(Problem(f"class id {value} is outside [0, {classes}) of {spec.label}", path, number))
            values.append(value)
    return values


def class_multipliers(spec: LayerSpec, classes: int, max_delta: float) -> list[float] | None:
    """Darknet's ``counters_per_class`` weighting: ``max(counts) / count`` per class, at most ``max_delta``."""
    text = spec.p.counters_per_class
    if text is None:
        return None
    try:
        counts = [int(float(v)) for v in text.split("#")[0].split(",") if v.strip()]
    except ValueError:
        raise problem(spec, f"counters_per_class must be a list of integers, got {text[:40]!r}",
                      "counters_per_class") from None
    if len(counts) != classes:
        raise problem(spec, f"counters_per_class has {len(counts)} values but classes={classes}",
                      "counters_per_class")
    counts = [max(c, 1) for c in counts]
    top = float(max(counts))
    return [min(top / c, max_delta) for c in counts]


# [net] keys that change the [yolo] deltas from iteration to iteration (rolling statistics over the run);
# netspec's loss is one call, so a cfg that sets them is refused rather than trained differently.
ROLLING_NET_KEYS = ("equidistant_point", "badlabels_rejection_percentage", "num_sigmas_reject_badlabels",
                    "adversarial_lr")


def refuse_rolling_net_keys(net_params, path: str | None, head: str) -> None:
    for key in ROLLING_NET_KEYS:
        if getattr(net_params, key, 0):
            raise net_problem(net_params, path, key, f"{key}= changes Darknet's {head} deltas with statistics "
                              "rolled over the whole run; netspec's DetectionLoss does not implement it")


@dataclass
class AnchorRows:
    """A head input ``(B, A*E, H, W)`` as one row per (image, anchor, y, x), the anchor's E entries as columns
    (Darknet's per-cell view of ``l.output``), with each row's cell coordinates."""

    values: torch.Tensor  # (R, E) float32, detached
    i: torch.Tensor  # (R,) float: the cell's column
    j: torch.Tensor  # (R,) float: the cell's row
    anchor: torch.Tensor  # (R,) long: position in the head's anchors
    image: torch.Tensor  # (R,) long
    shape: tuple[int, ...]  # (B, A, H, W, E)

    def row_index(self, image: torch.Tensor, anchor: torch.Tensor, j: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        _, a_, lh, lw, _ = self.shape
        return ((image * a_ + anchor) * lh + j) * lw + i

    def to_input_layout(self, rows: torch.Tensor) -> torch.Tensor:
        """``(R, E)`` back to the head input's ``(B, A*E, H, W)``."""
        b_, a_, lh, lw, e_ = self.shape
        return rows.reshape(b_, a_, lh, lw, e_).permute(0, 1, 4, 2, 3).reshape(b_, a_ * e_, lh, lw)


def anchor_rows(x: torch.Tensor, anchors: int, entries: int, label: str) -> AnchorRows:
    b_, c_, lh, lw = x.shape
    if c_ != anchors * entries:
        raise ValueError(f"{label}: the head input has {c_} channels, expected {anchors * entries}")
    view = x.detach().reshape(b_, anchors, entries, lh, lw).permute(0, 1, 3, 4, 2)
    # always a copy: the losses write into these rows, and on a 1x1 grid a reshape would alias the head input
    values = torch.empty(view.shape, dtype=torch.float32, device=x.device).copy_(view).reshape(-1, entries)
    row = torch.arange(values.shape[0], device=x.device)
    return AnchorRows(values, (row % lw).float(), ((row // lw) % lh).float(), (row // (lw * lh)) % anchors,
                      row // (anchors * lh * lw), (b_, anchors, lh, lw, entries))
