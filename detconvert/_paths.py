"""Where detconvert's data lives: its own (the model-zoo catalogue, the translated configs) and the shared
Detectron reference data (``../shared`` beside the repository; tests and tools read it in place, the library
never needs it at run time).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def bundled_dir(name: str) -> Path:
    """``model_zoo`` or ``configs_detectron``: in a wheel ``detconvert/_bundled/<name>/`` (pyproject's
    package-dir puts them there), in a checkout or an editable install the repository's ``<name>/``."""
    in_wheel = PACKAGE_DIR / "_bundled" / name
    return in_wheel if in_wheel.is_dir() else REPO_ROOT / name


def shared_dir() -> Optional[Path]:
    """``$DETCONVERT_SHARED`` or ``<repo>/../shared``; None when absent (a user's fresh clone)."""
    env = os.environ.get("DETCONVERT_SHARED")
    candidate = Path(env) if env else REPO_ROOT.parent / "shared"
    return candidate if (candidate / "reference").is_dir() else None
