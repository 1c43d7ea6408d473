"""Class surgery: change the classes of a converted Detectron model.

:func:`keep_classes` builds the same architecture with ``1 + len(kept)`` classes and copies every
weight; the class-dependent tensors (``cls_score``, ``bbox_pred``, ``mask_fcn_logits`` and its fixed
upsampler, RetinaNet's ``retnet_cls_pred`` and class-specific ``retnet_bbox_pred``) keep the rows of
background and the kept classes, in the given order. The new model's logits for a kept class are the
old logits of that class, so its boxes and masks are the old ones and its class probabilities are the
old ones renormalised over {background} + kept classes where a softmax ties the classes together:
``p'(c) = p(c) / (p(bg) + sum_{k in kept} p(k))`` (Fast R-CNN, RetinaNet with ``SOFTMAX``); a sigmoid
RetinaNet's are the old ones exactly. RetinaNet lays its channels out anchor-major (``a * C + c``, with
``C = K - 1`` classes for the sigmoid, no background channel), so the kept rows are taken per anchor.

:func:`reset_classes` builds a model with ``num_classes`` classes and re-initialises exactly the
class-dependent tensors with Detectron's initialisers (:func:`~detconvert.train.forward.init_for_training`:
``cls_score`` N(0, 0.01), ``bbox_pred`` N(0, 0.001), ``mask_fcn_logits`` N(0, 0.001), RetinaNet's
predictors N(0, 0.01) with the class bias at the background prior; zero biases otherwise).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import torch

from detconvert.errors import DetconvertError
from detconvert.modeling.detector import DetectronModel, build_model
from detconvert.train.forward import init_for_training

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


def _kept_channels(model: DetectronModel, name: str, size: int, keep: Sequence[int]) -> torch.Tensor:
    """Indices along a class-dependent dimension of ``size`` that hold background + the kept classes.

    Class-major blocks (``cls_score`` K, ``bbox_pred`` 4K, ``mask_fcn_logits`` K) or RetinaNet's
    anchor-major ones (``A x C`` with ``C = K - 1`` classes without background for the sigmoid head and
    for the class-specific boxes, ``C = K`` with background for the softmax head).
    """
    old_c = model.spec.num_classes
    head = model.retinanet_head
    if head is not None and name.startswith("retinanet_head."):
        anchors = head.spec.num_anchors
        per_anchor = size // anchors
        with_background = name.startswith("retinanet_head.cls_pred") and head.spec.softmax
        classes = list(keep) if with_background else [k - 1 for k in keep[1:]]
        block = per_anchor // (old_c if with_background else old_c - 1)
        if per_anchor * anchors != size or block * (old_c if with_background else old_c - 1) != per_anchor:
            raise DetconvertError(f"{name}: {size} channels are not {anchors} anchors x classes", "--keep-classes")
        return torch.tensor([a * per_anchor + c * block + j for a in range(anchors) for c in classes
                             for j in range(block)])
    if size % old_c:
        raise DetconvertError(f"{name}: {size} channels are not a multiple of {old_c} classes", "--keep-classes")
    block = size // old_c
    return torch.tensor([c * block + j for c in keep for j in range(block)])


def keep_classes(model: DetectronModel, rows: Sequence[int], class_names: Sequence[str]) -> Tuple[DetectronModel, SurgeryReport]:
    """A model predicting only background + ``rows`` (contiguous class indices of ``model``).

    Args:
        model: the converted model (e.g. 81 COCO classes).
        rows: kept class indices, without background, in the new order.
        class_names: ``model``'s class names (index 0 background), for the report.

    Returns:
        ``(new_model, report)``.
    """
    keep = [0] + list(rows)
    new = _resized_model(model, len(keep))
    old_state = model.state_dict()
    new_state = new.state_dict()
    changed = {}
    for name, new_t in new_state.items():
        old_t = old_state[name]
        t = old_t
        for dim in range(old_t.dim()):
            if old_t.shape[dim] != new_t.shape[dim]:
                t = t.index_select(dim, _kept_channels(model, name, old_t.shape[dim], keep))
        if tuple(t.shape) != tuple(new_t.shape):
            raise DetconvertError(f"cannot map {name} {tuple(old_t.shape)} onto {tuple(new_t.shape)}", "--keep-classes")
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
    init_for_training(new, seed=seed)  # Detectron's initialisers; everything but the class layers is then copied
    old_state = model.state_dict()
    state = new.state_dict()
    changed = {}
    for name, t in state.items():
        old_t = old_state[name]
        if tuple(old_t.shape) == tuple(t.shape):
            state[name] = old_t.clone()
        else:
            changed[name] = (tuple(old_t.shape), tuple(t.shape))
    new.load_state_dict(state)
    return new, SurgeryReport(changed, list(class_names))
