"""``netspec build FILE.cfg``: validate, build, and print Darknet's layer table (or ``--json``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ..builder import build
from .common import add_cfg_arguments, add_weights_arguments, cfg_source, limits_from, print_warnings

if TYPE_CHECKING:  # pragma: no cover
    from ..network import Network


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print Network.summary() as JSON")
    add_weights_arguments(parser, "parameters to load")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into the conv weights (inference mode)")


def run(args: argparse.Namespace) -> int:
    if args.upto is not None and not args.weights:
        print("netspec: --upto N needs --weights FILE (the layers it loads from the file)", file=sys.stderr)
        return 2
    source = cfg_source(args.cfg)
    if not args.weights:
        import torch

        # The table needs shapes only: every module is constructed (and checked) on the meta device,
        # without memory or random numbers.  netspec.build() in Python allocates and initializes.
        with torch.device("meta"):
            net = build(source, args.width, args.height, strict=not args.lenient, limits=limits_from(args),
                        seed=None, fuse=args.fuse)
        print_warnings(net.warnings)
    else:
        from ..builder import build_spec
        from ..materialize import assemble_uninitialized, load_initializing_rest

        # No initialization for what the file provides: allocated once, filled by the file.
        net = assemble_uninitialized(build_spec(source, args.width, args.height, strict=not args.lenient,
                                                limits=limits_from(args)))
        print_warnings(net.warnings)
        report = load_initializing_rest(net, args.weights, upto=args.upto, strict=not args.lenient,
                                        allow_nonfinite=args.allow_nonfinite)
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(str(report), file=sys.stderr)
        if args.fuse:
            net.fuse()
    if args.json:
        print(json.dumps(net.summary(), indent=1))
    else:
        print(format_table(net))
    return 0


def format_table(net: Network) -> str:
    """Darknet-like table: index, type, filters, size/stride, input -> output, params, BFLOPs."""
    def shape(s):
        c, h, w = s
        return f"{w:>4} x{h:>4} x{c:>5}"

    rows = [f"{'layer':>5}  {'type':<15}{'filters':>10}  {'size/strd':<11}{'input':>19} -> {'output':<19}"
            f"{'params':>12}{'BFLOPs':>10}"]
    for s in net.spec.layers:
        filters, size = s.section.describe(s)
        rows.append(f"{s.index:>5}  {s.type:<15}{filters:>10}  {size:<11}{shape(s.in_shape):>19} -> "
                    f"{shape(s.out_shape):<19}{s.info.params:>12,}{s.info.bflops:>10.3f}")
    spec = net.spec
    rows.append(f"total: {len(spec.layers)} layers, {spec.total_params:,} parameters, {spec.total_weights_floats:,} "
                f".weights floats, {spec.total_bflops:.3f} BFLOPs")
    return "\n".join(rows)
