"""The training loop, shared by classifier and detector cfgs: the cfg's batch, subdivisions, max_batches,
optimizer and LR policy; Darknet's backup ``.weights``; checkpoints with exact resume; EMA; logging; and
DistributedDataParallel under ``torchrun`` (gloo on CPU, NCCL on CUDA).

What differs between the two kinds of cfg is passed in as a :class:`TrainingTask`: the data of each optimizer
step and the loss (:class:`ClassifierTask` here; :class:`netspec.detector_training.DetectionTask` for cfgs
ending in detection heads).

**The update is Darknet's.**  Darknet sums the gradient of every image of a step (``batch`` images in
``subdivisions`` mini-batches) into ``weight_updates`` ``u``, then ``u -= decay * batch * w``,
``w += lr / batch * u``, ``u *= momentum``.  With ``g`` the gradient of the *mean* loss over the step's images
that is ``v = momentum * v + g + decay * w; w -= lr * v`` (``v = -u / batch``): ``torch.optim.SGD`` with
``lr``, ``momentum``, ``weight_decay=decay`` and dampening 0 on the mean loss, which is what the loop does
(each mini-batch's mean loss divided by ``subdivisions``, gradients accumulated, one step).
``tests/test_train_detector.py`` checks it against Darknet's formula step by step.

**Exact resume needs no hidden state**: the data of optimizer step k is a pure function of (seed, k) and the
torch RNG (dropout) is reseeded from (seed, k, rank) before each step.  Model, optimizer, scheduler, EMA,
loss scaler and the loss/LR/metric history come from the checkpoint.  With N processes each takes
``batch/N`` of a step's images and DDP averages the gradients, so a run can resume on another process count.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import torch
import torch.nn.functional as F

from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .errors import NetspecError

if TYPE_CHECKING:  # pragma: no cover
    from .document import Document
    from .network import Network


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


CLASSIFIER_DATA = ("an .npz with arrays x (N,C,H,W) and y (N,) (optionally x_test, y_test), or 'digits' "
                   "(scikit-learn's bundled 8x8 digits)")


def _check_npz(source: str) -> None:
    """Name what a classifier run accepts when ``source`` is something else (np.load would say "pickled data")."""
    try:
        with open(source, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise TrainError(f"{source}: cannot read the dataset: {exc.strerror or exc}") from None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return
    text = head.decode("utf-8", "replace")
    darknet_data = any(line.split("=")[0].strip() in ("classes", "train", "valid", "names")
                       for line in text.splitlines() if "=" in line)
    what = "a Darknet .data file, which is for detector cfgs" if darknet_data else "not an .npz archive"
    raise TrainError(f"{source}: {what}; training a classifier cfg takes {CLASSIFIER_DATA}")


def load_dataset(source: str, shape: tuple[int, int, int]) -> Dataset:
    """``digits`` (built in) or an ``.npz`` with ``x`` (N,C,H,W float or uint8) and ``y`` (N,); optional
    ``x_test``/``y_test``.  Images are resized to the cfg's input size."""
    if source == "digits":
        return digits_dataset(shape)
    import numpy as np

    _check_npz(source)
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


def evaluate(net: Network, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
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


# ----------------------------------------------------------------- what differs between cfg kinds
class TrainingTask(Protocol):
    """The data and the loss of one kind of training; the loop does everything else.

    ``steps(first, last, rank, world, subdivisions)`` yields, for optimizer steps ``first..last`` (1-based),
    the list of this process's mini-batches ``(inputs, targets)`` (``subdivisions`` of them), a pure function of
    the run's seed and the step.  ``loss(outputs, targets)`` returns the mean loss over the mini-batch's images
    and a dict of figures to log.  ``evaluate(net)`` (eval mode) returns metrics, ``{}`` without validation data;
    ``metric`` names the one ``--map`` tracks (``_best.weights``, ``chart.png``)."""

    name: str
    images: int  # training images: an epoch, for max_epochs and Darknet's mAP interval
    metric: str
    evaluate_at_end: bool  # evaluate after the last step even when no periodic evaluation was asked for

    def steps(self, first: int, last: int, rank: int, world: int, subdivisions: int
              ) -> Iterator[list[tuple[Any, Any]]]: ...

    def loss(self, outputs: Any, targets: Any) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self, net: Network) -> dict[str, float]: ...


