"""Crash-safe, self-describing, pickle-free checkpoints.

A checkpoint is a safetensors file (:mod:`netspec.safetensors_io`): the model's ``state_dict`` tensors,
the optimizer/scheduler/RNG state (tensors as entries, the rest as JSON in the metadata), the extra state
passed to :func:`save_checkpoint` and the cfg text, so :func:`load_checkpoint` rebuilds the network
without the cfg file.  A SHA-256 over header and data is verified on load.  Nothing is ever unpickled.

Saving into a directory names the file ``ckpt-<step>.ckpt``, writes it atomically (temp file, fsync,
rename, directory fsync) and only then deletes checkpoints beyond ``keep_last`` (by step, found on disk,
so retention survives restarts).  Loading a directory takes the newest checkpoint that is intact,
skipping (and reporting in ``.skipped``) damaged ones.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import CfgError, CheckpointError
from .safetensors_io import load_safetensors, save_safetensors

if TYPE_CHECKING:  # pragma: no cover
    from torch.optim.lr_scheduler import LRScheduler

    from .network import Network

FORMAT = "netspec-checkpoint"
WEIGHTS_FORMAT = "netspec-weights"
VERSION = "1"
_NAME = re.compile(r"ckpt-(\d+)\.ckpt")


# ----------------------------------------------------------------- nested state <-> JSON + tensors
def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"{where}/{len(tensors)}"
        tensors[key] = obj
        return {"$t": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else {"$f": repr(obj)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors, where) for k, v in obj.items()}
        return {"$d": [[_encode(k, tensors, where), _encode(v, tensors, where)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors, where) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors, where) for v in obj]
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return _encode(obj.item(), tensors, where)
        if isinstance(obj, np.ndarray):
            return {"$np": obj.dtype.str, "v": obj.tolist()}
    except ImportError:  # pragma: no cover
        pass
    raise CheckpointError(f"cannot store a {type(obj).__name__} in a checkpoint ({where}); use tensors, numbers, "
                          "strings, lists, tuples and dicts")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "$t" in obj:
        return tensors[obj["$t"]]
    if "$f" in obj:
        return float(obj["$f"])
    if "$d" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["$d"]}
    if "$tuple" in obj:
        return tuple(_decode(v, tensors) for v in obj["$tuple"])
    if "$np" in obj:
        import numpy as np

        return np.array(obj["v"], dtype=np.dtype(obj["$np"]))
    return {k: _decode(v, tensors) for k, v in obj.items()}


# ----------------------------------------------------------------- RNG states
def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch (CPU) random states."""
    states: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        states["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover
        pass
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in states:
        torch.set_rng_state(states["torch"].to(torch.uint8))
    if "numpy" in states:
        import numpy as np

        np.random.set_state(tuple(states["numpy"]))


# ----------------------------------------------------------------- build arguments
_BUILD_ARGS = {"darknet_bugs", "width", "height", "channels", "strict"}


def _build_args(net) -> dict[str, Any]:
    args: dict[str, Any] = {"darknet_bugs": bool(getattr(net, "darknet_bugs", True))}
    p = net.net
    if p.width and p.height and p.channels:
        # Always the size the net was built at: [net] in the stored cfg text may say otherwise.
        c, h, w = net.input_shape
        args.update(width=w, height=h, channels=c)
    if net.spec.warnings:  # it needed strict=False (Darknet-tolerated mistakes)
        args["strict"] = False
    return args


HEADER_KEY = "netspec.darknet_header"  # the Darknet .weights header (version, seen) the parameters came with
_LEGACY_HEADER_STATE = "darknet_header"  # where `netspec convert` kept it in .ckpt files before HEADER_KEY


def _metadata(net, kind: str) -> dict[str, str]:
    metadata = {"format": kind, "netspec.version": VERSION, "netspec.cfg": net.cfg_text,
                "netspec.build": json.dumps(_build_args(net))}
    header = getattr(net, "darknet_header", None)
    if header is not None:  # so that .weights -> netspec file -> .weights is byte-identical
        metadata[HEADER_KEY] = json.dumps(header.as_dict())
    return metadata


# ----------------------------------------------------------------- saving
def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"ckpt-{int(step):09d}.ckpt"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt-<step>.ckpt`` in ``directory``, oldest first."""
    found = []
    for entry in os.scandir(directory):
        m = _NAME.fullmatch(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), Path(entry.path)))
    return sorted(found)


def save_checkpoint(path: str | os.PathLike, net: Network, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: LRScheduler | None = None, *, keep_last: int | None = None,
                    rng: bool = True, **state: Any) -> Path:
    """Write a checkpoint of ``net`` (+ optimizer, scheduler, RNG states and ``state``) atomically.

    ``path`` is a file, or an existing directory (or a path ending in a separator, created if needed):
    then the file is ``ckpt-<step>.ckpt`` there (``step=`` is required) and, with ``keep_last=k``, only
    the newest k checkpoints are kept (deleted after the new one is safely on disk).  Returns the file.
    """
    if keep_last is not None and keep_last < 1:
        raise CheckpointError(f"keep_last must be >= 1 (or None to keep every checkpoint), got {keep_last}")
    target = Path(path)
    into_dir = target.is_dir() or str(path).endswith(os.sep)
    if into_dir:
        if "step" not in state:
            raise CheckpointError("save_checkpoint into a directory needs step=<optimizer steps taken>")
        target.mkdir(parents=True, exist_ok=True)
        target = checkpoint_path(target, state["step"])
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v for k, v in net.state_dict().items()}
    tree = {
        "state": _encode(state, tensors, "state"),
        "optimizer": _encode(optimizer.state_dict(), tensors, "optimizer") if optimizer is not None else None,
        "scheduler": _encode(scheduler.state_dict(), tensors, "scheduler") if scheduler is not None else None,
        "rng": _encode(rng_states(), tensors, "rng") if rng else None,
    }
    metadata = _metadata(net, FORMAT)
    metadata["netspec.state"] = json.dumps(tree, allow_nan=False)
    save_safetensors(target, tensors, metadata)
    if into_dir:
        _clean_directory(target.parent, keep_last, target)
    return target


def _clean_directory(directory: Path, keep_last: int | None, just_written: Path) -> None:
    # Temp files of writes that were killed; only one process writes checkpoints into a directory.
    for entry in os.scandir(directory):
        if entry.name.startswith(".ckpt-") and entry.name.endswith(".tmp"):
            try:
                os.unlink(entry.path)
            except OSError:
                pass
    if keep_last is None:
        return
    existing = list_checkpoints(directory)
    for _, old in existing[:-keep_last]:
        if old != just_written:
            try:
                os.unlink(old)
            except OSError:
                pass


def export_safetensors(path: str | os.PathLike, net: Network) -> None:
    """The weights alone (``state_dict``) as ``.safetensors``, with the cfg text in the metadata
    (``netspec.cfg``); :func:`load_checkpoint` rebuilds the network from it.  The Darknet header the
    net's weights were loaded with travels too, so ``.weights`` → ``.safetensors`` → ``.weights`` is
    byte-identical."""
    save_safetensors(path, dict(net.state_dict()), _metadata(net, WEIGHTS_FORMAT))


# ----------------------------------------------------------------- loading
@dataclass
class LoadReport:
    """How a checkpoint's tensors matched a network, per block."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the network, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the network
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # name, checkpoint, network shape
    blocks: dict[str, str] = field(default_factory=dict)  # "layers.12" -> "[convolutional] #12 (line 80)"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        by_block: dict[str, list[str]] = {}

        def block_of(name: str) -> str:
            parts = name.split(".")
            return ".".join(parts[:2]) if parts[0] == "layers" and len(parts) > 2 else name

        for name in self.missing:
            by_block.setdefault(block_of(name), []).append(f"missing {name}")
        for name in self.unexpected:
            by_block.setdefault(block_of(name), []).append(f"unexpected {name}")
        for name, ckpt, mine in self.mismatched:
            by_block.setdefault(block_of(name), []).append(
                f"shape of {name}: checkpoint {'x'.join(map(str, ckpt)) or 'scalar'}, "
                f"network {'x'.join(map(str, mine)) or 'scalar'}")
        lines = [f"{len(self.loaded)} tensors loaded"]

        def order(key: str):
            parts = key.split(".")
            return (0, int(parts[1])) if len(parts) == 2 and parts[1].isdigit() else (1, key)

        for key in sorted(by_block, key=order):
            lines.append(f"{self.blocks.get(key, key)}: " + "; ".join(by_block[key]))
        return "\n".join(lines)


class Checkpoint:
    """A loaded checkpoint: ``.network`` (rebuilt from the stored cfg, weights loaded), ``.state``
    (the extra state, with ``step``), ``.restore(optimizer, scheduler)``; ``.path`` is the file read and
    ``.skipped`` the damaged newer files passed over when a directory was given."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                 skipped: list[tuple[Path, str]]) -> None:
        self.path = path
        self.skipped = skipped
        self.format = metadata.get("format", "")
        self.cfg_text = metadata.get("netspec.cfg")
        if self.cfg_text is None:
            raise CheckpointError(f"{path}: no cfg text in the metadata: not a netspec checkpoint or export")
        try:
            self.build_args = json.loads(metadata.get("netspec.build", "{}"))
            # the file is untrusted: only the arguments _build_args writes may reach build()
            if not isinstance(self.build_args, dict) or not set(self.build_args) <= _BUILD_ARGS:
                raise ValueError(f"unexpected build arguments {self.build_args!r}")
            tree = json.loads(metadata.get("netspec.state", "{}"))
            self.model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
            if self.format == WEIGHTS_FORMAT:
                self.model_state = dict(tensors)
            self.state: dict[str, Any] = _decode(tree.get("state"), tensors) or {}
            self._optimizer = _decode(tree.get("optimizer"), tensors)
            self._scheduler = _decode(tree.get("scheduler"), tensors)
            self._rng = _decode(tree.get("rng"), tensors)
            self.darknet_header = self._darknet_header(metadata)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: damaged checkpoint state ({exc})") from None
        self._network = None

    def _darknet_header(self, metadata: dict[str, str]):
        """The Darknet header the parameters came with, or None (ValueError for a malformed one)."""
        from .weights import DarknetHeader

        if HEADER_KEY in metadata:
            return DarknetHeader.from_dict(json.loads(metadata[HEADER_KEY]))
        if isinstance(self.state, dict) and _LEGACY_HEADER_STATE in self.state:
            return DarknetHeader.from_dict(self.state[_LEGACY_HEADER_STATE])
        return None

    @property
    def step(self) -> int:
        return int(self.state.get("step", 0))

    @property
    def network(self) -> Network:
        if self._network is None:
            self._network = self.build_network()
            report = self.load_into(self._network, strict=True)
            del report
        return self._network

    def build_network(self) -> Network:
        """A fresh network from the stored cfg (weights not loaded)."""
        from .builder import build

        try:
            return build(self.cfg_text, seed=None, **self.build_args)
        except CfgError as exc:
            raise CheckpointError(f"{self.path}: the stored cfg no longer builds:\n{exc}") from None

    def load_into(self, net: Network, strict: bool = True, allow_nonfinite: bool = False, upto: int | None = None
                  ) -> LoadReport:
        """Copy the model tensors into ``net``.  ``strict=False`` loads what matches (fine-tuning a changed
        cfg) and reports the rest; ``strict=True`` raises :class:`CheckpointError` with the report.
        ``upto=N`` loads layers ``0..N-1`` only (the checkpoint's other tensors are ignored; the network's
        other layers keep their values).  NaN or Inf in a tensor is a :class:`CheckpointError` unless
        ``allow_nonfinite``.  The Darknet header the checkpoint carries becomes ``net.darknet_header``."""
        model_state = self.model_state
        own = net.state_dict()
        if upto is not None:
            model_state = {k: v for k, v in model_state.items() if _layer_of(k) < upto}
            own = {k: v for k, v in own.items() if _layer_of(k) < upto}
        if not allow_nonfinite:
            for name, tensor in model_state.items():
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise CheckpointError(f"{self.path}: {bad} NaN/Inf value(s) in {name} (pass allow_nonfinite=True "
                                          "to accept them)")
        report = LoadReport()
        for spec in net.spec.layers:
            report.blocks[f"layers.{spec.index}"] = f"{spec.label} (line {spec.block.line})"
        matched = {}
        # in the network's order (a file's tensor order is its writer's choice)
        position = {name: i for i, name in enumerate(own)}
        for name in sorted(model_state, key=lambda n: (position.get(n, len(position)), n)):
            tensor = model_state[name]
            if name not in own:
                report.unexpected.append(name)
            elif tuple(own[name].shape) != tuple(tensor.shape):
                report.mismatched.append((name, tuple(tensor.shape), tuple(own[name].shape)))
            else:
                matched[name] = tensor
        report.missing = [n for n in own if n not in model_state]
        if strict and not report.ok:
            raise CheckpointError(f"{self.path} does not fit this network:\n{report}")
        with torch.no_grad():
            for name, tensor in matched.items():
                own[name].copy_(tensor)
        report.loaded = list(matched)
        if self.darknet_header is not None:
            net.darknet_header = self.darknet_header
        return report

    def restore(self, optimizer: torch.optim.Optimizer | None = None, scheduler: LRScheduler | None = None,
                rng: bool = True) -> None:
        """Restore the optimizer and scheduler states (and the RNG states) saved with the checkpoint."""
        if optimizer is not None:
            if self._optimizer is None:
                raise CheckpointError(f"{self.path} holds no optimizer state")
            try:
                optimizer.load_state_dict(self._optimizer)
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{self.path}: optimizer state does not fit this optimizer ({exc})") from None
        if scheduler is not None:
            if self._scheduler is None:
                raise CheckpointError(f"{self.path} holds no scheduler state")
            scheduler.load_state_dict(self._scheduler)
        if rng and self._rng:
            set_rng_states(self._rng)


def _layer_of(name: str) -> int:
    """The layer index of a state_dict name (``layers.<i>.…``); names outside the layers sort last."""
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "layers" and parts[1].isdigit() else 1 << 62


def _read(path: Path, skipped: list[tuple[Path, str]]) -> Checkpoint:
    # netspec always writes a checksum: without one, a damaged file could load unverified
    tensors, metadata = load_safetensors(path, require_checksum=True)
    if metadata.get("format") not in (FORMAT, WEIGHTS_FORMAT) and "netspec.cfg" not in metadata:
        raise CheckpointError(f"{path}: a safetensors file without netspec metadata (no cfg text)")
    return Checkpoint(path, tensors, metadata, skipped)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint file, a ``.safetensors`` export, or the newest intact checkpoint in a directory."""
    path = Path(path)
    if not path.is_dir():
        return _read(path, [])
    skipped: list[tuple[Path, str]] = []
    candidates = list_checkpoints(path)
    for _, candidate in reversed(candidates):
        try:
            return _read(candidate, skipped)
        except CheckpointError as exc:
            skipped.append((candidate, str(exc)))
    if not candidates:
        raise CheckpointError(f"{path}: no checkpoints (ckpt-<step>.ckpt) in this directory")
    raise CheckpointError(f"{path}: no intact checkpoint:\n" + "\n".join(reason for _, reason in skipped))


__all__ = ["Checkpoint", "LoadReport", "export_safetensors", "list_checkpoints", "load_checkpoint",
           "rng_states", "save_checkpoint", "set_rng_states"]
