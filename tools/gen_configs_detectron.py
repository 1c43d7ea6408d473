#!/usr/bin/env python
"""Regenerate ``configs_detectron/`` from Detectron's configs (default: ``../shared/detectron_configs``).

Usage: python tools/gen_configs_detectron.py [DETECTRON_CONFIGS_DIR] [--check]
``--check`` writes nothing and exits 1 if the bundle is stale.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detconvert._paths import shared_dir
from detconvert.config.bundle import BUNDLE_DIR, bundle_texts
from detconvert.io.atomic import atomic_write


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="?", help="Detectron configs folder (<folder>/<name>.yaml)")
    parser.add_argument("--check", action="store_true", help="only report whether the bundle is up to date")
    args = parser.parse_args()
    if args.configs:
        source = Path(args.configs)
    elif shared_dir() is not None:
        source = shared_dir() / "detectron_configs"
    else:
        parser.error("no ../shared beside the checkout: pass the Detectron configs folder")
    texts = bundle_texts(source)
    stale = [rel for rel, text in texts.items() if not (BUNDLE_DIR / rel).exists() or (BUNDLE_DIR / rel).read_text() != text]
    extra = sorted(str(p.relative_to(BUNDLE_DIR)) for p in BUNDLE_DIR.glob("*/*.yaml") if str(p.relative_to(BUNDLE_DIR)) not in texts)
    if args.check:
        for rel in stale + extra:
            print(f"stale: {rel}")
        return 1 if stale or extra else 0
    for rel in stale:
        with atomic_write(BUNDLE_DIR / rel, "w") as handle:
            handle.write(texts[rel])
    for rel in extra:
        (BUNDLE_DIR / rel).unlink()
    print(f"{len(texts)} configs, {len(stale)} written, {len(extra)} removed -> {BUNDLE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
