"""Inference speed and memory: netspec (fused) against the port eriklindernoren/PyTorch-YOLOv3, a port-style
PyTorch rendering and a conv probe.

In one process, on the same machine, with the same weights (``--threads``, default 2):

* probe: one 3x3 conv, 256 -> 512 channels at 52x52, batch 1: GFLOP/s in fp32 and under bf16 autocast;
* for each net (default yolov3, yolov4, yolov4-tiny at 416x416), batch 1 and 8, fp32 and bf16 autocast:
  median forward latency of netspec fused (``Network.fuse``), netspec unfused (eval) and the port-style
  baseline (``port_style.py``: conv+BN+activation modules, every output kept, no fusion), runs interleaved;
  GFLOP/s counted with Darknet's BFLOPs and its share of the probe; with ``--port PATH`` (a checkout of
  eriklindernoren/PyTorch-YOLOv3, see ``erik_port.py``) also that port's ``Darknet`` model from the same cfg
  with the same weights, and netspec's time ratio against it;
* ``--compile``: the same under ``torch.compile`` (inductor, ``freezing=True``), batch 1: compile time and
  speed relative to the same model's eager fp32;
* ``--rss``: peak RSS growth from after ``fuse()`` (the model as built, for the ports) to after five
  forwards (batch 1), each case in a fresh process.

The machine's CPU model and its vector flags (avx2, avx512f, avx512_bf16, amx) are printed first.

    python benchmarks/inference.py [--port PATH] [--nets yolov3 yolov4 yolov4-tiny] [--repeat 5] [--compile] [--rss]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from erik_port import add_port_argument, port_agrees, port_model  # noqa: E402
from port_style import port_style_from, same_outputs  # noqa: E402

import netspec  # noqa: E402


def cfg_path(name: str, cfg_dir: str | None) -> Path:
    for folder in [cfg_dir] if cfg_dir else [REPO.parent / "shared" / "darknet-cfgs", REPO / "cfgs"]:
        path = Path(folder) / f"{name}.cfg"
        if path.exists():
            return path
    raise SystemExit(f"{name}.cfg not found (give --cfg-dir)")


def cpu_description() -> str:
    """The CPU model and the vector flags that decide the fast paths (from /proc/cpuinfo where there is one)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"]
    have = " ".join(f for f in wanted if f in flags) or "none of " + ", ".join(wanted)
    return f"{model}; flags: {have}; torch cpu capability {torch.backends.cpu.get_cpu_capability()}"


def make_nets(name: str, size: int, cfg_dir: str | None, port: str | None = None):
    """(netspec fused, netspec unfused, port-style baseline, BFLOPs per image, the port's model or None),
    all with the same weights."""
    import copy

    net = netspec.build(cfg_path(name, cfg_dir), size, size, strict=False)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking BN statistics, so that nothing is a no-op
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    net.eval()
    base = port_style_from(net)
    erik = port_model(port, cfg_path(name, cfg_dir), net).eval() if port else None
    fused = copy.deepcopy(net).fuse()
    return fused, net, base, net.spec.total_bflops, erik


def autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()


