"""Training a classifier cfg: the cfg's batch, subdivisions, max_batches, optimizer and LR policy,
checkpoints every N steps, exact resume, and DistributedDataParallel under ``torchrun`` (gloo on CPU).

Exact resume needs no hidden state: the images of optimizer step k are a pure function of (seed, k)
(positions ``[k*batch, (k+1)*batch)`` in a stream of per-epoch permutations seeded by (seed, epoch)), and
the torch RNG (dropout) is reseeded from (seed, k, rank) before each step.  Model, optimizer, scheduler and
the loss/LR history come from the checkpoint.  With N processes each takes ``batch/N`` of a step's images
and DDP averages the gradients, so a run can resume on a different number of processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F

from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .errors import NetspecError


class TrainError(NetspecError, ValueError):
    """The cfg, data or output directory cannot be used for training."""


# ----------------------------------------------------------------- data
@dataclass
class Dataset:
    name: str
    x: torch.Tensor  # (N, C, H, W) float32
    y: torch.Tensor  # (N,) int64
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None


def _to_input(x, shape: tuple[int, int, int], what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() == 3:
        t = t[:, None]
    if t.dim() != 4:
        raise TrainError(f"{what}: x must be (N, C, H, W) (or (N, H, W)), got shape {tuple(t.shape)}")
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    c, h, w = shape
    if t.shape[1] != c:
        if t.shape[1] == 1:
            t = t.expand(-1, c, -1, -1)
        else:
            raise TrainError(f"{what}: images have {t.shape[1]} channels, the cfg expects {c}")
    if tuple(t.shape[2:]) != (h, w):
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return t.contiguous()


def _labels(y, n: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(y).long().reshape(-1)
    if t.numel() != n:
        raise TrainError(f"{what}: {t.numel()} labels for {n} images")
    return t


def digits_dataset(shape: tuple[int, int, int]) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, offline), upscaled; a fixed 80/20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise TrainError("--data digits needs scikit-learn: pip install 'netspec[demo]'") from None
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[:360], order[360:]
    x = _to_input(x, shape, "digits")
    return Dataset("digits", x[train], y[train], x[test], y[test])


def load_dataset(source: str, shape: tuple[int, int, int]) -> Dataset:
    """``digits`` (built in) or an ``.npz`` with ``x`` (N,C,H,W float or uint8) and ``y`` (N,); optional
    ``x_test``/``y_test``.  Images are resized to the cfg's input size."""
    if source == "digits":
        return digits_dataset(shape)
    import numpy as np

    try:
        with np.load(source, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise TrainError(f"{source}: cannot read the dataset ({exc}); expected an .npz with x and y, or 'digits'") \
            from None
    if "x" not in arrays or "y" not in arrays:
        raise TrainError(f"{source}: the .npz needs arrays 'x' and 'y' (has {', '.join(arrays) or 'none'})")
    x = _to_input(arrays["x"], shape, source)
    data = Dataset(Path(source).name, x, _labels(arrays["y"], len(x), source))
    if "x_test" in arrays and "y_test" in arrays:
        data.x_test = _to_input(arrays["x_test"], shape, source)
        data.y_test = _labels(arrays["y_test"], len(data.x_test), source)
    return data


def _seed_of(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Sampler:
    """The dataset indices of optimizer step k (0-based), a pure function of (seed, k)."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch, self.seed = n, batch, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            gen = torch.Generator().manual_seed(_seed_of("data", self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=gen)
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        positions = range(step * self.batch, (step + 1) * self.batch)
        return torch.stack([self._perm(p // self.n)[p % self.n] for p in positions])


# ----------------------------------------------------------------- progress
class Progress:
    """A plain progress line on stderr: redrawn in place on a terminal, every ~5% otherwise."""

    def __init__(self, total: int, start: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.start, self.stream, self.enabled = total, start, stream or sys.stderr, enabled
        self.t0 = time.monotonic()
        self.last_draw = 0.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = max(1, total // 20)

    def update(self, step: int, loss: float, lr: float, images: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        done = step - self.start
        if self.tty and now - self.last_draw < 0.1 and step != self.total:
            return
        if not self.tty and step % self.every and step != self.total:
            return
        self.last_draw = now
        elapsed = max(now - self.t0, 1e-9)
        rate = done * images / elapsed
        eta = (self.total - step) * elapsed / max(done, 1)
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (f"[{bar}] {step}/{self.total} loss {loss:.4f} lr {lr:.3g} {rate:.0f} img/s "
                f"eta {int(eta) // 60:02d}:{int(eta) % 60:02d}")
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        if self.tty and step == self.total:
            self.stream.write("\n")
        self.stream.flush()


# ----------------------------------------------------------------- training
def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _logits_hook(net):
    """Cross-entropy wants logits: when the output layer turns logits into probabilities (its section's
    ``classifier_logits``, a plain [softmax]), capture its input as logits."""
    out = net.spec.layers[net.outputs[0]]
    captured: dict[str, torch.Tensor] = {}
    to_logits = out.section.classifier_logits(out)
    if to_logits is not None:
        def hook(module, inputs):
            captured["logits"] = to_logits(inputs[0])

        net.layers[out.index].register_forward_pre_hook(hook)
    return captured


def evaluate(net, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Top-1 accuracy of ``net`` (eval mode) on ``x``/``y``."""
    was_training = net.training
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = net(x[i:i + batch]).flatten(1)
            correct += int((out.argmax(1) == y[i:i + batch]).sum())
    net.train(was_training)
    return correct / max(1, len(x))


class Trainer:
    """One training run; ``run()`` trains to ``[net] max_batches`` and returns the final state."""

    def __init__(self, cfg, data: str | Dataset, out: str | os.PathLike, *, resume: bool = False,
                 save_every: int = 100, seed: int = 0, keep_last: int = 3, progress: bool = True,
                 stream: TextIO | None = None) -> None:
        from .builder import build

        self.rank, self.world = _distributed()
        self.out = Path(out)
        self.stream = stream or sys.stderr
        self.save_every, self.keep_last = save_every, keep_last
        ckpt = None
        if self.out.is_dir() and list_checkpoints(self.out):
            if not resume:
                raise TrainError(f"{self.out} already holds checkpoints: pass --resume to continue, or another --out")
            ckpt = load_checkpoint(self.out)
            for bad, reason in ckpt.skipped:
                self.log(f"warning: skipped damaged checkpoint {bad.name}: {reason}")
            stored_seed = ckpt.state.get("seed", seed)
            if stored_seed != seed:
                self.log(f"note: continuing with the checkpoint's seed {stored_seed} (not {seed})")
            seed = stored_seed
        self.seed = seed
        self.net = build(cfg, seed=seed)
        if self.net.is_detector:
            raise TrainError("netspec train handles classifier cfgs; this cfg ends in detection heads")
        p = self.net.net
        self.batch, self.subdivisions = p.batch, p.subdivisions
        if self.batch % (self.subdivisions * self.world):
            raise TrainError(f"[net] batch={self.batch} must divide by subdivisions={self.subdivisions} x "
                             f"{self.world} processes")
        self.data = data if isinstance(data, Dataset) else load_dataset(data, self.net.input_shape)
        self.max_steps = p.max_batches or math.ceil(p.max_epochs * len(self.data.x) / self.batch)
        if self.max_steps <= 0:
            raise TrainError("[net] max_batches (or max_epochs) must be > 0 to train")
        from .optim import drop_delayed_grads, make_optimizer
        from .schedule import make_scheduler

        self._drop_delayed = drop_delayed_grads
        self.optimizer = make_optimizer(self.net)
        self.scheduler = make_scheduler(self.optimizer, self.net, seed)
        self.step, self.history = 0, []
        if ckpt is not None:
            ckpt.load_into(self.net, strict=True)
            ckpt.restore(self.optimizer, self.scheduler)
            self.step = ckpt.step
            self.history = [list(h) for h in ckpt.state.get("history", [])][: self.step]
            self.log(f"resuming from {ckpt.path.name} at step {self.step}")
        self.model = self.net
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.net)
        self.logits = _logits_hook(self.net)
        self.sampler = Sampler(len(self.data.x), self.batch, seed)

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(message, file=self.stream, flush=True)

    def train_step(self, k: int) -> tuple[float, float]:
        """The k-th optimizer step (1-based): its mean loss and the learning rate of parameter group 0."""
        idx = self.sampler.indices(k - 1)[self.rank::self.world]
        torch.manual_seed(_seed_of("step", self.seed, k, self.rank))
        lr = self.optimizer.param_groups[0]["lr"]  # what the optimizer really uses (group 0)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        chunks = idx.chunk(self.subdivisions)
        total = 0.0
        for i, chunk in enumerate(chunks):
            x, y = self.data.x[chunk], self.data.y[chunk]
            sync = i == len(chunks) - 1 or self.world == 1
            ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                out = self.model(x)
                logits = self.logits.pop("logits", None)
                if logits is None:
                    logits = out.flatten(1)
                loss = F.cross_entropy(logits, y) / len(chunks)
                loss.backward()
            total += float(loss.detach())
        self._drop_delayed(self.optimizer, k)
        self.optimizer.step()
        self.scheduler.step()
        return total, lr

    def save(self) -> Path | None:
        path = None
        if self.rank == 0:
            state = {"step": self.step, "epoch": self.step * self.batch // len(self.data.x), "seed": self.seed,
                     "data": self.data.name, "history": self.history}
            if self.step >= self.max_steps and self.data.x_test is not None:
                state["test_accuracy"] = evaluate(self.net, self.data.x_test, self.data.y_test)
            path = save_checkpoint(self.out, self.net, self.optimizer, self.scheduler, keep_last=self.keep_last,
                                   **state)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        return path

    def run(self) -> dict[str, Any]:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create {self.out}: {exc.strerror or exc}") from None
        progress = Progress(self.max_steps, self.step, self.stream, enabled=self.rank == 0)
        t0 = time.monotonic()
        start = self.step
        while self.step < self.max_steps:
            k = self.step + 1
            loss, lr = self.train_step(k)
            self.step = k
            self.history.append([k, loss, lr])
            progress.update(k, loss, lr, self.batch)
            if self.save_every and k % self.save_every == 0 and k < self.max_steps:
                self.save()
        seconds = time.monotonic() - t0
        result: dict[str, Any] = {"steps": self.step - start, "seconds": seconds}
        if start < self.max_steps or not list_checkpoints(self.out):
            path = self.save()
            result["checkpoint"] = str(path) if path else None
        if self.data.x_test is not None:
            result["test_accuracy"] = evaluate(self.net, self.data.x_test, self.data.y_test)
            self.log(f"test accuracy: {result['test_accuracy']:.4f} on {len(self.data.x_test)} images")
        self.log(f"trained steps {start + 1}..{self.step} in {seconds:.1f} s; checkpoints in {self.out}")
        return result


def train(cfg, data: str | Dataset, out: str | os.PathLike, **kwargs: Any) -> dict[str, Any]:
    """Train ``cfg`` on ``data`` (``'digits'``, an ``.npz`` path, or a :class:`Dataset`); see :class:`Trainer`."""
    return Trainer(cfg, data, out, **kwargs).run()


__all__ = ["Dataset", "Sampler", "TrainError", "Trainer", "evaluate", "load_dataset", "train"]
