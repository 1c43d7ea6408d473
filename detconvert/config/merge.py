"""Merging a YAML (or an embedded cfg, or ``--set`` pairs) onto Detectron's defaults.

Rules follow ``detectron/core/config.py``: ``_merge_a_into_b`` (every key must exist in the
defaults; deprecated keys are skipped), ``_decode_cfg_value`` (strings go through
``ast.literal_eval``, so ``"(800,)"`` becomes a tuple and ``"foo/bar"`` stays a string) and
``_check_and_coerce_cfg_value_type`` (the type must equal the default's, except: anything is
turned into the default's ndarray dtype, anything into ``str`` for a string key, tuple<->list).

Where Detectron raises a bare ``KeyError``/``ValueError`` we raise a one-line
:class:`~detconvert.errors.ConfigError` naming the file, the key, the nearest valid key or the
expected and given types. Renamed keys (``_RENAMED_KEYS``), which Detectron refuses, are
converted and reported instead.
"""
from __future__ import annotations

import difflib
from ast import literal_eval
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from detconvert.config.defaults import DEPRECATED_KEYS, RENAMED_KEYS, all_keys
from detconvert.errors import ConfigError


@dataclass(frozen=True)
class Change:
    """One entry of the translation report.

    Attributes:
        kind: ``deprecated`` (ignored), ``renamed`` (old key), ``alias`` (a module/type name mapped),
            ``prefix`` (``add_`` stripped), ``inferred`` (set by Detectron's inference or ours),
            ``hint`` (removed from the network config, kept as a hint), ``variant`` (a
            Detectron.pytorch key understood), ``override`` (``--set``), ``num_classes``.
        key: the full config key.
        old: the value before (None when not applicable).
        new: the value after (None when removed).
        reason: why, in words (cites the Detectron function a rule comes from).
    """

    kind: str
    key: str
    old: Any
    new: Any
    reason: str

    def line(self) -> str:
        """One human-readable line."""
        if self.kind in ("hint", "deprecated"):
            return f"{self.kind:<11} {self.key} = {_show(self.old)}  ({self.reason})"
        if self.kind == "renamed":
            return f"{self.kind:<11} {self.key} -> {self.new}  ({self.reason})"
        return f"{self.kind:<11} {self.key}: {_show(self.old)} -> {_show(self.new)}  ({self.reason})"

    def to_json(self) -> Dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "old": _jsonable(self.old), "new": _jsonable(self.new), "reason": self.reason}


