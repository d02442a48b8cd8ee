"""Replay every input in tests/fuzz_corpus/ (failures the fuzzers found, kept as regression tests).

Each file must give a network or a CfgError with a line number; never another exception.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netspec.specs import Limits

from .fuzz_oracle import check_input

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
FILES = sorted(p for p in CORPUS.iterdir() if p.is_file() and not p.name.startswith(".")) if CORPUS.is_dir() else []
LIMITS = Limits(max_params=5_000_000, max_activation_bytes=64 * 2**20, max_layers=500)


def test_corpus_is_not_empty():
    assert FILES, f"{CORPUS} has no inputs"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_corpus_input(path):
    check_input(path.read_bytes(), LIMITS, run_forward=True)
