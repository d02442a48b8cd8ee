"""Hypothesis strategies for cfg files: valid networks (with the shapes Darknet gives them) and mutations.

``valid_cfgs()`` draws a ``GeneratedCfg``: the cfg text plus every layer's expected output shape, computed
here independently of netspec from the reference's formulas (§3), so a test can check netspec's inference
against it.  The text varies its layout (spacing, comments, blank lines, CRLF, aliases) but never its meaning.

``mutated_cfgs()`` draws bytes made from a valid cfg by hostile edits (byte flips, truncation, deleted or
duplicated lines, random keys, huge and negative numbers, non-UTF-8 bytes, NUL, a BOM, CR-only endings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hypothesis import strategies as st

Shape = tuple[int, int, int]

# Activations that are plain element-wise functions on Darknet's CPU path.
ACTIVATIONS = ("linear", "logistic", "leaky", "relu", "mish", "swish", "tanh", "elu", "relu6", "hard_mish",
               "selu", "gelu", "ramp", "lhtan", "hardtan", "loggy", "relie", "plse", "stair", "revleaky")

SECTION_ALIASES = {"convolutional": "conv", "maxpool": "max", "avgpool": "avg", "connected": "conn",
                   "softmax": "soft", "local_avgpool": "local_avg", "net": "network", "empty": "silence"}


@dataclass
class Layer:
    section: str
    options: list[tuple[str, str]]
    out: Shape
    comment: str | None = None  # a comment line placed above the section header


@dataclass
class GeneratedCfg:
    net: list[tuple[str, str]]
    input_shape: Shape
    layers: list[Layer] = field(default_factory=list)
    text: str = ""

    @property
    def shapes(self) -> list[Shape]:
        return [layer.out for layer in self.layers]


def _conv_out(size: int, pad_total: int, kernel: int, stride: int) -> int:
    return (size + pad_total - kernel) // stride + 1


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---------------------------------------------------------------------------------------------- layers
# Each drawer returns a list of Layers (a head is a conv + [yolo]) or None when it does not fit here.

def _draw_conv(draw, shapes: list[Shape], filters: int | None = None) -> list[Layer] | None:
    c, h, w = shapes[-1]
    size = draw(st.sampled_from((1, 1, 3, 3, 2, 5)))
    opts: list[tuple[str, str]] = []
    if filters is None:
        groups = draw(st.sampled_from(_divisors(c)))
        filters = groups * draw(st.integers(1, max(1, 8 // groups)))
    else:
        groups = 1
    opts.append(("filters", str(filters)))
    opts.append(("size", str(size)))
    pad_style = draw(st.sampled_from(("pad", "padding", "none")))
    if pad_style == "pad":
        opts.append(("pad", "1"))
        pad_px = size // 2
    elif pad_style == "padding":
        pad_px = draw(st.integers(0, 2))
        opts.append(("padding", str(pad_px)))
    else:
        pad_px = 0
    stride_style = draw(st.sampled_from(("default", "stride", "xy")))
    sy = sx = 1
    if stride_style == "stride":
        sy = sx = draw(st.integers(1, 3))
        opts.append(("stride", str(sy)))
    elif stride_style == "xy":
        sx, sy = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        opts += [("stride_x", str(sx)), ("stride_y", str(sy))]
    if groups > 1:
        opts.append(("groups", str(groups)))
    if size > 1 and size == 2 * pad_px + 1 and draw(st.booleans()):
        opts.append(("dilation", str(draw(st.integers(2, 3)))))
    if draw(st.booleans()):
        opts.append(("batch_normalize", "1"))
    opts.append(("activation", draw(st.sampled_from(ACTIVATIONS))))
    out_h, out_w = _conv_out(h, 2 * pad_px, size, sy), _conv_out(w, 2 * pad_px, size, sx)
    if out_h < 1 or out_w < 1:
        return None
    out = (filters, out_h, out_w)
    anti = draw(st.sampled_from((0, 0, 0, 1, 2)))
    if anti:
        # the blur carries the stride; the conv itself runs at stride 1
        h1, w1 = _conv_out(h, 2 * pad_px, size, 1), _conv_out(w, 2 * pad_px, size, 1)
        if anti == 1:
            out = (filters, (h1 - 1) // sy + 1, (w1 - 1) // sx + 1)
        else:
            out = (filters, (h1 - 2) // sy + 1, (w1 - 2) // sx + 1)
        if min(out) < 1 or h1 < 1 or w1 < 1:
            return None
        opts.append(("antialiasing", str(anti)))
    opts = draw(st.permutations(opts))  # key order within a block does not matter
    return [Layer("convolutional", list(opts), out)]


def _draw_pool(draw, shapes: list[Shape], section: str) -> list[Layer] | None:
    c, h, w = shapes[-1]
    stride = draw(st.integers(1, 2))
    size = draw(st.integers(1, 3))
    opts = [("size", str(size)), ("stride", str(stride))]
    pad_total = size - 1
    if draw(st.booleans()):
        pad_total = draw(st.integers(0, 2))
        opts.append(("padding", str(pad_total)))
    out_h, out_w = _conv_out(h, pad_total, size, stride), _conv_out(w, pad_total, size, stride)
    if out_h < 1 or out_w < 1:
        return None
    return [Layer(section, opts, (c, out_h, out_w))]


def _draw_upsample(draw, shapes: list[Shape]) -> list[Layer] | None:
    c, h, w = shapes[-1]
    if h * w <= 64 and draw(st.booleans()):
        return [Layer("upsample", [("stride", "2")], (c, 2 * h, 2 * w))]
    if h % 2 == 0 and w % 2 == 0:
        return [Layer("upsample", [("stride", "-2")], (c, h // 2, w // 2))]
    return None


def _draw_reorg(draw, shapes: list[Shape]) -> list[Layer] | None:
    c, h, w = shapes[-1]
    if h % 2 or w % 2:
        return None
    return [Layer("reorg3d", [("stride", "2")], (4 * c, h // 2, w // 2))]


def _ref(draw, current: int, target: int) -> str:
    """A reference to ``target`` from layer ``current``: relative (negative) or absolute."""
    return str(target - current) if draw(st.booleans()) else str(target)


def _draw_route(draw, shapes: list[Shape]) -> list[Layer] | None:
    index = len(shapes) - 1  # index of the route layer itself (shapes[0] is the input)
    if index < 1:
        return None
    anchor = draw(st.integers(0, index - 1))
    _, h, w = shapes[anchor + 1]
    same = [i for i in range(index) if shapes[i + 1][1:] == (h, w)]
    chosen = draw(st.lists(st.sampled_from(same), min_size=1, max_size=3))
    channels = [shapes[i + 1][0] for i in chosen]
    opts = [("layers", ",".join(_ref(draw, index, i) for i in chosen))]
    groups = 1
    common = [g for g in (2, 4) if all(ch % g == 0 for ch in channels)]
    if common and draw(st.booleans()):
        groups = draw(st.sampled_from(common))
        opts += [("groups", str(groups)), ("group_id", str(draw(st.integers(0, groups - 1))))]
    return [Layer("route", opts, (sum(channels) // groups, h, w))]


def _draw_shortcut(draw, shapes: list[Shape]) -> list[Layer] | None:
    index = len(shapes) - 1
    c, h, w = shapes[-1]
    same = [i for i in range(index - 1) if shapes[i + 1][1:] == (h, w)]
    if not same:
        return None
    chosen = draw(st.lists(st.sampled_from(same), min_size=1, max_size=2, unique=True))
    opts = [("from", ",".join(_ref(draw, index, i) for i in chosen)),
            ("activation", draw(st.sampled_from(("linear", "leaky", "relu", "mish"))))]
    kind = draw(st.sampled_from(("none", "none", "per_feature", "per_channel")))
    if kind != "none":
        opts += [("weights_type", kind), ("weights_normalization", draw(st.sampled_from(("relu", "softmax"))))]
    return [Layer("shortcut", opts, (c, h, w))]


def _draw_sam(draw, shapes: list[Shape]) -> list[Layer] | None:
    index = len(shapes) - 1
    same = [i for i in range(index - 1) if shapes[i + 1] == shapes[-1]]
    if not same:
        return None
    return [Layer("sam", [("from", _ref(draw, index, draw(st.sampled_from(same))))], shapes[-1])]


def _draw_scale_channels(draw, shapes: list[Shape]) -> list[Layer] | None:
    # [avgpool] squeezes the previous output to c x 1 x 1, then [scale_channels] scales it by channel
    index = len(shapes) - 1
    if index < 1:
        return None
    c, h, w = shapes[-1]
    return [Layer("avgpool", [], (c, 1, 1)),
            Layer("scale_channels", [("from", _ref(draw, index + 1, index - 1))], (c, h, w))]


def _draw_yolo_head(draw, shapes: list[Shape]) -> list[Layer] | None:
    num = draw(st.integers(1, 6))
    mask = draw(st.lists(st.integers(0, num - 1), min_size=1, max_size=3, unique=True))
    classes = draw(st.integers(1, 3))
    filters = len(mask) * (classes + 5)
    conv = _draw_conv(draw, shapes, filters)
    if conv is None:
        return None
    anchors = ",".join(str(draw(st.integers(1, 64))) for _ in range(2 * num))
    opts = [("mask", ",".join(map(str, mask))), ("anchors", anchors), ("classes", str(classes)),
            ("num", str(num))]
    if draw(st.booleans()):
        opts.append(("scale_x_y", draw(st.sampled_from(("1.05", "1.1", "2.0")))))
    if draw(st.booleans()):
        opts += [("ignore_thresh", ".7"), ("truth_thresh", "1"), ("random", "1"), ("jitter", ".3")]
    return conv + [Layer("yolo", opts, conv[0].out)]


def _draw_simple(draw, shapes: list[Shape]) -> list[Layer] | None:
    kind = draw(st.sampled_from(("dropout", "batchnorm", "activation", "empty", "avgpool", "connected",
                                 "softmax", "normalization")))
    c, h, w = shapes[-1]
    if kind == "dropout":
        return [Layer(kind, [("probability", draw(st.sampled_from(("0", ".5", "0.25"))))], (c, h, w))]
    if kind == "activation":
        return [Layer(kind, [("activation", draw(st.sampled_from(ACTIVATIONS)))], (c, h, w))]
    if kind == "avgpool":
        return [Layer(kind, [], (c, 1, 1))]
    if kind == "connected":
        n = draw(st.integers(1, 16))
        opts = [("output", str(n)), ("activation", draw(st.sampled_from(ACTIVATIONS)))]
        if draw(st.booleans()):
            opts.append(("batch_normalize", "1"))
        return [Layer(kind, opts, (n, 1, 1))]
    if kind == "normalization":
        return [Layer(kind, [("size", str(draw(st.integers(1, 5))))], (c, h, w))]
    return [Layer(kind, [], (c, h, w))]


_DRAWERS = {
    "conv": _draw_conv, "maxpool": lambda d, s: _draw_pool(d, s, "maxpool"),
    "local_avgpool": lambda d, s: _draw_pool(d, s, "local_avgpool"), "upsample": _draw_upsample,
    "reorg3d": _draw_reorg, "route": _draw_route, "shortcut": _draw_shortcut, "sam": _draw_sam,
    "scale_channels": _draw_scale_channels, "yolo": _draw_yolo_head, "simple": _draw_simple,
}
_WEIGHTS = {"conv": 6, "maxpool": 2, "local_avgpool": 1, "upsample": 1, "reorg3d": 1, "route": 3, "shortcut": 3,
            "sam": 1, "scale_channels": 1, "yolo": 2, "simple": 2}
_KINDS = tuple(k for k, n in _WEIGHTS.items() for _ in range(n))


def _draw_net(draw) -> tuple[list[tuple[str, str]], Shape]:
    w, h = draw(st.integers(4, 40)), draw(st.integers(4, 40))
    c = draw(st.integers(1, 4))
    opts = [("width", str(w)), ("height", str(h)), ("channels", str(c))]
    extra = draw(st.lists(st.sampled_from((
        ("batch", "64"), ("subdivisions", "16"), ("momentum", "0.9"), ("decay", "0.0005"), ("learning_rate", "0.001"),
        ("burn_in", "1000"), ("max_batches", "500200"), ("angle", "0"), ("saturation", "1.5"), ("hue", ".1"),
        ("mosaic", "1"), ("policy", "steps"))), unique=True, max_size=5))
    opts += extra
    if ("policy", "steps") in extra:
        opts += [("steps", "400000,450000"), ("scales", ".1,.1")]
    return draw(st.permutations(opts)), (c, h, w)


# ---------------------------------------------------------------------------------------------- text layout

@st.composite
def _layout(draw):
    """How the generated text is laid out: the choices never change what the file means."""
    return {
        "eq": draw(st.sampled_from(("=", " = ", "= ", " =", "\t=\t"))),
        "indent": draw(st.sampled_from(("", "", "  ", "\t"))),
        "blank": draw(st.sampled_from(("", "\n", "\n\n"))),
        "newline": draw(st.sampled_from(("\n", "\n", "\r\n"))),
        "aliases": draw(st.booleans()),
        "comments": draw(st.booleans()),
        "inline": draw(st.booleans()),
        "list_space": draw(st.sampled_from((",", ", "))),
        "trailing_newline": draw(st.booleans()),
    }


def render(cfg: GeneratedCfg, layout: dict | None = None) -> str:
    """The cfg text of ``cfg`` in the given layout (the canonical one by default)."""
    lay = layout or {"eq": "=", "indent": "", "blank": "\n", "newline": "\n", "aliases": False,
                     "comments": False, "inline": False, "list_space": ",", "trailing_newline": True}
    lines: list[str] = []

    def block(section: str, options, comment: str | None) -> None:
        if lay["comments"] and comment:
            lines.append(f"# {comment}")
        name = SECTION_ALIASES.get(section, section) if lay["aliases"] else section
        lines.append(f"[{name}]")
        for i, (key, value) in enumerate(options):
            value = value.replace(",", lay["list_space"])
            line = f"{lay['indent']}{key}{lay['eq']}{value}"
            if lay["inline"] and i == 0:
                line += "  # first key"
            lines.append(line)
        if lay["blank"]:
            lines.append(lay["blank"][:-1])

    block("net", cfg.net, "generated by tests/strategies.py")
    for i, layer in enumerate(cfg.layers):
        block(layer.section, layer.options, layer.comment or f"layer {i}")
    text = lay["newline"].join(lines)
    return text + lay["newline"] if lay["trailing_newline"] else text


@st.composite
def generated_cfgs(draw, max_layers: int = 10) -> GeneratedCfg:
    """A valid network (no text yet): ``[net]`` and 1..max_layers layers with their expected shapes."""
    net, input_shape = _draw_net(draw)
    cfg = GeneratedCfg(net, input_shape)
    shapes: list[Shape] = [input_shape]
    target = draw(st.integers(1, max_layers))
    attempts = 0
    while len(cfg.layers) < target and attempts < 4 * max_layers:
        attempts += 1
        kind = draw(st.sampled_from(_KINDS))
        new = _DRAWERS[kind](draw, shapes)
        if new is None or len(cfg.layers) + len(new) > max_layers + 1:
            continue
        for layer in new:
            cfg.layers.append(layer)
            shapes.append(layer.out)
        if new[-1].section == "softmax":
            break  # Darknet gives [softmax] no image size: no image layer may follow it
    if not cfg.layers:
        cfg.layers.append(Layer("convolutional", [("filters", "1"), ("size", "1")], (1, *input_shape[1:])))
    cfg.text = render(cfg)
    return cfg


@st.composite
def valid_cfgs(draw, max_layers: int = 10) -> GeneratedCfg:
    """A valid network whose ``text`` uses a random (meaning-preserving) layout."""
    cfg = draw(generated_cfgs(max_layers))
    cfg.text = render(cfg, draw(_layout()))
    return cfg


# ---------------------------------------------------------------------------------------------- mutations

HUGE_NUMBERS = ("0", "-1", "-2147483648", "2147483647", "4294967296", "1000000000", "99999999999999999999",
                "1e308", "1e400", "-1e400", "inf", "-inf", "nan", "1e-400", "0.0", "-0", "+5", "00", "1.", ".5e",
                "0x10", "1_000", "٣")
RANDOM_KEYS = ("filters", "size", "stride", "layers", "from", "mask", "anchors", "classes", "num", "groups",
               "activation", "batch_normalize", "pad", "padding", "dilation", "width", "height", "channels",
               "inputs", "init", "bias_init", "share_index", "output", "scale_x_y", "steps", "scales", "tree",
               "antialiasing", "stride_x", "stride_y", "maxpool_depth", "out_channels", "reverse", "weights_type",
               "nonsense_key", "Filters", "[", "=", "#")
RANDOM_VALUES = HUGE_NUMBERS + ("leaky", "", ",", "1,,2", "-1,-9999", "normal(std=0.01)", "normal(", "f(a=)",
                                "x=y", "[net]", "1 2 3", "#", ";", "\\", "'\"", "()", "a(b(c))", "1,2,3,4,5,6,7,8,9")

_NUMBER = re.compile(rb"-?\d+(\.\d+)?")


@st.composite
def _mutation(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(("flip", "truncate", "delete_line", "duplicate_line", "swap_lines", "random_key",
                                 "number", "non_utf8", "nul", "bom", "cr_only", "insert_bytes", "header")))
    lines = data.split(b"\n")
    pos = draw(st.integers(0, max(0, len(data) - 1)))
    line_no = draw(st.integers(0, max(0, len(lines) - 1)))
    if kind == "flip" and data:
        bit = draw(st.integers(0, 7))
        return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1:]
    if kind == "truncate":
        return data[:pos]
    if kind == "delete_line":
        return b"\n".join(lines[:line_no] + lines[line_no + 1:])
    if kind == "duplicate_line":
        return b"\n".join(lines[:line_no + 1] + lines[line_no:])
    if kind == "swap_lines":
        other = draw(st.integers(0, max(0, len(lines) - 1)))
        lines[line_no], lines[other] = lines[other], lines[line_no]
        return b"\n".join(lines)
    if kind == "random_key":
        key = draw(st.sampled_from(RANDOM_KEYS))
        value = draw(st.sampled_from(RANDOM_VALUES))
        return b"\n".join(lines[:line_no] + [f"{key}={value}".encode()] + lines[line_no:])
    if kind == "number":
        numbers = list(_NUMBER.finditer(data))
        if numbers:
            m = draw(st.sampled_from(numbers))
            return data[:m.start()] + draw(st.sampled_from(HUGE_NUMBERS)).encode() + data[m.end():]
        return data
    if kind == "non_utf8":
        junk = draw(st.sampled_from((b"\xff", b"\xc3", b"\xe2\x82", b"\x80\x80", b"\xed\xa0\x80")))
        return data[:pos] + junk + data[pos:]
    if kind == "nul":
        return data[:pos] + b"\x00" + data[pos:]
    if kind == "bom":
        return b"\xef\xbb\xbf" + data if draw(st.booleans()) else data[:pos] + b"\xef\xbb\xbf" + data[pos:]
    if kind == "cr_only":
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r")
    if kind == "header":
        name = draw(st.sampled_from((b"[net]", b"[]", b"[", b"]", b"[ conv ]", b"[Net]", b"[yolo", b"[x]y",
                                     b"[route]", b"[shortcut]", b"[upsample]", b"[rnn]", b"[net]#c", b"[[net]]")))
        return b"\n".join(lines[:line_no] + [name] + lines[line_no:])
    junk = draw(st.binary(min_size=1, max_size=8))
    return data[:pos] + junk + data[pos:]


@st.composite
def mutated_cfgs(draw, max_layers: int = 8) -> bytes:
    """Bytes of a valid cfg after 1..4 hostile edits."""
    cfg = draw(valid_cfgs(max_layers))
    data = cfg.text.encode("utf-8")
    for _ in range(draw(st.integers(1, 4))):
        data = draw(_mutation(data))
    return data


def any_bytes() -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, with a bias towards things that look like cfg text."""
    cfg_alphabet = st.sampled_from(list("[]=#;,()-.\n\r\t 0123456789abcdefilmnorstuvwxyz_"))
    return st.one_of(st.binary(max_size=200),
                     st.text(cfg_alphabet, max_size=200).map(lambda s: s.encode()),
                     st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")))


# Small valid cfgs, e.g. to seed the atheris corpus.
SEED_CFGS = (
    "[net]\nwidth=16\nheight=16\nchannels=3\n\n[convolutional]\nfilters=4\nsize=3\npad=1\nstride=2\n"
    "batch_normalize=1\nactivation=leaky\n\n[maxpool]\nsize=2\nstride=2\n\n[route]\nlayers=-1,-2\n",
    "[net]\nwidth=8\nheight=8\nchannels=1\n\n[conv]\nfilters=8\nsize=1\nactivation=mish\n\n[shortcut]\nfrom=-1\n"
    "activation=linear\n\n[upsample]\nstride=2\n\n[avgpool]\n\n[connected]\noutput=4\n\n[softmax]\n",
    "[net]\nwidth=16\nheight=16\nchannels=3\n\n[convolutional]\nfilters=18\nsize=1\nactivation=linear\n\n"
    "[yolo]\nmask=0,1,2\nanchors=10,13, 16,30, 33,23\nclasses=1\nnum=3\nscale_x_y=1.05\n",
    "[net]\nwidth=8\nheight=8\nchannels=4\ninit=normal(std=0.01)\n\n[conv]\nfilters=4\ngroups=2\nsize=3\npad=1\n"
    "dilation=2\n\n[reorg3d]\nstride=2\n\n[local_avgpool]\nsize=2\nstride=2\n\n[sam]\nfrom=-1\n",
)
