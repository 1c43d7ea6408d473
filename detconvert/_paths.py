"""Where the shared Detectron reference data lives (``../shared`` beside the repository).

Tests and tools read it in place; the library never needs it at run time.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Optional[Path]:
    """``$DETCONVERT_SHARED`` or ``<repo>/../shared``; None when absent (a user's fresh clone)."""
    env = os.environ.get("DETCONVERT_SHARED")
    candidate = Path(env) if env else REPO_ROOT.parent / "shared"
    return candidate if (candidate / "reference").is_dir() else None
