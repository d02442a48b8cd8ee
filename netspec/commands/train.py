"""``netspec train FILE.cfg --data DATA --out DIR``: train a classifier cfg with checkpoints and exact resume.

Runs under ``torchrun --nproc_per_node=N`` too (DistributedDataParallel, gloo on CPU; rank 0 writes)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import cfg_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cfg", help="the classifier .cfg ([net] batch, subdivisions, max_batches, policy...)")
    parser.add_argument("--data", required=True, help="an .npz with x (N,C,H,W) and y (N,) [x_test, y_test], or "
                        "'digits' (scikit-learn's bundled 8x8 digits; pip install 'netspec[demo]')")
    parser.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory")
    parser.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in DIR")
    parser.add_argument("--save-every", type=int, default=100, metavar="N", help="checkpoint every N optimizer "
                        "steps (and always at the end); 0: only at the end")
    parser.add_argument("--keep-last", type=int, default=3, metavar="K", help="keep the newest K checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="initialization, data order and dropout seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from ..train import Trainer

    if args.save_every < 0 or args.keep_last < 1:
        print("error: --save-every must be >= 0 and --keep-last >= 1", file=sys.stderr)
        return 2
    try:
        trainer = Trainer(cfg_source(args.cfg), args.data, args.out, resume=args.resume,
                          save_every=args.save_every, seed=args.seed, keep_last=args.keep_last,
                          progress=not args.quiet)
        result = trainer.run()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.json and trainer.rank == 0:
        print(json.dumps(result))
    return 0
