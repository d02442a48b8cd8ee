"""Command-line edge cases: every bad input or unwritable output gives one line and a documented exit code
(0 ok, 1 invalid input, 2 usage, 3 output not writable; see netspec/cli.py), never a traceback, and nothing is
left half-written."""

from __future__ import annotations

import pytest

import netspec
from netspec.errors import CfgError


@pytest.mark.parametrize("source, message", [("\x00", "is not a valid file name"),
                                             ("/dev/zero", "is a device, not a cfg file")])
def test_unreadable_sources_are_cfg_errors(source, message):
    # found by hypothesis (NUL: ValueError from open) and by probing (/dev/zero: read until out of memory)
    with pytest.raises(CfgError, match=message):
        netspec.parse(source)
