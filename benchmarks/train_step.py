"""One detector training step: netspec against eriklindernoren/PyTorch-YOLOv3, same cfg, same weights.

The step (yolov4-tiny at 416x416, batch 4 by default): forward in training mode, the loss
(``netspec.DetectionLoss`` / the port's ``compute_loss``), backward, an SGD step (momentum 0.9).  Both get the
same images and the same ``(M, 6)`` targets ``[image, class, x, y, w, h]`` (the two use that format).

* time: the two steps run interleaved (``--repeat`` times after a warm-up step), median time ratio;
* memory: peak RSS growth from after the model and optimizer are built to after three steps, each model in a
  fresh process;
* the machine's CPU model and vector flags.

``--channels-last`` runs both in channels_last, ``--compile`` wraps both models in ``torch.compile`` (slow to
compile), ``--profile`` prints where each step spends its time (``torch.profiler``).  The port comes from a
checkout (``--port PATH``, see ``erik_port.py``); without it only netspec's step is timed.

    python benchmarks/train_step.py --port /path/to/PyTorch-YOLOv3 [--net yolov4-tiny] [--batch 4] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from erik_port import add_port_argument, import_port, port_model  # noqa: E402
from inference import _status, cfg_path, cpu_description  # noqa: E402

import netspec  # noqa: E402


def make_steps(args, which: tuple[str, ...]) -> dict:
    """name -> a function running one training step, for netspec and (with ``--port``) the port."""
    torch.manual_seed(0)
    cfg = cfg_path(args.net, args.cfg_dir)
    net = netspec.build(cfg, args.size, args.size, strict=False)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=gen).contiguous(memory_format=fmt)
    n = 8 * args.batch  # eight boxes per image, inside the image
    classes = net.spec.layers[net.outputs[0]].p.classes
    wh = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
    xy = wh / 2 + torch.rand(n, 2, generator=gen) * (1 - wh)
    targets = torch.cat([torch.arange(args.batch).repeat_interleave(8)[:, None].float(),
                         torch.randint(classes, (n, 1), generator=gen).float(), xy, wh], 1)
    steps = {}
    if "erik" in which:
        _, port_loss = import_port(args.port)
        model = port_model(args.port, cfg, net).train()
        for m in model.modules():  # its 2-D anchor buffers refuse a model-wide channels_last
            if isinstance(m, torch.nn.Conv2d):
                m.to(memory_format=fmt)
        forward = torch.compile(model) if args.compile else model
        opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

        def erik_step(model=model, forward=forward, opt=opt):
            loss, _ = port_loss.compute_loss(forward(x), targets, model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        steps["erik"] = erik_step
    if "netspec" in which:
        net = net.train().to(memory_format=fmt)
        forward = torch.compile(net) if args.compile else net
        loss_fn = netspec.DetectionLoss(net)
        opt = torch.optim.SGD(net.parameters(), lr=1e-5, momentum=0.9)

        def netspec_step(forward=forward, opt=opt):
            loss, _ = loss_fn(forward(x), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        steps["netspec"] = netspec_step
    return steps


def timing(args) -> None:
    which = ("netspec", "erik") if args.port else ("netspec",)
    steps = make_steps(args, which)
    for fn in steps.values():  # warm-up (and compilation)
        fn()
    times: dict = {k: [] for k in steps}
    for _ in range(args.repeat):
        for k, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n== training step, medians of {args.repeat}, interleaved ==")
    for k, v in med.items():
        print(f"{k:<8} {v * 1e3:8.0f} ms")
    if "erik" in med:
        print(f"netspec is {med['erik'] / med['netspec']:.2f}x faster than the port (goal: >= 1.2x)")


def memory_child(args, which: str) -> None:
    import ctypes
    import gc

    step = make_steps(args, (which,))[which]
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _status("VmRSS")
    for _ in range(3):
        step()
    print(json.dumps({"growth": _status("VmHWM") - before, "model": before}))


def memory(args) -> None:
    res = {}
    for which in ("netspec", "erik"):
        cmd = [sys.executable, __file__, "--memory-child", which] + [a for a in sys.argv[1:] if a != "--memory"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        res[which] = json.loads(out.strip().splitlines()[-1])
    mib = 2**20
    print("\n== peak RSS growth over three steps, from after the model and optimizer are built (fresh processes) ==")
    print(f"netspec {res['netspec']['growth'] / mib:.0f} MiB, port {res['erik']['growth'] / mib:.0f} MiB: "
          f"ratio {res['netspec']['growth'] / res['erik']['growth']:.2f} (goal: <= 0.8)")


def profile(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    which = ("netspec", "erik") if args.port else ("netspec",)
    for name, step in make_steps(args, which).items():
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                step()
        print(f"\n== {name}: two steps ==")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="yolov4-tiny")
    parser.add_argument("--cfg-dir", help="folder of the official cfgs (default ../shared/darknet-cfgs, then cfgs/)")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models (slow to compile)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory measurement")
    parser.add_argument("--profile", action="store_true", help="profile the steps (torch.profiler) instead")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--memory-child", choices=["netspec", "erik"], help=argparse.SUPPRESS)
    add_port_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args, args.memory_child)
        return
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs; {args.net} at {args.size}x{args.size}, batch {args.batch}"
          + (", channels_last" if args.channels_last else "") + (", torch.compile" if args.compile else ""))
    print(f"CPU: {cpu_description()}")
    if args.profile:
        profile(args)
        return
    if not args.port:
        print("eriklindernoren/PyTorch-YOLOv3 not compared: give its checkout with --port PATH")
    timing(args)
    if args.port and args.memory:
        memory(args)


if __name__ == "__main__":
    main()
