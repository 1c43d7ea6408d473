"""The Detectron model zoo: catalogue (names, ids, configs, metrics) and safe, cached downloads."""
from detconvert.zoo.catalogue import ENTRY_TYPES, Catalogue, ReportedResult, ZooEntry, load_catalogue
from detconvert.zoo.download import (
    cached_file,
    default_cache_dir,
    fetch,
    fetch_name,
    model_base_url,
    resolve_weights,
)

__all__ = [
    "ENTRY_TYPES",
    "Catalogue",
    "ReportedResult",
    "ZooEntry",
    "cached_file",
    "default_cache_dir",
    "fetch",
    "fetch_name",
    "load_catalogue",
    "model_base_url",
    "resolve_weights",
]
