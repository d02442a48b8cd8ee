"""What a training run reports: the tqdm progress bar, the JSON-lines log and ``chart.png``.

The log (``DIR/log.jsonl``) has one object per optimizer step (``iteration``, ``loss``, ``avg_loss`` (Darknet's
``0.9 * avg + 0.1 * loss``), ``lr``, ``images`` seen, ``images_per_s``, ``seconds``, ``time_left_s`` and the
loss's own figures) and one per evaluation (``iteration`` and the metric, e.g. ``"mAP@0.5"``).  A resumed run
first cuts the log back to the checkpoint's step, so the file always describes one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .atomic import atomic_write


def darknet_avg_loss(previous: float | None, loss: float) -> float:
    """Darknet's running average: the first (or a NaN) average restarts at ``loss``, then ``0.9 avg + 0.1 loss``."""
    if previous is None or previous < 0 or math.isnan(previous):
        previous = loss
    return previous * 0.9 + loss * 0.1


class JsonLog:
    """Appends one JSON object per line to ``path``, flushed each time (a killed run loses nothing logged)."""

    def __init__(self, path: str | os.PathLike, resume_at: int | None = None) -> None:
        self.path = Path(path)
        if resume_at is not None and self.path.exists():
            self._cut(resume_at)
        elif resume_at is None and self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _cut(self, step: int) -> None:
        kept = []
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except ValueError:
                    break  # a line torn by a kill: nothing after it was written either
                if int(record.get("iteration", 0)) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        with atomic_write(self.path, "w") as out:
            out.writelines(kept)

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, allow_nan=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class ProgressBar:
    """tqdm on stderr: iteration/total, loss, average loss, learning rate, images/s and time left."""

    def __init__(self, total: int, start: int, images_per_step: int, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        from tqdm import tqdm

        self.images_per_step = images_per_step
        self.start, self.t0 = start, time.monotonic()
        stream = stream or sys.stderr
        tty = hasattr(stream, "isatty") and stream.isatty()
        # On a file or pipe redraw rarely: each redraw is a new line there.
        self.bar = tqdm(total=total, initial=start, file=stream, disable=not enabled, unit="it", dynamic_ncols=tty,
                        mininterval=0.2 if tty else 30.0, leave=True, desc="train")

    def update(self, step: int, loss: float, avg_loss: float, lr: float) -> None:
        if self.bar.disable:
            return
        self.bar.set_postfix_str(f"loss {loss:.4g} avg {avg_loss:.4g} lr {lr:.3g} {self.images_per_s(step):.1f} img/s",
                                 refresh=False)
        self.bar.update(step - self.bar.n)

    def images_per_s(self, step: int) -> float:
        return (step - self.start) * self.images_per_step / max(time.monotonic() - self.t0, 1e-9)

    def time_left(self, step: int, total: int) -> float:
        done = step - self.start
        return (total - step) * (time.monotonic() - self.t0) / max(done, 1)

    def write(self, message: str) -> None:
        """A message that does not break the bar."""
        self.bar.write(message, file=self.bar.fp)

    def close(self) -> None:
        self.bar.close()


def plot_chart(path: str | os.PathLike, history: list[list[float]], metrics: list[list[float]],
               metric_name: str = "mAP@0.5", max_loss: float | None = None) -> bool:
    """``chart.png``: loss and average loss against iterations, and the metric (right axis) where evaluated.

    ``history`` rows are ``[iteration, loss, lr, ...]``; ``metrics`` rows ``[iteration, value]``; ``max_loss``
    tops the loss axis (Darknet's ``[net] max_chart_loss``; default: Darknet's 20, or less when every average
    stays below it).  Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = [row[0] for row in history]
    losses = [row[1] for row in history]
    averages, avg = [], None
    for loss in losses:
        avg = darknet_avg_loss(avg, loss)
        averages.append(avg)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    ax.plot(steps, averages, color="tab:blue", linewidth=1.5, label="avg loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    finite = [v for v in averages if math.isfinite(v)]
    if max_loss is None:
        max_loss = min(20.0, max(finite, default=20.0) * 1.1 + 1e-9)
    ax.set_ylim(0, max_loss)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if metrics:
        right = ax.twinx()
        right.plot([m[0] for m in metrics], [100 * m[1] for m in metrics], "o-", color="tab:red",
                   label=f"{metric_name} %")
        right.set_ylim(0, 100)
        right.set_ylabel(f"{metric_name} %")
        more_h, more_l = right.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    ax.legend(handles, labels, loc="upper right")
    ax.set_title(f"iteration {int(steps[-1]) if steps else 0}")
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return True


__all__ = ["JsonLog", "ProgressBar", "darknet_avg_loss", "plot_chart"]
