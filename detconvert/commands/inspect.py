"""``detconvert inspect FILE [--json]``: what a weight file is, without executing anything in it."""
from __future__ import annotations

import argparse
import json

HELP = "say what a weight file is: flavour, architecture from its blobs, embedded cfg, what it can be used for"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        help="a weight file (.pkl, .pth, .safetensors; the format is sniffed from content) or a model-zoo name "
        "(e2e_mask_rcnn_R-101-FPN_2x, a model id, R-50), fetched to the cache",
    )
    parser.add_argument("--offline", action="store_true", help="model-zoo names: use the cache only, never download")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-hash", action="store_true", help="skip the file's SHA-256 (a second read)")


def run(args: argparse.Namespace) -> int:
    from detconvert.inspect import inspect_weights  # imported here: every `detconvert ...` loads this module
    from detconvert.io.weights import load_weights
    from detconvert.zoo import resolve_weights

    path = resolve_weights(args.file, offline=args.offline)
    report = inspect_weights(load_weights(path), with_sha256=not args.no_hash)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format_text())
    return 0
