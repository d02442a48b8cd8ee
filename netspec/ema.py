"""``[net] ema_alpha``: an exponential moving average of the weights, on Darknet's schedule.

Darknet starts the average at ``max_batches / 2`` (initialised to the weights), then after every update sets
``ema = alpha * ema + (1 - alpha) * w``; at ``max_batches - 1000`` it copies the average into the network
(``ema_apply``) and stops averaging.  When that point falls before the start (runs under 2,000 iterations)
Darknet's average would stay the single snapshot taken at the start; netspec then keeps averaging to the end
and never copies it back.  Every parameter is averaged (Darknet: convolutional weights, biases and BN
scales, which are all the parameters of most detectors); BN running statistics are taken from the network.
The average is evaluated in place of the network (``--map``) and saved beside it (``_ema.weights``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network


class DarknetEMA:
    def __init__(self, net: Network, alpha: float, max_batches: int) -> None:
        self.alpha = float(alpha)
        self.start = max_batches // 2
        self.apply_at = max_batches - 1000 if max_batches - 1000 > self.start else None
        self.names = [name for name, p in net.named_parameters() if p.is_floating_point()]
        self.average: dict[str, torch.Tensor] | None = None

    @property
    def initialised(self) -> bool:
        return self.average is not None

    @torch.no_grad()
    def after_step(self, net: Network, iteration: int) -> str | None:
        """Darknet's EMA bookkeeping after the ``iteration``-th update; returns what it did, if anything."""
        if iteration < self.start:
            return None
        params = dict(net.named_parameters())
        if self.average is None:
            self.average = {n: params[n].detach().clone() for n in self.names}
            did = "EMA initialised"
        else:
            did = None
        if self.apply_at is not None and iteration == self.apply_at:
            for n in self.names:
                params[n].copy_(self.average[n])
            return "EMA applied to the weights"
        if self.apply_at is None or iteration < self.apply_at:
            for n in self.names:
                self.average[n].mul_(self.alpha).add_(params[n].detach(), alpha=1.0 - self.alpha)
        return did

    @torch.no_grad()
    def network(self, net: Network) -> Network:
        """A copy of ``net`` holding the averaged parameters (and ``net``'s buffers)."""
        averaged = copy.deepcopy(net)
        if self.average is not None:
            params = dict(averaged.named_parameters())
            for n in self.names:
                params[n].copy_(self.average[n])
        return averaged

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        average = state.get("average")
        self.average = None if average is None else {n: average[n].clone() for n in self.names}


__all__ = ["DarknetEMA"]
