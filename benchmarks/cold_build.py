"""Cold build time: netspec's build (meta-device construction, one initialization) against building the
same modules with PyTorch's default initialization, and ``.weights`` loading without any initialization.

In one process, medians of ``--repeat`` runs each, interleaved:

* ``default init``: ``netspec.build(cfg, seed=None)`` (modules constructed on the CPU, PyTorch's own init);
* ``netspec build``: ``netspec.build(cfg)`` (constructed on ``meta``, allocated once, netspec's init once);
* ``init twice``: default construction then ``init_weights`` (what a build without the meta device does);
* ``meta only``: what ``python -m netspec build cfg`` without ``--weights`` does (the table needs no values);
* ``--weights``: default init + load, against an uninitialized network + load (``build --weights``).

    python benchmarks/cold_build.py [--cfg ../shared/darknet-cfgs/yolov4.cfg] [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import netspec
from netspec.init import init_weights
from netspec.materialize import assemble_uninitialized, load_initializing_rest
from netspec.network import assemble
from netspec.weights import load_darknet_weights, save_darknet_weights

REPO = Path(__file__).resolve().parent.parent


def timed(fns: dict, repeat: int) -> dict:
    times: dict = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            gc.collect()
            t = time.perf_counter()
            result = fn()
            times[k].append(time.perf_counter() - t)
            del result
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_cfg = REPO.parent / "shared" / "darknet-cfgs" / "yolov4.cfg"
    parser.add_argument("--cfg", default=str(default_cfg if default_cfg.exists() else REPO / "cfgs" / "yolov3.cfg"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = args.cfg
    strict = False  # official cfgs have Darknet-tolerated duplicate keys
    netspec.build_spec(cfg, strict=strict)  # the parser is built once per process, outside the timings

    def meta_only():  # what `netspec build cfg` (no --weights) does: modules on meta, the table needs no values
        with torch.device("meta"):
            return netspec.build(cfg, strict=strict, seed=None)

    t = timed({
        "default init": lambda: netspec.build(cfg, strict=strict, seed=None),
        "netspec build": lambda: netspec.build(cfg, strict=strict),
        "init twice": lambda: init_weights(assemble(netspec.build_spec(cfg, strict=strict))),
        "meta only (CLI)": meta_only,
        "spec only": lambda: netspec.build_spec(cfg, strict=strict),
    }, args.repeat)
    print(f"{Path(cfg).name}: {netspec.build_spec(cfg, strict=strict).total_params:,} parameters, {args.threads} "
          f"threads, load average {os.getloadavg()[0]:.1f}, medians of {args.repeat}")
    for k, v in t.items():
        print(f"  {k:<16}{v * 1e3:8.0f} ms")
    print(f"netspec build / default init: {t['netspec build'] / t['default init']:.2f}   "
          f"(init twice / default init: {t['init twice'] / t['default init']:.2f}; "
          f"`netspec build` CLI, meta only / default init: {t['meta only (CLI)'] / t['default init']:.2f})")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.weights")
        save_darknet_weights(netspec.build(cfg, strict=strict), path)

        def default_then_load():
            net = netspec.build(cfg, strict=strict, seed=None)
            load_darknet_weights(net, path)
            return net

        def uninitialized_load():
            net = assemble_uninitialized(netspec.build_spec(cfg, strict=strict))
            load_initializing_rest(net, path)
            return net

        w = timed({"default init + load": default_then_load, "no init + load": uninitialized_load}, args.repeat)
    for k, v in w.items():
        print(f"  {k:<22}{v * 1e3:8.0f} ms")
    print(f"--weights: no init + load / default init + load: {w['no init + load'] / w['default init + load']:.2f}")


if __name__ == "__main__":
    main()