def interleaved(fns: dict, repeat: int, warmup: int = 1) -> dict:
    """Median seconds per call of each function, calls interleaved so that load changes hit all alike."""
    times: dict = {k: [] for k in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


_PROBE_FLOPS = 2 * 256 * 512 * 9 * 52 * 52


def probe_fn(dtype: str):
    """One call of the probe conv (3x3, 256 -> 512 channels at 52x52, batch 1), ``_PROBE_FLOPS`` flops."""
    conv = torch.nn.Conv2d(256, 512, 3, padding=1, bias=False).eval()
    x = torch.rand(1, 256, 52, 52)

    def run():
        with torch.no_grad(), autocast(dtype):
            conv(x)
    return run


def probe(repeat: int) -> dict:
    return {dtype: _PROBE_FLOPS / interleaved({"p": probe_fn(dtype)}, repeat * 3, warmup=3)["p"] / 1e9
            for dtype in ("fp32", "bf16")}


def run_model(model, x, dtype):
    with torch.no_grad(), autocast(dtype):
        return model(x)


def latency(args, gflops_probe: dict) -> None:
    print(f"\n== eager latency, medians of {args.repeat}, runs interleaved ({args.threads} threads) ==")
    erik_cols = f"{'erik ms':>9}{'erik/fused':>11}" if args.port else ""
    print(f"{'net':<12}{'dtype':<6}{'batch':>5}{'fused ms':>10}{'unfused ms':>11}{'port ms':>9}{'fused/port':>11}"
          f"{erik_cols}{'GFLOP/s':>9}{'of probe':>9}   (probe timed interleaved with the nets)")
    fp32_port: dict = {}
    for name in args.nets:
        fused, unfused, base, bflops, erik = make_nets(name, args.size, args.cfg_dir, args.port)
        x1 = torch.rand(1, 3, args.size, args.size)
        diff = same_outputs(run_model(fused, x1, "fp32"), run_model(base, x1, "fp32"))
        assert diff < 1e-3, f"{name}: netspec and the port-style baseline disagree by {diff}"
        models = [("fused", fused), ("unfused", unfused), ("port", base)]
        if erik is not None:
            diff = port_agrees(run_model(fused, x1, "fp32"), run_model(erik, x1, "fp32"))
            assert diff < 1e-3, f"{name}: netspec and eriklindernoren's model disagree by {diff}"
            models.append(("erik", erik))
        for dtype in args.dtypes:
            for batch in args.batches:
                x = torch.rand(batch, 3, args.size, args.size)
                fns = {label: (lambda m=model, x=x, d=dtype: run_model(m, x, d)) for label, model in models}
                # The probe runs interleaved with the models (a few calls per round, so that it sees the same
                # load): the "of probe" share stays meaningful on a busy machine.
                probe_calls, one_probe = 5, probe_fn(dtype)
                fns["probe"] = lambda p=one_probe, n=probe_calls: [p() for _ in range(n)]
                t = interleaved(fns, args.repeat)
                gflops = bflops * batch / t["fused"]
                probe_gflops = _PROBE_FLOPS * probe_calls / t["probe"] / 1e9
                if dtype == "fp32":
                    fp32_port[(name, batch)] = t["port"]
                erik_vals = f"{t['erik'] * 1e3:>9.1f}{t['erik'] / t['fused']:>10.2f}x" if erik is not None else ""
                print(f"{name:<12}{dtype:<6}{batch:>5}{t['fused'] * 1e3:>10.1f}{t['unfused'] * 1e3:>11.1f}"
                      f"{t['port'] * 1e3:>9.1f}{t['port'] / t['fused']:>10.2f}x{erik_vals}{gflops:>9.0f}"
                      f"{gflops / probe_gflops:>9.0%}")
                if dtype == "bf16" and (name, batch) in fp32_port:
                    print(f"{'':<23}bf16 fused vs fp32 port: {fp32_port[(name, batch)] / t['fused']:.2f}x faster")


def compiled(args) -> None:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    print(f"\n== torch.compile (inductor, freezing=True), batch 1, medians of {args.repeat}, interleaved ==")
    print(f"{'net':<12}{'dtype':<6}{'compile s netspec/port':>24}{'netspec ms':>11}{'port ms':>9}"
          f"{'netspec/port':>13}{'vs own eager fp32 netspec/port':>32}")
    for name in args.nets:
        fused, _, base, _, _ = make_nets(name, args.size, args.cfg_dir)
        x = torch.rand(1, 3, args.size, args.size)
        for dtype in args.dtypes:
            fns, compile_s = {}, {}
            torch._dynamo.reset()
            for label, model in (("netspec", fused), ("port", base)):
                fn = torch.compile(model)
                t = time.perf_counter()
                out = run_model(fn, x, dtype)
                compile_s[label] = time.perf_counter() - t
                ref = run_model(model, x, dtype)
                err = max(float((a.float() - b.float()).abs().max()) for a, b in zip(out, ref))
                assert err < 0.1, f"{name} {label} {dtype}: compiled output differs from eager by {err}"
                fns[label] = lambda f=fn, d=dtype, x=x: run_model(f, x, d)
                fns[label + " eager"] = lambda m=model, x=x: run_model(m, x, "fp32")
            t = interleaved(fns, args.repeat)
            print(f"{name:<12}{dtype:<6}{compile_s['netspec']:>14.1f} / {compile_s['port']:<7.1f}"
                  f"{t['netspec'] * 1e3:>11.1f}{t['port'] * 1e3:>9.1f}{t['port'] / t['netspec']:>12.2f}x"
                  f"{t['netspec eager'] / t['netspec']:>20.2f}x / {t['port eager'] / t['port']:.2f}x")


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rss_child(name: str, impl: str, dtype: str, size: int, cfg_dir: str | None, port: str | None) -> None:
    """Peak RSS growth from after ``fuse()`` (as built, for the ports) to after five forwards, in this fresh
    process."""
    import ctypes
    import gc

    fused, unfused, base, _, erik = make_nets(name, size, cfg_dir, port if impl == "erik" else None)
    model = {"netspec": fused, "port": base, "erik": erik}[impl]
    del fused, unfused, base, erik
    x = torch.rand(1, 3, size, size)
    gc.collect()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)  # hand freed heap memory back, so that reusing it does not hide growth
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _status("VmRSS")
    for _ in range(5):
        run_model(model, x, dtype)
    after = _status("VmHWM")
    print(json.dumps({"growth": after - before, "peak": after, "model": before}))


