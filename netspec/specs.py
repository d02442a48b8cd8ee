"""Blocks → validated layer specs with every layer's output shape inferred.

Nothing here allocates a tensor: the result says, for any input size, what each layer outputs, how
many parameters and ``.weights`` floats it has and how many BFLOPs Darknet counts for it.  Every
problem found is collected (all of them, not just the first) and raised as one :class:`CfgError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .document import Block, Document, Option
from .errors import CfgError, LimitError, Problem
from .keys import KeyValueError, clip, did_you_mean
from .sections.base import Context, Inference, LayerSpec, Params, Section, SpecError, net_names, net_section, registry

DEFAULT_MAX_PARAMS = 2_000_000_000
DEFAULT_MAX_ACTIVATION_BYTES = 64 * 2**30
DEFAULT_MAX_LAYERS = 20_000


@dataclass
class Limits:
    """Resource limits checked from the inferred shapes before anything is allocated."""

    max_params: int = DEFAULT_MAX_PARAMS
    max_activation_bytes: int = DEFAULT_MAX_ACTIVATION_BYTES  # all layer outputs, batch 1, float32
    max_layers: int = DEFAULT_MAX_LAYERS


@dataclass
class NetSpec:
    """A whole validated network: [net] values, input shape, one LayerSpec per layer, warnings."""

    document: Document
    net: Params
    input_shape: tuple[int, int, int]
    layers: list[LayerSpec]
    warnings: list[Problem] = field(default_factory=list)

    @property
    def path(self) -> str | None:
        return self.document.path

    @property
    def total_params(self) -> int:
        return sum(s.info.params for s in self.layers)

    @property
    def total_weights_floats(self) -> int:
        return sum(s.info.weights_floats for s in self.layers)

    @property
    def total_bflops(self) -> float:
        return sum(s.info.bflops for s in self.layers)

    def activation_bytes(self) -> int:
        return 4 * sum(_numel(s.out_shape) for s in self.layers)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _Collector:
    def __init__(self, path: str | None, lenient: bool) -> None:
        self.path = path
        self.lenient = lenient
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def add(self, message: str, line: int | None, col: int | None, *, soft: bool = False) -> None:
        """Record an error; ``soft`` errors are Darknet-tolerated quirks, warnings when lenient."""
        problem = Problem(message, self.path, line, col, "warning" if soft and self.lenient else "error")
        (self.warnings if problem.severity == "warning" else self.errors).append(problem)

    def warn(self, message: str, line: int | None, col: int | None) -> None:
        self.warnings.append(Problem(message, self.path, line, col, "warning"))


def _label(section: str, index: int | None) -> str:
    section = clip(section, 40)
    return f"[{section}]" if index is None else f"[{section}] #{index}"


def _convert_block(block: Block, section: Section, index: int | None, out: _Collector) -> Params | None:
    """Typed values of a block's options, or None when any of them is invalid."""
    label = _label(block.section, index)
    keys = section.all_keys()
    values = {name: key.default for name, key in keys.items()}
    seen: dict[str, Option] = {}
    ok = True
    for opt in block.options:
        if opt.key in seen:
            first = seen[opt.key]
            out.add(f"{label}: duplicate key '{opt.key}' (first set on line {first.line}; Darknet uses the "
                    "first)", opt.line, opt.col, soft=True)
            continue
        key = keys.get(opt.key)
        if key is None:
            hint = did_you_mean(opt.key, keys)
            out.add(f"{label}: unknown key '{clip(opt.key)}'{hint}", opt.line, opt.col, soft=True)
            continue
        seen[opt.key] = opt

        def warn(message, col, _opt=opt):
            out.warn(f"{label}: {message}", _opt.line, col)

        try:
            values[opt.key] = key.convert(opt, out.lenient, warn)
        except KeyValueError as exc:
            out.add(f"{label}: {exc.message}", exc.line or opt.line, exc.col or opt.value_col)
            ok = False
    return Params(values, seen) if ok else None


def _report(exc: SpecError, p: Params, block: Block, label: str, out: _Collector) -> None:
    opt = p.option(exc.key) if exc.key else None
    if opt is not None:
        col = opt.items[exc.item].col if exc.item is not None and exc.item < len(opt.items) else opt.col
        out.add(f"{label}: {exc.message}", opt.line, col)
    else:
        out.add(f"{label}: {exc.message}", block.line, block.col + 1)


