#!/usr/bin/env python
"""Regenerate ``model_zoo/catalogue.json`` from ``../shared/model_zoo.csv`` and the Detectron configs.

The catalogue is data: this script is the only thing that writes it, and it is deterministic (same
inputs, same bytes), so ``git diff`` after a re-run shows exactly what changed upstream.

Sources:
  * ``model_zoo.csv``: one row per line of Detectron's MODEL_ZOO.md tables (79 rows). Two rows describe
    the same weight file (the X-152 "bells & whistles" model with and without test-time augmentation);
    they become one entry with two reported results.
    Eight ``weight_url`` / ``other_links`` cells contain line breaks (wrapped markdown cells); they are
    removed, and each ``weight_url`` is cross-checked against its ``weight_url_path``.
  * every ``detectron_configs/<folder>/<name>.yaml``: ``TRAIN.WEIGHTS`` names the ImageNet
    initialisation of each config (the ``imagenet`` entries), ``TEST.WEIGHTS`` ties the ``test_time_aug``
    configs to the zoo model they evaluate (recorded as an extra config of that entry).

Usage::

    python tools/gen_model_zoo.py            # writes model_zoo/catalogue.json
    python tools/gen_model_zoo.py --check    # exit 1 if the committed file is stale
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import unquote

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from detconvert._paths import shared_dir  # noqa: E402
from detconvert.io.atomic import atomic_write  # noqa: E402

CATALOGUE_PATH = REPO_ROOT / "model_zoo" / "catalogue.json"
# The host Detectron's zoo moved to from S3 (MODEL_ZOO.md, 2018); every csv URL starts with it.
DEFAULT_BASE_URL = "https://dl.fbaipublicfiles.com/detectron"

# csv "type" column -> the coarse task type `detconvert zoo list --type` filters on.
CSV_TYPE_TO_TYPE = {
    "Mask": "mask",
    "Fast": "box",
    "Faster": "box",
    "Kps": "keypoint",
    "RetinaNet": "retinanet",
    "RPN": "rpn",
}


def _number(text: str) -> Optional[float]:
    """csv cell -> float; '-' and '' (not reported) -> None."""
    text = text.strip()
    return None if text in ("", "-") else float(text)


def _inference_time(text: str) -> Dict[str, Optional[float]]:
    """Split MODEL_ZOO.md's ``"X + Y"`` inference time: X in GPU code, Y in unoptimised CPU post-processing."""
    parts = [p.strip() for p in text.split("+")]
    gpu = _number(parts[0]) if parts else None
    cpu = _number(parts[1]) if len(parts) > 1 else None
    return {"inference_time_s_per_im": gpu, "inference_postprocess_s_per_im": cpu}


def _url_path(url: str, base: str) -> str:
    # Some csv URLs carry line breaks from MODEL_ZOO.md's wrapped table cells; URLs have no whitespace.
    url = re.sub(r"\s+", "", url)
    if not url.startswith(base + "/"):
        raise SystemExit(f"model_zoo.csv: URL not under {base}: {url}")
    return unquote(url[len(base) + 1 :])


def _read_config_weights(configs_dir: Path) -> Dict[str, Dict[str, Optional[str]]]:
    """``<folder>/<name>.yaml`` -> its TRAIN.WEIGHTS and TEST.WEIGHTS URLs (None when absent)."""
    found = {}
    for path in sorted(configs_dir.glob("*/*.yaml")):
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
        found[path.relative_to(configs_dir).as_posix()] = {
            "train": (cfg.get("TRAIN") or {}).get("WEIGHTS") or None,
            "test": (cfg.get("TEST") or {}).get("WEIGHTS") or None,
        }
    return found


def _result(row: Dict[str, str]) -> Dict:
    result = OrderedDict(
        section=row["section"],
        table=row["table"],
        csv_type=row["type"],
        note=row["note"].strip("[] ") or None,
        box_ap=_number(row["box_ap"]),
        mask_ap=_number(row["mask_ap"]),
        keypoint_ap=_number(row["kp_ap"]),
        proposal_ar=_number(row["prop_ar"]),
        im_per_gpu=_number(row["im_per_gpu"]),
        train_mem_gb=_number(row["train_mem_gb"]),
        train_time_s_per_iter=_number(row["train_time_s_per_iter"]),
        train_time_total_hr=_number(row["train_time_total_hr"]),
    )
    result.update(_inference_time(row["inference_time_s_per_im"]))
    if result["im_per_gpu"] is not None:
        result["im_per_gpu"] = int(result["im_per_gpu"])
    return result


