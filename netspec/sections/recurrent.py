"""The recurrent sections (reference §3.28): ``[rnn]``, ``[gru]``, ``[lstm]`` (connected sub-layers),
``[crnn]``, ``[conv_lstm]`` (convolutional sub-layers) and ``[history]`` (a frame window, no weights).

Time: ``[net] time_steps = T``.  As in Darknet, the batch a recurrent layer receives is ``T`` groups of
``B`` samples, time-major: sample ``t*B + b`` is step ``t`` of sequence ``b`` (Darknet's batch is
``mini_batch * time_steps``).  Every other layer treats those ``T*B`` samples as an ordinary batch; a
batch that is not a multiple of ``T`` is an error.  The hidden state runs through the ``T`` steps of one
forward; each forward starts from a zero state, so one call is one batch of independent sequences.
Darknet instead keeps the state from one forward to the next (``[rnn]``/``[crnn]`` at inference only,
``[gru]``/``[lstm]``/``[conv_lstm]`` always, ``[history]`` when ``T > 1``): that is what its
frame-by-frame video inference relies on (``parse_network_cfg_custom(cfg, 1, 1)``: ``T = 1``, one frame per
forward).  ``set_carry_state(net)`` gives that behaviour: each forward then starts from the state the
previous one ended with (detached from its graph); ``reset_state(net)`` starts a new stream.

Each sub-layer is netspec's own ``[connected]`` or ``[convolutional]`` module, with Darknet's names
(``layers.13.input_layer.conv.weight``); the ``.weights`` record is the sub-layers' records in Darknet's
order (``src/parser.c`` ``load_weights_upto``).  A sub-layer's BN values are always read: Darknet ignores
``dontloadscales`` inside these layers, so netspec rejects it there.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from .. import activations
from ..errors import CfgError, NetspecError
from ..keys import Choice, Flag, Float, Int
from .base import (
    BuildContext,
    Context,
    Inference,
    InitTarget,
    LayerSpec,
    Params,
    Section,
    SpecError,
    conv_out,
    register,
)
from .common import activation_key, stride_text
from .convolutional import ConvLayer, Convolutional
from .misc import Connected, ConnectedSection

_T = {"training": True}
_logistic = activations.FUNCTIONS["logistic"]
_tanh = activations.FUNCTIONS["tanh"]


def _record(*layers: nn.Module) -> list[tuple[torch.Tensor, str]]:
    """The sub-layers' records in order; their BN tensors are plain floats (always read, see above)."""
    return [(t, "flat" if layout == "scales" else layout) for layer in layers for t, layout in layer.darknet_record()]


def _dense(layer: Connected, x: torch.Tensor) -> torch.Tensor:
    return layer(x).flatten(1)


class RecurrentModule(nn.Module):
    """What every recurrent module shares: the time-major split and the (optionally carried) state."""

    def __init__(self, steps: int, label: str, where: tuple[str | None, int | None, int | None]) -> None:
        super().__init__()
        self.steps = steps
        self.carry_state = False  # True: a forward starts from the state the previous forward ended with
        self._carried: tuple[torch.Tensor, ...] | None = None
        self._label = label
        self._where = where  # the [net] time_steps option, for the batch-size error

    def reset_state(self) -> None:
        """Forget the carried state: the next forward starts from zeros."""
        self._carried = None

    def _sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``(T*B, ...)`` → ``(T, B, ...)``: step ``t`` holds samples ``t*B .. t*B+B-1``."""
        n = x.shape[0]
        if n % self.steps:
            path, line, col = self._where
            raise CfgError(f"{self._label}: the input batch of {n} is not a multiple of [net] time_steps="
                           f"{self.steps} (recurrent layers read the batch as time_steps groups of samples, "
                           "time-major; for one frame per forward, as Darknet's detector runs, set time_steps=1)",
                           path=path, line=line, col=col)
        return x.reshape(self.steps, n // self.steps, *x.shape[1:])

    def _start(self, zeros: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The state before the first step: zeros, or the carried state when ``carry_state`` is on."""
        carried = self._carried if self.carry_state else None
        if carried is None:
            return zeros
        if carried[0].shape != zeros[0].shape:
            raise NetspecError(f"{self._label}: the carried state is for a batch of {carried[0].shape[0]} sequences, "
                               f"this input has {zeros[0].shape[0]}; call reset_state() to start new ones")
        return tuple(c.to(z.dtype) for c, z in zip(carried, zeros))

    def _end(self, state: tuple[torch.Tensor, ...]) -> None:
        if self.carry_state:
            self._carried = tuple(s.detach() for s in state)

    def extra_repr(self) -> str:
        return f"time_steps={self.steps}" + (", carry_state" if self.carry_state else "")


