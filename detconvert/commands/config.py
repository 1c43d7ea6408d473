"""``detconvert config IN``: translate a Detectron config (YAML or model_final.pkl) and report every change."""
from __future__ import annotations

import argparse
import sys

HELP = "translate a Detectron config (YAML or model_final.pkl) and report every change"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="Detectron YAML config, or a model_final.pkl with an embedded cfg")
    parser.add_argument("--dataset", help="coco*, keypoints_coco*, voc*, cityscapes* or a class-list file: decides NUM_CLASSES")
    parser.add_argument("--weights", help="weight file whose class count NUM_CLASSES must match")
    parser.add_argument(
        "--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="override a key (repeatable)"
    )
    parser.add_argument("-o", "--output", metavar="OUT.yaml", help="write the translated config here")
    parser.add_argument("--force", action="store_true", help="overwrite OUT.yaml if it exists")
    parser.add_argument("--explain", action="store_true", help="describe the resolved network in words")
    parser.add_argument("--json", action="store_true", help="print the report, hints and spec as JSON")


def run(args: argparse.Namespace) -> int:
    from detconvert.config import build_spec, explain, translate_config
    from detconvert.config.translate import translated_dump
    from detconvert.io.atomic import atomic_write

    translated = translate_config(
        args.input,
        dataset=args.dataset,
        weights_cfg_or_blobs=args.weights,
        overrides=[tuple(pair) for pair in args.set],
    )
    spec = build_spec(translated.cfg, translated.source)  # fails here, before writing, if the network cannot be built
    if args.output:
        with atomic_write(args.output, "w", force=args.force) as handle:
            handle.write(translated.to_yaml())
    if args.json:
        sys.stdout.write(translated_dump(translated))
        return 0
    print(f"{translated.source}: {len(translated.report)} change(s); NUM_CLASSES {spec.num_classes} from {translated.num_classes_source}")
    for line in translated.report_lines():
        print(f"  {line}")
    if args.explain:
        print()
        print(explain(spec))
    if args.output:
        print(f"wrote {args.output}")
    elif not args.explain:
        print()
        sys.stdout.write(translated.to_yaml())
    return 0
