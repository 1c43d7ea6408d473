"""Detectron's NMS (``utils/cython_nms.pyx``) on top of ``torchvision.ops.nms``.

Detectron's greedy NMS differs from torchvision's in three places, all reproduced here:

* **+1 widths**: overlaps use ``x2 - x1 + 1``. torchvision uses ``x2 - x1``, so the boxes are handed
  to it with ``x2 + 1, y2 + 1``.
* **``>=`` suppression**: Detectron suppresses when ``ovr >= thresh`` with ``thresh`` a float32
  (``cython_nms.nms`` declares it ``np.float32_t``); torchvision when ``ovr > thresh``. For float32
  overlaps ``ovr >= float32(t)`` exactly when ``ovr > t'``, ``t'`` the float32 just below ``float32(t)``.
* **Tie-break**: Detectron visits boxes in ``scores.argsort()[::-1]`` order, so among equal scores the
  **highest index** comes first (and survives when they overlap). torchvision's (stable) descending
  sort puts the lowest index first, so the input is reversed before calling it and the indices mapped
  back.
* **Output order**: Detectron returns ``np.where(suppressed == 0)[0]``, the kept indices in
  **ascending index order** (not by score); callers that pre-sort by score (proposal generation) get
  score order, callers that do not (per-class NMS) keep their RoI order.

Soft-NMS is Detectron's Cython ``soft_nms`` (sequential by nature), on NumPy.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torchvision
from torch import Tensor

__all__ = ["nms", "batched_nms", "soft_nms", "suppression_threshold"]


def suppression_threshold(thresh: float) -> float:
    """The strict torchvision threshold equivalent to Detectron's float32 ``ovr >= float32(thresh)``.

    Returns the largest float32 strictly below ``float32(thresh)`` (exactly representable as a double,
    so the CPU kernel's double comparison and the CUDA kernel's float comparison agree).
    """
    return float(np.nextafter(np.float32(thresh), np.float32(-np.inf)))


def nms(boxes: Tensor, scores: Tensor, thresh: float) -> Tensor:
    """Greedy NMS with Detectron's rules (``utils/boxes.nms`` -> ``cython_nms.nms``).

    Args:
        boxes: ``[N, 4]`` inclusive ``[x1, y1, x2, y2]`` boxes (float32 as in Detectron).
        scores: ``[N]`` scores.
        thresh: overlap threshold; a box is suppressed when its IoU with a kept box is ``>= thresh``.

    Returns:
        int64 ``[K]`` indices of the kept boxes in ascending order, as Detectron returns them. Boxes are
        visited by descending score with equal scores from the highest index down, so of two equal-score
        boxes that overlap the one with the higher index is kept.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    # Reverse so that torchvision's stable descending sort visits equal scores from the highest
    # original index down, as Detectron does.
    rev_boxes = boxes.flip(0)
    plus_one = torch.cat([rev_boxes[:, :2], rev_boxes[:, 2:] + 1], dim=1)
    keep_rev = torchvision.ops.nms(plus_one, scores.flip(0), suppression_threshold(thresh))
    return torch.sort((n - 1) - keep_rev).values


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, thresh: float) -> Tensor:
    """Detectron NMS applied independently within each group (e.g. per class).

    Equivalent to running :func:`nms` per group (each group's float32 overlaps are computed exactly as
    for a single call; no coordinate-offset trick that would perturb them).

    Args:
        boxes: ``[N, 4]`` boxes.
        scores: ``[N]`` scores.
        groups: ``[N]`` integer group ids.
        thresh: overlap threshold (``>=`` suppresses).

    Returns:
        int64 indices of kept boxes, grouped by ascending group id, each group in ascending index order.
    """
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.argsort(groups, stable=True)
    sorted_groups = groups[order]
    unique, counts = torch.unique_consecutive(sorted_groups, return_counts=True)
    kept = []
    start = 0
    for count in counts.tolist():
        idx = order[start:start + count]
        start += count
        kept.append(idx[nms(boxes[idx], scores[idx], thresh)])
    return torch.cat(kept)


_SOFT_NMS_METHODS = {"hard": 0, "linear": 1, "gaussian": 2}


def soft_nms(
    dets: np.ndarray,
    sigma: float = 0.5,
    overlap_thresh: float = 0.3,
    score_thresh: float = 0.001,
    method: str = "linear",
) -> Tuple[np.ndarray, np.ndarray]:
    """Soft-NMS (``utils/boxes.soft_nms`` -> ``cython_nms.soft_nms``), float32 like the Cython kernel.

    At step ``i`` the highest-scoring remaining box (first maximum) is swapped into position ``i``;
    every later box's score is multiplied by ``1 - ovr`` if ``ovr > overlap_thresh`` (linear),
    ``exp(-ovr**2 / sigma)`` (gaussian) or 0 if ``ovr > overlap_thresh`` (hard); a box whose score
    falls below ``score_thresh`` is replaced by the last box and dropped. Overlaps use ``+1`` widths.

    Args:
        dets: ``[N, 5]`` rows ``[x1, y1, x2, y2, score]``.
        sigma: gaussian sigma (``TEST.SOFT_NMS.SIGMA``).
        overlap_thresh: ``Nt`` (``TEST.NMS`` in ``box_results_with_nms_and_limit``).
        score_thresh: pruning threshold (0.0001 in ``box_results_with_nms_and_limit``).
        method: ``'linear'``, ``'gaussian'`` or ``'hard'``.

    Returns:
        ``(dets_out [K, 5] float32, keep [K] int64)``: re-scored detections in Detectron's output
        order and their indices into ``dets``.
    """
    if method not in _SOFT_NMS_METHODS:
        raise ValueError(f"unknown soft-NMS method {method!r} (expected linear, gaussian or hard)")
    boxes = np.array(dets, dtype=np.float32, copy=True)
    n = boxes.shape[0]
    if n == 0:
        return boxes, np.zeros((0,), dtype=np.int64)
    inds = np.arange(n)
    f32 = np.float32
    one = f32(1.0)
    sigma32, nt32, thr32 = f32(sigma), f32(overlap_thresh), f32(score_thresh)
    i = 0
    while i < n:
        maxpos = i + int(np.argmax(boxes[i:n, 4]))  # first maximum, as the Cython '<' scan finds
        if maxpos != i:
            boxes[[i, maxpos]] = boxes[[maxpos, i]]
            inds[[i, maxpos]] = inds[[maxpos, i]]
        tx1, ty1, tx2, ty2 = boxes[i, :4]
        t_area = (tx2 - tx1 + one) * (ty2 - ty1 + one)
        pos = i + 1
        while pos < n:
            x1, y1, x2, y2 = boxes[pos, :4]
            iw = min(tx2, x2) - max(tx1, x1) + one
            if iw > 0:
                ih = min(ty2, y2) - max(ty1, y1) + one
                if ih > 0:
                    area = (x2 - x1 + one) * (y2 - y1 + one)
                    ua = f32(t_area + area - iw * ih)
                    ov = f32(iw * ih / ua)
                    if method == "linear":
                        weight = one - ov if ov > nt32 else one
                    elif method == "gaussian":
                        weight = f32(np.exp(-(ov * ov) / sigma32))
                    else:
                        weight = f32(0.0) if ov > nt32 else one
                    boxes[pos, 4] = f32(weight * boxes[pos, 4])
                    if boxes[pos, 4] < thr32:
                        boxes[pos] = boxes[n - 1]
                        inds[pos] = inds[n - 1]
                        n -= 1
                        pos -= 1
            pos += 1
        i += 1
    return boxes[:n], inds[:n].astype(np.int64)