class ClassifierTask:
    """A classifier cfg on an in-memory :class:`Dataset`: cross-entropy (on the logits of a plain ``[softmax]``)."""

    metric = "accuracy"
    evaluate_at_end = True

    def __init__(self, net: Network, data: Dataset, batch: int, seed: int) -> None:
        _refuse_augmentation(net)
        self.data, self.name, self.images = data, data.name, len(data.x)
        self.batch = batch
        self.sampler = Sampler(len(data.x), batch, seed)
        self.logits = _logits_hook(net)

    def steps(self, first: int, last: int, rank: int, world: int, subdivisions: int
              ) -> Iterator[list[tuple[Any, Any]]]:
        for k in range(first, last + 1):
            idx = self.sampler.indices(k - 1)[rank::world]
            yield [(self.data.x[c], self.data.y[c]) for c in idx.chunk(subdivisions)]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.logits.pop("logits", None)
        if logits is None:
            logits = outputs.flatten(1)
        return F.cross_entropy(logits.float(), targets), {}

    def evaluate(self, net: Network) -> dict[str, float]:
        if self.data.x_test is None:
            return {}
        device = next(net.parameters()).device
        return {"accuracy": evaluate(net, self.data.x_test.to(device), self.data.y_test.to(device))}


def _refuse_augmentation(net) -> None:
    """The classifier trainer feeds the images as they are: a cfg asking for augmentation is refused at its line."""
    from .augment import DATA_KEYS_REFUSED, NET_DATA_KEYS
    from .errors import CfgError, Problem
    from .sections.base import net_section

    p, keys = net.net, net_section().keys
    problems = []
    for key in (*NET_DATA_KEYS, *DATA_KEYS_REFUSED):
        opt = p.option(key)
        if opt is None:
            continue
        if getattr(p, key) != keys[key].default:
            problems.append(Problem(f"[net]: {key}={opt.raw}: the classifier trainer does not augment images; "
                                    "remove it (augmentation keys are honoured for detector cfgs)", net.spec.path,
                                    opt.line, opt.col))
    if problems:
        raise CfgError(problems)


