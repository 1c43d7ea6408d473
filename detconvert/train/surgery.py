"""Class surgery: change the classes of a converted Detectron model.

:func:`keep_classes` builds the same architecture with ``1 + len(kept)`` classes and copies every
weight; the class-dependent tensors (``cls_score``, ``bbox_pred``, ``mask_fcn_logits`` and its fixed
upsampler) keep the rows of background and the kept classes, in the given order. The new model's
logits for a kept class are the old logits of that class, so its boxes and masks are the old ones and
its class probabilities are the old ones renormalised over {background} + kept classes:
``p'(c) = p(c) / (p(bg) + sum_{k in kept} p(k))`` (the softmax of a subset of the logits).

:func:`reset_classes` builds a model with ``num_classes`` classes and re-initialises exactly the
class-dependent tensors (Detectron's init: ``cls_score`` N(0, 0.01), ``bbox_pred`` N(0, 0.001), zero
biases; masks/keypoints keep their module's default init).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from detconvert.errors import DetconvertError
from detconvert.modeling.detector import DetectronModel, build_model

__all__ = ["SurgeryReport", "class_indices", "keep_classes", "reset_classes"]


@dataclasses.dataclass
class SurgeryReport:
    """What changed: ``{tensor name: (old shape, new shape)}`` and the kept class names."""

    changed: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]]
    classes: List[str]

    def lines(self) -> List[str]:
        """Human-readable summary, one tensor per line."""
        out = [f"classes: {', '.join(self.classes)} ({len(self.classes)} with background)"]
        out += [f"  {name}: {list(a)} -> {list(b)}" for name, (a, b) in sorted(self.changed.items())]
        return out


def class_indices(names: Sequence[str], wanted: Sequence[str], source: str = "--keep-classes") -> List[int]:
    """Contiguous indices of ``wanted`` class names in ``names`` (index 0 = background).

    Raises:
        DetconvertError: a name is unknown (the message lists close names) or repeated.
    """
    out = []
    for w in wanted:
        if w not in names or names.index(w) == 0:
            close = [n for n in names[1:] if w.lower() in n.lower() or n.lower() in w.lower()]
            hint = f"; did you mean {', '.join(close[:3])}?" if close else ""
            raise DetconvertError(f"unknown class '{w}'{hint}", source)
        idx = names.index(w)
        if idx in out:
            raise DetconvertError(f"class '{w}' given twice", source)
        out.append(idx)
    return out


def _resized_model(model: DetectronModel, num_classes: int) -> DetectronModel:
    spec = dataclasses.replace(model.spec, num_classes=num_classes)
    new = build_model(spec)
    new.train(model.training)
    return new


def keep_classes(model: DetectronModel, rows: Sequence[int], class_names: Sequence[str]) -> Tuple[DetectronModel, SurgeryReport]:
    """A model predicting only background + ``rows`` (contiguous class indices of ``model``).

    Args:
        model: the converted model (e.g. 81 COCO classes).
        rows: kept class indices, without background, in the new order.
        class_names: ``model``'s class names (index 0 background), for the report.

    Returns:
        ``(new_model, report)``.
    """
    old_c = model.spec.num_classes
    keep = [0] + list(rows)
    new = _resized_model(model, len(keep))
    old_state = model.state_dict()
    new_state = new.state_dict()
    changed = {}
    index = torch.tensor(keep)
    for name, new_t in new_state.items():
        old_t = old_state[name]
        t = old_t
        for dim in range(old_t.dim()):
            if old_t.shape[dim] != new_t.shape[dim]:
                if old_t.shape[dim] % old_c:
                    raise ValueError(f"{name}: dim {dim} ({old_t.shape[dim]}) is not a multiple of {old_c} classes")
                block = old_t.shape[dim] // old_c
                rows_idx = (index[:, None] * block + torch.arange(block)[None, :]).reshape(-1)
                t = t.index_select(dim, rows_idx)
        if tuple(t.shape) != tuple(new_t.shape):
            raise ValueError(f"{name}: cannot map {tuple(old_t.shape)} onto {tuple(new_t.shape)}")
        if t is not old_t:
            changed[name] = (tuple(old_t.shape), tuple(t.shape))
        new_state[name] = t.clone()
    new.load_state_dict(new_state)
    return new, SurgeryReport(changed, [class_names[i] for i in keep])


def reset_classes(model: DetectronModel, num_classes: int, class_names: Sequence[str], seed: int = 0) -> Tuple[DetectronModel, SurgeryReport]:
    """A model with ``num_classes`` classes: class-dependent tensors re-initialised, the rest copied.

    Args:
        model: source model.
        num_classes: new count including background.
        class_names: new class names (for the report).
        seed: seed of the re-initialisation.
    """
    new = _resized_model(model, num_classes)
    old_state = model.state_dict()
    state = new.state_dict()
    gen = torch.Generator().manual_seed(seed)
    changed = {}
    for name, t in state.items():
        old_t = old_state[name]
        if tuple(old_t.shape) == tuple(t.shape):
            state[name] = old_t.clone()
            continue
        changed[name] = (tuple(old_t.shape), tuple(t.shape))
        if name.endswith("bias"):
            state[name] = torch.zeros_like(t)
        elif "cls_score" in name:
            state[name] = torch.randn(t.shape, generator=gen) * 0.01
        elif "bbox_pred" in name:
            state[name] = torch.randn(t.shape, generator=gen) * 0.001
        # other class-dependent tensors keep the fresh module's initialisation
    new.load_state_dict(state)
    return new, SurgeryReport(changed, list(class_names))
