"""Shared fixtures: reference data paths and Detectron-format weight files rebuilt from recipes.

Weight files (0.2-0.7 GB) are regenerated bit for bit by ``../shared/reference/make_weights.py`` into a
cache outside the repository: ``$DETCONVERT_TEST_CACHE`` or ``~/.cache/detconvert-tests``.
make_weights writes atomically and verifies every blob's SHA-1, so a file present there is complete.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._shared import REFERENCE, SHARED, SKIP_REASON


def _cache_root() -> Path:
    env = os.environ.get("DETCONVERT_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "detconvert-tests"


def make_weights(config_id: str, *flags: str) -> Path:
    """Path of the synthetic weight file of ``config_id`` (generated once, then cached)."""
    if SHARED is None:
        pytest.skip(SKIP_REASON)
    recipe = REFERENCE / "weights" / config_id / "recipe.json"
    if not recipe.exists():
        pytest.skip(f"no weight recipe for {config_id} in ../shared/reference/weights")
    variant = "".join(f.strip("-").replace("-", "_") + "." for f in sorted(flags)) or "default."
    out = _cache_root() / config_id / f"model_final.{variant}pkl"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, str(REFERENCE / "make_weights.py"), str(recipe), "-o", str(out), *flags],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


@pytest.fixture(scope="session")
def weights_factory():
    """``weights_factory(config_id, '--py2-style', ...)`` -> Path of a regenerated weight file."""
    return make_weights


@pytest.fixture(scope="session")
def reference() -> Path:
    if REFERENCE is None:
        pytest.skip(SKIP_REASON)
    return REFERENCE
