"""Layer specs → modules → :class:`Network`, an ``nn.Module`` that runs a precomputed plan.

The plan is worked out once at build time: for every layer, which earlier outputs it reads and which
outputs are no longer needed once it has run.  ``forward`` walks the plan, keeping an output only as
long as a later layer (or the result) needs it; ``forward_all`` keeps every layer's output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .errors import Problem
from .sections.base import BuildContext, Params
from .specs import NetSpec


def _plan(spec: NetSpec, outputs: tuple[int, ...]) -> tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]:
    """``(index, sources, frees)`` per layer: what it reads and which outputs can be dropped after it."""
    last_use: dict[int, int] = {}
    for layer in spec.layers:
        for src in layer.sources:
            last_use[src] = layer.index
    keep = set(outputs)
    frees_after: dict[int, list[int]] = {}
    for src, user in last_use.items():
        if src >= 0 and src not in keep:
            frees_after.setdefault(user, []).append(src)
    for layer in spec.layers:  # outputs nobody reads (e.g. a [cost] at the end) are dropped at once
        if layer.index not in last_use and layer.index not in keep:
            frees_after.setdefault(layer.index, []).append(layer.index)
    return tuple((layer.index, layer.sources, tuple(sorted(frees_after.get(layer.index, ()))))
                 for layer in spec.layers)


def _stop_gradient(module: nn.Module, inputs: tuple) -> tuple:
    """Forward pre-hook: the layer's inputs without their autograd history."""
    return tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in inputs)


def output_indices(spec: NetSpec) -> tuple[int, ...]:
    """The detection heads, or else the last layer whose section may be an output (Darknet's network output:
    the last layer that is not a [cost])."""
    heads = tuple(layer.index for layer in spec.layers if layer.section.is_head)
    if heads:
        return heads
    for layer in reversed(spec.layers):
        if layer.section.network_output:
            return (layer.index,)
    return (spec.layers[-1].index,)


class Network(nn.Module):
    """A network built from a cfg.  ``layers[i]`` is Darknet layer ``i`` (the i-th section after [net])."""

    def __init__(self, spec: NetSpec, layers: list[nn.Module], warnings: list[Problem] | None = None,
                 darknet_bugs: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.darknet_bugs = darknet_bugs  # how the modules were built (a checkpoint rebuilds the same way)
        self.layers = nn.ModuleList(layers)
        self.warnings: list[Problem] = list(spec.warnings) + list(warnings or ())
        self.outputs = output_indices(spec)
        self.is_detector = any(spec.layers[i].section.is_head for i in self.outputs)
        self._plan = _plan(spec, self.outputs)
        self._output_set = frozenset(self.outputs)
        for layer in spec.layers:
            # Darknet skips these layers' backward: no gradient reaches the layers before them.
            if layer.p.onlyforward or layer.p.stopbackward == 1:
                self.layers[layer.index].register_forward_pre_hook(_stop_gradient)
        self.fused = False  # set by fuse(): BN folded away, .weights records no longer match the cfg

    # ---------------------------------------------------------------- running
    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Run the network.  Classifiers return the last output.  Detectors return one tensor per head:
        in eval mode Darknet's inference buffer, in training mode the tensor fed into the head (before
        its activation), which is what :class:`netspec.DetectionLoss` takes."""
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            from .inference import autocast_compute_dtype

            autocast_compute_dtype(x)  # warns once where bfloat16 autocast is slower than float32
        saved: list[Any] = [None] * len(self.layers)
        layers = self.layers
        head_inputs = self.training and self.is_detector
        outputs = self._output_set
        for index, sources, frees in self._plan:
            inputs = [x if s < 0 else saved[s] for s in sources]
            saved[index] = inputs[0] if head_inputs and index in outputs else layers[index](*inputs)
            for f in frees:
                saved[f] = None
        if self.is_detector:
            return [saved[i] for i in self.outputs]
        return saved[self.outputs[0]]

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's output, by Darknet layer index (``[yolo]``/``[region]`` entries are Darknet's buffers)."""
        saved: list[torch.Tensor] = []
        for index, sources, _ in self._plan:
            saved.append(self.layers[index](*[x if s < 0 else saved[s] for s in sources]))
        return saved

    # ---------------------------------------------------------------- inference mode
    def fuse(self) -> Network:
        """Inference mode, in place: fold every BatchNorm into the conv/connected weights before it.

        The fold is computed in float64 as Darknet does at load time (reference §3.1):
        ``w' = w*gamma/sqrt(var+eps)``, ``b' = beta + (b - mean)*gamma/sqrt(var+eps)``.  Activations
        then run in place on the tensor their own layer just produced (never on an output another layer
        reads).  The network is put in eval mode and returned.  A fused network has no BN tensors any
        more, so it cannot be saved to or loaded from Darknet ``.weights`` (save before fusing).
        """
        from .inference import fuse_network

        if not self.fused:  # a second fuse() has nothing left to fold (and must not re-pack released weights)
            fuse_network(self)
            self.fused = True
        return self.eval()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    @property
    def cfg_text(self) -> str:
        return self.spec.document.text

    @property
    def net(self) -> Params:
        """The typed ``[net]`` values (``net.learning_rate``, ``net.policy``, ...)."""
        return self.spec.net

    def summary(self) -> dict:
        """The inferred per-layer table: type, output shape, params, ``.weights`` floats and BFLOPs."""
        layers = []
        for s in self.spec.layers:
            layers.append({"index": s.index, "type": s.type, "output": list(s.out_shape), "params": s.info.params,
                           "weights_floats": s.info.weights_floats, "bflops": s.info.bflops})
        return {
            "input": list(self.spec.input_shape),
            "layers": layers,
            "total": {"params": self.spec.total_params, "weights_floats": self.spec.total_weights_floats,
                      "bflops": self.spec.total_bflops},
        }

    def extra_repr(self) -> str:
        c, h, w = self.spec.input_shape
        return f"input={c}x{h}x{w}, outputs={list(self.outputs)}"


def assemble(spec: NetSpec, darknet_bugs: bool = True) -> Network:
    """Instantiate every layer's module and wrap them in a :class:`Network`."""
    ctx = BuildContext(spec.layers, spec.net, darknet_bugs)
    for layer in spec.layers:
        ctx.modules.append(layer.section.module(layer, ctx))
    return Network(spec, ctx.modules, ctx.warnings, darknet_bugs)
