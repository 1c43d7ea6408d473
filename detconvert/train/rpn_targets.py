"""RPN anchor labels and box targets (``roi_data/rpn.py``, ``roi_data/data_utils.py``).

Anchors cover a fixed field sized for the largest training image (``FPN.COARSEST_STRIDE *
ceil(TRAIN.MAX_SIZE / COARSEST_STRIDE) / stride`` cells per side); the network crops the "wide" blobs
to its actual output size (Caffe2 ``SpatialNarrowAs``) before the loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from detconvert.ops.anchors import generate_anchors
from detconvert.train.roidb import RoidbEntry, bbox_overlaps, bbox_transform_inv
from detconvert.train.sampling import RandomSource

__all__ = ["FieldOfAnchors", "field_of_anchors", "rpn_fields", "rpn_targets_for_image", "add_rpn_blobs"]


@dataclass(frozen=True)
class FieldOfAnchors:
    """``data_utils.FieldOfAnchors``: all anchors of one feature level, ``(H, W, A)`` row-major."""

    anchors: np.ndarray  # float32 [field_size * field_size * A, 4]
    num_cell_anchors: int
    stride: float
    field_size: int
    octave: Optional[int] = None
    aspect: Optional[int] = None


def field_of_anchors(
    stride: float,
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    cfg: Any,
    octave: Optional[int] = None,
    aspect: Optional[int] = None,
) -> FieldOfAnchors:
    """Anchors on the whole fixed-size field (``data_utils.get_field_of_anchors``).

    Args:
        stride: feature stride.
        sizes: anchor sizes.
        aspect_ratios: aspect ratios.
        cfg: provides ``coarsest_stride`` and ``max_size``.
        octave: RetinaNet octave index of this field (bookkeeping only).
        aspect: RetinaNet aspect index of this field (bookkeeping only).

    Returns:
        The field; anchors are summed in float64 and stored as float32, as Detectron does.
    """
    cell = generate_anchors(stride=stride, sizes=tuple(sizes), aspect_ratios=tuple(aspect_ratios))
    max_size = cfg.coarsest_stride * np.ceil(cfg.max_size / float(cfg.coarsest_stride))
    size = int(np.ceil(max_size / float(stride)))
    shifts = np.arange(0, size) * stride
    sx, sy = np.meshgrid(shifts, shifts)
    sx, sy = sx.ravel(), sy.ravel()
    shifts4 = np.stack([sx, sy, sx, sy], axis=1)
    anchors = (cell[None, :, :] + shifts4[:, None, :]).reshape(-1, 4)
    return FieldOfAnchors(anchors.astype(np.float32), cell.shape[0], stride, size, octave, aspect)


def rpn_fields(cfg: Any) -> List[FieldOfAnchors]:
    """The RPN fields: one per FPN level ``RPN_MIN_LEVEL..RPN_MAX_LEVEL`` or the single ``RPN.STRIDE`` one."""
    if cfg.fpn_on:
        return [
            field_of_anchors(
                2.0**lvl,
                (cfg.rpn_anchor_start_size * 2.0 ** (lvl - cfg.rpn_min_level),),
                cfg.fpn_rpn_aspect_ratios,
                cfg,
            )
            for lvl in range(cfg.rpn_min_level, cfg.rpn_max_level + 1)
        ]
    return [field_of_anchors(cfg.rpn_stride, cfg.rpn_sizes, cfg.rpn_aspect_ratios, cfg)]


def _unmap(data: np.ndarray, count: int, inds: np.ndarray, fill: float) -> np.ndarray:
    """``data_utils.unmap``: scatter ``data`` back to ``count`` rows, others ``fill``."""
    if count == len(inds):
        return data
    out = np.full((count,) + data.shape[1:], fill, dtype=data.dtype)
    out[inds] = data
    return out


def rpn_targets_for_image(
    im_height: float,
    im_width: float,
    fields: Sequence[FieldOfAnchors],
    gt_boxes: np.ndarray,
    cfg: Any,
    rng: RandomSource,
    trace: Optional[Dict[str, np.ndarray]] = None,
) -> List[Dict[str, np.ndarray]]:
    """Labels (1 fg / 0 bg / -1 ignore), targets and loss weights of one image (``rpn._get_rpn_blobs``).

    Fg: for each gt the anchors of maximal IoU (ties included) and anchors with IoU >=
    ``RPN_POSITIVE_OVERLAP``; at most ``RPN_FG_FRACTION * RPN_BATCH_SIZE_PER_IM`` kept (``choice``).
    Bg: IoU < ``RPN_NEGATIVE_OVERLAP``, ``RPN_BATCH_SIZE_PER_IM - #fg`` drawn *with replacement*
    (``randint``) so a few less may be enabled. Only anchors inside the image by
    ``RPN_STRADDLE_THRESH`` are labelled (-1 = keep all). Outside weights are ``1 / #labelled``.

    Args:
        im_height: scaled image height (``round(height * scale)``).
        im_width: scaled image width.
        fields: :func:`rpn_fields`.
        gt_boxes: float32 ``[G, 4]`` non-crowd gt boxes at network scale.
        cfg: a TrainConfig.
        rng: the random source.
        trace: if given, filled with the intermediate index sets (for tests).

    Returns:
        One dict per field with ``rpn_labels_int32_wide`` ``[1, A, H, W]``, ``rpn_bbox_targets_wide``,
        ``rpn_bbox_inside_weights_wide``, ``rpn_bbox_outside_weights_wide`` ``[1, 4A, H, W]``.
    """
    all_anchors = np.concatenate([f.anchors for f in fields])
    total = all_anchors.shape[0]
    straddle = cfg.rpn_straddle_thresh
    if straddle >= 0:
        inds_inside = np.where(
            (all_anchors[:, 0] >= -straddle)
            & (all_anchors[:, 1] >= -straddle)
            & (all_anchors[:, 2] < im_width + straddle)
            & (all_anchors[:, 3] < im_height + straddle)
        )[0]
    else:
        inds_inside = np.arange(total)
    anchors = all_anchors[inds_inside]
    num_inside = len(inds_inside)
    labels = np.full(num_inside, -1, dtype=np.int32)
    if len(gt_boxes) > 0:
        overlaps = bbox_overlaps(anchors, gt_boxes)
        anchor_to_gt_argmax = overlaps.argmax(axis=1)
        anchor_to_gt_max = overlaps[np.arange(num_inside), anchor_to_gt_argmax]
        gt_to_anchor_argmax = overlaps.argmax(axis=0)
        gt_to_anchor_max = overlaps[gt_to_anchor_argmax, np.arange(overlaps.shape[1])]
        anchors_with_max_overlap = np.where(overlaps == gt_to_anchor_max)[0]
        labels[anchors_with_max_overlap] = 1
        labels[anchor_to_gt_max >= cfg.rpn_positive_overlap] = 1
    else:
        anchor_to_gt_argmax = np.zeros(num_inside, dtype=np.int64)
        anchor_to_gt_max = np.zeros(num_inside, dtype=np.float32)
        gt_boxes = np.zeros((1, 4), dtype=np.float32)

    num_fg = int(cfg.rpn_fg_fraction * cfg.rpn_batch_size_per_im)
    fg_inds = np.where(labels == 1)[0]
    if len(fg_inds) > num_fg:
        labels[rng.choice(fg_inds, len(fg_inds) - num_fg)] = -1
    fg_inds = np.where(labels == 1)[0]

    num_bg = cfg.rpn_batch_size_per_im - int(np.sum(labels == 1))
    bg_candidates = np.where(anchor_to_gt_max < cfg.rpn_negative_overlap)[0]
    if len(bg_candidates) > num_bg:
        labels[bg_candidates[rng.randint(len(bg_candidates), num_bg)]] = 0
    # Detectron only enables bg when there are more candidates than wanted; otherwise (tiny images)
    # no anchor is labelled bg: kept as is.
    if trace is not None:
        trace.update(inds_inside=inds_inside, fg_final=fg_inds, bg_final=np.where(labels == 0)[0])

    bbox_targets = np.zeros((num_inside, 4), dtype=np.float32)
    bbox_targets[fg_inds] = bbox_transform_inv(anchors[fg_inds], gt_boxes[anchor_to_gt_argmax[fg_inds]])
    inside_w = np.zeros((num_inside, 4), dtype=np.float32)
    inside_w[labels == 1] = 1.0
    outside_w = np.zeros((num_inside, 4), dtype=np.float32)
    num_examples = np.sum(labels >= 0)
    outside_w[labels == 1] = 1.0 / num_examples
    outside_w[labels == 0] = 1.0 / num_examples

    labels = _unmap(labels, total, inds_inside, -1)
    bbox_targets = _unmap(bbox_targets, total, inds_inside, 0)
    inside_w = _unmap(inside_w, total, inds_inside, 0)
    outside_w = _unmap(outside_w, total, inds_inside, 0)

    out = []
    start = 0
    for f in fields:
        h = w = f.field_size
        a = f.num_cell_anchors
        end = start + h * w * a

        def wide(x: np.ndarray, channels: int) -> np.ndarray:
            return x[start:end].reshape(1, h, w, channels).transpose(0, 3, 1, 2)

        out.append(
            {
                "rpn_labels_int32_wide": wide(labels, a),
                "rpn_bbox_targets_wide": wide(bbox_targets, 4 * a),
                "rpn_bbox_inside_weights_wide": wide(inside_w, 4 * a),
                "rpn_bbox_outside_weights_wide": wide(outside_w, 4 * a),
            }
        )
        start = end
    return out


def add_rpn_blobs(
    roidb: Sequence[RoidbEntry],
    im_scales: Sequence[float],
    cfg: Any,
    rng: RandomSource,
    traces: Optional[List[Dict[str, np.ndarray]]] = None,
) -> Dict[str, np.ndarray]:
    """RPN training blobs of a minibatch (``rpn.add_rpn_blobs``).

    Args:
        roidb: the minibatch entries (already flipped as needed).
        im_scales: per-image scale factors.
        cfg: a TrainConfig.
        rng: random source (per image: fg ``choice`` if too many, then bg ``randint``).
        traces: optional list receiving one trace dict per image.

    Returns:
        ``im_info`` float32 ``[N, 3]`` and the wide blobs, suffixed ``_fpn<lvl>`` for FPN, concatenated
        over images on axis 0.
    """
    fields = rpn_fields(cfg)
    blobs: Dict[str, List[np.ndarray]] = {"im_info": []}
    for im_i, entry in enumerate(roidb):
        scale = im_scales[im_i]
        im_height = np.round(entry["height"] * scale)
        im_width = np.round(entry["width"] * scale)
        gt_inds = np.where((entry["gt_classes"] > 0) & (entry["is_crowd"] == 0))[0]
        gt_rois = (entry["boxes"][gt_inds, :] * np.float32(scale)).astype(np.float32)
        blobs["im_info"].append(np.array([[im_height, im_width, scale]], dtype=np.float32))
        trace: Optional[Dict[str, np.ndarray]] = {} if traces is not None else None
        per_field = rpn_targets_for_image(im_height, im_width, fields, gt_rois, cfg, rng, trace)
        if traces is not None:
            traces.append(trace)
        for i, fb in enumerate(per_field):
            suffix = f"_fpn{cfg.rpn_min_level + i}" if cfg.fpn_on else ""
            for k, v in fb.items():
                blobs.setdefault(k + suffix, []).append(v)
    return {k: np.concatenate(v) for k, v in blobs.items()}
