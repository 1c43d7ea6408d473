"""The project's translated config for every Detectron config (``configs_detectron/``).

Files are named by the Detectron config path (``12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml``)
so model-zoo entries resolve to them directly. ``tools/gen_configs_detectron.py`` writes them; a
test regenerates them in memory and fails when the bundle is stale.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

from detconvert._paths import bundled_dir
from detconvert.config.translate import translate_config
from detconvert.errors import PathLike

BUNDLE_DIR = bundled_dir("configs_detectron")


def bundle_texts(detectron_configs: PathLike) -> Dict[str, str]:
    """``{'<folder>/<name>.yaml': translated YAML text}`` for every config under ``detectron_configs``."""
    root = Path(detectron_configs)
    texts: Dict[str, str] = {}
    for path in sorted(root.glob("*/*.yaml")):
        rel = f"{path.parent.name}/{path.name}"
        texts[rel] = translate_config(path, source_name=f"Detectron configs/{rel}").to_yaml()
    return texts
