"""The model-zoo catalogue against ../shared/model_zoo.csv and the Detectron configs; name resolution."""
from __future__ import annotations

import collections
import csv
import importlib
import json
import re
from pathlib import Path

import pytest

from detconvert import cli
from detconvert._paths import REPO_ROOT
from detconvert.errors import DetconvertError
from detconvert.zoo.catalogue import CATALOGUE_PATH, ENTRY_TYPES, load_catalogue
from tests._shared import SHARED, requires_shared

CSV_COLUMNS = [
    "section", "table", "config", "config_in_repo", "backbone", "type", "lr_schedule", "im_per_gpu",
    "train_mem_gb", "train_time_s_per_iter", "train_time_total_hr", "inference_time_s_per_im", "box_ap",
    "mask_ap", "kp_ap", "prop_ar", "model_id", "weight_url_path", "weight_url", "note", "other_links",
]  # fmt: skip
# Rows per "type" column of MODEL_ZOO.md's tables (counted by hand from Detectron's MODEL_ZOO.md).
CSV_TYPE_COUNTS = {"Mask": 26, "Kps": 16, "Fast": 10, "Faster": 10, "RPN": 9, "RetinaNet": 8}
# The ImageNet initialisations named in the configs' TRAIN.WEIGHTS.
IMAGENET_NAMES = {"R-50", "R-101", "X-101-32x8d", "X-101-64x4d", "X-152-32x8d-IN5k", "R-50-GN", "R-101-GN"}