def _resolve_refs(section: Section, p: Params, index: int, block: Block, label: str, out: _Collector) -> bool:
    """Turn relative layer references into absolute indices; they must point at earlier layers."""
    ok = True
    for key in section.refs:
        value = getattr(p, key)
        if value is None:
            continue
        many = isinstance(value, tuple)
        resolved = []
        for i, ref in enumerate(value if many else (value,)):
            target = index + ref if ref < 0 else ref
            if not 0 <= target < index:
                opt = p.option(key)
                col = opt.items[i].col if opt is not None and i < len(opt.items) else block.col + 1
                line = opt.line if opt is not None else block.line
                where = "before the first layer" if target < 0 else (
                    "this layer itself" if target == index else f"layer {target}, which comes later")
                out.add(f"{label}: {key}={ref} refers to {where}; only earlier layers (0..{index - 1}) can be "
                        "used", line, col)
                ok = False
            resolved.append(target)
        setattr(p, key, tuple(resolved) if many else resolved[0])
    return ok


def build_specs(document: Document, width: int | None = None, height: int | None = None, *,
                channels: int | None = None, strict: bool = True, limits: Limits | None = None) -> NetSpec:
    """Validate a parsed cfg and infer every layer's shape.  Raises CfgError with all problems."""
    sections = registry()
    out = _Collector(document.path, lenient=not strict)
    limits = limits or Limits()
    blocks = document.blocks
    if not blocks:
        raise CfgError(Problem("the cfg has no sections; it must start with [net]", document.path, 1, 1))
    first = blocks[0]
    net_def = net_section()
    net_spellings = net_names()
    misspelt_net = first.section.lower() in net_spellings
    if first.section not in net_spellings:
        hint = " (Darknet matches section names case-sensitively)" if misspelt_net else ""
        out.add(f"the first section must be [net] or [network], not [{first.section}]{hint}", first.line,
                first.col + 1)
        # '[Net]' still holds the net's keys; a file that starts with a layer has none, and reporting
        # its missing width/height/channels would only repeat the error above.
        net = _convert_block(first if misspelt_net else Block(net_def.name, first.line, first.col), net_def, None,
                             out)
        layer_blocks = blocks[1:] if misspelt_net else blocks
    else:
        net = _convert_block(first, net_def, None, out)
        layer_blocks = blocks[1:]
    starts_with_a_layer = first.section not in net_spellings and not misspelt_net
    bad_sizes = [Problem(f"{name}={value!r} was asked for; it must be a positive integer", document.path)
                 for name, value in (("width", width), ("height", height), ("channels", channels))
                 if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1)]
    if bad_sizes:  # arguments, not cfg lines: reported without a position
        raise CfgError(bad_sizes)
    input_shape = None
    if net is not None and not starts_with_a_layer:
        if width is not None:
            net.width = width
        if height is not None:
            net.height = height
        if channels is not None:
            net.channels = channels
        try:
            input_shape = net_def.input_shape(net)
        except SpecError as exc:
            _report(exc, net, first, "[net]", out)
        try:
            net_def.check(net, Context(-1, net, [], out.lenient))
        except SpecError as exc:
            _report(exc, net, first, "[net]", out)
    if len(layer_blocks) > limits.max_layers:
        raise LimitError(Problem(f"the cfg has {len(layer_blocks)} layers, more than the limit of "
                                 f"{limits.max_layers} (raise max_layers to allow it)", document.path, 1, 1))

    specs: list[LayerSpec] = []
    shapes_known = input_shape is not None
    for index, block in enumerate(layer_blocks):
        label = _label(block.section, index)
        section = sections.get(block.section)
        if section is None or not section.is_layer:
            if block.section in net_spellings and starts_with_a_layer and not any(
                    b.section in net_spellings for b in layer_blocks[:index]):
                msg = f"[{block.section}] #{index}: [{block.section}] must be the first section, before every layer"
            elif block.section in net_spellings:
                msg = f"[{block.section}] #{index}: a second [{block.section}] section; only the first section " \
                      "may be [net]"
            else:
                names = [n for n, s in sections.items() if s.is_layer]
                msg = f"{label}: unknown section type{did_you_mean(block.section, names)}"
            out.add(msg, block.line, block.col + 1)
            shapes_known = False
            continue
        p = _convert_block(block, section, index, out)
        if p is None:
            shapes_known = False
            continue
        if not _resolve_refs(section, p, index, block, label, out):
            shapes_known = False
            continue
        ctx = Context(index, net, specs, out.lenient)
        try:
            section.check(p, ctx)
        except SpecError as exc:
            _report(exc, p, block, label, out)
            shapes_known = False
            continue
        if not shapes_known:
            continue
        previous = index - 1
        sources = ((previous,) if section.reads_previous else ()) + _ref_sources(section, p)
        in_shapes = tuple(input_shape if s < 0 else specs[s].out_shape for s in sources) or (
            (input_shape if previous < 0 else specs[previous].out_shape),)
        flat = [s for s in sources if s >= 0 and specs[s].info.darknet_out == (0, 0, 0)]
        if flat and section.needs_image:
            src = specs[flat[0]]
            out.add(f"{label}: needs an image input, but layer {src.index} [{src.type}] outputs a flat vector "
                    "(Darknet reports no image size for it)", block.line, block.col + 1)
            shapes_known = False
            continue
        try:
            info = section.infer(p, list(in_shapes), ctx)
        except SpecError as exc:
            _report(exc, p, block, label, out)
            shapes_known = False
            continue
        if info.out is not None and min(info.out) <= 0:
            out.add(f"{label}: output size {info.out[1]}x{info.out[2]}x{info.out[0]} (h x w x c) is empty; the "
                    f"input {in_shapes[0][1]}x{in_shapes[0][2]}x{in_shapes[0][0]} is too small for this layer",
                    block.line, block.col + 1)
            shapes_known = False
            continue
        spec = LayerSpec(index, section, block, p, sources, in_shapes, info, document.path)
        for message, key in ctx.warnings:
            out.warnings.append(spec.problem(message, key, "warning"))
        specs.append(spec)

    if out.errors:
        if strict:
            _mark_tolerated(out.errors, document, width, height, channels, limits)
        raise CfgError(out.errors + out.warnings)
    if net is None or input_shape is None:  # pragma: no cover - reported above
        raise CfgError(out.errors or [Problem("invalid [net] section", document.path, first.line, 1)])
    if not specs:
        out.add("the cfg has no layers after [net]", first.line, first.col + 1)
        raise CfgError(out.errors)
    result = NetSpec(document, net, input_shape, specs, out.warnings)
    _check_limits(result, limits)
    return result


