"""The parser's fast path (one regex per line) gives exactly what the Lark grammar gives, on any input."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from netspec import parser
from netspec.errors import CfgError

from .strategies import any_bytes, mutated_cfgs, valid_cfgs
from .test_fuzz_cfg import PROFILE


def _outcome(text: str):
    try:
        return parser.parse_text(text)
    except CfgError as exc:
        return str(exc)


def _lark_only(text: str):
    def not_simple(text, parser_):
        raise parser._NotSimple
        yield  # pragma: no cover - makes this a generator like the real one

    with pytest.MonkeyPatch.context() as m:
        m.setattr(parser, "_fast_entries", not_simple)
        return _outcome(text)


def _same(text: str) -> None:
    assert _outcome(text) == _lark_only(text), text


@settings(PROFILE)
@given(valid_cfgs())
def test_fast_path_equals_lark_on_valid_cfgs(cfg):
    _same(cfg.text)


@settings(PROFILE)
@given(st.one_of(mutated_cfgs(), any_bytes()))
@example(b"[net]\nwidth=1\n[]\n[ ]\nx = a b, c\n")
@example(b"[net]\n  key\t=\t-1,+2 , .5e3;c\n[conv]#c\ninit=normal(0.1)\n\n\r\n[net]x\n")
@example(b"[net]\nk=1,,2\nk=1,\nk=\n=1\n[a]]\n[a\n")
def test_fast_path_equals_lark_on_any_text(data):
    text = data.decode("utf-8", "replace").replace("\x00", "")
    _same(text)
