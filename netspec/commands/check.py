"""``netspec check FILE...``: validate cfgs (syntax, keys, references, shapes) without building modules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..builder import build_spec
from ..errors import CfgError
from ..specs import DEFAULT_MAX_ACTIVATION_BYTES, DEFAULT_MAX_PARAMS, Limits
from .common import cfg_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cfgs", nargs="+", metavar="FILE", help="cfg files to check")
    parser.add_argument("--lenient", action="store_true", help="Darknet-tolerated mistakes are warnings")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing for valid files")


def run(args: argparse.Namespace) -> int:
    failed = 0
    limits = Limits(DEFAULT_MAX_PARAMS, DEFAULT_MAX_ACTIVATION_BYTES)
    for name in args.cfgs:
        try:
            source = cfg_source(name) if name == "-" else Path(name)  # '-': standard input
            spec = build_spec(source, strict=not args.lenient, limits=limits)
        except CfgError as exc:
            failed += 1
            print(str(exc), file=sys.stderr)
            continue
        for w in spec.warnings:
            print(str(w), file=sys.stderr)
        if not args.quiet:
            n = len(spec.layers)
            print(f"{name}: ok ({n} layer{'s' if n != 1 else ''})")
    return 1 if failed else 0
