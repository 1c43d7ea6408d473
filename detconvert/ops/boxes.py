"""Detectron's box arithmetic (``utils/boxes.py`` and ``utils/cython_bbox.pyx``) on torch tensors.

Every function uses Detectron's inclusive pixel convention: a box ``[x1, y1, x2, y2]`` has width
``x2 - x1 + 1``. Decoding is done in the dtype of the deltas (float32 in the network), with the
operations in Detectron's order so that results agree to float32 rounding.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BBOX_XFORM_CLIP",
    "boxes_area",
    "bbox_transform",
    "bbox_transform_inv",
    "clip_tiled_boxes",
    "expand_boxes",
    "bbox_overlaps",
]

#: ``cfg.BBOX_XFORM_CLIP``: upper bound of the decoded log-width/height deltas, log(1000 / 16).
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)


def boxes_area(boxes: Tensor) -> Tensor:
    """Areas ``(x2 - x1 + 1) * (y2 - y1 + 1)`` (``utils/boxes.boxes_area``).

    Args:
        boxes: ``[N, 4]`` inclusive boxes.

    Returns:
        ``[N]`` areas in the dtype of ``boxes``.
    """
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def bbox_transform(
    boxes: Tensor,
    deltas: Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clip: float = BBOX_XFORM_CLIP,
) -> Tensor:
    """Decode regression deltas into boxes (``utils/boxes.bbox_transform``).

    ``w = x2 - x1 + 1``, ``cx = x1 + 0.5 w``; ``dx / wx`` etc., ``dw, dh`` clipped above at ``clip``;
    the output is ``[cx' - 0.5 w', cy' - 0.5 h', cx' + 0.5 w' - 1, cy' + 0.5 h' - 1]``.

    Args:
        boxes: ``[N, 4]`` reference boxes (anchors or RoIs); cast to the dtype of ``deltas`` first, as
            Detectron does.
        deltas: ``[N, 4 * K]`` deltas ``(dx, dy, dw, dh)`` for K classes (class k at ``4k:4k+4``).
        weights: ``(wx, wy, ww, wh)``: (1, 1, 1, 1) for RPN/RetinaNet, ``MODEL.BBOX_REG_WEIGHTS`` =
            (10, 10, 5, 5) for the box head.
        clip: ``cfg.BBOX_XFORM_CLIP``.

    Returns:
        ``[N, 4 * K]`` decoded boxes, dtype of ``deltas``.
    """
    if boxes.shape[0] == 0:
        return deltas.new_zeros((0, deltas.shape[1]))
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2:3] - boxes[:, 0:1] + 1.0
    heights = boxes[:, 3:4] - boxes[:, 1:2] + 1.0
    ctr_x = boxes[:, 0:1] + 0.5 * widths
    ctr_y = boxes[:, 1:2] + 0.5 * heights

    wx, wy, ww, wh = (float(w) for w in weights)
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=clip)
    dh = (deltas[:, 3::4] / wh).clamp(max=clip)

    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights

    x1 = pred_ctr_x - 0.5 * pred_w
    y1 = pred_ctr_y - 0.5 * pred_h
    # The "- 1" of x2/y2 is Detectron's inclusive convention, not an asymmetry bug.
    x2 = pred_ctr_x + 0.5 * pred_w - 1
    y2 = pred_ctr_y + 0.5 * pred_h - 1
    return torch.stack([x1, y1, x2, y2], dim=2).reshape(deltas.shape)


def bbox_transform_inv(
    boxes: Tensor, gt_boxes: Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)
) -> Tensor:
    """Regression targets taking ``boxes`` to ``gt_boxes`` (``utils/boxes.bbox_transform_inv``).

    Args:
        boxes: ``[N, 4]`` reference boxes.
        gt_boxes: ``[N, 4]`` target boxes.
        weights: ``(wx, wy, ww, wh)`` multiplied onto the targets.

    Returns:
        ``[N, 4]`` deltas ``(dx, dy, dw, dh)``.
    """
    ex_w = boxes[:, 2] - boxes[:, 0] + 1.0
    ex_h = boxes[:, 3] - boxes[:, 1] + 1.0
    ex_cx = boxes[:, 0] + 0.5 * ex_w
    ex_cy = boxes[:, 1] + 0.5 * ex_h
    gt_w = gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0
    gt_h = gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0
    gt_cx = gt_boxes[:, 0] + 0.5 * gt_w
    gt_cy = gt_boxes[:, 1] + 0.5 * gt_h
    wx, wy, ww, wh = (float(w) for w in weights)
    return torch.stack(
        [
            wx * (gt_cx - ex_cx) / ex_w,
            wy * (gt_cy - ex_cy) / ex_h,
            ww * torch.log(gt_w / ex_w),
            wh * torch.log(gt_h / ex_h),
        ],
        dim=1,
    )


def clip_tiled_boxes(boxes: Tensor, height: float, width: float) -> Tensor:
    """Clip ``[N, 4K]`` boxes to ``[0, width - 1] x [0, height - 1]`` (``utils/boxes.clip_tiled_boxes``).

    Args:
        boxes: ``[N, 4 * K]`` boxes (not modified).
        height: image height (RPN: the padded blob height from ``im_info``; final boxes: the original image).
        width: image width.

    Returns:
        A new ``[N, 4 * K]`` tensor.
    """
    n = boxes.shape[0]
    tiled = boxes.reshape(n, -1, 4)
    upper = boxes.new_tensor([width - 1.0, height - 1.0, width - 1.0, height - 1.0])
    # Detectron: max(min(b, W - 1), 0) -- the min first, then the max.
    return torch.maximum(torch.minimum(tiled, upper), boxes.new_zeros(())).reshape(boxes.shape)


ArrayLike = Union[np.ndarray, Tensor]


def expand_boxes(boxes: ArrayLike, scale: float) -> np.ndarray:
    """Scale boxes about their centres (``utils/boxes.expand_boxes``), used by the mask paste.

    Half-sizes are ``(x2 - x1) / 2`` -- no ``+1`` here -- and the result is float64, as Detectron's
    ``np.zeros(boxes.shape)`` output is.

    Args:
        boxes: ``[N, 4]`` boxes (NumPy or torch).
        scale: expansion factor, ``(M + 2) / M`` for the mask paste.

    Returns:
        float64 NumPy ``[N, 4]``.
    """
    b = boxes.detach().cpu().numpy() if isinstance(boxes, Tensor) else np.asarray(boxes)
    w_half = (b[:, 2] - b[:, 0]) * 0.5
    h_half = (b[:, 3] - b[:, 1]) * 0.5
    x_c = (b[:, 2] + b[:, 0]) * 0.5
    y_c = (b[:, 3] + b[:, 1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    out = np.zeros(b.shape)
    out[:, 0] = x_c - w_half
    out[:, 2] = x_c + w_half
    out[:, 1] = y_c - h_half
    out[:, 3] = y_c + h_half
    return out


def bbox_overlaps(boxes: Tensor, query_boxes: Tensor) -> Tensor:
    """Pairwise IoU with ``+1`` widths (``utils/cython_bbox.bbox_overlaps``).

    Computed in float32 like the Cython kernel; pairs whose intersection width or height is not
    positive get exactly 0.

    Args:
        boxes: ``[N, 4]``.
        query_boxes: ``[K, 4]``.

    Returns:
        float32 ``[N, K]``.
    """
    b = boxes.to(torch.float32)
    q = query_boxes.to(torch.float32)
    q_area = (q[:, 2] - q[:, 0] + 1) * (q[:, 3] - q[:, 1] + 1)
    b_area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    iw = torch.minimum(b[:, None, 2], q[None, :, 2]) - torch.maximum(b[:, None, 0], q[None, :, 0]) + 1
    ih = torch.minimum(b[:, None, 3], q[None, :, 3]) - torch.maximum(b[:, None, 1], q[None, :, 1]) + 1
    inter = iw * ih
    union = b_area[:, None] + q_area[None, :] - inter
    overlaps = inter / union
    return torch.where((iw > 0) & (ih > 0), overlaps, torch.zeros((), dtype=overlaps.dtype, device=overlaps.device))
