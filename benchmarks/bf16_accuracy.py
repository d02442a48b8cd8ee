"""Accuracy cost of bfloat16 autocast on the Darknet conformance nets (their Darknet weights and input).

For every conformance detector: max abs error of the head buffers under
``torch.autocast("cpu", dtype=torch.bfloat16)`` against float32, relative to the largest value, and how
the detections of ``netspec.detect`` on the vector's input image change (kept / lost / new, matched by
class and IoU >= 0.5).  Classifiers: max abs error of the output and whether the top-1 class changes.

    python benchmarks/bf16_accuracy.py [--shared ../shared] [--thresh 0.25]
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import netspec
from netspec.detection import box_iou
from netspec.weights import load_darknet_weights


def load(folder: Path):
    manifest = json.loads((folder / "manifest.json").read_text())
    try:
        net = netspec.build(folder / "model.cfg", manifest["width"], manifest["height"])
    except netspec.CfgError:
        net = netspec.build(folder / "model.cfg", manifest["width"], manifest["height"], strict=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.weights")
        with open(path, "wb") as fh:
            fh.write(lzma.open(folder / "weights.weights.xz").read())
        load_darknet_weights(net, path)
    shape = (1, manifest["channels"], manifest["height"], manifest["width"])
    x = torch.from_numpy(np.fromfile(folder / "input.f32", dtype="<f4").reshape(shape))
    return net.eval(), x


def match(a, b, iou: float = 0.5) -> int:
    """How many boxes of ``a`` have a box of ``b`` with the same class and IoU >= ``iou``."""
    found = 0
    for k in torch.unique(a.classes).tolist():  # per class: all-pairs IoU of thousands of boxes is too big
        ka, kb = a.boxes[a.classes == k], b.boxes[b.classes == k]
        if len(ka) and len(kb):
            found += int((box_iou(ka, kb) >= iou).any(1).sum())
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--thresh", type=float, default=0.25)
    parser.add_argument("--nets", nargs="*", help="conformance vector names (default: all)")
    args = parser.parse_args()
    root = Path(args.shared) / "conformance"
    if not root.exists():
        print(f"{root} not found", file=sys.stderr)
        return 1
    torch.set_num_threads(2)
    names = [v["name"] for v in json.loads((root / "index.json").read_text())["vectors"] if v.get("status") == "ok"]
    names = args.nets or names
    print(f"{'net':<20}{'max|err| heads':>16}{'rel':>10}  detections fp32 -> bf16 (kept, lost, new)")
    for name in names:
        net, x = load(root / name)
        net.fuse()
        with torch.no_grad():
            ref = net(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = net(x)
        ref_l = ref if isinstance(ref, list) else [ref]
        low_l = low if isinstance(low, list) else [low]
        err = max(float((a.float() - b).abs().max()) for a, b in zip(low_l, ref_l))
        scale = max(float(b.abs().max()) for b in ref_l)
        line = f"{name:<20}{err:>16.4g}{err / max(scale, 1e-12):>10.2e}  "
        if net.is_detector:
            d32 = netspec.detect(net, x, args.thresh)[0]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                d16 = netspec.detect(net, x, args.thresh)[0]
            kept = match(d32, d16)
            line += f"{len(d32)} -> {len(d16)} ({kept}, {len(d32) - kept}, {len(d16) - match(d16, d32)})"
        else:
            same = int(ref_l[0].flatten().argmax()) == int(low_l[0].float().flatten().argmax())
            line += "top-1 " + ("unchanged" if same else "CHANGED")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
