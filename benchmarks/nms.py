"""NMS: netspec's vectorized Darknet NMS vs the loop it replaced (one Python iteration per box and class).

Scenes: N candidate boxes clustered around objects (as a detector's candidates are), C classes.
``sparse``: each box has a probability above the threshold for a few classes (a detector's output after
get_network_boxes' thresholding); ``dense``: every box has a non-zero probability for every class (the
worst case, e.g. thresh 0); ``map-like``: what ``netspec map``'s 0.005 threshold gives on the conformance
yolov4-tiny (2,535 scattered boxes, ~200,000 entries): many classes per box, few overlaps.
Prints median times and the ratio; the result is checked to be identical.

    python benchmarks/nms.py [--boxes 4000] [--classes 80] [--repeat 20] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from netspec.nms import darknet_nms  # noqa: E402


def scene(n: int, classes: int, per_box: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    objects = max(n // 80, 1)
    centres = rng.uniform(0.05, 0.95, (objects, 2))
    sizes = rng.uniform(0.03, 0.4, (objects, 2))
    pick = rng.integers(0, objects, n)
    xy = centres[pick] + rng.normal(0, 0.015, (n, 2))
    wh = sizes[pick] * rng.uniform(0.8, 1.25, (n, 2))
    boxes = torch.tensor(np.concatenate([xy, wh], 1), dtype=torch.float32)
    probs = rng.uniform(0.25, 1.0, (n, classes)).astype(np.float32)
    if per_box == 0:  # one class only (the 4,000 boxes of one class)
        probs[:, 1:] = 0
    elif per_box < classes:
        probs[rng.uniform(0, 1, (n, classes)) > per_box / classes] = 0
    return boxes, torch.from_numpy(probs)


def map_scene(n: int = 2535, classes: int = 80, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Scattered boxes of very different sizes (few pairs overlap), ~98% of (box, class) entries non-zero."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1, (n, 2))
    wh = np.exp(rng.normal(-2.0, 1.2, (n, 2)))
    boxes = torch.tensor(np.concatenate([xy, wh], 1), dtype=torch.float32)
    probs = (rng.uniform(0.005, 0.05, (n, classes)) * (rng.uniform(0, 1, (n, classes)) > 0.02)).astype(np.float32)
    return boxes, torch.from_numpy(probs)


def _corners(boxes: torch.Tensor) -> torch.Tensor:
    x, y, w, h = boxes.unbind(1)
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], 1)


def _iou_matrix(a: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], a[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], a[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    return inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-12)


def loop_nms(boxes: torch.Tensor, probs: torch.Tensor, thresh: float, classes=None) -> torch.Tensor:
    """The implementation netspec had: per class, an N x N IoU matrix and one Python iteration per box."""
    out = probs.clone()
    for k in range(probs.shape[1]) if classes is None else classes:
        idx = torch.nonzero(probs[:, k] > 0).flatten()
        if idx.numel() == 0:
            continue
        order = idx[torch.argsort(probs[idx, k], descending=True, stable=True)]
        overlap = _iou_matrix(_corners(boxes[order]))
        alive = torch.ones(len(order), dtype=torch.bool)
        for i in range(len(order)):
            if alive[i]:
                alive[i + 1:] &= ~(overlap[i, i + 1:] > thresh)
        out[order[~alive], k] = 0
    return out


def _median_ms(fn, repeat: int) -> tuple[float, float]:
    """Median wall and CPU (process) milliseconds: on a shared machine the CPU time is the steadier one."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall) * 1000, statistics.median(cpu) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=4000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--thresh", type=float, default=0.45)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    scenes = (("one class", 0.0), ("sparse (2 classes/box)", 2.0), ("dense (every class)", float(args.classes)),
              ("map-like (0.005 threshold)", -1.0))
    for name, per_box in scenes:
        boxes, probs = map_scene(classes=args.classes) if per_box < 0 else scene(args.boxes, args.classes, per_box)
        n = boxes.shape[0]
        b, p = boxes.to(args.device), probs.to(args.device)

        def ours(b=b, p=p):
            out = darknet_nms(b, p, args.thresh)
            if out.is_cuda:
                torch.cuda.synchronize()
            return out

        fast = ours().cpu()
        ours_ms, ours_cpu = _median_ms(ours, args.repeat)
        # The loop is slow: time it on enough classes to be stable and scale to all of them.
        sample = list(range(args.classes)) if 0 <= per_box < args.classes else list(range(min(4, args.classes)))
        if per_box == 0:
            sample = [0]
        start, start_cpu = time.perf_counter(), time.process_time()
        slow = loop_nms(boxes, probs, args.thresh, sample)  # IoU: the scenes run nms_kind=default
        scale = 1 if per_box == 0 else args.classes / len(sample)
        loop_ms = (time.perf_counter() - start) * 1000 * scale
        loop_cpu = (time.process_time() - start_cpu) * 1000 * scale
        same = torch.equal(slow[:, sample], fast[:, sample])
        nnz = int((probs > 0).sum())
        print(f"{name}: {n} boxes x {args.classes} classes ({nnz} non-zero): netspec {ours_ms:.1f} ms "
              f"(CPU {ours_cpu:.1f} ms), loop {loop_ms:.0f} ms (CPU {loop_cpu:.0f} ms)"
              f"{'' if scale == 1 else f' (from {len(sample)} classes)'}, ratio {loop_ms / ours_ms:.0f}x "
              f"(CPU {loop_cpu / max(ours_cpu, 1e-9):.0f}x), identical: {same}")


if __name__ == "__main__":
    main()