@pytest.fixture(scope="module")
def csv_rows():
    if SHARED is None:
        pytest.skip("../shared/model_zoo.csv is not beside this checkout")
    with open(SHARED / "model_zoo.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue()


@requires_shared
def test_csv_columns_and_counts_per_type(csv_rows):
    with open(SHARED / "model_zoo.csv", newline="") as f:
        assert next(csv.reader(f)) == CSV_COLUMNS
    assert len(csv_rows) == 79
    assert dict(collections.Counter(r["type"] for r in csv_rows)) == CSV_TYPE_COUNTS


@requires_shared
def test_catalogue_counts_per_type_match_the_csv(csv_rows, catalogue):
    # One entry per weight file: the two X-152 rows (with/without test-time aug) share one file.
    by_type = collections.Counter(e.type for e in catalogue)
    expected = collections.Counter()
    seen_urls = set()
    type_of = {"Mask": "mask", "Fast": "box", "Faster": "box", "Kps": "keypoint", "RetinaNet": "retinanet", "RPN": "rpn"}
    for row in csv_rows:
        url = re.sub(r"\s+", "", row["weight_url"])
        if url not in seen_urls:
            seen_urls.add(url)
            expected[type_of[row["type"]]] += 1
    expected["imagenet"] = len(IMAGENET_NAMES)
    assert by_type == expected
    assert sum(len(e.results) for e in catalogue) == len(csv_rows)
    assert set(by_type) <= set(ENTRY_TYPES)


@requires_shared
def test_every_csv_row_is_in_the_catalogue(csv_rows, catalogue):
    for row in csv_rows:
        entry = catalogue.get(row["model_id"])
        assert entry.config == f"configs_detectron/{row['config']}"
        assert catalogue.get(row["config"]) is entry
        assert entry.name == Path(row["config"]).stem
        # the download URL under the default host is the csv's URL (wrapped cells rejoined)
        assert entry.url(catalogue.default_base_url) == re.sub(r"\s+", "", row["weight_url"])
        reported = [(r.box_ap, r.mask_ap, r.keypoint_ap, r.proposal_ar) for r in entry.results]
        as_float = [None if row[k] == "-" else float(row[k]) for k in ("box_ap", "mask_ap", "kp_ap", "prop_ar")]
        assert tuple(as_float) in reported


@requires_shared
def test_imagenet_entries_come_from_train_weights(catalogue):
    import yaml

    urls = set()
    for path in (SHARED / "detectron_configs").glob("*/*.yaml"):
        weights = (yaml.safe_load(path.read_text()).get("TRAIN") or {}).get("WEIGHTS")
        if weights:
            urls.add(weights)
    assert {catalogue.get(u).name for u in urls} == IMAGENET_NAMES
    assert {e.name for e in catalogue.of_type("imagenet")} == IMAGENET_NAMES
    assert catalogue.get("e2e_mask_rcnn_R-101-FPN_2x").imagenet == "R-101"


@requires_shared
def test_committed_catalogue_is_up_to_date():
    import tools.gen_model_zoo as gen

    assert gen.render(gen.build_catalogue(SHARED)) == CATALOGUE_PATH.read_text()


def test_checksum_fields_exist_and_are_hex_or_empty(catalogue):
    assert len(catalogue) >= 85
    for entry in catalogue:
        assert entry.sha256 == "" or re.fullmatch(r"[0-9a-f]{64}", entry.sha256), entry.name
        assert entry.size is None or entry.size > 0


def test_every_entry_pairs_with_a_config_in_configs_detectron(catalogue):
    configs_dir = REPO_ROOT / "configs_detectron"
    if not any(configs_dir.glob("*/*.yaml")):
        pytest.skip("configs_detectron/ has no translated configs yet (written by the config-translation issue)")
    detectors = [e for e in catalogue if e.type != "imagenet"]
    missing = [c for e in detectors for c in (e.config,) + e.other_configs if not (REPO_ROOT / c).is_file()]
    assert missing == []
    try:
        config_module = importlib.import_module("detconvert.config")
        translate_config = config_module.translate_config
    except (ImportError, AttributeError):
        pytest.skip("detconvert.config.translate_config does not exist yet: file existence checked, translation not")
    for entry in detectors:
        translate_config(REPO_ROOT / entry.config)  # raises ConfigError on any problem


@pytest.mark.parametrize(
    "alias",
    [
        "e2e_mask_rcnn_R-101-FPN_2x",
        "35861858",
        "configs_detectron/12_2017_baselines/e2e_mask_rcnn_R-101-FPN_2x.yaml",
        "configs/12_2017_baselines/e2e_mask_rcnn_R-101-FPN_2x.yaml",
        "/somewhere/detectron/configs/12_2017_baselines/e2e_mask_rcnn_R-101-FPN_2x.yaml",
        "E2E_MASK_RCNN_R-101-FPN_2X",
    ],
)
def test_cli_resolves_name_id_and_config_path_to_the_same_entry(alias, capsys):
    assert cli.main(["zoo", "show", alias, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["model_id"]) == ("e2e_mask_rcnn_R-101-FPN_2x", "35861858")
    assert shown["config"] == "configs_detectron/12_2017_baselines/e2e_mask_rcnn_R-101-FPN_2x.yaml"
    assert shown["results"][0]["box_ap"] == 40.9 and shown["results"][0]["mask_ap"] == 36.4


@pytest.mark.parametrize("alias", ["R-50", "R-50.pkl", "MSRA/R-50.pkl", "ImageNetPretrained/MSRA/R-50.pkl"])
def test_imagenet_names(alias, catalogue):
    entry = catalogue.get(alias)
    assert (entry.name, entry.type, entry.url_path) == ("R-50", "imagenet", "ImageNetPretrained/MSRA/R-50.pkl")


def test_test_time_aug_config_resolves_to_the_weights_it_evaluates(catalogue):
    # test_time_aug/e2e_mask_rcnn_R-50-FPN_2x.yaml sets TEST.WEIGHTS to model 35859007
    entry = catalogue.get("configs_detectron/test_time_aug/e2e_mask_rcnn_R-50-FPN_2x.yaml")
    assert entry.model_id == "35859007"


def test_unknown_name_suggests_close_matches(catalogue):
    with pytest.raises(DetconvertError, match="did you mean e2e_mask_rcnn_R-101-FPN_2x"):
        catalogue.get("e2e_mask_rcnn_R101-FPN_2x")


def test_zoo_list_filters_by_type(capsys):
    assert cli.main(["zoo", "list", "--type", "retinanet", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == 8 and {e["type"] for e in listed} == {"retinanet"}
    assert cli.main(["zoo", "list", "--type", "mask"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("NAME")
    assert len(lines) == 1 + 25
    row = next(line for line in lines if line.startswith("e2e_mask_rcnn_R-101-FPN_2x "))
    assert row.split() == [
        "e2e_mask_rcnn_R-101-FPN_2x", "mask", "35861858", "40.9", "36.4", "-", "-",
        "configs_detectron/12_2017_baselines/e2e_mask_rcnn_R-101-FPN_2x.yaml",
    ]  # fmt: skip
