"""The ``detconvert`` command: a thin dispatcher over one library call per subcommand.

Each subcommand lives in ``detconvert/commands/<name>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Bad input raises
:class:`detconvert.errors.DetconvertError`, printed here as one line with exit code 2;
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import List, Optional

from detconvert.errors import DetconvertError

# Order is the order of `detconvert --help`.
SUBCOMMANDS = ("demo", "inspect", "config", "weights", "infer", "eval", "train", "zoo", "export")


def _load(name: str):
    try:
        return importlib.import_module(f"detconvert.commands.{name}")
    except ModuleNotFoundError as exc:  # a subcommand not shipped in this build
        if exc.name == f"detconvert.commands.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detconvert",
        description="Detectron (Caffe2) models in PyTorch with Detectron's numerics.",
    )
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = _load(name)
        if module is None:
            continue
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show a traceback on errors")
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except DetconvertError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"detconvert {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("detconvert: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error of ours. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
