"""``detconvert inspect FILE [--json]``: what a weight file is, without executing anything in it."""
from __future__ import annotations

import argparse
import json

from detconvert.inspect import inspect_weights
from detconvert.io.weights import load_weights

HELP = "say what a weight file is: flavour, architecture from its blobs, embedded cfg, what it can be used for"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a weight file (.pkl, .pth, .safetensors; the format is sniffed from content)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-hash", action="store_true", help="skip the file's SHA-256 (a second read)")


def run(args: argparse.Namespace) -> int:
    report = inspect_weights(load_weights(args.file), with_sha256=not args.no_hash)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format_text())
    return 0