def rss(args) -> None:
    print("\n== peak RSS growth from after fuse() to after five forwards (batch 1, fresh process each) ==")
    print("   (resident = process RSS after fuse(), incl. weights; peak = process peak RSS, all MiB)")
    impls = ["netspec", "port"] + (["erik"] if args.port else [])
    head = "".join(f"{i:>9}" for i in impls)
    ratios = "".join(f"{'vs ' + i:>9}" for i in impls[1:])
    print(f"{'net':<12}{'dtype':<6}{head}{ratios}   resident {'/'.join(impls)}   peak {'/'.join(impls)}")
    mib = 2**20
    for name in args.nets:
        for dtype in args.dtypes:
            res = {}
            for impl in impls:
                cmd = [sys.executable, __file__, "--rss-child", name, impl, dtype, "--size", str(args.size),
                       "--threads", str(args.threads)] + (["--cfg-dir", args.cfg_dir] if args.cfg_dir else [])
                cmd += ["--port", args.port] if args.port else []
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                res[impl] = json.loads(out.strip().splitlines()[-1])
            ns = res["netspec"]
            print(f"{name:<12}{dtype:<6}" + "".join(f"{res[i]['growth'] / mib:>9.0f}" for i in impls)
                  + "".join(f"{ns['growth'] / res[i]['growth']:>9.2f}" for i in impls[1:])
                  + "   " + " / ".join(f"{res[i]['model'] / mib:.0f}" for i in impls)
                  + "   " + " / ".join(f"{res[i]['peak'] / mib:.0f}" for i in impls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=["yolov3", "yolov4", "yolov4-tiny"])
    parser.add_argument("--cfg-dir", help="folder of the official cfgs (default ../shared/darknet-cfgs, then cfgs/)")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS growth")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--rss-child", nargs=3, metavar=("NET", "IMPL", "DTYPE"), help=argparse.SUPPRESS)
    add_port_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(*args.rss_child, args.size, args.cfg_dir, args.port)
        return
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs, input {args.size}x{args.size}")
    print(f"CPU: {cpu_description()}")
    if not args.port:
        print("eriklindernoren/PyTorch-YOLOv3 not compared: give its checkout with --port PATH")
    gflops = probe(args.repeat)
    print(f"conv probe (3x3, 256->512, 52x52): fp32 {gflops['fp32']:.0f} GFLOP/s, bf16 {gflops['bf16']:.0f} GFLOP/s")
    if not args.no_latency:
        latency(args, gflops)
    if args.compile:
        compiled(args)
    if args.rss:
        rss(args)


if __name__ == "__main__":
    main()
