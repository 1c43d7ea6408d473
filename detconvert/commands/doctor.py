"""``detconvert doctor [--json]``: versions, CPU features, CUDA, cache and model host, with what to do.

Exit code 0 when no check FAILs (WARNs allowed), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json

from detconvert.errors import DetconvertError

HELP = "check this machine: package versions, CPU features, CUDA, cache folder, model host; exit 1 on a FAIL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="S",
                        help="seconds to wait for the model host (default 3)")


def run(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise DetconvertError(f"must be > 0 seconds, got {args.timeout:g}", "--timeout")
    from detconvert.doctor import diagnose  # torch, OpenCV, ...: after the argument check

    report = diagnose(timeout=args.timeout)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format_text())
    return report.exit_code
