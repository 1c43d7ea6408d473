"""Mask R-CNN targets (``roi_data/mask_rcnn.py``, ``utils/segms.py``).

Each fg RoI takes the gt polygon whose tight box overlaps it most; the part of the polygon inside the
RoI is rasterised by pycocotools at ``MRCNN.RESOLUTION`` (M x M) and placed in the RoI's class channel
(``-1`` = ignore elsewhere) when ``CLS_SPECIFIC_MASK``.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np
import pycocotools.mask as mask_util

from detconvert.train.roidb import RoidbEntry, bbox_overlaps

__all__ = ["polys_to_boxes", "polys_to_mask_wrt_box", "add_mask_rcnn_blobs"]


def polys_to_boxes(polys: Sequence[Sequence[Sequence[float]]]) -> np.ndarray:
    """Tight float32 box of each polygon list (``segms.polys_to_boxes``)."""
    boxes = np.zeros((len(polys), 4), dtype=np.float32)
    for i, poly in enumerate(polys):
        boxes[i] = [
            min(min(p[::2]) for p in poly),
            min(min(p[1::2]) for p in poly),
            max(max(p[::2]) for p in poly),
            max(max(p[1::2]) for p in poly),
        ]
    return boxes


def polys_to_mask_wrt_box(polygons: Sequence[Sequence[float]], box: np.ndarray, resolution: int) -> np.ndarray:
    """Rasterise polygons clipped to ``box`` into a float32 ``M x M`` 0/1 mask (``segms.polys_to_mask_wrt_box``).

    Coordinates are normalised in float32, ``(x - x1) * M / max(x2 - x1, 1)`` (no ``+1``: this is the
    one place Detectron treats a box as continuous).
    """
    w = np.maximum(box[2] - box[0], 1)
    h = np.maximum(box[3] - box[1], 1)
    normed = []
    for poly in polygons:
        p = np.array(poly, dtype=np.float32)
        p[0::2] = (p[0::2] - box[0]) * resolution / w
        p[1::2] = (p[1::2] - box[1]) * resolution / h
        normed.append(p)
    rle = mask_util.frPyObjects(normed, resolution, resolution)
    mask = np.array(mask_util.decode(rle), dtype=np.float32)
    mask = np.sum(mask, axis=2)
    return np.array(mask > 0, dtype=np.float32)


def add_mask_rcnn_blobs(
    blobs: Dict[str, np.ndarray], sampled_boxes: np.ndarray, roidb: RoidbEntry, im_scale: float, batch_idx: int, cfg: Any
) -> Dict[str, np.ndarray]:
    """Add ``mask_rois``, ``roi_has_mask_int32``, ``masks_int32`` for one image (``mask_rcnn.add_mask_rcnn_blobs``).

    With no fg RoI, the first bg RoI gets an all ``-1`` (ignored) target of class 0 so the blob is not
    empty, exactly as Detectron does.

    Args:
        blobs: this image's Fast R-CNN blobs (needs ``labels_int32``); updated in place.
        sampled_boxes: float32 ``[R, 4]`` sampled RoIs at image scale.
        roidb: the entry (needs ``gt_classes``, ``is_crowd``, ``segms``).
        im_scale: network scale factor.
        batch_idx: image index in the minibatch.
        cfg: a TrainConfig.

    Returns:
        ``blobs``.
    """
    m = cfg.mask_resolution
    polys_gt_inds = np.where((roidb["gt_classes"] > 0) & (roidb["is_crowd"] == 0))[0]
    polys_gt = [roidb["segms"][i] for i in polys_gt_inds]
    boxes_from_polys = polys_to_boxes(polys_gt)
    labels = blobs["labels_int32"]
    fg_inds = np.where(labels > 0)[0]
    roi_has_mask = labels.copy()
    roi_has_mask[roi_has_mask > 0] = 1
    if fg_inds.shape[0] > 0:
        mask_class_labels = labels[fg_inds]
        masks = np.zeros((fg_inds.shape[0], m * m), dtype=np.int32)
        rois_fg = sampled_boxes[fg_inds]
        fg_polys_inds = np.argmax(bbox_overlaps(rois_fg.astype(np.float32), boxes_from_polys), axis=1)
        for i in range(rois_fg.shape[0]):
            mask = polys_to_mask_wrt_box(polys_gt[fg_polys_inds[i]], rois_fg[i], m)
            masks[i] = np.array(mask > 0, dtype=np.int32).reshape(m * m)
    else:
        bg_inds = np.where(labels == 0)[0]
        rois_fg = sampled_boxes[bg_inds[0]].reshape(1, -1)
        masks = -np.ones((1, m * m), dtype=np.int32)
        mask_class_labels = np.zeros(1, dtype=np.float32)
        roi_has_mask[0] = 1
    if cfg.cls_specific_mask:
        expanded = -np.ones((masks.shape[0], cfg.num_classes * m * m), dtype=np.int32)
        for i in range(masks.shape[0]):
            cls = int(mask_class_labels[i])
            if cls > 0:
                expanded[i, m * m * cls : m * m * (cls + 1)] = masks[i]
        masks = expanded
    rois_fg = (rois_fg * np.float32(im_scale)).astype(np.float32)
    rois_fg = np.hstack((np.full((rois_fg.shape[0], 1), batch_idx, dtype=np.float32), rois_fg))
    blobs["mask_rois"] = rois_fg
    blobs["roi_has_mask_int32"] = roi_has_mask
    blobs["masks_int32"] = masks
    return blobs
