"""Cost of DetectionLoss against the forward+backward it trains: yolov4-tiny, batch 8, 416x416 (the issue's goal:
under 10%).

Per repeat, interleaved: (a) ``net(x)`` in training mode + ``loss.backward()`` through a cheap stand-in loss
(the sum of the head inputs), (b) ``DetectionLoss`` on those heads alone (the loss call and its backward into the
head inputs, no network), with ``--boxes`` truths per image (default 20, a COCO-like crowd), random but fixed.
Prints the medians and the ratio (b) / (a).

    python benchmarks/loss_cost.py [--cfg cfgs/yolov4-tiny.cfg] [--batch 8] [--size 416] [--boxes 20]
                                   [--repeat 5] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import netspec  # noqa: E402
from netspec.loss import DetectionLoss  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default=str(REPO / "cfgs" / "yolov4-tiny.cfg"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--boxes", type=int, default=20, help="truths per image")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    net = netspec.build(args.cfg, width=args.size, height=args.size).to(device).train()
    loss_fn = DetectionLoss(net)
    gen = torch.Generator().manual_seed(0)
    b, m = args.batch, args.boxes
    wh = 0.02 + 0.5 * torch.rand(b * m, 2, generator=gen)
    xy = torch.rand(b * m, 2, generator=gen)
    cls = torch.randint(0, loss_fn.class_limit, (b * m, 1), generator=gen).float()
    image = torch.arange(b).repeat_interleave(m)[:, None].float()
    targets = torch.cat((image, cls, xy, wh), 1).to(device)
    x = torch.rand(b, net.input_shape[0], args.size, args.size, generator=gen).to(device)

    def train_step() -> list[torch.Tensor]:
        net.zero_grad(set_to_none=True)
        heads = net(x)
        sum(h.sum() for h in heads).backward()
        return [h.detach() for h in heads]

    heads = train_step()  # warm-up
    loss_fn([h.clone().requires_grad_() for h in heads], targets)

    t_net, t_loss = [], []
    for _ in range(args.repeat):
        _sync(device)
        t0 = time.perf_counter()
        train_step()
        _sync(device)
        t_net.append(time.perf_counter() - t0)
        inputs = [h.clone().requires_grad_() for h in heads]
        _sync(device)
        t0 = time.perf_counter()
        loss, stats = loss_fn(inputs, targets)
        loss.backward()
        _sync(device)
        t_loss.append(time.perf_counter() - t0)
    net_s, loss_s = statistics.median(t_net), statistics.median(t_loss)
    print(f"{Path(args.cfg).name} batch {b} at {args.size}x{args.size}, {m} truths/image, {args.threads} threads, "
          f"{device}: forward+backward {net_s * 1000:.1f} ms, DetectionLoss (+ its backward) {loss_s * 1000:.1f} ms, "
          f"ratio {loss_s / net_s:.1%} (goal < 10%); count {stats['count']}, loss {stats['loss']:.3f}")


if __name__ == "__main__":
    main()
