"""Memory and time of reading a netspec ``.safetensors`` file (``netspec.safetensors_io.load_safetensors``).

Each measurement runs in a fresh process: it writes nothing, loads the file, touches every tensor (a sum,
as loading into a network would read it) and reports the process's anonymous memory (``RssAnon``: memory
that is the process's own, not the page cache that a memory-mapped file is served from) and its peak
(``VmHWM``, which counts mapped file pages too) against the file size, and the time.

    python benchmarks/safetensors_load.py [--mib 400]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

CHILD = """
import sys, time, torch
from netspec.safetensors_io import load_safetensors

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

before = status("RssAnon:")
start = time.perf_counter()
tensors, _ = load_safetensors(sys.argv[1])
total = sum(float(t.sum()) for t in tensors.values())
elapsed = time.perf_counter() - start
print(f"{status('RssAnon:') - before:.0f} {status('VmHWM:'):.0f} {elapsed:.2f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=400, help="file size in MiB (default 400)")
    args = parser.parse_args()
    import torch

    from netspec.safetensors_io import save_safetensors

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.safetensors")
        per = args.mib * 1024 * 1024 // 4 // 8
        save_safetensors(path, {f"layers.{i}.weight": torch.randn(per) for i in range(8)}, {"k": "v"})
        size = os.path.getsize(path) / 2**20
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True, check=True)
        anon, peak, elapsed = out.stdout.split()
        print(f"file {size:.0f} MiB: anonymous memory +{anon} MiB (x{float(anon) / size:.2f} the file), peak RSS "
              f"{peak} MiB, load + read {elapsed} s (process {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