def _other_files(cell: str, base: str) -> Dict[str, str]:
    """``1=<url>;2=<url>`` (precomputed proposals, results json) -> {file name under output/test: url path}."""
    files = OrderedDict()
    for item in filter(None, cell.split(";")):
        _, url = item.split("=", 1)
        path = _url_path(url, base)
        # '.../output/test/<dataset>/<model>/<file>' -> '<dataset>/<file>' names it uniquely.
        parts = path.split("/")
        files[f"{parts[-3]}/{parts[-1]}"] = path
    return files


def build_catalogue(shared: Path) -> Dict:
    """The catalogue as a JSON-ready dict (see model_zoo/README.md for the fields)."""
    with open(shared / "model_zoo.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    config_weights = _read_config_weights(shared / "detectron_configs")

    # Most-used first (R-50, R-101, ...), then by name: the order `zoo list --type imagenet` shows.
    use_count: Dict[str, int] = {}
    for weights in config_weights.values():
        if weights["train"]:
            use_count[weights["train"]] = use_count.get(weights["train"], 0) + 1
    imagenet_urls = sorted(use_count, key=lambda u: (-use_count[u], Path(u).stem))
    imagenet = OrderedDict()
    for url in imagenet_urls:
        path = _url_path(url, DEFAULT_BASE_URL)  # ImageNetPretrained/<group>/<name>.pkl
        name = Path(path).stem
        imagenet[url] = OrderedDict(
            name=name,
            type="imagenet",
            model_id=None,
            config=None,
            other_configs=[],
            backbone=name,
            lr_schedule=None,
            imagenet=None,
            url_path=path,
            aliases=sorted({path, path.split("/", 1)[1], Path(path).name}),
            used_by_configs=sorted(c for c, w in config_weights.items() if w["train"] == url),
            sha256="",
            size=None,
            results=[],
            other_files={},
        )

    entries: "OrderedDict[str, Dict]" = OrderedDict()
    for row in rows:
        url_path = _url_path(row["weight_url"], DEFAULT_BASE_URL)
        if unquote(row["weight_url_path"].lstrip("/")) != f"detectron/{url_path}":
            raise SystemExit(f"model_zoo.csv: weight_url and weight_url_path disagree for {row['config']}")
        if url_path in entries:  # same weight file reported again (e.g. without test-time augmentation)
            entries[url_path]["results"].append(_result(row))
            continue
        config = row["config"]
        if config not in config_weights:
            raise SystemExit(f"model_zoo.csv: config {config} not among the Detectron configs")
        init_url = config_weights[config]["train"]
        full_url = f"{DEFAULT_BASE_URL}/{url_path}"
        other_configs = sorted(
            c for c, w in config_weights.items() if w["test"] and unquote(w["test"]) == full_url and c != config
        )
        name = Path(config).stem
        entries[url_path] = OrderedDict(
            name=name,
            type=CSV_TYPE_TO_TYPE[row["type"]],
            model_id=row["model_id"],
            config=f"configs_detectron/{config}",
            other_configs=[f"configs_detectron/{c}" for c in other_configs],
            backbone=row["backbone"],
            lr_schedule=row["lr_schedule"],
            imagenet=imagenet[init_url]["name"] if init_url else None,
            url_path=url_path,
            aliases=sorted({row["model_id"], f"configs/{config}", f"configs_detectron/{config}", config}),
            used_by_configs=[],
            sha256="",
            size=None,
            results=[_result(row)],
            other_files=_other_files(row["other_links"], DEFAULT_BASE_URL),
        )

    names = [e["name"] for e in entries.values()] + [e["name"] for e in imagenet.values()]
    if len(set(names)) != len(names):
        raise SystemExit("model_zoo: two entries share a short name")
    return OrderedDict(
        format=1,
        generated_by="tools/gen_model_zoo.py from ../shared/model_zoo.csv and the Detectron configs",
        default_base_url=DEFAULT_BASE_URL,
        csv_rows=len(rows),
        entries=list(entries.values()) + list(imagenet.values()),
    )


def render(catalogue: Dict) -> str:
    return json.dumps(catalogue, indent=1) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=None, help="the shared data folder (default ../shared)")
    parser.add_argument("--out", type=Path, default=CATALOGUE_PATH)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs from a fresh build")
    args = parser.parse_args(argv)
    shared = args.shared or shared_dir()
    if shared is None or not (shared / "model_zoo.csv").is_file():
        print("gen_model_zoo: error: ../shared/model_zoo.csv not found (pass --shared)", file=sys.stderr)
        return 2
    text = render(build_catalogue(shared))
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"gen_model_zoo: {args.out} is stale; re-run tools/gen_model_zoo.py", file=sys.stderr)
            return 1
        return 0
    with atomic_write(args.out, "w") as f:
        f.write(text)
    n = len(json.loads(text)["entries"])
    print(f"wrote {args.out} ({n} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
