"""Import the checkpoints of popular PyTorch Darknet ports into a netspec :class:`~netspec.network.Network`.

Each port builds its model from the same cfg as a module list with its own parameter names (facts
learned from their public code):

``erik``        eriklindernoren/PyTorch-YOLOv3: ``module_list.{i}.conv_{i}.weight|bias`` and
                ``module_list.{i}.batch_norm_{i}.weight|bias|running_mean|running_var|num_batches_tracked``,
                ``i`` the Darknet layer index; ``[yolo]`` buffers ``module_list.{i}.yolo_{i}.anchors|anchor_grid``.
``ultralytics`` ultralytics/yolov3 (Darknet-cfg era ``models.py``): ``module_list.{i}.Conv2d.*`` and
                ``module_list.{i}.BatchNorm2d.*``; training checkpoints keep the state_dict under ``"model"``.
``tianxiaomo``  Tianxiaomo/pytorch-YOLOv4 ``tool/darknet2pytorch.py``: ``models.{i}.conv{k}.*`` and
                ``models.{i}.bn{k}.*`` where ``k`` counts the ``[convolutional]`` blocks from 1;
                ``[connected]`` is ``models.{i}.weight|bias`` (linear) or ``models.{i}.0.weight|bias``.

Every tensor of the netspec network must be found with the right shape and every tensor of the file
must be used (head constants excepted); otherwise nothing is loaded and the error lists each missing,
unexpected or mismatched tensor with its cfg block.  Files are read with ``torch.load(weights_only=True)``:
they are untrusted, and a pickle can run code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from .network import Network

PORTS = ("erik", "ultralytics", "tianxiaomo")

_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Non-parameter tensors some ports keep in their state_dict (the anchors, precomputed grids).
_HEAD_CONSTANTS = re.compile(r"\.(yolo_\d+\.)?(anchors|anchor_grid|anchor_wh|anchor_vec|grid|grid_xy)$")

RESAVE_HINT = (
    "if the file holds more than tensors (a pickled model object), re-save only its state_dict, in a trusted "
    "environment where the port's code is importable:\n"
    "    python -c \"import torch; c = torch.load('IN.pt', map_location='cpu', weights_only=False); "
    "m = c.get('model', c) if isinstance(c, dict) else c; "
    "torch.save(m.state_dict() if hasattr(m, 'state_dict') else m, 'OUT.pt')\"\n"
    "and convert OUT.pt (see README, 'Coming from a PyTorch port')")


@dataclass
class PortReport:
    """What :func:`load_port` matched; ``problems`` is empty when everything matched."""

    port: str
    source: str
    loaded: int = 0  # netspec tensors filled
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # head constants the port stores
    warnings: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.mismatched + self.missing + self.unexpected

    def __str__(self) -> str:
        text = f"loaded {self.loaded} tensors from {self.source} ({self.port} naming)"
        if self.ignored:
            text += f"; ignored {len(self.ignored)} head constants"
        lines = [text] + [f"warning: {w}" for w in self.warnings]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s), nothing loaded for them:")
            lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _block(spec) -> str:
    return f"[{spec.type}] #{spec.index} (line {spec.block.line})"


def _module_prefixes(spec, port: str, conv_number: int) -> dict[str, list[str]]:
    """netspec sub-module name → candidate port prefixes (first present wins) for one layer."""
    i = spec.index
    kind = spec.section.port_kind
    if kind == "conv2d":
        return {
            "erik": {"conv": [f"module_list.{i}.conv_{i}."], "bn": [f"module_list.{i}.batch_norm_{i}."]},
            "ultralytics": {"conv": [f"module_list.{i}.Conv2d."], "bn": [f"module_list.{i}.BatchNorm2d."]},
            "tianxiaomo": {"conv": [f"models.{i}.conv{conv_number}."], "bn": [f"models.{i}.bn{conv_number}."]},
        }[port]
    if kind == "linear" and port == "tianxiaomo":
        return {"linear": [f"models.{i}.", f"models.{i}.0."]}
    return {}


def port_key_map(net: Network, port: str, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, str]:
    """netspec state_dict key → the port's key for it (using ``state`` to pick between alternatives)."""
    if port not in PORTS:
        raise CheckpointError(f"unknown port {port!r}: choose one of {', '.join(PORTS)}")
    ours = net.state_dict()
    mapping: dict[str, str] = {}
    conv_number = 0
    for spec in net.spec.layers:
        if spec.section.port_kind == "conv2d":  # tianxiaomo numbers the conv layers from 1
            conv_number += 1
        for sub, prefixes in _module_prefixes(spec, port, conv_number).items():
            ours_prefix = f"layers.{spec.index}.{sub}."
            for key in ours:
                if not key.startswith(ours_prefix):
                    continue
                tail = key[len(ours_prefix):]
                chosen = prefixes[0]
                if state is not None:
                    chosen = next((p for p in prefixes if p + tail in state), prefixes[0])
                mapping[key] = chosen + tail
    return mapping


