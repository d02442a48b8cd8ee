"""Darknet's backup folder: the ``.weights`` files ``darknet detector train`` leaves, with the same names.

``<stem>_last.weights`` every 100 iterations, ``<stem>_<N>.weights`` every 10,000 iterations (every 1,000 while
N < 10,000), ``<stem>_final.weights`` at the end, ``<stem>_best.weights`` whenever the evaluated mAP reaches a
new best (``--map``) and ``<stem>_ema.weights`` beside ``_last`` once an ``ema_alpha`` average exists.  Each
file's header records ``seen`` = images trained on, as Darknet's does; every write is atomic, so a killed run
never leaves a torn file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .weights import DEFAULT_VERSION, DarknetHeader, save_darknet_weights

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network


def numbered_backup_due(iteration: int) -> bool:
    """Whether Darknet keeps ``<stem>_<iteration>.weights``: every 10,000, and every 1,000 below 10,000."""
    return iteration > 0 and (iteration % 10000 == 0 or (iteration < 10000 and iteration % 1000 == 0))


class BackupFolder:
    """Writes a run's Darknet ``.weights`` files into ``directory`` under the cfg's stem."""

    def __init__(self, directory: str | os.PathLike, stem: str, images_per_step: int, last_every: int = 100) -> None:
        self.directory, self.stem = Path(directory), stem
        self.images_per_step, self.last_every = images_per_step, last_every

    def path(self, suffix: str) -> Path:
        return self.directory / f"{self.stem}_{suffix}.weights"

    def write(self, net: Network, suffix: str, iteration: int) -> Path:
        loaded = getattr(net, "darknet_header", None)
        version = (loaded.major, loaded.minor, loaded.revision) if loaded else DEFAULT_VERSION
        header = DarknetHeader(*version, seen=iteration * self.images_per_step)
        path = self.path(suffix)
        save_darknet_weights(net, path, header=header)
        return path

    def after_step(self, net: Network, iteration: int, ema_net: Network | None = None) -> list[Path]:
        """The files Darknet writes after ``iteration`` (1-based); returns the paths written."""
        written = []
        if numbered_backup_due(iteration):
            written.append(self.write(net, str(iteration), iteration))
        if self.last_every and iteration % self.last_every == 0:
            written.append(self.write(net, "last", iteration))
            if ema_net is not None:
                written.append(self.write(ema_net, "ema", iteration))
        return written


__all__ = ["BackupFolder", "numbered_backup_due"]
