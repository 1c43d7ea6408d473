"""Detectron configs: faithful defaults, merge, translation and the typed architecture spec.

Public API::

    DEFAULTS                       # Detectron's defaults, frozen (default_cfg() for a mutable copy)
    translate_config(source, *, dataset=None, weights_cfg_or_blobs=None, overrides=(), source_name=None)
        -> TranslatedConfig        # .cfg, .detectron_cfg, .report, .hints, .to_yaml()
    build_spec(cfg) -> ArchSpec    # detconvert.spec
    explain(spec) -> str
"""
from __future__ import annotations

from detconvert.config.build_spec import build_spec, explain
from detconvert.config.defaults import DEPRECATED_KEYS, ENVIRONMENT_KEYS, RENAMED_KEYS, default_cfg, flatten
from detconvert.config.frozen import FrozenCfg
from detconvert.config.infer import assert_and_infer_cfg, infer_and_freeze
from detconvert.config.merge import Change, merge_cfg, merge_from_list
from detconvert.config.translate import HINT_KEYS, VARIANT_KEYS, TranslatedConfig, translate_config

DEFAULTS = FrozenCfg(default_cfg())

__all__ = [
    "DEFAULTS",
    "DEPRECATED_KEYS",
    "ENVIRONMENT_KEYS",
    "HINT_KEYS",
    "RENAMED_KEYS",
    "VARIANT_KEYS",
    "Change",
    "FrozenCfg",
    "TranslatedConfig",
    "assert_and_infer_cfg",
    "build_spec",
    "default_cfg",
    "explain",
    "flatten",
    "infer_and_freeze",
    "merge_cfg",
    "merge_from_list",
    "translate_config",
]
