"""Arguments and output helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import sys

from ..specs import DEFAULT_MAX_ACTIVATION_BYTES, DEFAULT_MAX_PARAMS, Limits


def add_cfg_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cfg", help="the .cfg file ('-' reads standard input)")
    parser.add_argument("--width", type=int, help="input width (default: [net] width)")
    parser.add_argument("--height", type=int, help="input height (default: [net] height)")
    parser.add_argument("--lenient", action="store_true",
                        help="accept Darknet-tolerated mistakes (unknown/duplicate keys, stray commas) as warnings")
    parser.add_argument("--max-params", type=int, default=DEFAULT_MAX_PARAMS, help="refuse larger networks")
    parser.add_argument("--max-activation-bytes", type=int, default=DEFAULT_MAX_ACTIVATION_BYTES,
                        help="refuse networks whose layer outputs need more memory at batch 1")


def limits_from(args: argparse.Namespace) -> Limits:
    return Limits(max_params=args.max_params, max_activation_bytes=args.max_activation_bytes)


def cfg_source(path: str):
    """A path, or for '-' the text of standard input."""
    if path == "-":
        data = sys.stdin.buffer.read()
        from ..parser import _decode

        return _decode(data, "<stdin>")
    from pathlib import Path

    return Path(path)


def print_warnings(warnings, stream=None) -> None:
    stream = stream or sys.stderr
    for w in warnings:
        print(str(w), file=stream)
