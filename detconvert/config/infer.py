"""Detectron's ``assert_and_infer_cfg`` (``detectron/core/config.py``), without side effects.

Detectron derives two keys after merging and then makes the cfg immutable:

* ``RPN.RPN_ON`` is set when ``MODEL.RPN_ONLY`` or ``MODEL.FASTER_RCNN`` (the model has an RPN);
* ``TEST.PRECOMPUTED_PROPOSALS`` is cleared when ``RPN.RPN_ON`` or ``RETINANET.RETINANET_ON``
  (proposals come from the network, not from a file).

``cache_cfg_urls`` (downloading URLs and rewriting the paths) is deliberately not run: paths stay
as written (the cfgs Detectron embedded were written without it too). Immutability is
:class:`~detconvert.config.frozen.FrozenCfg`.
"""
from __future__ import annotations

from typing import Any, Dict, List

from detconvert.config.frozen import FrozenCfg
from detconvert.config.merge import Change


def assert_and_infer_cfg(cfg: Dict[str, Any]) -> List[Change]:
    """Apply Detectron's inference rules to ``cfg`` in place.

    Args:
        cfg: a merged config tree (mutable).

    Returns:
        The report entries of values that changed.
    """
    changes: List[Change] = []
    if cfg["MODEL"]["RPN_ONLY"] or cfg["MODEL"]["FASTER_RCNN"]:
        if not cfg["RPN"]["RPN_ON"]:
            cfg["RPN"]["RPN_ON"] = True
            changes.append(Change("inferred", "RPN.RPN_ON", False, True, "MODEL.RPN_ONLY or MODEL.FASTER_RCNN (assert_and_infer_cfg)"))
    if cfg["RPN"]["RPN_ON"] or cfg["RETINANET"]["RETINANET_ON"]:
        if cfg["TEST"]["PRECOMPUTED_PROPOSALS"]:
            cfg["TEST"]["PRECOMPUTED_PROPOSALS"] = False
            changes.append(
                Change("inferred", "TEST.PRECOMPUTED_PROPOSALS", True, False, "RPN.RPN_ON or RETINANET.RETINANET_ON (assert_and_infer_cfg)")
            )
    return changes


def infer_and_freeze(cfg: Dict[str, Any]) -> FrozenCfg:
    """Infer on a copy and return it immutable (Detectron's ``cfg.immutable(True)``)."""
    work = FrozenCfg(cfg).to_dict()
    assert_and_infer_cfg(work)
    return FrozenCfg(work)
