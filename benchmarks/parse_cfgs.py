"""Parse time of every official Darknet cfg (``../shared/darknet-cfgs``), in a fresh process.

Prints the total of the first pass (including building the Lark parser once), and the median total of
later passes (parser cached).  Run: python benchmarks/parse_cfgs.py [--dir DIR] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(REPO.parent / "shared" / "darknet-cfgs"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    files = sorted(Path(args.dir).glob("*.cfg"))
    if not files:
        raise SystemExit(f"no .cfg files in {args.dir}")
    t = time.perf_counter()
    from netspec.parser import parse  # import included: the first pass is what a fresh process pays

    slowest = (0.0, "")
    for path in files:
        s = time.perf_counter()
        parse(path)
        slowest = max(slowest, (time.perf_counter() - s, path.name))
    first = time.perf_counter() - t
    later = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        for path in files:
            parse(path)
        later.append(time.perf_counter() - t)
    size = sum(p.stat().st_size for p in files) / 2**10
    print(f"{len(files)} cfgs, {size:.0f} KiB")
    print(f"first pass (import + Lark parser built once): {first * 1e3:.0f} ms total, slowest {slowest[1]} "
          f"{slowest[0] * 1e3:.0f} ms")
    print(f"later passes, median of {args.repeat}: {statistics.median(later) * 1e3:.0f} ms total, "
          f"{statistics.median(later) / len(files) * 1e3:.1f} ms per cfg")


if __name__ == "__main__":
    main()
