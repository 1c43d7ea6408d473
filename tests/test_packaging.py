"""A wheel ships what the commands read: the model-zoo catalogue and the translated configs.

In a checkout they sit at the top of the repository (``model_zoo/``, ``configs_detectron/``); a plain
``pip install`` copies only packages, so pyproject maps them into ``detconvert/_bundled/`` and lists the
packages by hand. These tests build a wheel from the tracked files and run ``detconvert zoo list`` from it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = {"detconvert._bundled.model_zoo": "model_zoo", "detconvert._bundled.configs_detectron": "configs_detectron"}


def _pyproject():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject needs tomllib (Python 3.11+)")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_listed_packages_are_the_package_tree_plus_the_bundled_data():
    from setuptools import find_packages

    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = set(find_packages(str(ROOT), include=["detconvert*"]))
    assert listed - set(BUNDLED) == found, "pyproject's packages list is out of date with detconvert/'s folders"
    assert _pyproject()["tool"]["setuptools"]["package-dir"] == BUNDLED


def _tracked_copy(dest: Path) -> Path:
    """The files a clone would have (git ls-files), or the tree without build outputs when git is absent."""
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in files.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = None
    if names is None:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__"))
        return dest
    for name in names:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools", reason="building a wheel without isolation needs setuptools")
    src = _tracked_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("detconvert-*.whl")
    return path


def test_the_wheel_holds_the_catalogue_every_config_and_the_demo_model(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "detconvert/_bundled/model_zoo/catalogue.json" in names
    configs = {n for n in names if n.startswith("detconvert/_bundled/configs_detectron/") and n.endswith(".yaml")}
    on_disk = {f"detconvert/_bundled/configs_detectron/{p.relative_to(ROOT / 'configs_detectron')}"
               for p in (ROOT / "configs_detectron").glob("*/*.yaml")}
    assert configs == on_disk and len(configs) >= 87
    assert "detconvert/data/demo/shapes_model_final.pkl" in names


def test_zoo_list_runs_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The wheel's detconvert comes first on the path (an editable install's finder is consulted after it).
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import detconvert, detconvert.zoo.catalogue as c, detconvert.config.bundle as b; "
             "print(detconvert.__file__); print(c.CATALOGUE_PATH); print(b.BUNDLE_DIR)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    package, catalogue, bundle = (Path(line) for line in result.stdout.split())
    assert package.parent == site / "detconvert"
    assert catalogue == site / "detconvert" / "_bundled" / "model_zoo" / "catalogue.json" and catalogue.is_file()
    assert bundle == site / "detconvert" / "_bundled" / "configs_detectron"
    listing = subprocess.run([sys.executable, "-m", "detconvert", "zoo", "list", "--type", "keypoint"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "keypoint_rcnn" in listing.stdout
