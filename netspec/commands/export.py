"""``netspec export FILE.cfg --onnx out.onnx``: write the network as an ONNX model."""

from __future__ import annotations

import argparse
import sys

from ..builder import build
from ..cli import EXIT_OUTPUT
from .common import add_cfg_arguments, add_weights_arguments, cfg_source, limits_from, print_warnings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_arguments(parser)
    add_weights_arguments(parser, "parameters to export (default: the network's initial parameters)")
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the graph (default 1)")
    parser.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension symbolic")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the conv/connected weights")
    parser.add_argument("--decode", action="store_true",
                        help="append box decoding: outputs 'boxes' (x1,y1,x2,y2 input pixels) and 'scores'")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")


def run(args: argparse.Namespace) -> int:
    from ..onnx_export import export_onnx
    from ..params_io import load_parameters

    if args.upto is not None and not args.weights:
        print("netspec: --upto N needs --weights FILE (the layers it loads from the file)", file=sys.stderr)
        return 2
    net = build(cfg_source(args.cfg), args.width, args.height, strict=not args.lenient, limits=limits_from(args))
    print_warnings(net.warnings)
    if args.weights:
        report = load_parameters(net, args.weights, args.upto, strict=not args.lenient,
                                 allow_nonfinite=args.allow_nonfinite)
        print_warnings(f"warning: {w}" for w in report.warnings)
        print(report, file=sys.stderr)
    else:
        print("warning: no --weights given: exporting the network's initial parameters", file=sys.stderr)
    try:
        info = export_onnx(net, args.onnx, batch=args.batch, dynamic_batch=args.dynamic_batch, fuse=args.fuse,
                           decode=args.decode, opset=args.opset)
    except OSError as exc:
        print(f"{args.onnx}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_OUTPUT
    batch = "batch" if info.dynamic_batch else str(info.input_shape[0])
    shape = "x".join([batch, *map(str, info.input_shape[1:])])
    print(f"wrote {info.path}: input {info.input_name} {shape}, outputs {', '.join(info.output_names)} "
          f"(opset {info.opset})")
    return 0
