"""``detconvert export IN --to TARGET -o OUT``: a Detectron model as safetensors, pth, detectron2, torchvision or ONNX."""
from __future__ import annotations

import argparse
import sys

HELP = "export a Detectron model to safetensors, pth, detectron2 (.pkl + .yaml), torchvision (state_dict) or ONNX"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from detconvert.export import TARGETS

    parser.add_argument("source", metavar="IN", help="Detectron model_final.pkl, model-zoo name or detconvert checkpoint")
    parser.add_argument("--to", dest="target", required=True, choices=TARGETS, help="export target")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="output file (detectron2: OUT.pkl, its config goes to OUT.yaml)")
    parser.add_argument("--cfg", metavar="YAML", help="Detectron config (default: the cfg inside IN)")
    parser.add_argument("--dataset", metavar="NAME|FILE", help="coco*, keypoints_coco*, voc* or a class-list file")
    parser.add_argument("--set", dest="set_cfgs", nargs="+", default=[], metavar="KEY VALUE",
                        help="Detectron config overrides as KEY VALUE pairs")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--allow-architecture-change", action="store_true",
                        help="torchvision: export an MSRA ResNet (stride on the 1x1 conv) into torchvision's "
                             "ResNet (stride on the 3x3) although the network then computes something else")
    parser.add_argument("--onnx-size", nargs=2, type=int, default=(800, 1216), metavar=("H", "W"),
                        help="onnx: example input size the graph is traced and checked with (default 800 1216)")
    parser.add_argument("--opset", type=int, default=None, help="onnx: opset version (default: the exporter's)")
    parser.add_argument("--no-verify", action="store_true", help="onnx: skip the onnxruntime check")


def run(args: argparse.Namespace) -> int:
    from detconvert.commands.infer import override_pairs
    from detconvert.export import export_model

    report = export_model(
        args.source, args.target, args.output, cfg=args.cfg, dataset=args.dataset,
        overrides=override_pairs(args.set_cfgs), force=args.force,
        allow_architecture_change=args.allow_architecture_change, onnx_image_size=tuple(args.onnx_size),
        onnx_opset=args.opset, verify=not args.no_verify,
    )
    for warning in report.warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    report.warnings = []
    print(report.format_text())
    return 0
