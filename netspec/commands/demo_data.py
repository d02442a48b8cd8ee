"""``netspec demo-data OUT_DIR``: write the offline shapes detection dataset (netspec/demo_shapes.py)."""

from __future__ import annotations

import argparse
import sys
import time

from .common import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT_DIR", help="folder to write images/, labels/, train.txt, obj.data into")
    parser.add_argument("--train", type=positive_int, default=400, help="training images (default 400)")
    parser.add_argument("--valid", type=positive_int, default=100, help="validation images (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same dataset (default 0)")
    parser.add_argument("--size", type=positive_int, nargs=2, default=(160, 160), metavar=("W", "H"),
                        help="image width and height (default 160 160; at least 64)")


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_OUTPUT, EXIT_USAGE
    from ..demo_shapes import make_shapes_dataset

    if min(args.size) < 64:
        print(f"--size: images must be at least 64x64, got {args.size[0]}x{args.size[1]}", file=sys.stderr)
        return EXIT_USAGE
    start = time.monotonic()
    try:
        ds = make_shapes_dataset(args.out, args.train, args.valid, args.seed, *args.size)
    except OSError as exc:
        print(f"{args.out}: cannot write the dataset: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_OUTPUT
    print(f"{ds.root}: {len(ds.train)} training and {len(ds.valid)} validation images of "
          f"{', '.join(ds.names)} in {time.monotonic() - start:.1f} s; use --data {ds.data}")
    return 0
