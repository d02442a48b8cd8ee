"""The reference port for the benchmarks: eriklindernoren/PyTorch-YOLOv3 (``pytorchyolo``), from a checkout.

Its code is not part of netspec and is never copied here: the benchmarks take the checkout's path
(``--port PATH``, the folder holding ``pytorchyolo/``) and import it from there.  Its modules import
``torchvision`` (for ``torchvision.ops.nms`` in its detect utilities) and ``imgaug`` (augmentations), which
netspec does not depend on; when they cannot be imported, :func:`import_port` puts stand-in modules in
``sys.modules`` first (``torchvision.ops.nms`` raises if called; the benchmarks use only the port's model and
``compute_loss``, which call neither).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch


def add_port_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", metavar="PATH",
                        help="checkout of eriklindernoren/PyTorch-YOLOv3 (the folder holding pytorchyolo/): "
                             "also compare against its model; without it that part is skipped")


def _stub(name: str, **attrs) -> None:
    try:
        importlib.import_module(name)
    except ImportError:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        module.__path__ = []  # a package, so that "import name.sub" finds the stand-ins below
        sys.modules[name] = module


def _nms_unavailable(*args, **kwargs):
    raise RuntimeError("torchvision is stubbed for the benchmark: the port's NMS is not available")


def import_port(path: str):
    """``(pytorchyolo.models, pytorchyolo.utils.loss)`` imported from the checkout at ``path``."""
    root = Path(path)
    if not (root / "pytorchyolo" / "models.py").exists():
        raise SystemExit(f"--port {path}: no pytorchyolo/models.py there (give the checkout's root)")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = _nms_unavailable
    _stub("torchvision", ops=ops, transforms=types.ModuleType("torchvision.transforms"))
    if getattr(sys.modules.get("torchvision"), "ops", None) is ops:
        sys.modules["torchvision.ops"] = ops
        sys.modules["torchvision.transforms"] = sys.modules["torchvision"].transforms
    _stub("imgaug", seed=lambda *a: None)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    models = importlib.import_module("pytorchyolo.models")
    loss = importlib.import_module("pytorchyolo.utils.loss")
    return models, loss


def port_model(path: str, cfg: str | Path, net) -> torch.nn.Module:
    """The port's ``Darknet`` built from ``cfg``, with the (unfused) netspec network ``net``'s weights copied in
    through netspec's own key map for that port (``netspec.ports``)."""
    from netspec.ports import port_key_map

    models, _ = import_port(path)
    model = models.Darknet(str(cfg))
    theirs = model.state_dict()
    ours = net.state_dict()
    state = {}
    for key, their_key in port_key_map(net, "erik", theirs).items():
        if their_key not in theirs or theirs[their_key].shape != ours[key].shape:
            raise SystemExit(f"port model: {key} -> {their_key} not found or of another shape")
        state[their_key] = ours[key]
    missing = [k for k in theirs if k not in state and not k.endswith(("anchors", "anchor_grid"))]
    if missing:
        raise SystemExit(f"port model: no netspec tensor for {missing[:5]}")
    model.load_state_dict(state, strict=False)
    return model


def port_agrees(net_out: list[torch.Tensor], port_out: torch.Tensor) -> float:
    """Largest difference between netspec's head buffers and the port's eval output in what both compute the
    same way: objectness and class probabilities (the port decodes x, y, w, h to pixels)."""
    parts = []
    for ours in net_out:
        b, c, h, w = ours.shape
        n = port_out.shape[-1]
        parts.append(ours.float().view(b, c // n, n, h, w).permute(0, 1, 3, 4, 2).reshape(b, -1, n))
    ours = torch.cat(parts, 1)
    return float((ours[..., 4:] - port_out[..., 4:].float()).abs().max())
