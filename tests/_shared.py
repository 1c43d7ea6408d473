"""Locations of the shared Detectron reference data for tests, and the skip used when it is absent."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest

from detconvert._paths import shared_dir

SHARED = shared_dir()
REFERENCE = SHARED / "reference" if SHARED else None
SKIP_REASON = "../shared/reference (Detectron ground truth) is not beside this checkout"
requires_shared = pytest.mark.skipif(SHARED is None, reason=SKIP_REASON)


def config_ids() -> List[str]:
    """The 87 Detectron config ids (``<folder>__<name>``), or one skipped placeholder without ../shared."""
    if SHARED is None:
        return [pytest.param("no-shared", marks=pytest.mark.skip(reason=SKIP_REASON))]
    return sorted(p.stem for p in (REFERENCE / "blobs").glob("*.tsv"))


def config_yaml_path(config_id: str) -> Path:
    folder, name = config_id.split("__", 1)
    return SHARED / "detectron_configs" / folder / f"{name}.yaml"


def golden_ids() -> List[str]:
    """Config ids that have golden outputs on coffee.png."""
    if SHARED is None:
        return []
    return sorted(p.name for p in (REFERENCE / "outputs").iterdir() if p.is_dir())


def load_json(path: Path):
    with open(path) as f:
        return json.load(f)
