"""``netspec convert``: move a network's parameters between file formats.

Darknet ``.weights`` ↔ netspec checkpoint (``.ckpt``) ↔ ``.safetensors``, and a PyTorch port's checkpoint
(``--from erik|ultralytics|tianxiaomo``) into any of them.  The Darknet header (version and ``seen``)
travels in the netspec files' metadata, so ``.weights`` → ``.safetensors`` → ``.weights`` is byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..errors import NetspecError

DARKNET, NETSPEC, TORCH = "darknet", "netspec", "torch"
_HEADER_KEY = "darknet_header"  # in a checkpoint's state, and (prefixed "netspec.") in .safetensors metadata


def file_format(path: str | os.PathLike, *, reading: bool) -> str:
    """A parameter file's format: by its first bytes when reading, by its suffix when writing.

    ``netspec``: a netspec checkpoint or ``.safetensors`` export (both safetensors files); ``torch``: a
    ``torch.save`` file (a PyTorch port's checkpoint); ``darknet``: anything else."""
    name = os.fspath(path)
    if reading:
        try:
            with open(name, "rb") as fh:
                head = fh.read(9)
        except OSError as exc:
            raise NetspecError(f"{name}: cannot read: {exc.strerror or exc}") from exc
        if head[:2] == b"PK" or head[:1] == b"\x80":  # torch.save's zip container, or a legacy pickle
            return TORCH
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
            return NETSPEC
        return DARKNET
    return NETSPEC if name.lower().endswith((".safetensors", ".ckpt")) else DARKNET


def _header_dict(net) -> dict | None:
    header = getattr(net, "darknet_header", None)
    if header is None:
        return None
    return {"major": header.major, "minor": header.minor, "revision": header.revision, "seen": header.seen}


def _set_header(net, values: dict | None) -> None:
    if values:
        from ..weights import DarknetHeader

        net.darknet_header = DarknetHeader(int(values["major"]), int(values["minor"]), int(values["revision"]),
                                           int(values["seen"]))


def read_netspec_file(path: str | os.PathLike):
    """A netspec checkpoint or ``.safetensors`` export as a :class:`~netspec.checkpoint.Checkpoint`, with the
    Darknet header it carries (or ``None``)."""
    from ..checkpoint import Checkpoint
    from ..safetensors_io import load_safetensors

    tensors, metadata = load_safetensors(path)
    ckpt = Checkpoint(Path(path), tensors, metadata, [])
    header = ckpt.state.get(_HEADER_KEY)
    if header is None and f"netspec.{_HEADER_KEY}" in metadata:
        header = json.loads(metadata[f"netspec.{_HEADER_KEY}"])
    return ckpt, header


def load_parameters(net, path: str | os.PathLike) -> str:
    """Load a Darknet ``.weights``, netspec checkpoint or ``.safetensors`` file into ``net``; returns a report."""
    fmt = file_format(path, reading=True)
    if fmt == DARKNET:
        from ..weights import load_darknet_weights

        return str(load_darknet_weights(net, path))
    if fmt == TORCH:
        raise NetspecError(f"{os.fspath(path)}: a torch.save file, not a netspec or Darknet file; if a PyTorch port "
                           "wrote it, convert it with: netspec convert FILE --cfg CFG --from erik|ultralytics|"
                           "tianxiaomo -o OUT")
    ckpt, header = read_netspec_file(path)
    report = ckpt.load_into(net, strict=True)
    _set_header(net, header)
    return f"loaded {os.fspath(path)}: {len(report.loaded)} tensors"


def save_parameters(net, path: str | os.PathLike) -> str:
    """Write ``net``'s parameters in the format ``path``'s suffix names; returns a one-line report.

    ``.safetensors``: the weights alone; ``.ckpt``: a netspec checkpoint (no optimizer state); anything
    else: Darknet ``.weights``."""
    name = os.fspath(path)
    header = _header_dict(net)
    if file_format(path, reading=False) == DARKNET:
        from ..weights import save_darknet_weights

        size = save_darknet_weights(net, path)
        return f"wrote {name}: Darknet .weights, {size:,} bytes"
    if name.lower().endswith(".ckpt"):
        from ..checkpoint import save_checkpoint

        extra = {_HEADER_KEY: header} if header else {}
        save_checkpoint(path, net, rng=False, **extra)
        return f"wrote {name}: netspec checkpoint"
    from ..checkpoint import WEIGHTS_FORMAT, _metadata
    from ..safetensors_io import save_safetensors

    metadata = _metadata(net, WEIGHTS_FORMAT)
    if header:
        metadata[f"netspec.{_HEADER_KEY}"] = json.dumps(header)
    save_safetensors(path, dict(net.state_dict()), metadata)
    return f"wrote {name}: .safetensors, {len(net.state_dict())} tensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="parameter file: Darknet .weights, netspec .ckpt or .safetensors, or a PyTorch "
                                      "port's checkpoint (with --from)")
    parser.add_argument("--cfg", help="the .cfg the parameters belong to (optional for netspec files, which "
                                      "carry their cfg)")
    parser.add_argument("-o", "--output", required=True,
                        help="file to write; its suffix picks the format: .safetensors, .ckpt (netspec checkpoint), "
                             "anything else Darknet .weights")
    parser.add_argument("--from", dest="port", choices=("erik", "ultralytics", "tianxiaomo"),
                        help="the input is a state_dict saved by this PyTorch port")
    parser.add_argument("--partial", action="store_true",
                        help="with --from: load the tensors that match and report the rest instead of failing")
    parser.add_argument("--width", type=int, help="input width (default: [net] width)")
    parser.add_argument("--height", type=int, help="input height (default: [net] height)")
    parser.add_argument("--lenient", action="store_true", help="accept Darknet-tolerated cfg mistakes")


def run(args: argparse.Namespace) -> int:
    from ..builder import build
    from ..cli import EXIT_OUTPUT, EXIT_USAGE
    from .common import cfg_source, print_warnings

    if args.cfg is None:
        if args.port or file_format(args.input, reading=True) != NETSPEC:
            print("netspec convert: --cfg is required unless the input is a netspec .ckpt/.safetensors file",
                  file=sys.stderr)
            return EXIT_USAGE
        ckpt, header = read_netspec_file(args.input)
        options = dict(ckpt.build_args)
        options.update({k: v for k, v in (("width", args.width), ("height", args.height)) if v})
        options.setdefault("strict", not args.lenient)
        net = build(ckpt.cfg_text, **options)
        report = ckpt.load_into(net, strict=True)
        _set_header(net, header)
        print(f"loaded {args.input}: {len(report.loaded)} tensors into the network built from the cfg it carries",
              file=sys.stderr)
    else:
        net = build(cfg_source(args.cfg), args.width, args.height, strict=not args.lenient)
        print_warnings(net.warnings)
        if args.port:
            from ..ports import load_port

            print(load_port(net, args.input, args.port, strict=not args.partial), file=sys.stderr)
        else:
            print(load_parameters(net, args.input), file=sys.stderr)
    try:
        print(save_parameters(net, args.output))
    except OSError as exc:
        print(f"{args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_OUTPUT
    return 0
