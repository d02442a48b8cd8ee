"""Darknet .weights load time against a bare numpy.fromfile of the same file.

Generates a yolov3-sized file (the shipped cfgs/yolov3.cfg: ~62M floats) in a temp dir, then times
(a) numpy.fromfile of the whole file and (b) netspec.load_darknet_weights into an already built
network, and prints medians and the throughput ratio.  Run: python benchmarks/weights_load.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import netspec
from netspec.weights import save_darknet_weights

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", default=str(REPO / "cfgs" / "yolov3.cfg"))
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(2)
    net = netspec.build(args.cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.weights")
        size = save_darknet_weights(net, path)
        floats = (size - 20) // 4
        numpy_times, load_times = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            np.fromfile(path, dtype="<f4")
            numpy_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            netspec.load_darknet_weights(net, path)
            load_times.append(time.perf_counter() - t)
    np_med, ns_med = statistics.median(numpy_times), statistics.median(load_times)
    mb = size / 2**20
    print(f"file: {floats:,} floats ({mb:.0f} MiB), {args.repeat} runs, medians")
    print(f"numpy.fromfile          {np_med * 1e3:8.1f} ms  {mb / np_med:8.0f} MiB/s")
    print(f"load_darknet_weights    {ns_med * 1e3:8.1f} ms  {mb / ns_med:8.0f} MiB/s")
    print(f"throughput ratio (netspec / numpy.fromfile): {np_med / ns_med:.2f}")


if __name__ == "__main__":
    main()
