"""Detector training data pipeline speed: Pillow decoding + the cfg's augmentations (netspec/augment.py) per
worker, and whether ``--workers 2`` keeps a yolov4-tiny training step fed on this machine.

Pictures: 640x480 JPEGs made by ``netspec.demo_shapes`` (COCO-sized, so decoding costs what it costs on
COCO).  Augmentation: ``cfgs/yolov4-tiny.cfg``'s own keys (jitter=.3, resize=1.5, hue/saturation/exposure,
flip), and the same with ``mosaic=1`` and with ``letter_box=1``, at 416x416.

* per worker: images/s of one worker (``workers=0``, one torch thread: what each DataLoader process does), per
  wall second and per CPU second (the latter is what a worker makes with a core to itself, on a busy machine);
* the step: a yolov4-tiny@416 batch-4 training step (train-mode forward, DetectionLoss, backward, SGD
  step) on a fixed batch, and then the same steps fed by the loader with 2 workers: the ratio
  of the two step times says whether the workers keep up (1.0 = never waiting), on the same cores.

    python benchmarks/data_pipeline.py [--images 24] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import netspec  # noqa: E402
from netspec.augment import AugmentSettings  # noqa: E402
from netspec.datasets import labelled_set  # noqa: E402
from netspec.demo_shapes import make_shapes_dataset  # noqa: E402
from netspec.detection_data import DetectionDataset, make_loader  # noqa: E402
from netspec.loss import DetectionLoss  # noqa: E402

CFG = REPO / "cfgs" / "yolov4-tiny.cfg"
VARIANTS = {"cfg (jitter, resize, HSV, flip)": "", "+ mosaic=1": "mosaic = 1\n", "+ letter_box=1": "letter_box = 1\n"}


def settings_for(extra: str) -> AugmentSettings:
    text = CFG.read_text().replace("hue = .1\n", "hue = .1\n" + extra)
    s, _ = AugmentSettings.from_spec(netspec.build_spec(text))
    return s


def per_worker_rate(pictures, s: AugmentSettings, images: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second) of one worker; the second does not depend on how busy
    the machine is (it is what a worker makes with a core to itself)."""
    ds = DetectionDataset(pictures, s, seed=0)
    list(make_loader(ds, 4, stop=1, workers=0))  # warm the file cache and imports
    steps = max(1, images // 4)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in make_loader(ds, 4, stop=steps, workers=0):
        pass
    return 4 * steps / (time.perf_counter() - wall), 4 * steps / (time.process_time() - cpu)


def train_steps(net, opt, batches, loss_fn) -> tuple[list[float], list[float]]:
    """(seconds per step, seconds of it spent waiting for the batch), each step timed from the end of the last."""
    times, waits = [], []
    start = time.perf_counter()
    for images, targets in batches:
        waits.append(time.perf_counter() - start)
        loss = loss_fn(net(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    return times, waits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="images per per-worker measurement")
    parser.add_argument("--steps", type=int, default=4, help="training steps per step measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        made = make_shapes_dataset(tmp, train=32, valid=1, width=640, height=480)
        pictures = labelled_set(made.root / "train.txt", 80)
        print(f"machine: {torch.get_num_threads()} torch threads available, torch {torch.__version__}")
        print("per worker (one process, one torch thread), 640x480 JPEG -> 416x416:")
        torch.set_num_threads(1)
        rates = {}
        for name, extra in VARIANTS.items():
            wall, rates[name] = per_worker_rate(pictures, settings_for(extra), args.images)
            print(f"  {name:34s} {wall:6.1f} images/s ({rates[name]:.1f} per CPU second)")

        torch.set_num_threads(args.threads)
        net = netspec.build(CFG, 416, 416).train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
        criterion = DetectionLoss(net)

        def loss_fn(heads, targets):
            return criterion(heads, targets)[0]

        s = settings_for("mosaic = 1\n")
        ds = DetectionDataset(pictures, s, seed=0)
        fixed = next(iter(make_loader(ds, 4, stop=1, workers=0)))
        train_steps(net, opt, [fixed], loss_fn)  # warm-up
        cpu = time.process_time()
        alone = statistics.median(train_steps(net, opt, [fixed] * args.steps, loss_fn)[0])
        step_cpu = (time.process_time() - cpu) / args.steps  # all the training process's threads
        loader = make_loader(ds, 4, stop=args.steps + 2, workers=2, multiscale=False)
        times, waits = train_steps(net, opt, loader, loss_fn)
        fed, waited = statistics.median(times[2:]), statistics.median(waits[2:])  # after the workers' start-up
        print(f"yolov4-tiny@416 batch-4 training step (DetectionLoss, {args.threads} threads): "
              f"{alone:.2f} s on a fixed batch = {4 / alone:.1f} images/s needed")
        data_cpu = 4 / rates["+ mosaic=1"]
        print(f"  CPU per step: {step_cpu:.2f} s training, {data_cpu:.2f} s making its 4 images with mosaic "
              f"(the data is {data_cpu / (step_cpu + data_cpu):.0%} of the work)")
        print(f"  fed by 2 workers (cfg + mosaic): {fed:.2f} s per step ({fed / alone:.2f}x the fixed-batch step, "
              f"the workers using the same cores), of which {waited * 1000:.0f} ms waiting for the batch "
              f"({'kept fed' if waited < 0.05 * fed else 'the step waits for data'})")


if __name__ == "__main__":
    main()
