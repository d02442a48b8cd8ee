"""``netspec convert``: move a network's parameters between file formats.

Darknet ``.weights`` ↔ netspec checkpoint ↔ ``.safetensors``, and a PyTorch port's checkpoint
(``--from erik|ultralytics|tianxiaomo``) into any of them.  The cfg says what the parameters are.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import NetspecError

DARKNET, SAFETENSORS, CHECKPOINT = "darknet", "safetensors", "checkpoint"


def file_format(path: str | os.PathLike, *, reading: bool) -> str:
    """The format of a parameter file: by its first bytes when reading, by its suffix when writing."""
    name = os.fspath(path)
    if reading:
        try:
            with open(name, "rb") as fh:
                head = fh.read(9)
        except OSError as exc:
            raise NetspecError(f"{name}: cannot read: {exc.strerror or exc}") from exc
        if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save's zip container, or a legacy pickle
            return CHECKPOINT
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
            return SAFETENSORS
        return DARKNET
    lower = name.lower()
    if lower.endswith(".safetensors"):
        return SAFETENSORS
    if lower.endswith((".ckpt", ".pt", ".pth")):
        return CHECKPOINT
    return DARKNET


def load_parameters(net, path: str | os.PathLike) -> str:
    """Load a parameter file of any supported format into ``net``; returns a one-line report."""
    fmt = file_format(path, reading=True)
    if fmt == DARKNET:
        from ..weights import load_darknet_weights

        return str(load_darknet_weights(net, path))
    raise NetspecError(f"{os.fspath(path)}: reading {fmt} files is not available in this version of netspec")


def save_parameters(net, path: str | os.PathLike) -> str:
    """Write ``net``'s parameters in the format ``path``'s suffix names; returns a one-line report."""
    fmt = file_format(path, reading=False)
    if fmt == DARKNET:
        from ..weights import save_darknet_weights

        size = save_darknet_weights(net, path)
        return f"wrote {os.fspath(path)}: Darknet .weights, {size:,} bytes"
    raise NetspecError(f"{os.fspath(path)}: writing {fmt} files is not available in this version of netspec")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="parameter file: Darknet .weights, netspec checkpoint, .safetensors, or a "
                                      "PyTorch port's checkpoint with --from")
    parser.add_argument("--cfg", required=True, help="the .cfg the parameters belong to")
    parser.add_argument("-o", "--output", required=True,
                        help="file to write; the suffix picks the format: .weights (or anything else: Darknet), "
                             ".safetensors, .ckpt/.pt/.pth (netspec checkpoint)")
    parser.add_argument("--from", dest="port", choices=("erik", "ultralytics", "tianxiaomo"),
                        help="the input is a state_dict saved by this PyTorch port")
    parser.add_argument("--width", type=int, help="input width (default: [net] width)")
    parser.add_argument("--height", type=int, help="input height (default: [net] height)")
    parser.add_argument("--lenient", action="store_true", help="accept Darknet-tolerated cfg mistakes")


def run(args: argparse.Namespace) -> int:
    from ..builder import build
    from ..cli import EXIT_OUTPUT
    from .common import cfg_source, print_warnings

    net = build(cfg_source(args.cfg), args.width, args.height, strict=not args.lenient)
    print_warnings(net.warnings)
    if args.port:
        from ..ports import load_port

        print(load_port(net, args.input, args.port), file=sys.stderr)
    else:
        print(load_parameters(net, args.input), file=sys.stderr)
    try:
        print(save_parameters(net, args.output))
    except OSError as exc:
        print(f"{args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_OUTPUT
    return 0
