"""Keypoint R-CNN targets (``roi_data/keypoint_rcnn.py``, ``utils/keypoints.keypoints_to_heatmap_labels``).

Each fg RoI that contains at least one visible keypoint of its gt becomes a keypoint RoI; every keypoint
becomes the flat index ``y * S + x`` of its cell in the ``S x S`` heatmap (``S = KRCNN.HEATMAP_SIZE``,
``floor`` of the RoI-relative position, keypoints exactly on the right/bottom edge moved to ``S - 1``)
with weight 1 if visible and inside, else index 0 / weight 0.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from detconvert.train.roidb import RoidbEntry
from detconvert.train.sampling import RandomSource

__all__ = ["keypoints_to_heatmap_labels", "add_keypoint_rcnn_blobs", "finalize_keypoint_minibatch"]


def keypoints_to_heatmap_labels(keypoints: np.ndarray, rois: np.ndarray, heatmap_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Heatmap cell index and weight of each keypoint (``keypoints.keypoints_to_heatmap_labels``).

    Args:
        keypoints: ``[R, 3, K]`` (x, y, visibility).
        rois: float32 ``[R, 4]``.
        heatmap_size: ``S``.

    Returns:
        float32 ``(heats, weights)`` each ``[R, K]``.
    """
    shape = (len(rois), keypoints.shape[2])
    heats = np.zeros(shape, dtype=np.float32)
    weights = np.zeros(shape, dtype=np.float32)
    offset_x, offset_y = rois[:, 0], rois[:, 1]
    scale_x = heatmap_size / (rois[:, 2] - rois[:, 0])
    scale_y = heatmap_size / (rois[:, 3] - rois[:, 1])
    for kp in range(keypoints.shape[2]):
        vis = keypoints[:, 2, kp] > 0
        x = keypoints[:, 0, kp].astype(np.float32)
        y = keypoints[:, 1, kp].astype(np.float32)
        x_edge = np.where(x == rois[:, 2])[0]
        y_edge = np.where(y == rois[:, 3])[0]
        x = np.floor((x - offset_x) * scale_x)
        if len(x_edge):
            x[x_edge] = heatmap_size - 1
        y = np.floor((y - offset_y) * scale_y)
        if len(y_edge):
            y[y_edge] = heatmap_size - 1
        valid = (x >= 0) & (y >= 0) & (x < heatmap_size) & (y < heatmap_size) & vis
        valid = valid.astype(np.int32)
        heats[:, kp] = (y * heatmap_size + x) * valid
        weights[:, kp] = valid
    return heats, weights


def _within_box(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``keypoint_rcnn._within_box``: ``[N, K]`` whether each keypoint lies in its box (edges inclusive)."""
    xs, ys = points[:, 0, :], points[:, 1, :]
    return (xs >= boxes[:, 0:1]) & (xs <= boxes[:, 2:3]) & (ys >= boxes[:, 1:2]) & (ys <= boxes[:, 3:4])


def add_keypoint_rcnn_blobs(
    blobs: Dict[str, np.ndarray],
    roidb: RoidbEntry,
    fg_rois_per_image: int,
    im_scale: float,
    batch_idx: int,
    cfg: Any,
    rng: RandomSource,
) -> Dict[str, np.ndarray]:
    """Add ``keypoint_rois``, ``keypoint_locations_int32``, ``keypoint_weights`` (``add_keypoint_rcnn_blobs``).

    Keypoint RoIs are chosen among *all* boxes of the entry with IoU >= ``FG_THRESH`` and a visible
    keypoint inside, independently of the box-head sample (subsampled with ``choice`` only when more
    than ``fg_rois_per_image``).
    """
    gt_inds = np.where(roidb["gt_classes"] > 0)[0]
    max_overlaps = roidb["max_overlaps"]
    gt_keypoints = roidb["gt_keypoints"]
    ind_kp = gt_inds[roidb["box_to_gt_ind_map"]]
    within_box = _within_box(gt_keypoints[ind_kp], roidb["boxes"])
    vis_kp = gt_keypoints[ind_kp, 2, :] > 0
    is_visible = np.sum(vis_kp & within_box, axis=1) > 0
    kp_fg_inds = np.where((max_overlaps >= cfg.fg_thresh) & is_visible)[0]
    per_image = min(fg_rois_per_image, kp_fg_inds.size)
    if kp_fg_inds.size > per_image:
        kp_fg_inds = rng.choice(kp_fg_inds, per_image)
    sampled_fg_rois = roidb["boxes"][kp_fg_inds]
    box_to_gt = roidb["box_to_gt_ind_map"][kp_fg_inds]
    k = gt_keypoints.shape[2]
    sampled_keypoints = -np.ones((len(sampled_fg_rois), gt_keypoints.shape[1], k), dtype=gt_keypoints.dtype)
    for ii in range(len(sampled_fg_rois)):
        if box_to_gt[ii] >= 0:
            sampled_keypoints[ii] = gt_keypoints[gt_inds[box_to_gt[ii]]]
    heats, weights = keypoints_to_heatmap_labels(sampled_keypoints, sampled_fg_rois, cfg.heatmap_size)
    shape = (sampled_fg_rois.shape[0] * cfg.num_keypoints, 1)
    rois = (sampled_fg_rois * np.float32(im_scale)).astype(np.float32)
    rois = np.hstack((np.full((rois.shape[0], 1), batch_idx, dtype=np.float32), rois))
    blobs["keypoint_rois"] = rois
    blobs["keypoint_locations_int32"] = heats.reshape(shape).astype(np.int32)
    blobs["keypoint_weights"] = weights.reshape(shape)
    return blobs


def finalize_keypoint_minibatch(blobs: Dict[str, np.ndarray], cfg: Any) -> bool:
    """Add ``keypoint_loss_normalizer`` and say whether the minibatch is valid (``finalize_keypoint_minibatch``).

    Valid when it has more than ``MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH`` visible keypoints.
    """
    num_visible = np.sum(blobs["keypoint_weights"])
    valid = len(blobs["keypoint_weights"]) > 0 and num_visible > cfg.min_keypoint_count_for_valid_minibatch
    norm = num_visible / (cfg.ims_per_batch * cfg.batch_size_per_im * cfg.fg_fraction * cfg.num_keypoints)
    blobs["keypoint_loss_normalizer"] = np.array(norm, dtype=np.float32)
    return bool(valid)
