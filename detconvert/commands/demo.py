"""``detconvert demo``: write a sample Detectron weight file, read it safely, inspect and convert it."""
from __future__ import annotations

import argparse

from detconvert.demo import run_demo

HELP = "run the reading/conversion path end to end on detconvert's embedded sample model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="detconvert-demo",
                        help="folder for the sample pickle and its safetensors conversion (default: ./detconvert-demo)")


def run(args: argparse.Namespace) -> int:
    print(run_demo(args.output_dir).format_text())
    return 0
