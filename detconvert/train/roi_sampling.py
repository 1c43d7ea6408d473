"""RoI sampling and box-head targets (``roi_data/fast_rcnn.py``, the proposal-labelling ops).

Training proposals are merged into the gt roidb entry (so gt boxes are candidates too), each labelled
by its best-overlapping gt; ``FG_FRACTION * BATCH_SIZE_PER_IM`` fg RoIs (IoU >= ``FG_THRESH``) and the
rest bg (IoU in ``[BG_THRESH_LO, BG_THRESH_HI)``) are drawn without replacement. Crowd gts have overlap
-1 and are never drawn. Box targets are class-specific with ``MODEL.BBOX_REG_WEIGHTS`` (10, 10, 5, 5).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from detconvert.ops.fpn_levels import distribute_rois_to_levels, map_rois_to_fpn_levels
from detconvert.train.keypoint_targets import add_keypoint_rcnn_blobs, finalize_keypoint_minibatch
from detconvert.train.mask_targets import add_mask_rcnn_blobs
from detconvert.train.roidb import RoidbEntry, add_bbox_regression_targets, add_proposals
from detconvert.train.sampling import RandomSource

__all__ = ["collect_training_proposals", "sample_rois", "add_multilevel_rois", "proposal_targets"]


def collect_training_proposals(rois_per_level: Sequence[np.ndarray], scores_per_level: Sequence[np.ndarray], post_nms_top_n: int) -> np.ndarray:
    """Top ``TRAIN.RPN_POST_NMS_TOP_N`` proposals over all FPN levels (``collect_and_distribute...collect``).

    Detectron sorts with ``np.argsort(-scores)``; ties are vanishingly rare with float scores.
    """
    rois = np.concatenate(list(rois_per_level))
    scores = np.concatenate(list(scores_per_level)).reshape(-1)
    order = np.argsort(-scores)[:post_nms_top_n]
    return rois[order]


def _expand_bbox_targets(compact: np.ndarray, cfg: Any):
    """``fast_rcnn._expand_bbox_targets``: ``(cls, t)`` rows -> 4 columns per class, inside weights 1 there."""
    num_reg_classes = 2 if cfg.cls_agnostic_bbox_reg else cfg.num_classes
    clss = compact[:, 0]
    targets = np.zeros((clss.size, 4 * num_reg_classes), dtype=np.float32)
    inside = np.zeros_like(targets)
    for ind in np.where(clss > 0)[0]:
        start = 4 * int(clss[ind])
        targets[ind, start : start + 4] = compact[ind, 1:]
        inside[ind, start : start + 4] = 1.0
    return targets, inside


def sample_rois(entry: RoidbEntry, im_scale: float, batch_idx: int, cfg: Any, rng: RandomSource, trace: Optional[Dict[str, Any]] = None) -> Dict[str, np.ndarray]:
    """Sample one image's RoIs and build their targets (``fast_rcnn._sample_rois``).

    Both draws are ``choice`` calls even when every candidate is kept (so the order is random too).

    Args:
        entry: roidb entry with proposals merged and ``bbox_targets``.
        im_scale: the image's scale (float32 from ``im_info``).
        batch_idx: image index.
        cfg: a TrainConfig.
        rng: random source.
        trace: optional dict receiving ``fg_inds``/``bg_inds``/``keep_inds``.

    Returns:
        ``rois`` ``[R, 5]``, ``labels_int32``, ``bbox_targets``, ``bbox_inside_weights``,
        ``bbox_outside_weights`` (+ mask / keypoint blobs when configured).
    """
    rois_per_image = int(cfg.batch_size_per_im)
    fg_rois_per_image = int(np.round(cfg.fg_fraction * rois_per_image))
    max_overlaps = entry["max_overlaps"]
    fg_inds = np.where(max_overlaps >= cfg.fg_thresh)[0]
    fg_this_image = int(min(fg_rois_per_image, fg_inds.size))
    if fg_inds.size > 0:
        fg_inds = rng.choice(fg_inds, fg_this_image)
    bg_inds = np.where((max_overlaps < cfg.bg_thresh_hi) & (max_overlaps >= cfg.bg_thresh_lo))[0]
    bg_this_image = int(min(rois_per_image - fg_this_image, bg_inds.size))
    if bg_inds.size > 0:
        bg_inds = rng.choice(bg_inds, bg_this_image)
    keep = np.append(fg_inds, bg_inds).astype(np.int64)
    if trace is not None:
        trace.update(fg_inds=fg_inds, bg_inds=bg_inds, keep_inds=keep)
    labels = entry["max_classes"][keep].copy()
    labels[fg_this_image:] = 0
    boxes = entry["boxes"][keep]
    targets, inside = _expand_bbox_targets(entry["bbox_targets"][keep], cfg)
    outside = np.array(inside > 0, dtype=inside.dtype)
    rois = (boxes * np.float32(im_scale)).astype(np.float32)
    rois = np.hstack((np.full((rois.shape[0], 1), batch_idx, dtype=np.float32), rois))
    blobs = {
        "labels_int32": labels.astype(np.int32),
        "rois": rois,
        "bbox_targets": targets,
        "bbox_inside_weights": inside,
        "bbox_outside_weights": outside,
    }
    if cfg.mask_on:
        add_mask_rcnn_blobs(blobs, boxes, entry, im_scale, batch_idx, cfg)
    if cfg.keypoints_on:
        add_keypoint_rcnn_blobs(blobs, entry, fg_rois_per_image, im_scale, batch_idx, cfg, rng)
    return blobs


def add_multilevel_rois(blobs: Dict[str, np.ndarray], cfg: Any) -> None:
    """Per-level ``<name>_fpn<l>`` blobs and ``<name>_idx_restore_int32`` (``fast_rcnn._add_multilevel_rois``)."""
    names = ["rois"] + (["mask_rois"] if cfg.mask_on else []) + (["keypoint_rois"] if cfg.keypoints_on else [])
    for name in names:
        rois = torch.from_numpy(blobs[name])
        levels = map_rois_to_fpn_levels(
            rois[:, 1:5],
            cfg.roi_min_level,
            cfg.roi_max_level,
            canonical_scale=cfg.roi_canonical_scale,
            canonical_level=cfg.roi_canonical_level,
        )
        per_level, restore = distribute_rois_to_levels(rois, levels, cfg.roi_min_level, cfg.roi_max_level)
        for lvl, r in zip(range(cfg.roi_min_level, cfg.roi_max_level + 1), per_level):
            blobs[f"{name}_fpn{lvl}"] = r.numpy().reshape(-1, rois.shape[1])
        blobs[f"{name}_idx_restore_int32"] = restore.numpy().astype(np.int32)


def proposal_targets(
    rois: np.ndarray,
    roidb: Sequence[RoidbEntry],
    im_info: np.ndarray,
    cfg: Any,
    rng: RandomSource,
    traces: Optional[List[Dict[str, Any]]] = None,
) -> Dict[str, np.ndarray]:
    """RoI-head training blobs from RPN proposals (``GenerateProposalLabelsOp`` /
    ``CollectAndDistributeFpnRpnProposalsOp(train=True)`` after collection).

    The roidb entries are copied (the caller's stay untouched), proposals merged in
    (:func:`~detconvert.train.roidb.add_proposals`), box targets recomputed, then each image sampled.

    Args:
        rois: float32 ``[R, 5]`` proposals at network scale (FPN: already collected).
        roidb: the minibatch entries.
        im_info: float32 ``[N, 3]`` (height, width, scale).
        cfg: a TrainConfig.
        rng: random source.
        traces: optional list receiving per-image sampling traces and merged entries.

    Returns:
        The blob dict (Detectron names); ``valid`` (bool) is added for keypoint minibatches.
    """
    entries = [copy.deepcopy(e) for e in roidb]
    im_scales = im_info[:, 2]
    add_proposals(entries, rois, im_scales)
    add_bbox_regression_targets(entries, cfg)
    per_image: Dict[str, List[np.ndarray]] = {}
    for im_i, entry in enumerate(entries):
        trace: Optional[Dict[str, Any]] = {"entry": entry} if traces is not None else None
        for k, v in sample_rois(entry, im_scales[im_i], im_i, cfg, rng, trace).items():
            per_image.setdefault(k, []).append(v)
        if traces is not None:
            traces.append(trace)
    blobs = {k: np.concatenate(v) for k, v in per_image.items()}
    if cfg.fpn_on:
        add_multilevel_rois(blobs, cfg)
    if cfg.keypoints_on:
        blobs["valid"] = np.array(finalize_keypoint_minibatch(blobs, cfg))
    return blobs
