"""Coverage-guided fuzz target: any bytes → ``netspec.build_spec`` (and, when small, ``build`` + a forward pass).

The only acceptable outcomes are a network whose run-time shapes equal the inferred ones, or a
:class:`netspec.CfgError` with a line number (``tests/fuzz_oracle.py``); anything else is a failure.

From the top of the checkout (``pip install -e '.[fuzz]'`` first):

    python fuzz/fuzz_build.py --make-seeds fuzz/corpus          # small valid cfgs to start from
    python fuzz/fuzz_build.py -max_total_time=1800 -rss_limit_mb=4096 -timeout=20 fuzz/corpus

Each distinct failure (exception type and the line that raised it) is saved once to ``fuzz/crashes/``
(``NETSPEC_FUZZ_CRASHES`` overrides); ``NETSPEC_FUZZ_KEEP_GOING=1`` records failures and keeps fuzzing instead
of stopping at the first.  Copy a saved input to ``tests/fuzz_corpus/`` to keep it as a regression test
(``tests/test_fuzz_corpus.py`` replays every file there).
"""

from __future__ import annotations

import hashlib
import os
import sys
import traceback
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["netspec", "lark"]):
    import netspec
    from netspec.errors import CfgError
    from netspec.specs import Limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fuzz_oracle import check_input  # noqa: E402

# Tight limits keep every run small: the fuzzer looks for crashes, not for big networks.
LIMITS = Limits(max_params=2_000_000, max_activation_bytes=32 * 2**20, max_layers=200)


# Where failing inputs are saved (one per distinct failure site); with NETSPEC_FUZZ_KEEP_GOING=1 the run
# records a failure and goes on instead of stopping at the first one.
CRASH_DIR = Path(os.environ.get("NETSPEC_FUZZ_CRASHES", "fuzz/crashes"))
KEEP_GOING = os.environ.get("NETSPEC_FUZZ_KEEP_GOING") == "1"
_seen_sites: set[str] = set()


def _failure_site(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} at {Path(tb.filename).name}:{tb.lineno}"


def test_one_input(data: bytes) -> None:
    try:
        check_input(data, LIMITS, run_forward=True)
    except Exception as exc:
        site = _failure_site(exc)
        if site not in _seen_sites:
            _seen_sites.add(site)
            CRASH_DIR.mkdir(parents=True, exist_ok=True)
            name = CRASH_DIR / f"crash-{hashlib.sha1(data).hexdigest()[:12]}.cfg"
            name.write_bytes(data)
            print(f"\nNEW FAILURE {site}: {str(exc).splitlines()[0] if str(exc) else ''} -> {name}", flush=True)
        if not KEEP_GOING:
            raise


def _make_seeds(directory: str) -> None:
    from tests.strategies import SEED_CFGS

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(SEED_CFGS):
        (out / f"seed-{i:02d}.cfg").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--make-seeds":
        _make_seeds(sys.argv[2])
        sys.exit(0)
    assert netspec and CfgError  # imported under instrumentation above
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