def _layer_of(key: str) -> int | None:
    match = re.match(r"(?:module_list|models)\.(\d+)\.", key)
    return int(match.group(1)) if match else None


def read_port_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict in a port's checkpoint file, loaded without unpickling arbitrary objects."""
    name = os.fspath(path)
    try:
        obj = torch.load(name, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{name}: no such file") from exc
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch's message carries terminal colours
        first = text.splitlines()[0][:160] if text else type(exc).__name__
        raise CheckpointError(f"{name}: cannot be read as a plain state_dict with torch.load(weights_only=True) "
                              f"({first}).\n{RESAVE_HINT}") from exc
    return extract_state_dict(obj, name)


def extract_state_dict(obj: object, name: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The tensors of a state_dict, or of the ``model``/``state_dict`` entry of a training checkpoint."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{name}: no state_dict found (top level: {keys}).\n{RESAVE_HINT}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_port(net: Network, source: str | os.PathLike | Mapping[str, torch.Tensor], port: str, *,
              strict: bool = True) -> PortReport:
    """Load a PyTorch port's state_dict (a file, or the mapping itself) into ``net``.

    Every shape is checked before anything is copied.  With ``strict`` (the default) any missing,
    unexpected or mismatched tensor raises :class:`CheckpointError` listing all of them with their cfg
    blocks, and ``net`` is left unchanged; ``strict=False`` loads what matches and reports the rest.
    """
    if isinstance(source, Mapping):
        name = "<state_dict>"
        state = extract_state_dict(source, name)
    else:
        name = os.fspath(source)
        state = read_port_checkpoint(source)
    mapping = port_key_map(net, port, state)
    specs = net.spec.layers
    report = PortReport(port, name)
    ours = net.state_dict()
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    used: set[str] = set()
    for key, tensor in ours.items():
        index = int(key.split(".")[1])
        theirs = mapping.get(key)
        if theirs is None:
            report.missing.append(f"{key} {tuple(tensor.shape)}: {_block(specs[index])} has no counterpart in the "
                                  f"{port} naming (that port does not model this tensor)")
            continue
        if theirs not in state and key.endswith("num_batches_tracked"):
            continue  # a counter only newer torch versions save; netspec's own value stays
        if theirs not in state:
            report.missing.append(f"{theirs} {tuple(tensor.shape)}: missing, needed for {_block(specs[index])}")
            continue
        used.add(theirs)
        got = state[theirs]
        if tuple(got.shape) != tuple(tensor.shape):
            report.mismatched.append(f"{theirs}: shape {tuple(got.shape)} in the file, {_block(specs[index])} needs "
                                     f"{tuple(tensor.shape)}")
            continue
        pairs.append((tensor, got))
    for key in state:
        if key in used:
            continue
        index = _layer_of(key)
        where = f" ({_block(specs[index])})" if index is not None and index < len(specs) else ""
        if _HEAD_CONSTANTS.search(key) or (port == "tianxiaomo" and key.startswith("loss.")):
            report.ignored.append(key)
            _check_anchors(key, state[key], net, index, report)
            continue
        report.unexpected.append(f"{key} {tuple(state[key].shape)}: unexpected{where}")
    if report.problems and strict:
        raise CheckpointError(f"{name}: does not fit the cfg as a {port} checkpoint:\n" +
                              "\n".join(f"  {p}" for p in report.problems))
    with torch.no_grad():
        for tensor, got in pairs:
            tensor.copy_(got)
    report.loaded = len(pairs)
    return report


def _check_anchors(key: str, value: torch.Tensor, net: Network, index: int | None, report: PortReport) -> None:
    """A port's stored anchors that differ from the cfg's mean the checkpoint belongs to another cfg."""
    specs = net.spec.layers
    if not key.endswith(".anchors") or index is None or index >= len(specs):
        return
    anchors = specs[index].section.anchors(specs[index], net.layers[index])
    if not anchors:
        return
    want = torch.tensor(anchors, dtype=torch.float32)
    if tuple(value.shape) == tuple(want.shape) and torch.allclose(value.float(), want):
        return
    report.warnings.append(f"{key}: the checkpoint's anchors {value.tolist()} differ from the cfg's "
                           f"{want.tolist()} for {_block(specs[index])}: was it trained with another cfg?")
