"""The ``detconvert`` command: a thin dispatcher over one library call per subcommand.

Each subcommand lives in ``detconvert/commands/<name>.py`` and defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Bad input raises
:class:`detconvert.errors.DetconvertError`, printed here as one line with exit code 2;
``--debug`` shows the traceback instead.

Start-up stays lean: ``--help``, ``inspect``, ``config``, ``zoo list`` and every argument error answer without
importing torch, torchvision, cv2 or pycocotools. So a ``commands/<name>.py`` module and its
``add_arguments`` import only light modules (numpy, yaml, detconvert's io/config/inspect/zoo); the heavy
stages are imported inside ``run``, after the arguments are checked. ``tests/test_cli_lean.py`` checks the
import graph. Only the chosen subcommand's ``add_arguments`` runs (the others need just their ``HELP``).
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
SUBCOMMANDS = ("demo", "inspect", "config", "weights", "infer", "eval", "train", "zoo", "export", "doctor")


def _load(name: str):
    try:
        return importlib.import_module(f"detconvert.commands.{name}")
    except ModuleNotFoundError as exc:  # a subcommand not shipped in this build
        if exc.name == f"detconvert.commands.{name}":
            return None
        raise


def _chosen_command(argv: List[str]) -> Optional[str]:
    # The top-level parser has only flags without values (-h, --debug), so the first other word is the command.
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``detconvert`` parser; with ``command``, only that subcommand gets its arguments (the rest: help)."""
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
        if command is None or command == name:
            module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_chosen_command(argv) or "")
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
