"""``detconvert zoo list|show|fetch``: the Detectron model-zoo catalogue and cached downloads."""
from __future__ import annotations

import argparse
import json

HELP = "list, show and download Detectron model-zoo weights (by name, model id or config)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from detconvert.zoo import ENTRY_TYPES  # imported here and in run: every `detconvert ...` loads this module

    actions = parser.add_subparsers(dest="zoo_action", metavar="ACTION")
    actions.required = True

    listing = actions.add_parser("list", help="list the catalogue (name, type, model id, AP, config)")
    listing.add_argument("--type", choices=ENTRY_TYPES, help="only entries of this type")
    listing.add_argument("--json", action="store_true", help="print the entries as JSON")

    show = actions.add_parser("show", help="one entry: config, URL, cache state, reported metrics")
    show.add_argument("name", help="short name, model id, config path or ImageNet name (R-50)")
    show.add_argument("--json", action="store_true", help="print the entry as JSON")

    get = actions.add_parser("fetch", help="download an entry into the cache (verified) and print its path")
    get.add_argument("name", help="short name, model id, config path or ImageNet name (R-50)")
    get.add_argument("--offline", action="store_true", help="use the cache only; fail naming what is missing")
    get.add_argument("--cache", default=None, help="cache folder (default $DETCONVERT_CACHE or ~/.cache/detconvert)")
    get.add_argument("--retries", type=int, default=3, help="further attempts after a dropped connection")


def run(args: argparse.Namespace) -> int:
    from detconvert.zoo import cached_file, default_cache_dir, fetch, load_catalogue, model_base_url
    from detconvert.zoo.listing import describe, format_table

    catalogue = load_catalogue()
    if args.zoo_action == "list":
        entries = catalogue.of_type(args.type)
        print(json.dumps([e.to_dict() for e in entries], indent=1) if args.json else format_table(entries))
        return 0
    entry = catalogue.get(args.name)
    if args.zoo_action == "show":
        base = model_base_url(catalogue)
        if args.json:
            data = entry.to_dict()
            data.update(url=entry.url(base), cache_file=str(cached_file(entry)))
            print(json.dumps(data, indent=1))
        else:
            print(describe(entry, entry.url(base), cached_file(entry)))
        return 0
    path = fetch(entry, offline=args.offline, cache_dir=args.cache or default_cache_dir(), retries=args.retries)
    print(path)
    return 0
