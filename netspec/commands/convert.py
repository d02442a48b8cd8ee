"""``netspec convert``: move a network's parameters between file formats.

Darknet ``.weights`` ↔ netspec checkpoint (``.ckpt``) ↔ ``.safetensors``, and a PyTorch port's checkpoint
(``--from erik|ultralytics|tianxiaomo``) into any of them; the formats live in :mod:`netspec.params_io`.
"""

from __future__ import annotations

import argparse
import sys

from .common import positive_int


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
    parser.add_argument("--upto", type=positive_int, metavar="N",
                        help="layers 0..N-1 only: read only those from the input, and write only those to a "
                             ".weights output (Darknet's 'partial', e.g. a yolov4.conv.137 backbone)")


def run(args: argparse.Namespace) -> int:
    from ..builder import build
    from ..cli import EXIT_OUTPUT, EXIT_USAGE
    from ..params_io import NETSPEC, file_format, load_parameters, save_parameters
    from .common import cfg_source, print_warnings

    if args.cfg is None:
        if args.port or file_format(args.input, reading=True) != NETSPEC:
            print("netspec convert: --cfg is required unless the input is a netspec .ckpt/.safetensors file",
                  file=sys.stderr)
            return EXIT_USAGE
        from ..checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.input)
        options = dict(ckpt.build_args)
        options.update({k: v for k, v in (("width", args.width), ("height", args.height)) if v})
        options.setdefault("strict", not args.lenient)
        net = build(ckpt.cfg_text, **options)
        report = ckpt.load_into(net, strict=True, upto=args.upto)
        print(f"loaded {args.input}: {len(report.loaded)} tensors into the network built from the cfg it carries",
              file=sys.stderr)
    else:
        net = build(cfg_source(args.cfg), args.width, args.height, strict=not args.lenient)
        print_warnings(net.warnings)
        if args.port:
            from ..ports import load_port

            print(load_port(net, args.input, args.port, strict=not args.partial), file=sys.stderr)
        else:
            report = load_parameters(net, args.input, args.upto)  # exact: a conversion must not guess
            print_warnings(f"warning: {w}" for w in report.warnings)
            print(report, file=sys.stderr)
    try:
        # a netspec output holds the whole network: layers past --upto keep their initial values
        upto = args.upto if file_format(args.output, reading=False) != NETSPEC else None
        print(save_parameters(net, args.output, upto))
    except OSError as exc:
        print(f"{args.output}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_OUTPUT
    return 0
