"""``python -m netspec``: the command-line interface.

Each subcommand lives in ``netspec/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; it is imported only when used, so ``--help`` and ``check`` stay fast.

Exit codes: 0 success; 1 the input is invalid (cfg, weights or checkpoint problems, reported as
``path:line:col: message``); 2 usage error; 3 an output could not be written.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import NetspecError

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_OUTPUT = 0, 1, 2, 3

# name -> one-line help; the module netspec.commands.<name> implements it.
COMMANDS: dict[str, str] = {
    "build": "validate and build a cfg, print the layer table",
    "check": "validate cfg files only (for editors and pre-commit)",
    "fmt": "canonical layout of cfg files (--check for pre-commit, --in-place to rewrite)",
    "params": "list every parameter with its final learning rate, decay and what set them",
    "schedule": "print (or --plot) the learning rate of every optimizer step",
    "train": "train a detector (obj.data) or classifier cfg as Darknet does; checkpoints, exact resume, torchrun",
    "export": "export a network to ONNX (optionally with box decoding in the graph)",
    "map": "mean average precision on a labelled set, as darknet detector map (--coco: COCO AP too)",
    "convert": "convert parameters between .weights, checkpoints, .safetensors and PyTorch ports",
    "detect": "detect objects in images as darknet detector test (-out JSON, drawn boxes)",
    "demo-data": "write a small offline detection dataset (shapes on textured backgrounds) with obj.data",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netspec", description="Darknet-style .cfg files in, PyTorch networks out.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=name)
        _command(name).add_arguments(p)
    return parser


def _command(name: str):
    return importlib.import_module(f"netspec.commands.{name.replace('-', '_')}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args._module).run(args)
    except NetspecError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
