"""``detconvert weights IN.pkl``: convert Detectron weights into a PyTorch checkpoint with metadata."""
from __future__ import annotations

import argparse
import json

HELP = "convert a Detectron model_final.pkl (or ImageNet R-50.pkl) into a safetensors/pth checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="IN.pkl", help="Detectron weight file (or model-zoo name)")
    parser.add_argument("--cfg", metavar="YAML", help="Detectron config (default: the cfg embedded in IN.pkl)")
    parser.add_argument("--dataset", metavar="NAME|FILE",
                        help="coco*, keypoints_coco*, voc* or a class-list file: class count and names")
    parser.add_argument("-o", "--output", metavar="OUT", help="checkpoint path (default: IN with .safetensors/.pth)")
    parser.add_argument("--format", dest="fmt", choices=("safetensors", "pth"), default="safetensors",
                        help="checkpoint format (default safetensors)")
    parser.add_argument("--set", dest="set_cfgs", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides as KEY VALUE pairs, stored with the checkpoint")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--report", metavar="FILE.json", help="also write the full load report as JSON")


def run(args: argparse.Namespace) -> int:
    from detconvert.commands.infer import override_pairs
    from detconvert.io.atomic import atomic_write

    overrides = override_pairs(args.set_cfgs)  # a bad --set fails before torch loads
    from detconvert.export.checkpoint import convert_weights

    result = convert_weights(
        args.source, args.cfg, dataset=args.dataset, output=args.output, fmt=args.fmt, force=args.force,
        overrides=overrides,
    )
    print(result.report.format_table())
    if args.report:
        data = {"output": str(result.output), "kind": result.kind, "format": result.format,
                "source_sha256": result.metadata["source_sha256"], **result.report.to_dict()}
        with atomic_write(args.report, "w", force=True) as handle:
            json.dump(data, handle, indent=1)
    what = "backbone" if result.kind == "backbone" else (result.spec.conv_body_name or "detector")
    print(f"wrote {result.output} ({result.format}, {result.kind}: {what}, {result.num_tensors} tensors) "
          f"in {result.seconds:.1f} s")
    return 0
