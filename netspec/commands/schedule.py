"""``netspec schedule FILE.cfg``: the learning rate of every optimizer step (CSV), or a plot with ``--plot``."""

from __future__ import annotations

import argparse
import io
import sys

from ..builder import build_spec
from .common import add_cfg_arguments, cfg_source, limits_from, print_warnings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_arguments(parser)
    parser.add_argument("--steps", type=int, help="optimizer steps to show (default: [net] max_batches)")
    parser.add_argument("--every", type=int, help="print every N-th step (default: about 100 rows)")
    parser.add_argument("--plot", metavar="PNG", help="draw the curve to this image (needs matplotlib: "
                        "pip install 'netspec[plot]')")
    parser.add_argument("--seed", type=int, default=0, help="seed of policy=random")


def run(args: argparse.Namespace) -> int:
    from ..schedule import lr_curve

    spec = build_spec(cfg_source(args.cfg), args.width, args.height, strict=not args.lenient,
                      limits=limits_from(args))
    print_warnings(spec.warnings)
    if args.steps is None and spec.net.max_batches <= 0:
        print("error: [net] max_batches is 0; give --steps N", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            # a usage error, before any work: the plot asked for cannot be made here
            print("error: --plot needs matplotlib: pip install 'netspec[plot]'", file=sys.stderr)
            return 2
        return _plot(plt, lr_curve(spec, args.steps, args.seed), spec, args.plot)
    curve = lr_curve(spec, args.steps, args.seed)
    every = args.every or max(1, len(curve) // 100)
    print("step,lr")
    for k, rate in curve:
        if k == 1 or k % every == 0 or k == len(curve):
            print(f"{k},{rate:.9g}")
    return 0


def _plot(plt, curve, spec, path: str) -> int:
    from ..atomic import write_bytes

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([k for k, _ in curve], [r for _, r in curve])
    ax.set_xlabel("optimizer step (Darknet batch_num)")
    ax.set_ylabel("learning rate")
    ax.set_title(f"policy={spec.net.policy} burn_in={spec.net.burn_in}")
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    try:
        write_bytes(path, buf.getvalue())
    except OSError as exc:
        print(f"error: cannot write {path}: {exc}", file=sys.stderr)
        return 3
    print(f"wrote {path} ({len(curve)} steps)", file=sys.stderr)
    return 0
