"""What a section definition is, and the registry that maps section names to definitions.

A section definition (one subclass of :class:`Section` per Darknet section type) declares in one
place: its names, its keys (types, defaults, ranges), which keys reference other layers, how its
output shape, parameter count, ``.weights`` float count and BFLOPs follow from its inputs, and
which ``nn.Module`` computes it.  The module's ``darknet_record()`` gives its ``.weights`` layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..document import Block, Option
from ..errors import Problem
from ..keys import Flag, Float, InitKey, Int, Key

if TYPE_CHECKING:  # pragma: no cover
    import torch
    import torch.nn as nn

Shape = tuple[int, int, int]


class SpecError(Exception):
    """Raised inside a section's ``check``/``infer`` to report one problem at a key (or the block)."""

    def __init__(self, message: str, key: str | None = None, item: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.item = item


class Params:
    """The typed values of one block: every declared key, given or defaulted, as an attribute."""

    def __init__(self, values: dict[str, Any], options: dict[str, Option]) -> None:
        self.__dict__.update(values)
        self._options = options

    def given(self, key: str) -> bool:
        """Whether the cfg wrote ``key`` (as opposed to taking its default)."""
        return key in self._options

    def option(self, key: str) -> Option | None:
        return self._options.get(key)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"Params({self.as_dict()!r})"


@dataclass
class Inference:
    """What a layer's spec says before any tensor exists."""

    out: Shape
    params: int = 0  # trainable parameters (a shared layer counts 0: its tensors belong to another)
    weights_floats: int = 0  # floats in this layer's .weights record
    bflops: float = 0.0  # Darknet's BFLOPs figure for the layer
    darknet_out: Shape | None = None  # Darknet's own out_c/h/w when it differs from the real output


@dataclass
class LayerSpec:
    """A validated layer: its section, typed values, the layers it reads and its inferred sizes."""

    index: int
    section: Section
    block: Block
    p: Params
    sources: tuple[int, ...]  # layers read, -1 being the network input; the previous layer first
    in_shapes: tuple[Shape, ...]
    info: Inference
    path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def type(self) -> str:
        return self.section.name

    @property
    def out_shape(self) -> Shape:
        return self.info.out

    @property
    def in_shape(self) -> Shape:
        return self.in_shapes[0]

    @property
    def label(self) -> str:
        return f"[{self.section.name}] #{self.index}"

    def problem(self, message: str, key: str | None = None, severity: str = "error") -> Problem:
        opt = self.p.option(key) if key else None
        line, col = (opt.line, opt.col) if opt else (self.block.line, self.block.col + 1)
        return Problem(f"{self.label}: {message}", self.path, line, col, severity)


@dataclass
class InitTarget:
    """One tensor (or BatchNorm) of a layer's module, and what :func:`netspec.init.init_weights` does with it.

    ``role``:

    * ``"weight"``: filled by the block's ``init=``, else (when ``net_init``) by ``[net] init=``, else by
      ``darknet_start`` (default: Darknet's ``uniform(-sqrt(2/fan_in), sqrt(2/fan_in))``);
    * ``"bias"``: the block's Darknet biases: ``bias_prob=``, ``bias_init=``, ``[net] bias_init=``, else 0;
    * ``"bn_scale"`` (1), ``"bn_shift"`` (0): BatchNorm parameters that are not the block's biases;
    * ``"bn_stats"``: ``tensor`` is the BatchNorm module; running mean 0, variance 1, counter 0.

    ``suffix`` names the tensor inside the layer (it seeds the tensor's own generator, so keep it stable);
    ``fans`` = ``(fan_in, fan_out)`` for the weight schemes.
    """

    suffix: str
    tensor: Any  # torch.Tensor, or the BatchNorm module for "bn_stats"
    role: str
    fans: tuple[int, int] | None = None
    net_init: bool = True  # whether [net] init= applies (weights only)
    darknet_start: Callable[[torch.Tensor, torch.Generator], None] | None = None  # weights only


# Keys Darknet reads for every layer section (reference §6) plus netspec's training keys.
COMMON_KEYS: dict[str, Key] = {
    "learning_rate": Float(1.0, "multiplier on the global learning rate for this layer", training=True, min=0),
    "lr_mult": Float(1.0, "netspec: same meaning as learning_rate", training=True, min=0),
    "decay_mult": Float(1.0, "netspec: multiplier on weight decay", training=True, min=0),
    "freeze": Flag(0, "netspec: no gradient, excluded from the optimizer", training=True),
    "init": InitKey(None, "netspec: initializer of the weights", training=True),
    "bias_init": InitKey(None, "netspec: initializer of the biases", training=True),
    "bias_prob": Float(None, "netspec: bias prior -log((1-p)/p) for detection heads", training=True, min=0,
                       max=1, min_open=True),
    "stopbackward": Int(0, "backprop stops here; earlier layers are frozen", training=True, min=0),
    "onlyforward": Flag(0, "skip this layer's backward", training=True),
    "dont_update": Int(0, "GPU: no updates until iteration N", training=True, min=0),
    "burnin_update": Int(0, "GPU: no updates while iteration < N*burn_in", training=True, min=0),
    "train_only_bn": Flag(0, "this and earlier layers train only BN statistics", training=True),
    "dontload": Flag(0, "skip this layer when loading .weights (without advancing the file)"),
    "dontloadscales": Flag(0, "do not read BN scales/mean/variance from .weights"),
    "clip": Float(0.0, "GPU: clamp weights to [-clip, clip] after each update", training=True, min=0),
    "stream": Int(-1, "GPU stream plumbing (ignored on CPU)", training=True),
    "wait_stream": Int(-1, "GPU stream plumbing (ignored on CPU)", training=True),
}


class Section:
    """One Darknet section type: subclass it, set the class attributes, override the hooks you need and
    register it with :func:`netspec.register_section`.

    Class attributes: ``name`` and ``aliases`` (the ``[name]`` the cfg writes), ``keys`` (name →
    :class:`~netspec.keys.Key`, with types, defaults and ranges; the keys every layer takes are added),
    ``refs`` (keys holding layer references, made absolute before ``check``), ``reads_previous``,
    ``needs_image``, ``is_head``, ``decays_weights``, ``network_output``.

    Hooks, each with a default that fits a layer without parameters:

    * ``check(p, ctx)`` / ``infer(p, inputs, ctx)``: cross-key validation, then the output shape and sizes;
    * ``module(spec, ctx)``: the ``nn.Module`` (its ``darknet_record()``, if any, is the ``.weights`` record);
    * ``init_targets(spec, module)``: what :func:`netspec.init_weights` fills and how;
    * ``fuse(spec, module)``: inference mode (fold BatchNorm, in-place activations), done in place;
    * ``describe(spec)``: the ``filters`` and ``size/strd`` columns of ``netspec build``'s table;
    * ``anchors(spec, module)``: a detection head's anchors in input pixels;
    * ``classifier_logits(spec)``: for a classifier's output layer, its input → the logits cross-entropy takes.

    Detection heads (``is_head = True``) add two optional hooks: ``loss(spec, net_params)`` on the section,
    the per-head training loss :class:`netspec.DetectionLoss` sums, and ``decode_boxes(buffer)`` on the
    module (with ``decodes_boxes = True``), the one box decoder :func:`netspec.detect` and the ONNX export use.

    Raise :class:`SpecError` from ``check``/``infer`` to report a problem at a key; netspec adds the
    file, line and column.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    keys: ClassVar[dict[str, Key]] = {}
    refs: ClassVar[tuple[str, ...]] = ()  # keys whose values are layer references
    reads_previous: ClassVar[bool] = True  # False: the layer ignores the previous layer's output
    needs_image: ClassVar[bool] = True  # False: also takes the flat output of [softmax]/[cost]/[detection]
    is_layer: ClassVar[bool] = True  # False only for [net]
    is_head: ClassVar[bool] = False  # [yolo], [region], ...: outputs of a detection network
    decays_weights: ClassVar[bool] = False  # [net] decay applies to its weights (never to biases or BN)
    network_output: ClassVar[bool] = True  # False: never the network's output (a [cost] only adds a loss)
    # Of the activations Darknet computes only in some sections (activations.SECTION_DEPENDENT), those it
    # computes in this one; its CPU forward yields 0 for the others.
    darknet_activations: ClassVar[frozenset[str]] = frozenset()
    # How PyTorch ports of Darknet (netspec.ports) model this layer: "conv2d" (a Conv2d with an optional
    # BatchNorm2d: the module's conv/bn), "linear" (a Linear: the module's linear), "" (no tensors they name).
    port_kind: ClassVar[str] = ""
    ref_keys_not_read: ClassVar[tuple[str, ...]] = ()  # reference keys that are not forward inputs

    def tensor_shape(self, spec: LayerSpec) -> tuple[int, ...]:
        """Per-sample shape of the tensor the module returns (differs from ``out`` only for [region])."""
        return spec.out_shape

    def all_keys(self) -> dict[str, Key]:
        return {**COMMON_KEYS, **self.keys} if self.is_layer else dict(self.keys)

    def check(self, p: Params, ctx: Context) -> None:
        """Cross-key validation and derived values (set new attributes on ``p``)."""

    def infer(self, p: Params, inputs: list[Shape], ctx: Context) -> Inference:
        """Output shape and sizes from the input shapes (``inputs[0]`` is the previous layer's)."""
        return Inference(inputs[0])

    def module(self, spec: LayerSpec, ctx: BuildContext) -> nn.Module:
        """The ``nn.Module`` that computes this layer."""
        raise NotImplementedError(self.name)

    def init_targets(self, spec: LayerSpec, module: nn.Module) -> list[InitTarget]:
        """The tensors :func:`netspec.init_weights` fills, by role.  Parameters left out get a Darknet-style
        start (uniform for matrices, zeros otherwise), so nothing stays unfilled."""
        return []

    def fuse(self, spec: LayerSpec, module: nn.Module) -> None:
        """Inference mode for this layer's module, in place (see :meth:`netspec.Network.fuse`).  The layers
        before it are already fused."""

    def describe(self, spec: LayerSpec) -> tuple[str, str]:
        """The ``filters`` and ``size/strd`` columns of the CLI layer table."""
        return "", ""

    def anchors(self, spec: LayerSpec, module: nn.Module) -> list[tuple[float, float]] | None:
        """A detection head's anchor ``(w, h)`` sizes in input pixels, those it uses; None for other layers
        (a port's stored anchors are checked against them)."""
        return None

    def classifier_logits(self, spec: LayerSpec) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """When this layer turns logits into probabilities (a plain softmax) and is a classifier's output: the
        function from the layer's input to the ``(batch, classes)`` logits cross-entropy takes; else None."""
        return None


@dataclass
class Context:
    """What a section's ``check``/``infer`` may consult: the layer's index, [net], earlier layers."""

    index: int
    net: Params | None
    specs: list  # earlier LayerSpecs
    lenient: bool
    warnings: list = field(default_factory=list)

    def warn(self, message: str, key: str | None = None) -> None:
        self.warnings.append((message, key))


@dataclass
class BuildContext:
    """What a section's ``module`` may consult: all specs (for weight sharing) and build options."""

    specs: list
    net: Params
    darknet_bugs: bool = True
    modules: list = field(default_factory=list)  # modules built so far, by layer index
    warnings: list = field(default_factory=list)

    def activation(self, name: str, spec: LayerSpec) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function for ``activation=name`` in this layer; records a warning where Darknet differs."""
        from .. import activations

        fn, note = activations.resolve(name, spec.type, self.darknet_bugs, spec.section.darknet_activations)
        if note:
            self.warnings.append(spec.problem(note, "activation", "warning"))
        return fn


_REGISTRY: dict[str, Section] = {}


def register(cls: type[Section]) -> type[Section]:
    """Class decorator: make a section type known under its name and aliases (built-in sections use it
    while :func:`load_all` imports them; everyone else calls :func:`netspec.register_section`)."""
    from ..errors import SectionError

    if not (isinstance(cls, type) and issubclass(cls, Section)):
        raise SectionError(f"register_section takes a subclass of netspec.Section, got {cls!r}")
    names = (cls.name, *cls.aliases)
    for name in names:
        if not isinstance(name, str) or not name or any(ch in "[]#;=" or ch.isspace() for ch in name):
            raise SectionError(f"{cls.__qualname__}: section name {name!r} is not a valid [section] name")
        if name in _REGISTRY:
            other = type(_REGISTRY[name])
            raise SectionError(f"section name '{name}' of {cls.__module__}.{cls.__qualname__} is already registered "
                               f"by {other.__module__}.{other.__qualname__}")
    if len(set(names)) != len(names):
        raise SectionError(f"{cls.__qualname__}: name and aliases repeat a name: {names}")
    for key_name, key in cls.keys.items():
        if not isinstance(key, Key):
            raise SectionError(f"{cls.__qualname__}: key '{key_name}' must be a netspec.keys.Key, got {key!r}")
    instance = cls()
    for name in names:
        _REGISTRY[name] = instance
    return cls


def register_section(cls: type[Section]) -> type[Section]:
    """Make a :class:`Section` subclass known to netspec under its ``name`` and ``aliases``; usable as a
    class decorator.  Raises :class:`~netspec.errors.SectionError` when a name is taken (built-in
    sections are loaded first, so a clash with one is reported here)."""
    from . import load_all

    load_all()
    return register(cls)


def registry() -> dict[str, Section]:
    """Section name or alias → definition, with every built-in and entry-point section type loaded."""
    from . import load_all

    load_all()
    return _REGISTRY


def net_section() -> Section:
    """The definition of the network-wide section (``[net]``, the one section that is not a layer)."""
    return next(s for s in registry().values() if not s.is_layer)


def net_names() -> frozenset[str]:
    """The names the network-wide section may be written as (``net``, ``network``)."""
    return frozenset(n for n, s in registry().items() if not s.is_layer)


def conv_out(size_in: int, pad_total: int, kernel: int, stride: int) -> int:
    """Darknet's output-size rule ``(in + pad_total - kernel) // stride + 1`` (floor division)."""
    return (size_in + pad_total - kernel) // stride + 1
