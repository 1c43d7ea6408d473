"""ArchSpecs for the modeling tests, through the library's own config path.

``../shared/reference/cfg_dumps/<id>.yaml`` (the cfg Detectron embeds in ``model_final.pkl``) ->
:func:`detconvert.config.translate_config` -> :func:`detconvert.config.build_spec`.
"""
from __future__ import annotations

from functools import lru_cache

from detconvert.config import build_spec, translate_config
from detconvert.io.cfg_yaml import load_detectron_cfg_text
from detconvert.spec import ArchSpec
from tests._shared import REFERENCE


@lru_cache(maxsize=None)
def spec_for(config_id: str) -> ArchSpec:
    """The ArchSpec of a Detectron config id (specs are frozen, so caching is safe)."""
    path = REFERENCE / "cfg_dumps" / f"{config_id}.yaml"
    cfg = load_detectron_cfg_text(path.read_text(), source=path)
    return build_spec(translate_config(cfg, source_name=str(path)).cfg)