def set_carry_state(net: nn.Module, on: bool = True) -> None:
    """Darknet's stream behaviour for every recurrent layer of ``net``: keep the state between forwards."""
    for module in net.modules():
        if isinstance(module, RecurrentModule):
            module.carry_state = on
            module.reset_state()


def reset_state(net: nn.Module) -> None:
    """Start new sequences: every recurrent layer of ``net`` forgets its carried state."""
    for module in net.modules():
        if isinstance(module, RecurrentModule):
            module.reset_state()


# ---------------------------------------------------------------- shared section pieces
def _time_steps(ctx: Context | BuildContext) -> int:
    return ctx.net.time_steps if ctx.net is not None else 1


def _where(spec: LayerSpec, ctx: BuildContext) -> tuple[str | None, int | None, int | None]:
    opt = ctx.net.option("time_steps")
    return (spec.path, opt.line, opt.col) if opt is not None else (spec.path, None, None)


def _activation(name: str, inner: type[Section], spec: LayerSpec, ctx: BuildContext):
    """``activation=name`` as Darknet's inner layers (of section ``inner``) compute it: mish in a
    convolution, 0 in a connected layer."""
    fn, note = activations.resolve(name, inner.name, ctx.darknet_bugs, inner.darknet_activations)
    if note:
        ctx.warnings.append(spec.problem(f"{note} (the inner layers of [{spec.type}] are [{inner.name}] layers)",
                                         "activation", "warning"))
    return fn


def _dense_counts(n_in: int, n: int, bn: bool) -> tuple[int, int]:
    """(parameters, .weights floats) of one connected sub-layer."""
    return n_in * n + (2 * n if bn else n), n_in * n + (4 * n if bn else n)


class _RecurrentSection(Section):
    """Checks and hooks common to the recurrent sections with inner layers (of section ``inner``)."""

    inner: type[Section] = ConnectedSection
    decays_weights = True  # Darknet's update_{connected,convolutional}_layer decays the inner weights

    def init_targets(self, spec: LayerSpec, module: RecurrentModule) -> list[InitTarget]:
        """Each inner layer initialized as its own section would be, under its name in this module."""
        inner = self.inner()
        return [dataclasses.replace(t, suffix=f"{name}.{t.suffix}") for name, layer in module.named_children()
                for t in inner.init_targets(spec, layer)]

    def fuse(self, spec: LayerSpec, module: RecurrentModule) -> None:
        for layer in module.children():
            layer.fuse()

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        return str(spec.p.output), ""

    def check(self, p: Params, ctx: Context) -> None:
        if p.dontloadscales:
            message = (f"Darknet ignores dontloadscales in [{self.name}] (its inner layers always read their BN "
                       "values from .weights); remove it")
            if not ctx.lenient:
                raise SpecError(message, "dontloadscales")
            ctx.warn(message + "; netspec reads them as Darknet does", "dontloadscales")
            p.dontloadscales = 0


