"""RetinaNet anchor labels and box targets (``roi_data/retinanet.py``).

Every anchor of every level is labelled (no straddle filtering, no sampling): the class of its best gt
when it is the best anchor of some gt (ties included) or IoU >= ``POSITIVE_OVERLAP``; 0 when IoU <
``NEGATIVE_OVERLAP`` (this overrides a best-anchor fg label, as in Detectron); -1 otherwise. Box targets
are kept only for fg locations (``retnet_roi_bbox_targets`` with ``retnet_roi_fg_bbox_locs`` rows
``[image, channel, y, x]``). ``retnet_fg_num = #fg + 1`` normalises the focal loss.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

from detconvert.train.roidb import RoidbEntry, bbox_overlaps, bbox_transform_inv
from detconvert.train.rpn_targets import FieldOfAnchors, field_of_anchors

__all__ = ["retinanet_fields", "add_retinanet_blobs"]


def retinanet_fields(cfg: Any) -> List[FieldOfAnchors]:
    """One field per (level, octave, aspect) in Detectron's loop order."""
    fields = []
    for lvl in range(cfg.rpn_min_level, cfg.rpn_max_level + 1):
        stride = 2.0**lvl
        for octave in range(cfg.retinanet_scales_per_octave):
            octave_scale = 2 ** (octave / float(cfg.retinanet_scales_per_octave))
            for idx, ratio in enumerate(cfg.retinanet_aspect_ratios):
                size = stride * octave_scale * cfg.retinanet_anchor_scale
                fields.append(field_of_anchors(stride, (size,), (ratio,), cfg, octave, idx))
    return fields


def _image_blobs(fields: Sequence[FieldOfAnchors], gt_boxes: np.ndarray, gt_classes: np.ndarray, im_width: int, im_height: int, cfg: Any):
    """``retinanet._get_retinanet_blobs`` for one image."""
    anchors = np.concatenate([f.anchors for f in fields])
    n = anchors.shape[0]
    labels = np.full(n, -1, dtype=np.float32)
    overlaps = bbox_overlaps(anchors, gt_boxes)
    anchor_to_gt_argmax = overlaps.argmax(axis=1)
    anchor_to_gt_max = overlaps[np.arange(n), anchor_to_gt_argmax]
    gt_to_anchor_argmax = overlaps.argmax(axis=0)
    gt_to_anchor_max = overlaps[gt_to_anchor_argmax, np.arange(overlaps.shape[1])]
    best = np.where(overlaps == gt_to_anchor_max)[0]
    labels[best] = gt_classes[anchor_to_gt_argmax[best]]
    above = anchor_to_gt_max >= cfg.retinanet_positive_overlap
    labels[above] = gt_classes[anchor_to_gt_argmax[above]]
    fg_inds = np.where(labels >= 1)[0]
    bg_inds = np.where(anchor_to_gt_max < cfg.retinanet_negative_overlap)[0]
    labels[bg_inds] = 0
    targets = np.zeros((n, 4), dtype=np.float32)
    targets[fg_inds] = bbox_transform_inv(anchors[fg_inds], gt_boxes[anchor_to_gt_argmax[fg_inds]])
    out = []
    start = 0
    for f in fields:
        h = w = f.field_size
        end = start + h * w
        lab = labels[start:end].reshape(1, 1, h, w)
        tgt = targets[start:end].reshape(1, h, w, 4).transpose(0, 3, 1, 2)
        start = end
        crop_w, crop_h = int(im_width / f.stride), int(im_height / f.stride)
        _, _, ys, xs = np.where(lab > 0)
        roi_targets = np.zeros((len(ys), 4), dtype=np.float32)
        locs = np.zeros((len(ys), 4), dtype=np.float32)
        for i, (y, x) in enumerate(zip(ys, xs)):
            cls = int(lab[0, 0, y, x]) - 1 if cfg.retinanet_class_specific_bbox else 0
            roi_targets[i] = tgt[0, :, y, x]
            locs[i] = (0, cls, y, x)
        out.append(
            {
                "retnet_cls_labels": lab[:, :, :crop_h, :crop_w].astype(np.int32),
                "retnet_roi_bbox_targets": roi_targets,
                "retnet_roi_fg_bbox_locs": locs,
            }
        )
    num_fg = np.array([len(fg_inds) + 1.0], dtype=np.float32)
    num_bg = np.array([len(bg_inds) + 1.0]) * (cfg.num_classes - 1) + num_fg * (cfg.num_classes - 2)
    return out, num_fg, num_bg


def add_retinanet_blobs(roidb: Sequence[RoidbEntry], im_scales: Sequence[float], image_width: int, image_height: int, cfg: Any) -> Dict[str, np.ndarray]:
    """RetinaNet training blobs of a minibatch (``retinanet.add_retinanet_blobs``).

    Args:
        roidb: minibatch entries (each must have a non-crowd gt, as Detectron asserts).
        im_scales: per-image scales.
        image_width: padded blob width (labels are cropped to ``int(width / stride)``).
        image_height: padded blob height.
        cfg: a TrainConfig.

    Returns:
        ``im_info``, ``retnet_fg_num``, ``retnet_bg_num`` and per level ``retnet_cls_labels_fpn<l>``
        int32 ``[N, A, h, w]``, ``retnet_roi_bbox_targets_fpn<l>``, ``retnet_roi_fg_bbox_locs_fpn<l>``.
    """
    fields = retinanet_fields(cfg)
    num_aspects = len(cfg.retinanet_aspect_ratios)
    per_key: Dict[str, List[np.ndarray]] = {"im_info": []}
    fg_num, bg_num = 0.0, 0.0
    for im_i, entry in enumerate(roidb):
        scale = im_scales[im_i]
        im_height = np.round(entry["height"] * scale)
        im_width = np.round(entry["width"] * scale)
        gt_inds = np.where((entry["gt_classes"] > 0) & (entry["is_crowd"] == 0))[0]
        if len(gt_inds) == 0:
            raise ValueError("RetinaNet training needs at least one non-crowd ground-truth box per image")
        gt_rois = (entry["boxes"][gt_inds] * np.float32(scale)).astype(np.float32)
        per_key["im_info"].append(np.array([[im_height, im_width, scale]], dtype=np.float32))
        blobs, nfg, nbg = _image_blobs(fields, gt_rois, entry["gt_classes"][gt_inds], image_width, image_height, cfg)
        for f, b in zip(fields, blobs):
            lvl = int(np.log2(f.stride))
            for k, v in b.items():
                if k == "retnet_roi_fg_bbox_locs":
                    v[:, 0] = im_i
                    loc_stride = 4 * ((cfg.num_classes - 1) if cfg.retinanet_class_specific_bbox else 1)
                    v[:, 1] *= 4
                    v[:, 1] += loc_stride * (f.octave * num_aspects + f.aspect)
                per_key.setdefault(f"{k}_fpn{lvl}", []).append(v)
        fg_num += nfg
        bg_num += nbg
    n = len(roidb)
    out: Dict[str, np.ndarray] = {"retnet_fg_num": np.asarray(fg_num, dtype=np.float32), "retnet_bg_num": np.asarray(bg_num, dtype=np.float32)}
    for k, v in per_key.items():
        if "retnet_cls_labels" in k:
            a = len(v) // n
            out[k] = np.concatenate([np.concatenate(v[i : i + a], axis=1) for i in range(0, len(v), a)], axis=0)
        else:
            out[k] = np.concatenate(v, axis=0)
    return out