TOLERATED_HINT = " (Darknet accepts it: --lenient builds it as Darknet does)"


def _mark_tolerated(errors: list[Problem], document: Document, width, height, channels, limits) -> None:
    """Say which strict errors Darknet tolerates: those on lines where a lenient build finds no error.

    Asking the lenient build (shapes only, no tensors; on this error path only) covers every strict-only
    check, wherever it is made: duplicate or unknown keys, stray commas, non-numbers, a section's own."""
    try:
        build_specs(document, width, height, channels=channels, strict=False, limits=limits)
        still_wrong: set[int | None] = set()
    except CfgError as exc:
        still_wrong = {p.line for p in exc.problems if p.severity == "error"}
    for i, problem in enumerate(errors):
        if problem.line is not None and problem.line not in still_wrong:
            errors[i] = replace(problem, message=problem.message + TOLERATED_HINT)


def _ref_sources(section: Section, p: Params) -> tuple[int, ...]:
    found: list[int] = []
    for key in section.refs:
        if key in section.ref_keys_not_read:
            continue
        value = getattr(p, key)
        if value is None:
            continue
        found.extend(value if isinstance(value, tuple) else (value,))
    return tuple(found)


def _check_limits(spec: NetSpec, limits: Limits) -> None:
    params = spec.total_params
    act = spec.activation_bytes()
    estimate = (f"the network would have {params:,} parameters ({params * 4 / 2**30:.1f} GiB) and need "
                f"{act / 2**30:.1f} GiB of layer outputs for one image")
    problems = []
    if params > limits.max_params:
        big = max(spec.layers, key=lambda s: s.info.params)
        problems.append((big, f"{estimate}: more parameters than the limit of {limits.max_params:,} (the largest "
                              f"layer, {big.label}, has {big.info.params:,}; raise max_params / --max-params to "
                              "allow it)"))
    if act > limits.max_activation_bytes:
        big = max(spec.layers, key=lambda s: _numel(s.out_shape))
        problems.append((big, f"{estimate}: more than the limit of {limits.max_activation_bytes / 2**30:.1f} GiB "
                              f"of layer outputs (the largest, {big.label}, is {'x'.join(map(str, big.out_shape))} "
                              "(c x h x w); raise max_activation_bytes / --max-activation-bytes to allow it)"))
    if problems:
        # point at the layer that contributes most: that is where the cfg needs changing
        raise LimitError([Problem(m, spec.path, big.block.line, big.block.col + 1) for big, m in problems])


__all__ = ["Inference", "LayerSpec", "Limits", "NetSpec", "build_specs"]
