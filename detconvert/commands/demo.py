"""``detconvert demo``: write a sample Detectron weight file, read it safely, inspect and convert it.

``--where`` prints the path of the shipped shapes model instead (a Detectron pickle every command reads
by path: ``detconvert infer --load_detectron "$(detconvert demo --where)" ...``).
"""
from __future__ import annotations

import argparse

from detconvert.errors import DetconvertError

HELP = "run the reading/conversion path end to end on detconvert's embedded sample model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default="detconvert-demo",
                        help="folder for the sample pickle and its safetensors conversion (default: ./detconvert-demo)")
    parser.add_argument("--where", action="store_true",
                        help="print the path of the shipped shapes Mask R-CNN (shapes_model_final.pkl) and exit")


def run(args: argparse.Namespace) -> int:
    from detconvert.demo import SHAPES_MODEL, run_demo  # imported here: every `detconvert ...` loads this module

    if args.where:
        if not SHAPES_MODEL.exists():
            raise DetconvertError("the shipped shapes model is missing from this installation", SHAPES_MODEL)
        print(SHAPES_MODEL)
        return 0
    print(run_demo(args.output_dir).format_text())
    return 0