def _show(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return repr(value.tolist())
    return repr(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def decode_value(value: Any) -> Any:
    """Detectron's ``_decode_cfg_value``: strings through ``literal_eval`` where it parses."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        return value
    try:
        return literal_eval(value)
    except (ValueError, SyntaxError):  # a plain string such as a path or a module name
        return value
    except (TypeError, MemoryError, RecursionError):  # pathological text: keep it a string
        return value


def _type_name(value: Any) -> str:
    if isinstance(value, Mapping):
        return "section"
    return type(value).__name__


def coerce_value(value: Any, default: Any, full_key: str, source: Optional[str]) -> Any:
    """Detectron's ``_check_and_coerce_cfg_value_type``, with a readable error."""
    if isinstance(default, Mapping) and isinstance(value, Mapping):
        return value
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
        _check_numbers(value, default, full_key, source)
    if type(value) is type(default):
        return value
    if isinstance(default, np.ndarray):
        try:
            return np.array(value, dtype=default.dtype)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"key {full_key}: expected an array of numbers, given {value!r}", source) from exc
    if isinstance(default, str) and not isinstance(value, Mapping):
        return str(value)
    if isinstance(value, tuple) and isinstance(default, list):
        return list(value)
    if isinstance(value, list) and isinstance(default, tuple):
        return tuple(value)
    raise ConfigError(
        f"key {full_key}: wrong type: expected {_type_name(default)} (like {default!r}), "
        f"given {_type_name(value)} {value!r}",
        source,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_numbers(value: Sequence[Any], default: Sequence[Any], full_key: str, source: Optional[str]) -> None:
    """A list/tuple whose default holds numbers must hold numbers. Detectron checks only the container type
    and fails later, in the box or anchor code that does arithmetic on a string; we name the key now."""
    if default and all(_is_number(d) for d in default) and not all(_is_number(v) for v in value):
        bad = next(v for v in value if not _is_number(v))
        raise ConfigError(f"key {full_key}: expected numbers (like {tuple(default)!r}), given {_type_name(bad)} "
                          f"{bad!r} in it", source)


def nearest_key(full_key: str) -> Optional[str]:
    """The valid Detectron key closest to ``full_key`` (difflib), or None."""
    candidates = all_keys()
    match = difflib.get_close_matches(full_key, candidates, n=1, cutoff=0.6)
    if not match:  # a typo in the section name: compare the last part within all sections
        leaf = full_key.rsplit(".", 1)[-1]
        by_leaf = [k for k in candidates if k.rsplit(".", 1)[-1] == leaf]
        match = by_leaf[:1]
    return match[0] if match else None


def unknown_key_error(full_key: str, source: Optional[str]) -> ConfigError:
    near = nearest_key(full_key)
    hint = f"; did you mean {near}?" if near else ""
    return ConfigError(f"unknown config key {full_key}{hint}", source)


def _split_colon(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part for part in value.split(":") if part)
    return value


def convert_renamed(full_key: str, value: Any, source: Optional[str]) -> Tuple[str, Any]:
    """Apply one of Detectron's ``_RENAMED_KEYS`` (which Detectron itself refuses), converting the value."""
    new_key, _ = RENAMED_KEYS[full_key]
    value = decode_value(value)
    if new_key in ("TRAIN.DATASETS", "TRAIN.PROPOSAL_FILES", "TEST.DATASETS", "TEST.PROPOSAL_FILES"):
        value = _split_colon(value)
    elif new_key == "TEST.SCALE" and isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ConfigError(
                f"key {full_key} (renamed {new_key}) lists {len(value)} scales; Detectron tests at one scale "
                "(use TEST.BBOX_AUG.SCALES for test-time augmentation)",
                source,
            )
        value = value[0]
    return new_key, value


def _get_parent(tree: Dict[str, Any], full_key: str) -> Tuple[Optional[Dict[str, Any]], str]:
    parts = full_key.split(".")
    node: Any = tree
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return None, parts[-1]
        node = node[part]
    return (node if isinstance(node, dict) else None), parts[-1]


def set_value(tree: Dict[str, Any], full_key: str, value: Any, source: Optional[str]) -> Any:
    """Decode, type-check and set one dotted key (Detectron's ``merge_cfg_from_list`` step); returns the value."""
    parent, leaf = _get_parent(tree, full_key)
    if parent is None or leaf not in parent:
        raise unknown_key_error(full_key, source)
    value = coerce_value(decode_value(value), parent[leaf], full_key, source)
    if isinstance(value, Mapping):
        raise ConfigError(f"key {full_key} is a section; set its keys one by one", source)
    parent[leaf] = value
    return value


def merge_into(
    base: Dict[str, Any],
    other: Mapping[str, Any],
    source: Optional[str] = None,
    changes: Optional[List[Change]] = None,
    stack: Sequence[str] = (),
    root: Optional[Dict[str, Any]] = None,
    drop_unknown: bool = False,
) -> List[Change]:
    """Merge ``other`` onto ``base`` in place, as Detectron's ``_merge_a_into_b`` does.

    Args:
        base: the config tree (defaults plus what was merged before); modified in place.
        other: the YAML / embedded cfg tree.
        source: file name for error messages.
        changes: list the report entries are appended to (deprecated keys, renames).
        stack: the section path (internal).
        root: the whole tree (internal: renamed keys may move to another section).
        drop_unknown: report and skip unknown keys instead of failing. For embedded cfg dumps: a
            ``model_final.pkl`` carries every key of the Detectron version that trained it, including
            keys later removed, and Detectron itself never merges that cfg (it reads it for
            BBOX_REG_WEIGHTS only), so such keys are history, not user error.

    Returns:
        The ``changes`` list.

    Raises:
        ConfigError: an unknown key (with the nearest valid key) or a value of the wrong type.
    """
    changes = [] if changes is None else changes
    root = base if root is None else root
    for key, raw in other.items():
        full_key = ".".join([*stack, str(key)])
        if not isinstance(key, str):  # e.g. YAML reads `ON:` as the boolean True
            raise ConfigError(f"config key {full_key!r} is not a string (YAML reads ON/YES/NO as booleans)", source)
        if key not in base:
            if full_key in DEPRECATED_KEYS:
                changes.append(Change("deprecated", full_key, raw, None, "Detectron ignores this deprecated key (_DEPCRECATED_KEYS)"))
                continue
            if full_key in RENAMED_KEYS:
                new_key, value = convert_renamed(full_key, raw, source)
                set_value(root, new_key, value, source)
                changes.append(Change("renamed", full_key, raw, new_key, f"Detectron renamed it ({RENAMED_KEYS[full_key][1]})"))
                continue
            if drop_unknown:
                changes.append(
                    Change("dropped", full_key, raw, None, "not a key of Detectron's final release (an embedded cfg "
                           "from another Detectron version); ignored")
                )
                continue
            raise unknown_key_error(full_key, source)
        value = coerce_value(decode_value(raw), base[key], full_key, source)
        if isinstance(value, Mapping):
            if not isinstance(base[key], dict):
                raise ConfigError(f"key {full_key}: wrong type: expected {_type_name(base[key])}, given a section", source)
            merge_into(base[key], value, source, changes, [*stack, key], root, drop_unknown)
        else:
            base[key] = value
    return changes


def merge_cfg(
    base: Dict[str, Any], other: Mapping[str, Any], source: Optional[str] = None, drop_unknown: bool = False
) -> List[Change]:
    """Merge a whole config tree onto ``base`` (the root); see :func:`merge_into`."""
    return merge_into(base, other, source, drop_unknown=drop_unknown)


def merge_from_list(base: Dict[str, Any], pairs: Sequence[Tuple[str, Any]], source: Optional[str] = "--set") -> List[Change]:
    """Detectron's ``merge_cfg_from_list``: ``[('TEST.NMS', '0.5'), ...]`` onto ``base``."""
    changes: List[Change] = []
    for full_key, raw in pairs:
        if full_key in DEPRECATED_KEYS:
            changes.append(Change("deprecated", full_key, raw, None, "Detectron ignores this deprecated key"))
            continue
        if full_key in RENAMED_KEYS:
            new_key, value = convert_renamed(full_key, raw, source)
            changes.append(Change("renamed", full_key, raw, new_key, f"Detectron renamed it ({RENAMED_KEYS[full_key][1]})"))
            full_key, raw = new_key, value
        parent, leaf = _get_parent(base, full_key)
        old = parent.get(leaf) if parent is not None else None
        new = set_value(base, full_key, raw, f"{source} {full_key}")
        changes.append(Change("override", full_key, old, new, "set on the command line"))
    return changes