# ----------------------------------------------------------------- training
def _distributed(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(name: str | torch.device | None) -> torch.device:
    device = torch.device(name or "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError("--device cuda: no CUDA device is available to torch here")
        if device.index is None:  # one process per GPU under torchrun
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _autocast_dtype(device: torch.device, amp: bool | str) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` (``True``/``"auto"``: bf16 where the device has it, else fp16 on CUDA)."""
    if not amp:
        return None
    if amp in ("bf16", "bfloat16"):
        return torch.bfloat16
    if amp in ("fp16", "float16"):
        if device.type != "cuda":
            raise TrainError("--amp fp16 needs a CUDA device (use --amp bf16 on the CPU)")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


# [net] values the trainer's flags may override (name -> type)
OVERRIDABLE = {"max_batches": int, "batch": int, "subdivisions": int, "learning_rate": float, "burn_in": int,
               "momentum": float, "decay": float, "policy": str}


# [net] keys of Darknet's training engine that netspec's loop does not do: key -> (value meaning "off", why).
# A cfg that sets one is refused at its line rather than trained differently (the data keys are
# netspec.augment's, the head keys the loss's).  Speed/memory-only engine keys (use_cuda_graph,
# optimized_memory, workspace_size_limit_MB) and display keys change no number and are accepted.
LOOP_KEYS_REFUSED = {
    "weights_reject_freq": (0, "Darknet's rejection of similar weights is not implemented by netspec"),
    "badlabels_rejection_percentage": (0, "Darknet's bad-label rejection is not implemented by netspec"),
    "num_sigmas_reject_badlabels": (0, "Darknet's bad-label rejection is not implemented by netspec"),
    "equidistant_point": (0, "Darknet's equidistant point (bad-label rejection) is not implemented by netspec"),
    "adversarial_lr": (0, "adversarial training is not implemented by netspec"),
    "try_fix_nan": (0, "netspec does not patch NaN/Inf values; a non-finite loss stops the run instead"),
    "dynamic_minibatch": (0, "Darknet's dynamic mini-batch is not implemented by netspec"),
    "loss_scale": (1, "static fp16 loss scaling is not implemented; --amp fp16 scales the loss dynamically"),
    "seq_scales": (None, "sequence-length scaling (recurrent training) is not implemented by netspec"),
    "attention": (0, "Darknet's attention maps are not implemented by netspec"),
}


def _refuse_unhonoured_keys(net) -> None:
    from .errors import CfgError, Problem

    p, problems = net.net, []
    for key, (off, why) in LOOP_KEYS_REFUSED.items():
        if p.given(key) and getattr(p, key) != off:
            opt = p.option(key)
            problems.append(Problem(f"[net]: {key}={opt.raw}: {why}; remove it to train", net.spec.path, opt.line,
                                    opt.col))
    if problems:
        raise CfgError(problems)


def _apply_overrides(net, overrides: dict[str, Any]) -> dict[str, Any]:
    applied = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in OVERRIDABLE:
            raise TrainError(f"cannot override [net] {key}= (overridable: {', '.join(OVERRIDABLE)})")
        applied[key] = OVERRIDABLE[key](value)
        setattr(net.net, key, applied[key])
    return applied


def _seed_of_step(seed: int, k: int, rank: int) -> int:
    return _seed_of("step", seed, k, rank)


class Trainer:
    """One training run; ``run()`` trains to ``[net] max_batches`` and returns a summary.

    ``data``: for a classifier cfg ``'digits'``, an ``.npz`` path or a :class:`Dataset`; for a detector cfg a
    Darknet ``obj.data`` (or COCO ``instances_*.json``) path.  ``task`` replaces the data and loss altogether.
    ``weights``: initial parameters (Darknet ``.weights``, cut at ``upto`` layers, a netspec checkpoint or
    ``.safetensors``); ignored on resume.  ``overrides``: ``[net]`` values that replace the cfg's
    (:data:`OVERRIDABLE`).  ``eval_every``: evaluate (mAP) every N steps; ``None`` for Darknet's interval
    (4 epochs, at least 100 steps, not before ``burn_in``); ``0`` never (the end-of-run evaluation still runs
    when there is validation data).  ``rules``: :class:`netspec.optim.Rule` s (or their ``SEL:SET`` text) on top
    of the cfg's per-block multipliers, as ``netspec params --rule``."""

    def __init__(self, cfg: str | os.PathLike | Document, data: str | Dataset | None, out: str | os.PathLike, *,
                 resume: bool = False,
                 save_every: int = 100, seed: int = 0, keep_last: int = 3, progress: bool = True,
                 stream: TextIO | None = None, weights: str | os.PathLike | None = None, upto: int | None = None,
                 overrides: dict[str, Any] | None = None, device: str | torch.device | None = None,
                 amp: bool | str = False, eval_every: int | None = 0, workers: int = 2,
                 rules: list | None = None, task: TrainingTask | None = None) -> None:
        from .builder import build

        self.device = _device(device)
        self.rank, self.world = _distributed(self.device)
        self.out = Path(out)
        self.stream = stream or sys.stderr
        self.progress_enabled = bool(progress)
        self.save_every, self.keep_last = save_every, keep_last
        if keep_last < 1:
            raise TrainError("keep_last must be >= 1")
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
        self.stem = _stem(cfg)
        self.overrides = _apply_overrides(self.net, overrides or {})
        _refuse_unhonoured_keys(self.net)
        p = self.net.net
        self.batch, self.subdivisions = p.batch, p.subdivisions
        if self.batch % (self.subdivisions * self.world):
            raise TrainError(f"[net] batch={self.batch} must divide by subdivisions={self.subdivisions} x "
                             f"{self.world} processes")
        if task is None:
            task = self._make_task(data, workers)
        self.task = task
        self.max_steps = p.max_batches or math.ceil(p.max_epochs * task.images / self.batch)
        if self.max_steps <= 0:
            raise TrainError("[net] max_batches (or max_epochs) must be > 0 to train")
        if weights is not None and ckpt is None:
            self.log(_load_weights(self.net, weights, upto))
        elif weights is not None:
            self.log(f"note: --weights {weights} not loaded: resuming from the checkpoint")
        # channels-last: oneDNN's and cuDNN's fast convolution layout (the demo detector's forward ran 2x faster
        # on the CPU); tensors keep their values, so files, resume and the update rule are unaffected
        self.net.to(self.device, memory_format=torch.channels_last)
        from .optim import drop_delayed_grads, make_optimizer
        from .schedule import make_scheduler

        self._drop_delayed = drop_delayed_grads
        self.optimizer = make_optimizer(self.net, rules)
        self.scheduler = make_scheduler(self.optimizer, self.net, seed)
        self.autocast = _autocast_dtype(self.device, amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast == torch.float16 else None
        self.ema = None
        if p.ema_alpha:
            from .ema import DarknetEMA

            self.ema = DarknetEMA(self.net, p.ema_alpha, self.max_steps)
        self.eval_every = eval_every
        self.step, self.history, self.metrics = 0, [], []
        self.best: float | None = None
        if ckpt is not None:
            ckpt.load_into(self.net, strict=True)
            ckpt.restore(self.optimizer, self.scheduler)
            self.step = ckpt.step
            self.history = [list(h) for h in ckpt.state.get("history", [])][: self.step]
            self.metrics = [list(m) for m in ckpt.state.get("metrics", []) if m[0] <= self.step]
            self.best = ckpt.state.get("best")
            if self.ema is not None and ckpt.state.get("ema"):
                self.ema.load_state_dict(_to_device(ckpt.state["ema"], self.device))
            if self.scaler is not None and ckpt.state.get("scaler"):
                self.scaler.load_state_dict(ckpt.state["scaler"])
            self.log(f"resuming from {ckpt.path.name} at step {self.step}")
        self.resumed = ckpt is not None
        self.model = self.net
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda"
                                                 else None)
        self._steps: Iterator[list[tuple[Any, Any]]] | None = None

    def _make_task(self, data, workers: int) -> TrainingTask:
        if self.net.is_detector:
            if data is None or isinstance(data, Dataset) or data == "digits" or str(data).endswith(".npz"):
                raise TrainError(f"{getattr(data, 'name', data)}: this cfg ends in detection heads; it trains on a "
                                 "Darknet obj.data file (classes=, train=, valid=, names=), not a classifier dataset")
            from .detector_training import DetectionTask

            task = DetectionTask(self.net, data, seed=self.seed, workers=workers)
            for warning in task.warnings:
                self.log(f"warning: {warning}")
            return task
        if data is None:
            raise TrainError("no training data: pass --data")
        dataset = data if isinstance(data, Dataset) else load_dataset(data, self.net.input_shape)
        return ClassifierTask(self.net, dataset, self.batch, self.seed)

    def log(self, message: str) -> None:
        if self.rank == 0:
            bar = getattr(self, "_bar", None)
            if bar is not None and not bar.bar.disable:
                bar.write(message)
            else:
                print(message, file=self.stream, flush=True)

    # ------------------------------------------------------------- one optimizer step
    def train_step(self, k: int) -> tuple[float, float, dict[str, float]]:
        """The k-th optimizer step (1-based): its mean loss, the learning rate of parameter group 0 and the
        loss's figures (averaged over the step's mini-batches)."""
        if self._steps is None:
            self._steps = self.task.steps(k, self.max_steps, self.rank, self.world, self.subdivisions)
        minibatches = next(self._steps)
        torch.manual_seed(_seed_of_step(self.seed, k, self.rank))
        lr = self.optimizer.param_groups[0]["lr"]  # what the optimizer really uses (group 0)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        figures: dict[str, float] = {}
        for i, (inputs, targets) in enumerate(minibatches):
            inputs, targets = _to_device(inputs, self.device), _to_device(targets, self.device)
            if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            sync = i == len(minibatches) - 1 or self.world == 1
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    outputs = self.model(inputs)
                    loss, stats = self.task.loss(outputs, targets)
                loss = loss / len(minibatches)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += loss.detach().float()
            for name, value in stats.items():
                figures[name] = figures.get(name, 0.0) + float(value) / len(minibatches)
        self._drop_delayed(self.optimizer, k)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            did = self.ema.after_step(self.net, k)
            if did:
                self.log(f"iteration {k}: {did}")
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
            total /= self.world
        return float(total), lr, figures

    # ------------------------------------------------------------- outputs
    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step, "epoch": self.step * self.batch // max(1, self.task.images),
                                 "seed": self.seed, "data": self.task.name, "history": self.history,
                                 "metrics": self.metrics, "overrides": self.overrides}
        if self.best is not None:
            state["best"] = self.best
        if self.ema is not None and self.ema.initialised:
            state["ema"] = _to_device(self.ema.state_dict(), torch.device("cpu"))
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def save(self, **extra: Any) -> Path | None:
        path = None
        if self.rank == 0:
            path = save_checkpoint(self.out, self.net, self.optimizer, self.scheduler, keep_last=self.keep_last,
                                   **self._state(), **extra)
        self._barrier()
        return path

    def _barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _ema_net(self) -> Network | None:
        """A copy of the network holding the EMA parameters, once they exist; else ``None``."""
        if self.ema is not None and self.ema.initialised:
            return self.ema.network(self.net)
        return None

    def eval_net(self) -> Network:
        """The network evaluation uses: the EMA copy once it exists, else the network itself."""
        ema_net = self._ema_net()
        return self.net if ema_net is None else ema_net

    def evaluate(self) -> dict[str, float]:
        """The task's metrics on its validation data (rank 0; ``{}`` elsewhere or without validation data)."""
        result = self.task.evaluate(self.eval_net()) if self.rank == 0 else {}
        self._barrier()
        return result

    def _eval_due(self, k: int, last_eval: int) -> bool:
        if self.eval_every == 0:
            return False
        if self.eval_every is None:  # Darknet: every 4 epochs, at least every 100 steps, not before burn_in
            every = max(100, 4 * self.task.images // self.batch)
            return k >= max(last_eval + every, self.net.net.burn_in)
        return k - last_eval >= self.eval_every

    def _record_metric(self, k: int, metrics: dict[str, float], backups) -> None:
        value = metrics.get(self.task.metric)
        if value is None:
            return
        self.metrics.append([k, value])
        self._log_json({"iteration": k, self.task.metric: value, **{n: v for n, v in metrics.items()
                                                                  if n != self.task.metric}})
        best = self.best is None or value >= self.best
        self.log(f"iteration {k}: {self.task.metric} = {value:.4f}" + (" (best)" if best else
                                                                        f" (best {self.best:.4f})"))
        if best:
            self.best = value
            if backups is not None:
                backups.write(self.eval_net(), "best", k)

    def _log_json(self, record: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(record)

    def _chart(self) -> None:
        if self.rank != 0:
            return
        from .train_log import plot_chart

        p = self.net.net
        top = p.max_chart_loss if p.given("max_chart_loss") else None
        if not plot_chart(self.out / "chart.png", self.history, self.metrics, self.task.metric, top) and \
                not getattr(self, "_chart_warned", False):
            self._chart_warned = True
            self.log("note: chart.png needs matplotlib (pip install 'netspec[plot]'); not drawn")

    # ------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        from .backups import BackupFolder
        from .train_log import JsonLog, ProgressBar, darknet_avg_loss

        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"cannot create {self.out}: {exc.strerror or exc}") from None
        start = self.step
        if start >= self.max_steps and self.resumed:
            self.log(f"already complete: {self.out} holds step {start} of max_batches={self.max_steps}; nothing to "
                     "train (raise max_batches, e.g. with --max-batches, to continue)")
            return {"steps": 0, "seconds": 0.0, "complete": True, "step": start}
        lead = self.rank == 0
        backups = BackupFolder(self.out, self.stem, self.batch) if lead else None
        self._jsonl = JsonLog(self.out / "log.jsonl", resume_at=start if self.resumed else None) if lead else None
        avg = None
        for _, loss, _ in self.history:
            avg = darknet_avg_loss(avg, loss)
        last_eval = max([m[0] for m in self.metrics], default=0)
        self._bar = ProgressBar(self.max_steps, start, self.batch, self.stream, enabled=lead and self.progress_enabled)
        t0 = time.monotonic()
        try:
            while self.step < self.max_steps:
                k = self.step + 1
                loss, lr, figures = self.train_step(k)
                if not math.isfinite(loss):
                    raise TrainError(f"iteration {k}: the loss is {loss} (lower learning_rate, raise burn_in, or "
                                     f"check the labels); the last checkpoint in {self.out} is intact: fix and "
                                     "--resume")
                self.step = k
                self.history.append([k, loss, lr])
                avg = darknet_avg_loss(avg, loss)
                self._bar.update(k, loss, avg, lr)
                self._log_json({"iteration": k, "loss": loss, "avg_loss": avg, "lr": lr, "images": k * self.batch,
                                "images_per_s": self._bar.images_per_s(k), "seconds": time.monotonic() - t0,
                                "time_left_s": self._bar.time_left(k, self.max_steps), **figures})
                if k < self.max_steps:
                    if backups is not None:
                        last_due = k % backups.last_every == 0
                        backups.after_step(self.net, k, self._ema_net() if last_due else None)
                        if last_due:
                            self._chart()
                    if self._eval_due(k, last_eval):
                        last_eval = k
                        self._record_metric(k, self.evaluate(), backups)
                    if self.save_every and k % self.save_every == 0:
                        self.save()
        finally:
            self._bar.close()
            self._bar = None
        seconds = time.monotonic() - t0
        result: dict[str, Any] = {"steps": self.step - start, "seconds": seconds, "step": self.step}
        final_metrics = self.evaluate() if self.eval_every != 0 or self.task.evaluate_at_end else {}
        if final_metrics:
            self._record_metric(self.step, final_metrics, backups)
            result.update(final_metrics)
        if backups is not None:
            result["weights"] = str(backups.write(self.net, "final", self.step))
            ema_net = self._ema_net()
            if ema_net is not None:
                result["ema_weights"] = str(backups.write(ema_net, "ema", self.step))
        extra = {"test_" + n: v for n, v in final_metrics.items()}
        path = self.save(**extra)
        result["checkpoint"] = str(path) if path else None
        if self._jsonl is not None:
            self._jsonl.close()
        self._chart()
        if "accuracy" in final_metrics:
            result["test_accuracy"] = final_metrics["accuracy"]
        for name, value in final_metrics.items():
            self.log(f"{name}: {value:.4f}")
        self.log(f"trained steps {start + 1}..{self.step} in {seconds:.1f} s; weights and checkpoints in {self.out}")
        return result


def _stem(cfg) -> str:
    """Darknet names backups after the cfg file (``yolov4-tiny.cfg`` -> ``yolov4-tiny``)."""
    if isinstance(cfg, (str, os.PathLike)) and not (isinstance(cfg, str) and "\n" in cfg):
        return Path(cfg).stem
    path = getattr(cfg, "path", None)
    return Path(path).stem if path and not str(path).startswith("<") else "net"


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _load_weights(net, path: str | os.PathLike, upto: int | None) -> str:
    """Initial parameters: Darknet ``.weights`` (layers ``< upto``), a checkpoint or ``.safetensors``."""
    from .params_io import load_parameters

    report = load_parameters(net, path, upto)
    return "\n".join([str(report), *(f"warning: {w}" for w in report.warnings)])


def train(cfg: str | os.PathLike | Document, data: str | Dataset | None, out: str | os.PathLike,
          **kwargs: Any) -> dict[str, Any]:
    """Train ``cfg`` on ``data``; see :class:`Trainer`."""
    return Trainer(cfg, data, out, **kwargs).run()


__all__ = ["ClassifierTask", "Dataset", "OVERRIDABLE", "Sampler", "TrainError", "Trainer", "TrainingTask",
           "evaluate", "load_dataset", "train"]
