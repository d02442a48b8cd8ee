"""How parsing and validating a very large cfg scales: time and peak memory (not a test).

    python benchmarks/parse_large.py              # ~5 MB and ~50 MB files
    python benchmarks/parse_large.py --mb 50 --repeat 3

Each measurement runs in a fresh subprocess so that peak RSS (ru_maxrss) is that step's alone; the
baseline RSS after importing netspec and lark is subtracted.  Prints the median time per size, MB/s,
and the ratio of the time per MB between the largest and the smallest file (about 1 for linear cost,
about size ratio for quadratic cost).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

BLOCK = """\
# stage {i}: a conv, a 1x1 bottleneck and a residual add
[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=mish

[shortcut]
from=-2
activation=linear

[route]
layers=-1,-3

[convolutional]
filters=8
size=1
activation=linear

"""
HEADER = "[net]\nwidth=8\nheight=8\nchannels=8\nbatch=1\n\n"
LAYERS_PER_BLOCK = 5

_CHILD = r"""
import json, resource, sys, time
import netspec
from netspec.parser import parse_text
from netspec.specs import Limits, build_specs
from netspec.sections.base import registry
parse_text("[net]\nwidth=1\n")  # build the Lark parser and import the sections (and torch) before the baseline
registry()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
path, step = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()
t0 = time.perf_counter()
doc = parse_text(text, path)
t1 = time.perf_counter()
layers = None
if step == "spec":
    spec = build_specs(doc, limits=Limits(max_layers=10**8, max_params=10**15, max_activation_bytes=10**18))
    layers = len(spec.layers)
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"parse_s": t1 - t0, "spec_s": t2 - t1, "peak_mib": (peak - base) / 1024, "layers": layers,
                  "blocks": len(doc.blocks)}))
"""


def make_cfg(path: str, megabytes: float) -> int:
    """Write a valid cfg of about ``megabytes`` MB; returns its size in bytes."""
    target = int(megabytes * 1e6)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(HEADER)
        size = len(HEADER)
        i = 0
        while size < target:
            chunk = BLOCK.format(i=i)
            fh.write(chunk)
            size += len(chunk)
            i += 1
    return size


def measure(path: str, step: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, path, step], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, nargs="+", default=[5, 50], help="file sizes in MB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--step", choices=("parse", "spec"), default="spec",
                    help="parse: text -> Document only; spec: also validate and infer every layer")
    args = ap.parse_args()
    per_mb = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.mb:
            path = os.path.join(tmp, f"large-{mb}.cfg")
            size = make_cfg(path, mb)
            runs = [measure(path, args.step) for _ in range(args.repeat)]
            parse_s = statistics.median(r["parse_s"] for r in runs)
            spec_s = statistics.median(r["spec_s"] for r in runs)
            peak = statistics.median(r["peak_mib"] for r in runs)
            total = parse_s + spec_s
            per_mb[mb] = total / (size / 1e6)
            print(f"{size / 1e6:7.1f} MB  {runs[0]['blocks']:>9,} blocks  parse {parse_s:7.2f} s  "
                  f"spec {spec_s:7.2f} s  ({size / 1e6 / total:5.2f} MB/s)  peak +{peak:7.0f} MiB "
                  f"({peak * 2**20 / size:4.1f} bytes of memory per byte of cfg)")
    if len(per_mb) > 1:
        small, large = min(per_mb), max(per_mb)
        print(f"time per MB, {large:g} MB vs {small:g} MB: ratio {per_mb[large] / per_mb[small]:.2f} "
              "(1 = linear)")


if __name__ == "__main__":
    main()
