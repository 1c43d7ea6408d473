"""Keypoint decoding (``utils/keypoints.heatmaps_to_keypoints`` and ``core/test.keypoint_results``).

Per RoI the ``K x S x S`` heatmap logits are resized with ``cv2.resize(..., INTER_CUBIC)`` to
``ceil(w) x ceil(h)`` where ``w = max(x2 - x1, 1)`` -- **no** ``+1`` here, unlike the rest of Detectron
-- the argmax of each keypoint is taken on the full-resolution map, and mapped back with Heckbert's
``(i + 0.5)`` pixel centres. Coordinates are original-image pixels.
"""
from __future__ import annotations

from typing import List

import cv2
import numpy as np

__all__ = ["heatmaps_to_keypoints", "keypoint_results", "PERSON_CLASS_INDEX"]

#: ``utils/keypoints.get_person_class_index``: keypoints belong to class 1.
PERSON_CLASS_INDEX = 1


def heatmaps_to_keypoints(maps: np.ndarray, rois: np.ndarray, *, inference_min_size: int = 0) -> np.ndarray:
    """Keypoint locations and scores from heatmaps (``utils/keypoints.heatmaps_to_keypoints``).

    Args:
        maps: ``[R, K, S, S]`` heatmap logits (``kps_score``, S = 56).
        rois: ``[R, 4]`` boxes in original-image pixels (the final detections).
        inference_min_size: ``KRCNN.INFERENCE_MIN_SIZE`` (0: the map is resized to ``ceil(w) x ceil(h)``).

    Returns:
        float32 ``[R, 4, K]``: rows ``x``, ``y``, the logit at the maximum, and the spatial-softmax
        probability at the maximum.
    """
    maps = np.asarray(maps, dtype=np.float32)
    rois = np.asarray(rois, dtype=np.float32)
    num_rois, num_kps = maps.shape[0], maps.shape[1]
    out = np.zeros((num_rois, 4, num_kps), dtype=np.float32)
    if num_rois == 0:
        return out
    widths = np.maximum(rois[:, 2] - rois[:, 0], 1)
    heights = np.maximum(rois[:, 3] - rois[:, 1], 1)
    map_ws = np.ceil(widths)
    map_hs = np.ceil(heights)
    if inference_min_size > 0:
        map_ws = np.maximum(map_ws, inference_min_size)
        map_hs = np.maximum(map_hs, inference_min_size)
    # float32 like Detectron's widths[i] / widths_ceil[i]; the offsets below are then formed in float64.
    width_corr = (widths / map_ws).astype(np.float32)
    height_corr = (heights / map_hs).astype(np.float32)
    hwc = np.ascontiguousarray(maps.transpose(0, 2, 3, 1))  # cv2 wants H x W x C
    k_range = np.arange(num_kps)
    for i in range(num_rois):
        map_w, map_h = int(map_ws[i]), int(map_hs[i])
        resized = cv2.resize(hwc[i], (map_w, map_h), interpolation=cv2.INTER_CUBIC)
        # Back to one contiguous row per keypoint (cv2 drops the channel axis when K == 1).
        per_kp = np.ascontiguousarray(resized.reshape(map_h * map_w, num_kps).T)
        pos = per_kp.argmax(axis=1)  # first maximum in row-major order, as ndarray.argmax
        x_int = pos % map_w
        y_int = pos // map_w
        max_logit = per_kp[k_range, pos]
        # scores_to_probs: exp(v - max) / sum(exp(. - max)) per keypoint; at the maximum the
        # numerator is exp(0) = 1. Summed per contiguous row, as NumPy sums each 2-D map.
        denom = np.exp(per_kp - max_logit[:, None]).sum(axis=1)
        out[i, 0] = (x_int + 0.5) * np.float64(width_corr[i]) + np.float64(rois[i, 0])
        out[i, 1] = (y_int + 0.5) * np.float64(height_corr[i]) + np.float64(rois[i, 1])
        out[i, 2] = max_logit
        out[i, 3] = np.float32(1.0) / denom
    return out


def keypoint_results(maps: np.ndarray, boxes: np.ndarray, num_classes: int, *, inference_min_size: int = 0) -> List:
    """Detectron's ``cls_keyps`` (``core/test.keypoint_results`` without ``KRCNN.NMS_OKS``).

    Args:
        maps: ``[R, K, S, S]`` heatmap logits of the final detections.
        boxes: ``[R, 4]`` final detection boxes (original-image pixels).
        num_classes: classes including background.
        inference_min_size: ``KRCNN.INFERENCE_MIN_SIZE``.

    Returns:
        A list of ``num_classes`` entries; entry :data:`PERSON_CLASS_INDEX` is a list of ``[4, K]``
        arrays (one per detection), every other entry an empty list.
    """
    xy = heatmaps_to_keypoints(maps, boxes, inference_min_size=inference_min_size)
    cls_keyps: List = [[] for _ in range(num_classes)]
    cls_keyps[PERSON_CLASS_INDEX] = [xy[i] for i in range(xy.shape[0])]
    return cls_keyps