# ---------------------------------------------------------------- [rnn]
class RNNLayer(RecurrentModule):
    """``s_t = [shortcut: s_{t-1}] + input(x_t) + self(s_{t-1})``, ``y_t = output(s_t)`` (connected layers)."""

    def __init__(self, inputs: int, hidden: int, outputs: int, bn: bool, activation: str, act_fn, self_act: str,
                 self_fn, shortcut: bool, steps: int, label: str, where) -> None:
        super().__init__(steps, label, where)
        self.hidden, self.shortcut = hidden, shortcut
        self.input_layer = Connected(inputs, hidden, bn, activation, act_fn)
        self.self_layer = Connected(hidden, hidden, bn, self_act, self_fn)
        self.output_layer = Connected(hidden, outputs, bn, activation, act_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self._sequence(x).flatten(2)
        (s,) = self._start((xs.new_zeros(xs.shape[1], self.hidden),))
        outs = []
        for x_t in xs:
            update = _dense(self.input_layer, x_t) + _dense(self.self_layer, s)
            s = s + update if self.shortcut else update
            outs.append(_dense(self.output_layer, s))
        self._end((s,))
        return torch.cat(outs)[:, :, None, None]

    def darknet_record(self) -> list[tuple[torch.Tensor, str]]:
        return _record(self.input_layer, self.self_layer, self.output_layer)


@register
class RNNSection(_RecurrentSection):
    name = "rnn"
    needs_image = False
    keys = {"output": Int(1, "output size", min=1), "hidden": Int(1, "state size", min=1),
            "activation": activation_key("logistic"), "batch_normalize": Flag(0, "BN in each inner layer"),
            "logistic": Int(0, "activation of the self layer: 1 logistic, 2 loggy (0: activation=)", min=0, max=2),
            "shortcut": Flag(0, "add the previous state to the new one")}

    def infer(self, p: Params, inputs, ctx: Context) -> Inference:
        c, h, w = inputs[0]
        bn = bool(p.batch_normalize)
        counts = [_dense_counts(c * h * w, p.hidden, bn), _dense_counts(p.hidden, p.hidden, bn),
                  _dense_counts(p.hidden, p.output, bn)]
        return Inference((p.output, 1, 1), sum(n for n, _ in counts), sum(f for _, f in counts))

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        c, h, w = spec.in_shape
        self_act = {1: "logistic", 2: "loggy"}.get(p.logistic, p.activation)
        return RNNLayer(c * h * w, p.hidden, p.output, bool(p.batch_normalize), p.activation,
                        _activation(p.activation, ConnectedSection, spec, ctx), self_act,
                        _activation(self_act, ConnectedSection, spec, ctx), bool(p.shortcut), _time_steps(ctx),
                        spec.label, _where(spec, ctx))


# ---------------------------------------------------------------- [gru]
class GRULayer(RecurrentModule):
    """``z, r = σ(input_z(x) + state_z(h)), σ(input_r(x) + state_r(h))``,
    ``h~ = act(input_h(x) + state_h(r*h))``, ``h = z*h + (1-z)*h~`` (linear connected layers)."""

    def __init__(self, inputs: int, outputs: int, bn: bool, candidate_fn, steps: int, label: str, where) -> None:
        super().__init__(steps, label, where)
        self.outputs = outputs
        self.candidate_fn = candidate_fn
        linear = activations.FUNCTIONS["linear"]
        for name in ("input_z", "input_r", "input_h"):
            setattr(self, name, Connected(inputs, outputs, bn, "linear", linear))
        for name in ("state_z", "state_r", "state_h"):
            setattr(self, name, Connected(outputs, outputs, bn, "linear", linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self._sequence(x).flatten(2)
        (h,) = self._start((xs.new_zeros(xs.shape[1], self.outputs),))
        outs = []
        for x_t in xs:
            z = _logistic(_dense(self.input_z, x_t) + _dense(self.state_z, h))
            r = _logistic(_dense(self.input_r, x_t) + _dense(self.state_r, h))
            candidate = self.candidate_fn(_dense(self.input_h, x_t) + _dense(self.state_h, r * h))
            h = z * h + (1 - z) * candidate
            outs.append(h)
        self._end((h,))
        return torch.cat(outs)[:, :, None, None]

    def darknet_record(self) -> list[tuple[torch.Tensor, str]]:
        return _record(self.input_z, self.input_r, self.input_h, self.state_z, self.state_r, self.state_h)


class _GatedSection(_RecurrentSection):
    """[gru] and [lstm]: per gate, one connected layer on the input and one on the state, all ``output`` wide."""

    needs_image = False
    keys = {"output": Int(1, "output and state size", min=1), "batch_normalize": Flag(0, "BN in each inner layer")}
    gates = 0
    darknet_out: tuple[int, int, int] | None = None

    def infer(self, p: Params, inputs, ctx: Context) -> Inference:
        c, h, w = inputs[0]
        bn = bool(p.batch_normalize)
        n_x, f_x = _dense_counts(c * h * w, p.output, bn)
        n_h, f_h = _dense_counts(p.output, p.output, bn)
        return Inference((p.output, 1, 1), self.gates * (n_x + n_h), self.gates * (f_x + f_h),
                         darknet_out=self.darknet_out)


@register
class GRUSection(_GatedSection):
    name = "gru"
    gates = 3
    darknet_out = (0, 0, 0)  # Darknet never sets a [gru]'s out_c/out_h/out_w (only its flat size)

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        c, h, w = spec.in_shape
        candidate = _tanh
        if ctx.darknet_bugs:
            candidate = _logistic
            ctx.warnings.append(spec.problem(
                "Darknet's [gru] squashes the candidate state with logistic, not tanh (gru_layer.c is built without "
                "USET); netspec matches it (build with darknet_bugs=False for tanh)", None, "warning"))
        return GRULayer(c * h * w, p.output, bool(p.batch_normalize), candidate, _time_steps(ctx), spec.label,
                        _where(spec, ctx))


# ---------------------------------------------------------------- [lstm]
class LSTMLayer(RecurrentModule):
    """``f, i, o = σ(w(h) + u(x))``, ``g = tanh(wg(h) + ug(x))``, ``c = f*c + i*g``, ``h = o*tanh(c)``;
    ``w*`` act on the output ``h``, ``u*`` on the input (linear connected layers, each with its bias)."""

    GATES = ("f", "i", "g", "o")

    def __init__(self, inputs: int, outputs: int, bn: bool, steps: int, label: str, where) -> None:
        super().__init__(steps, label, where)
        self.outputs = outputs
        linear = activations.FUNCTIONS["linear"]
        for gate in self.GATES:
            setattr(self, "w" + gate, Connected(outputs, outputs, bn, "linear", linear))
        for gate in self.GATES:
            setattr(self, "u" + gate, Connected(inputs, outputs, bn, "linear", linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self._sequence(x).flatten(2)
        zeros = xs.new_zeros(xs.shape[1], self.outputs)
        h, c = self._start((zeros, zeros))
        outs = []
        for x_t in xs:
            pre = {g: _dense(getattr(self, "w" + g), h) + _dense(getattr(self, "u" + g), x_t) for g in self.GATES}
            c = _logistic(pre["f"]) * c + _logistic(pre["i"]) * _tanh(pre["g"])
            h = _logistic(pre["o"]) * _tanh(c)
            outs.append(h)
        self._end((h, c))
        return torch.cat(outs)[:, :, None, None]

    def darknet_record(self) -> list[tuple[torch.Tensor, str]]:
        return _record(*(getattr(self, k + g) for k in "wu" for g in self.GATES))


@register
class LSTMSection(_GatedSection):
    name = "lstm"
    gates = 4

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        c, h, w = spec.in_shape
        return LSTMLayer(c * h * w, spec.p.output, bool(spec.p.batch_normalize), _time_steps(ctx), spec.label,
                         _where(spec, ctx))


# ---------------------------------------------------------------- convolutional recurrent sections
_CONV_KEYS = {
    "size": Int(3, "kernel size of every inner convolution", min=1),
    "stride": Int(1, "stride (must keep the spatial size: 1)", min=1),
    "dilation": Int(1, "dilation", min=1),
    "pad": Flag(0, "1: padding = size//2"),
    "padding": Int(0, "padding per side when pad=0", min=0),
    "output": Int(1, "output channels", min=1),
    "groups": Int(1, "grouped convolutions", min=1),
    "batch_normalize": Flag(0, "BN in each inner convolution"),
    "xnor": Flag(0, "XNOR inner convolutions"),
}


class _ConvRecurrentSection(_RecurrentSection):
    """[crnn] and [conv_lstm]: inner convolutions that must keep the spatial size (the state is fed back)."""

    inner = Convolutional

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        p = spec.p
        return str(p.output) + (f"/{p.groups}" if p.groups > 1 else ""), \
            f"{p.size}x{p.size}/{stride_text(p.stride, p.stride)}" + (f" d{p.dilation}" if p.dilation > 1 else "")

    def check(self, p: Params, ctx: Context) -> None:
        super().check(p, ctx)
        p.pad_px = p.size // 2 if p.pad else p.padding
        if p.xnor:
            p.groups = 1  # Darknet's convolution disables groups for XNOR
        if p.dilation > 1 and p.size != 2 * p.pad_px + 1:
            raise SpecError(f"dilation={p.dilation} needs size = 2*padding+1 (use pad=1 with an odd size)", "dilation")

    def _conv(self, p: Params, c_in: int, c_out: int, h: int, w: int) -> tuple[int, int, float]:
        """(parameters, .weights floats, BFLOPs) of one inner convolution."""
        for n, what in ((c_in, "input"), (c_out, "output")):
            if n % p.groups:
                raise SpecError(f"groups={p.groups} does not divide the {n} {what} channels of an inner "
                                "convolution", "groups")
        nweights = c_out * (c_in // p.groups) * p.size * p.size
        bflops = 2.0 * nweights * h * w / 1e9 / (32 if p.xnor else 1)
        bn = bool(p.batch_normalize)
        return nweights + (2 * c_out if bn else c_out), nweights + (4 * c_out if bn else c_out), bflops

    def _keep_size(self, p: Params, h: int, w: int) -> None:
        out_h, out_w = conv_out(h, 2 * p.pad_px, p.size, p.stride), conv_out(w, 2 * p.pad_px, p.size, p.stride)
        if (out_h, out_w) != (h, w):
            raise SpecError(f"the inner convolutions turn the {h}x{w} input into {out_h}x{out_w}, but [{self.name}] "
                            "feeds its state back through them, so they must keep the size (Darknet aborts or reads "
                            "past its buffers): use stride=1 and pad=1 with an odd size", "size")

    def _layer(self, p: Params, c_in: int, c_out: int, act_name: str, act_fn) -> ConvLayer:
        return ConvLayer(c_in, c_out, p.size, (p.stride, p.stride), p.pad_px, p.dilation, p.groups,
                         bool(p.batch_normalize), act_name, act_fn, xnor=bool(p.xnor))


class CRNNLayer(RecurrentModule):
    """[rnn] with convolutions: ``s_t = [shortcut: s_{t-1}] + input(x_t) + self(s_{t-1})``, ``y_t = output(s_t)``."""

    def __init__(self, make, channels: int, hidden: int, outputs: int, shortcut: bool, steps: int, label: str,
                 where) -> None:
        super().__init__(steps, label, where)
        self.hidden, self.shortcut = hidden, shortcut
        self.input_layer = make(channels, hidden)
        self.self_layer = make(hidden, hidden)
        self.output_layer = make(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self._sequence(x)
        (s,) = self._start((xs.new_zeros(xs.shape[1], self.hidden, *xs.shape[3:]),))
        outs = []
        for x_t in xs:
            update = self.input_layer(x_t) + self.self_layer(s)
            s = s + update if self.shortcut else update
            outs.append(self.output_layer(s))
        self._end((s,))
        return torch.cat(outs)

    def darknet_record(self) -> list[tuple[torch.Tensor, str]]:
        return _record(self.input_layer, self.self_layer, self.output_layer)


@register
class CRNNSection(_ConvRecurrentSection):
    name = "crnn"
    keys = {**_CONV_KEYS, "hidden": Int(1, "state channels", min=1), "activation": activation_key("logistic"),
            "shortcut": Flag(0, "add the previous state to the new one")}

    def infer(self, p: Params, inputs, ctx: Context) -> Inference:
        c, h, w = inputs[0]
        self._keep_size(p, h, w)
        parts = [self._conv(p, c, p.hidden, h, w), self._conv(p, p.hidden, p.hidden, h, w),
                 self._conv(p, p.hidden, p.output, h, w)]
        return Inference((p.output, h, w), *(sum(x[i] for x in parts) for i in range(3)))

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        act_fn = _activation(p.activation, Convolutional, spec, ctx)

        def make(c_in: int, c_out: int) -> ConvLayer:
            return self._layer(p, c_in, c_out, p.activation, act_fn)

        return CRNNLayer(make, spec.in_shape[0], p.hidden, p.output, bool(p.shortcut), _time_steps(ctx), spec.label,
                         _where(spec, ctx))


def _fix_nonfinite(t: torch.Tensor) -> torch.Tensor:
    """Darknet's ``fix_nan_and_inf_cpu``: a NaN/Inf at flat index ``i`` (of the whole batch) becomes ``1/i``."""
    index = torch.arange(t.numel(), device=t.device, dtype=t.dtype).reshape(t.shape)
    return torch.where(torch.isfinite(t), t, 1.0 / index)


class ConvLSTMLayer(RecurrentModule):
    """[lstm] with convolutions, Darknet's CPU forward: ``f = σ(wf(h) + uf(x) [+ vf(c)])``, ``i`` likewise,
    ``g = tanh(wg(h) + ug(x))``, ``c = f*c + i*g``, ``o = σ(wo(h) + uo(x) [+ vo(c)])`` (the new ``c``),
    ``h = o*tanh(c)``; then ``c`` is clamped to ``±state_constrain`` and NaN/Inf in ``c`` and ``h`` replaced."""

    def __init__(self, make, channels: int, outputs: int, peephole: bool, state_constrain: int, cell_fn,
                 steps: int, label: str, where) -> None:
        super().__init__(steps, label, where)
        self.outputs, self.peephole, self.state_constrain, self.cell_fn = outputs, peephole, state_constrain, cell_fn
        if peephole:
            self.vf, self.vi, self.vo = (make(outputs, outputs) for _ in range(3))
        self.wf, self.wi, self.wg, self.wo = (make(outputs, outputs) for _ in range(4))
        self.uf, self.ui, self.ug, self.uo = (make(channels, outputs) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self._sequence(x)
        zeros = xs.new_zeros(xs.shape[1], self.outputs, *xs.shape[3:])
        h, c = self._start((zeros, zeros))
        outs = []
        for x_t in xs:
            f = self.wf(h) + self.uf(x_t)
            i = self.wi(h) + self.ui(x_t)
            if self.peephole:
                f = f + self.vf(c)
                i = i + self.vi(c)
            c = _logistic(f) * c + _logistic(i) * self.cell_fn(self.wg(h) + self.ug(x_t))
            o = self.wo(h) + self.uo(x_t)
            if self.peephole:
                o = o + self.vo(c)
            h = _logistic(o) * self.cell_fn(c)
            if self.state_constrain:
                c = c.clamp(-self.state_constrain, self.state_constrain)
            c, h = _fix_nonfinite(c), _fix_nonfinite(h)
            outs.append(h)
        self._end((h, c))
        return torch.cat(outs)

    def darknet_record(self) -> list[tuple[torch.Tensor, str]]:
        peep = (self.vf, self.vi, self.vo) if self.peephole else ()
        return _record(*peep, self.wf, self.wi, self.wg, self.wo, self.uf, self.ui, self.ug, self.uo)


@register
class ConvLSTMSection(_ConvRecurrentSection):
    name = "conv_lstm"
    keys = {**_CONV_KEYS, "activation": activation_key("linear", "activation of every inner convolution"),
            "peephole": Flag(0, "gates also read the cell state (vf, vi, vo convolutions)"),
            "bottleneck": Flag(0, "GPU only: one convolution over [h, x] (Darknet's CPU forward crashes on it)"),
            "state_constrain": Int(None, "clamp the cell state to +-N (default 32*time_steps; 0: off)", min=0),
            "shortcut": Flag(0, "Darknet uses it only with bottleneck (no effect otherwise)"),
            "lstm_activation": Choice("tanh", "cell activation (Darknet's CPU forward always uses tanh)",
                                      choices=activations.NAMES, lenient_fallback="tanh"),
            "time_normalizer": Float(1.0, "gradient scaling over time", **_T)}

    def check(self, p: Params, ctx: Context) -> None:
        super().check(p, ctx)
        if p.bottleneck:
            raise SpecError("bottleneck=1 is computed by Darknet's GPU forward only (its CPU forward reads past its "
                            "buffers); netspec does not implement it", "bottleneck")
        if p.shortcut:
            ctx.warn("shortcut=1 has no effect without bottleneck=1 (Darknet adds it only in the bottleneck "
                     "variant)", "shortcut")
        if p.state_constrain is None:
            p.state_constrain = 32 * _time_steps(ctx)

    def infer(self, p: Params, inputs, ctx: Context) -> Inference:
        c, h, w = inputs[0]
        self._keep_size(p, h, w)
        n = p.output
        parts = [self._conv(p, n, n, h, w)] * (7 if p.peephole else 4) + [self._conv(p, c, n, h, w)] * 4
        params, floats, bflops = (sum(x[i] for x in parts) for i in range(3))
        bflops += (12 if p.peephole else 9) * n * h * w / 1e9  # Darknet's count of the gate arithmetic
        return Inference((n, h, w), params, floats, bflops)

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        p = spec.p
        act_fn = _activation(p.activation, Convolutional, spec, ctx)
        cell_fn = activations.FUNCTIONS[p.lstm_activation]
        if p.lstm_activation != "tanh" and ctx.darknet_bugs:
            cell_fn = _tanh
            ctx.warnings.append(spec.problem(
                f"Darknet's CPU forward ignores lstm_activation={p.lstm_activation} (tanh; its GPU forward uses it); "
                "netspec matches the CPU (build with darknet_bugs=False to use it)", "lstm_activation", "warning"))

        def make(c_in: int, c_out: int) -> ConvLayer:
            return self._layer(p, c_in, c_out, p.activation, act_fn)

        return ConvLSTMLayer(make, spec.in_shape[0], p.output, bool(p.peephole), p.state_constrain, cell_fn,
                             _time_steps(ctx), spec.label, _where(spec, ctx))


# ---------------------------------------------------------------- [history]
class HistoryLayer(RecurrentModule):
    """Step ``t`` outputs ``[x_t, x_{t-1}, ..., x_{t-size+1}]`` along channels (zeros before the first step).

    With ``time_steps=1`` Darknet keeps no history: it copies the flat input batch into the start of the
    output buffer (each sample's first channels for batch 1; the first samples' slots for a larger batch)
    and leaves the rest 0.  ``darknet_flat_copy`` reproduces that."""

    def __init__(self, size: int, darknet_flat_copy: bool, steps: int, label: str, where) -> None:
        super().__init__(steps, label, where)
        self.size = size
        self.darknet_flat_copy = darknet_flat_copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.darknet_flat_copy:
            flat = torch.cat([x.reshape(-1), x.new_zeros(x.numel() * (self.size - 1))])
            return flat.reshape(x.shape[0], x.shape[1] * self.size, *x.shape[2:])
        xs = self._sequence(x)
        (window,) = self._start((xs.new_zeros(xs.shape[1], x.shape[1] * self.size, *x.shape[2:]),))
        outs = []
        channels = x.shape[1]
        for x_t in xs:
            window = torch.cat([x_t, window[:, : channels * (self.size - 1)]], 1)
            outs.append(window)
        self._end((window,))
        return torch.cat(outs)


@register
class HistorySection(Section):
    name = "history"
    keys = {"history_size": Int(4, "frames kept (output channels = channels * history_size)", min=1)}

    def infer(self, p: Params, inputs, ctx: Context) -> Inference:
        c, h, w = inputs[0]
        return Inference((c * p.history_size, h, w))

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        return f"x{spec.p.history_size}", ""

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        steps = _time_steps(ctx)
        flat_copy = steps == 1 and ctx.darknet_bugs and spec.p.history_size > 1
        if flat_copy:
            ctx.warnings.append(spec.problem(
                "with [net] time_steps=1 Darknet's [history] keeps no history (it copies the input batch into the "
                "start of its output and leaves the rest 0); netspec matches it (build with darknet_bugs=False for a "
                "window over the frames of successive forwards, see set_carry_state)", None, "warning"))
        return HistoryLayer(spec.p.history_size, flat_copy, steps, spec.label, _where(spec, ctx))
