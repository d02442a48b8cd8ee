"""``netspec train FILE.cfg --data DATA --out DIR``: train a cfg as Darknet does, with checkpoints and exact resume.

``DIR`` becomes Darknet's backup folder (``<cfg>_last.weights`` every 100 iterations, ``<cfg>_<N>.weights``,
``<cfg>_final.weights``, ``<cfg>_best.weights`` with ``--map``) plus netspec's checkpoints, ``log.jsonl`` and
``chart.png``.  Runs under ``torchrun --nproc_per_node=N`` too (DDP: gloo on CPU, NCCL on CUDA; rank 0 writes)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_rule_argument, cfg_source, positive_int


def _nonnegative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cfg", help="the .cfg ([net] batch, subdivisions, max_batches, policy...)")
    parser.add_argument("--data", required=True,
                        help="detector cfgs: a Darknet obj.data file; classifier cfgs: an .npz with x (N,C,H,W) and "
                        "y (N,) [x_test, y_test], or 'digits' (scikit-learn's 8x8 digits; pip install 'netspec[demo]')")
    parser.add_argument("--out", required=True, metavar="DIR", help="backup folder: .weights, checkpoints, log, chart")
    parser.add_argument("--weights", metavar="W", help="initial parameters: Darknet .weights (a full file or a "
                        "partial backbone such as yolov4-tiny.conv.29), a netspec checkpoint or .safetensors")
    parser.add_argument("--upto", type=positive_int, metavar="N", help="load only layers 0..N-1 of --weights")
    parser.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in DIR")
    parser.add_argument("--checkpoint-every", "--save-every", dest="save_every", type=_nonnegative, default=100,
                        metavar="N", help="checkpoint every N iterations (and always at the end); 0: only at the end")
    parser.add_argument("--keep-last", type=positive_int, default=3, metavar="K", help="keep the newest K checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="initialization, data order, augmentation and dropout seed")
    parser.add_argument("--map", action="store_true", help="evaluate mAP@0.5 on the .data file's valid= list during "
                        "training (every --map-every iterations; Darknet's interval by default), keep _best.weights")
    parser.add_argument("--map-every", type=positive_int, metavar="N", help="with --map: evaluate every N iterations")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun: one GPU per process)")
    parser.add_argument("--amp", nargs="?", const="auto", default=False, choices=["auto", "bf16", "fp16"],
                        help="mixed precision: autocast to bf16 (fp16 with loss scaling on GPUs without bf16); "
                        "bf16 on a CPU without native bf16 is much slower than fp32")
    parser.add_argument("--workers", type=_nonnegative, default=2, metavar="N",
                        help="DataLoader processes decoding and augmenting images (detectors; 0: in this process)")
    add_rule_argument(parser)
    over = parser.add_argument_group("[net] overrides")
    over.add_argument("--max-batches", type=positive_int, metavar="N", help="iterations to train (max_batches=)")
    over.add_argument("--batch", type=positive_int, metavar="N", help="images per iteration (batch=)")
    over.add_argument("--subdivisions", type=positive_int, metavar="N", help="mini-batches per iteration")
    over.add_argument("--learning-rate", type=float, metavar="LR", help="base learning rate (learning_rate=)")
    over.add_argument("--burn-in", type=_nonnegative, metavar="N", help="warm-up iterations (burn_in=)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from ..train import Trainer

    if args.upto is not None and args.weights is None:
        print("error: --upto needs --weights", file=sys.stderr)
        return 2
    if args.map_every is not None and not args.map:
        print("error: --map-every needs --map", file=sys.stderr)
        return 2
    overrides = {"max_batches": args.max_batches, "batch": args.batch, "subdivisions": args.subdivisions,
                 "learning_rate": args.learning_rate, "burn_in": args.burn_in}
    try:
        trainer = Trainer(cfg_source(args.cfg), args.data, args.out, resume=args.resume,
                          save_every=args.save_every, seed=args.seed, keep_last=args.keep_last,
                          progress=not args.quiet, weights=args.weights, upto=args.upto, overrides=overrides,
                          device=args.device, amp=args.amp, eval_every=(args.map_every if args.map else 0),
                          workers=args.workers, rules=args.rule)
        result = trainer.run()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        _end_process_group()
    if args.json and trainer.rank == 0:
        print(json.dumps(result))
    return 0


def _end_process_group() -> None:
    """Tear down torchrun's process group before the interpreter exits: a gloo group left to the exit-time
    destructors can abort a rank ("terminate called without an active exception") after a successful run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
