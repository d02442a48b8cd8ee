"""``netspec fmt FILE...``: canonical layout of cfg files (see :mod:`netspec.fmt`).

Without options the formatted text of the one FILE goes to standard output ('-' reads standard input).
``--check`` only reports files that are not formatted (exit 1; for pre-commit); ``--in-place`` rewrites
them atomically (the file's permissions are kept).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

from ..atomic import atomic_write
from ..errors import CfgError
from ..fmt import format_text
from ..parser import decode_cfg_bytes, read_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cfgs", nargs="+", metavar="FILE", help="cfg files ('-' reads standard input)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if a file is not formatted; change nothing")
    mode.add_argument("--in-place", "-i", action="store_true", help="rewrite the files (atomically)")
    parser.add_argument("--normalize", action="store_true",
                        help="also replace Darknet's aliases by canonical names ([conv] -> [convolutional], ...)")


def _read(name: str) -> tuple[str, str]:
    if name == "-":
        return decode_cfg_bytes(sys.stdin.buffer.read(), "<stdin>"), "<stdin>"
    text, _ = read_source(Path(name))
    return text, name


def _write_in_place(name: str, text: str) -> None:
    if not os.access(name, os.W_OK):
        raise PermissionError(errno.EACCES, "the file is read-only")
    with atomic_write(name) as fh:  # keeps the file's permissions
        fh.write(text.encode("utf-8"))


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_INVALID, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE

    to_stdout = not (args.check or args.in_place)
    if to_stdout and len(args.cfgs) > 1:
        print("netspec fmt: give one FILE to print, or use --check / --in-place for several", file=sys.stderr)
        return EXIT_USAGE
    if args.in_place and "-" in args.cfgs:
        print("netspec fmt: --in-place cannot rewrite standard input", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    for name in args.cfgs:
        try:
            text, label = _read(name)
            formatted = format_text(text, args.normalize, label)
        except CfgError as exc:
            print(str(exc), file=sys.stderr)
            status = max(status, EXIT_INVALID)
            continue
        if to_stdout:
            sys.stdout.write(formatted)
        elif formatted != text:
            if args.check:
                print(f"{label}: not formatted (netspec fmt --in-place {name} fixes it)", file=sys.stderr)
                status = max(status, EXIT_INVALID)
                continue
            try:
                _write_in_place(name, formatted)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                print(f"{name}: cannot write: {reason}", file=sys.stderr)
                status = EXIT_OUTPUT
                continue
            print(f"formatted {name}", file=sys.stderr)
    return status
