"""An immutable, attribute-accessible view of a config tree (Detectron's immutable ``AttrDict``)."""
from __future__ import annotations

import copy
from typing import Any, Dict, Iterator, Mapping

import numpy as np


def _freeze_leaf(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.copy()
        value.setflags(write=False)
    return value


class FrozenCfg(Mapping):
    """Read-only nested mapping: ``cfg.MODEL.NUM_CLASSES`` or ``cfg['MODEL']['NUM_CLASSES']``.

    Sub-sections are :class:`FrozenCfg` too; arrays are read-only; lists (``SOLVER.STEPS``) are
    returned as copies, so the tree itself can never change. :meth:`to_dict` gives a mutable copy.
    """

    __slots__ = ("_data",)

    def __init__(self, tree: Mapping[str, Any]):
        data: Dict[str, Any] = {}
        for key, value in tree.items():
            data[key] = FrozenCfg(value) if isinstance(value, Mapping) else _freeze_leaf(copy.deepcopy(value))
        object.__setattr__(self, "_data", data)

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return list(value) if isinstance(value, list) else value

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"the config is immutable (tried to set {key})")

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        """Equal trees: same keys, leaves equal with the same types (arrays by value)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        from detconvert.config.defaults import values_equal

        mine = self.to_dict()
        theirs = other.to_dict() if isinstance(other, FrozenCfg) else dict(other)
        return values_equal(mine, theirs)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FrozenCfg({self.to_dict()!r})"

    def get_path(self, full_key: str) -> Any:
        """Value of a dotted key, e.g. ``'TEST.BBOX_AUG.ENABLED'``."""
        node: Any = self
        for part in full_key.split("."):
            node = node[part]
        return node

    def to_dict(self) -> Dict[str, Any]:
        """A mutable deep copy as nested plain dicts (arrays writable again)."""
        out: Dict[str, Any] = {}
        for key, value in self._data.items():
            if isinstance(value, FrozenCfg):
                out[key] = value.to_dict()
            elif isinstance(value, np.ndarray):
                out[key] = np.array(value)
            else:
                out[key] = copy.deepcopy(value)
        return out
