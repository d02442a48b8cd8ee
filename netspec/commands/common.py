"""Arguments and output helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..specs import DEFAULT_MAX_ACTIVATION_BYTES, DEFAULT_MAX_PARAMS, Limits

if TYPE_CHECKING:  # pragma: no cover
    from ..document import Document


def positive_int(text: str) -> int:
    """argparse type for sizes: a bad value is a usage error (exit 2), not a confusing cfg error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_cfg_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cfg", help="the .cfg file ('-' reads standard input)")
    parser.add_argument("--width", type=positive_int, help="input width (default: [net] width)")
    parser.add_argument("--height", type=positive_int, help="input height (default: [net] height)")
    parser.add_argument("--lenient", action="store_true",
                        help="accept Darknet-tolerated mistakes (unknown/duplicate keys, stray commas) as warnings")
    parser.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS, help="refuse larger networks")
    parser.add_argument("--max-activation-bytes", type=int, default=DEFAULT_MAX_ACTIVATION_BYTES,
                        help="refuse networks whose layer outputs need more memory at batch 1")


def add_weights_arguments(parser: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    """``--weights``, ``--upto`` and ``--allow-nonfinite``, read by :func:`netspec.params_io.load_parameters`."""
    parser.add_argument("--weights", metavar="FILE", required=required,
                        help=f"{what}: Darknet .weights (a backbone such as yolov4.conv.137 loads up to where it "
                             "ends; with --lenient, short or long files are accepted like Darknet does), a netspec "
                             "checkpoint (.ckpt, or a run directory: its newest intact one) or .safetensors export")
    parser.add_argument("--upto", type=positive_int, metavar="N",
                        help="load layers 0..N-1 from --weights only; the others keep their initial weights "
                             "(e.g. weights trained for other classes: the layers before the heads)")
    parser.add_argument("--allow-nonfinite", action="store_true", help="accept NaN/Inf values in --weights")


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(max_params=args.max_params, max_activation_bytes=args.max_activation_bytes)


def cfg_source(path: str) -> Path | Document:
    """A path, or for '-' the text of standard input."""
    if path == "-":
        data = sys.stdin.buffer.read()
        from ..parser import decode_cfg_bytes, parse_text

        # parsed here so that every problem is reported against '<stdin>'
        return parse_text(decode_cfg_bytes(data, "<stdin>"), "<stdin>")
    return Path(path)


def print_warnings(warnings: Iterable[object], stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    for w in warnings:
        print(str(w), file=stream)


def fraction(text: str) -> float:
    """argparse type for thresholds in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1], got {value}")
    return value


def torch_device(name: str):
    """``--device``: a torch device that exists here, or a NetspecError naming the problem."""
    import torch

    from ..errors import NetspecError

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise NetspecError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NetspecError(f"--device {name}: no CUDA device is available")
    return device


def load_detector(args: argparse.Namespace, command: str):
    """The network of ``args.cfg`` with ``args.weights`` loaded (``add_cfg_arguments`` + ``add_weights_arguments``);
    a cfg without detection heads is an error naming ``command``."""
    from ..builder import build_spec
    from ..errors import NetspecError
    from ..materialize import assemble_uninitialized, load_initializing_rest

    spec = build_spec(cfg_source(args.cfg), args.width, args.height, strict=not args.lenient,
                      limits=limits_from(args))
    net = assemble_uninitialized(spec)
    print_warnings(net.warnings)
    report = load_initializing_rest(net, args.weights, upto=args.upto, strict=not args.lenient,
                                    allow_nonfinite=args.allow_nonfinite)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.last_layer < len(net.layers) - 1:
        print(f"warning: {args.weights} filled layers 0..{report.last_layer} only: the layers after it are random, "
              "so are their detections", file=sys.stderr)
    if not net.is_detector:
        raise NetspecError(f"{args.cfg}: not a detector (no [yolo], [Gaussian_yolo], [region] or [detection] "
                           f"layer); netspec {command} needs one")
    return net


def add_rule_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rule", action="append", default=[], metavar="SEL:SET",
                        help="adjust parameters, e.g. 0-74:lr_mult=0.1, section=connected:decay_mult=0, "
                             "role=bias:lr_mult=2, glob=layers.1*.bn.*:freeze (repeatable; applied in order)")
