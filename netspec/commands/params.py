"""``netspec params FILE.cfg``: every parameter with its final learning rate and weight decay, and why."""

from __future__ import annotations

import argparse
import json

from ..builder import build
from .common import add_cfg_arguments, add_rule_argument, cfg_source, limits_from, print_warnings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_cfg_arguments(parser)
    add_rule_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per parameter")


def run(args: argparse.Namespace) -> int:
    from ..optim import describe_parameters

    net = build(cfg_source(args.cfg), args.width, args.height, strict=not args.lenient, limits=limits_from(args),
                seed=None)
    print_warnings(net.warnings)
    base_lr, base_decay = net.net.learning_rate, net.net.decay
    rows = []
    for info in describe_parameters(net, args.rule):
        status = "frozen" if info.frozen else (f"from step {info.update_from}" if info.update_from else "trained")
        rows.append({"name": info.name, "shape": list(info.param.shape), "block": info.block,
                     "section": info.section, "role": info.role, "lr": 0.0 if info.frozen else base_lr * info.lr_mult,
                     "decay": 0.0 if info.frozen else info.weight_decay(base_decay), "lr_mult": info.lr_mult,
                     "decay_mult": info.decay_mult, "status": status, "set_by": info.sources})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    header = ("parameter", "shape", "lr", "decay", "status", "set by")
    table = [(r["name"], "x".join(map(str, r["shape"])), f"{r['lr']:.6g}", f"{r['decay']:.6g}", r["status"],
              "; ".join(r["set_by"]) or "defaults") for r in rows]
    widths = [max(len(header[i]), *(len(t[i]) for t in table)) if table else len(header[i]) for i in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[5])
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)) + "  " + t[5])
    print(f"base: learning_rate={base_lr:g} decay={base_decay:g} "
          f"optimizer={'adam' if net.net.adam else 'sgd'} policy={net.net.policy}")
    return 0
