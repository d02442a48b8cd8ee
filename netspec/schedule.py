"""Darknet's learning-rate schedule (reference §5.2) as a torch ``LRScheduler``.

Darknet counts ``seen`` images before it updates, so its k-th weight update (k = 1, 2, ...) uses the rate
at ``batch_num = k``.  :class:`DarknetLR` sets every group's ``lr`` to ``rate(k) * group['lr_mult']``
before the k-th ``optimizer.step()``: call ``scheduler.step()`` once after each ``optimizer.step()``
(``subdivisions`` mini-batches of gradient accumulation make one step).

``rate(k)``: during ``burn_in`` (``k < burn_in``) ``lr0 * (k/burn_in)^power``; afterwards by ``policy``.
Where Darknet's formula has no real value netspec picks the obvious limit: ``poly`` beyond
``max_batches`` gives 0 (Darknet's ``pow`` of a negative base would be NaN); ``sigmoid`` saturates instead of
overflowing.  ``random`` draws ``U(0,1)`` from a generator seeded with ``(seed, k)``, so a resumed run
reproduces it without any state.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from torch.optim.lr_scheduler import LRScheduler

from .errors import CfgError, Problem

if TYPE_CHECKING:  # pragma: no cover
    from torch.optim import Optimizer

    from .network import Network
    from .sections.base import Params
    from .specs import NetSpec

_FIELDS = ("learning_rate", "policy", "burn_in", "power", "max_batches", "learning_rate_min", "sgdr_cycle",
           "sgdr_mult", "step", "scale", "steps", "scales", "gamma")


def schedule_settings(net_params: Params) -> dict[str, Any]:
    """The ``[net]`` values the schedule reads, validated (plain values: they go into checkpoints)."""
    s = {k: getattr(net_params, k) for k in _FIELDS}
    s["steps"] = list(s["steps"]) if s["steps"] is not None else None
    s["scales"] = list(s["scales"]) if s["scales"] is not None else None
    if s["sgdr_cycle"] is None:
        s["sgdr_cycle"] = s["max_batches"]

    def fail(message: str, key: str):
        opt = net_params.option(key) if hasattr(net_params, "option") else None
        raise CfgError([Problem(f"[net]: {message}", None, opt.line if opt else None, opt.col if opt else None)])

    policy = s["policy"]
    if policy == "steps":
        if s["steps"] is None or s["scales"] is None:
            fail("policy=steps needs steps= and scales=", "policy")
        if len(s["steps"]) != len(s["scales"]):
            fail(f"steps= has {len(s['steps'])} values but scales= has {len(s['scales'])}", "scales")
    elif policy == "poly" and s["max_batches"] <= 0:
        fail("policy=poly needs max_batches > 0", "policy")
    elif policy == "sgdr" and s["sgdr_cycle"] <= 0:
        fail("policy=sgdr needs sgdr_cycle > 0 (or max_batches > 0)", "policy")
    elif policy == "step" and s["step"] <= 0:
        fail("policy=step needs step > 0", "step")
    return s


def random_uniform(seed: int, batch_num: int) -> float:
    """The U(0,1) draw policy=random uses at ``batch_num``."""
    return random.Random(f"netspec-lr:{seed}:{batch_num}").random()


def darknet_rate(s: dict[str, Any], batch_num: int, seed: int = 0) -> float:
    """Darknet's ``get_current_rate`` at ``batch_num`` for settings from :func:`schedule_settings`."""
    lr0 = s["learning_rate"]
    if batch_num < s["burn_in"]:
        return lr0 * math.pow(batch_num / s["burn_in"], s["power"])
    policy = s["policy"]
    if policy == "constant":
        return lr0
    if policy == "step":
        return lr0 * math.pow(s["scale"], batch_num // s["step"])
    if policy == "steps":
        rate = lr0
        for step, scale in zip(s["steps"], s["scales"]):
            if step > batch_num:
                break
            rate *= scale
        return rate
    if policy == "exp":
        return lr0 * math.pow(s["gamma"], batch_num)
    if policy == "poly":
        return lr0 * math.pow(max(0.0, 1.0 - batch_num / s["max_batches"]), s["power"])
    if policy == "random":
        return lr0 * math.pow(random_uniform(seed, batch_num), s["power"])
    if policy == "sigmoid":
        z = s["gamma"] * (batch_num - s["step"])
        return 0.0 if z > 700 else lr0 / (1.0 + math.exp(z))
    if policy == "sgdr":
        start, length = 0, s["sgdr_cycle"]
        while start + length < batch_num:
            start += length
            length *= s["sgdr_mult"]
        lr_min = s["learning_rate_min"]
        return lr_min + 0.5 * (lr0 - lr_min) * (1.0 + math.cos(math.pi * (batch_num - start) / length))
    raise ValueError(f"unknown policy {policy!r}")  # pragma: no cover - [net] policy= is a Choice


class DarknetLR(LRScheduler):
    """Sets each group's lr to ``darknet_rate(k) * lr_mult`` before the k-th optimizer step."""

    def __init__(self, optimizer: Optimizer, settings: dict[str, Any], seed: int = 0, last_epoch: int = -1) -> None:
        self.settings = dict(settings)
        self.seed = seed
        super().__init__(optimizer, last_epoch)

    def rate(self, batch_num: int) -> float:
        return darknet_rate(self.settings, batch_num, self.seed)

    def get_lr(self) -> list[float]:
        rate = self.rate(self.last_epoch + 1)  # last_epoch = optimizer steps taken so far
        return [rate * group.get("lr_mult", 1.0) for group in self.optimizer.param_groups]

    _get_closed_form_lr = get_lr


def make_scheduler(optimizer: Optimizer, net: Network, seed: int = 0) -> DarknetLR:
    """Darknet's schedule from ``net``'s ``[net]`` section for ``optimizer`` (groups from ``param_groups``)."""
    return DarknetLR(optimizer, schedule_settings(net.net), seed)


def lr_curve(net: Network | NetSpec, steps: int | None = None, seed: int = 0) -> list[tuple[int, float]]:
    """``(k, rate)`` for k = 1..steps (default ``max_batches``): the base rate of each optimizer step (``net``: a
    network or just its validated spec)."""
    s = schedule_settings(net.net)
    total = steps if steps is not None else s["max_batches"]
    return [(k, darknet_rate(s, k, seed)) for k in range(1, total + 1)]


__all__ = ["DarknetLR", "darknet_rate", "lr_curve", "make_scheduler", "random_uniform", "schedule_settings"]
