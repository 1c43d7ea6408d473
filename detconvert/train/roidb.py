"""COCO-format json -> Detectron's training roidb (``datasets/json_dataset.py``, ``datasets/roidb.py``).

An roidb entry is a dict with Detectron's keys and dtypes: ``boxes`` float32 ``[N, 4]`` (inclusive
``x1, y1, x2, y2``), ``gt_classes`` int32, ``gt_overlaps`` float32 ``[N, num_classes]`` (dense here; a
``csr_matrix`` in Detectron), ``max_overlaps`` float32, ``max_classes`` int64, ``is_crowd`` bool,
``seg_areas`` float32, ``box_to_gt_ind_map`` int32, ``segms`` (polygon lists or RLE dicts), optionally
``gt_keypoints`` int32 ``[N, 3, K]``, plus ``image`` (path), ``id``, ``height``, ``width``, ``flipped``,
``has_visible_keypoints`` and, after :func:`add_bbox_regression_targets`, ``bbox_targets`` float32 ``[N, 5]``.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch

from detconvert.errors import DetconvertError
from detconvert.ops.boxes import bbox_overlaps as _bbox_overlaps_t

__all__ = [
    "CocoJsonDataset",
    "bbox_overlaps",
    "bbox_transform_inv",
    "flip_segms",
    "flip_keypoints",
    "extend_with_flipped_entries",
    "filter_for_training",
    "add_bbox_regression_targets",
    "add_proposals",
    "combined_roidb_for_training",
]

RoidbEntry = Dict[str, Any]

#: COCO's left/right keypoint pairs (``utils/keypoints.get_keypoints``).
COCO_KEYPOINT_FLIP_PAIRS = (
    ("left_eye", "right_eye"),
    ("left_ear", "right_ear"),
    ("left_shoulder", "right_shoulder"),
    ("left_elbow", "right_elbow"),
    ("left_wrist", "right_wrist"),
    ("left_hip", "right_hip"),
    ("left_knee", "right_knee"),
    ("left_ankle", "right_ankle"),
)


def bbox_overlaps(boxes: np.ndarray, query_boxes: np.ndarray) -> np.ndarray:
    """float32 IoU with ``+1`` widths (``utils/cython_bbox.bbox_overlaps``) on numpy arrays."""
    if len(boxes) == 0 or len(query_boxes) == 0:
        return np.zeros((len(boxes), len(query_boxes)), dtype=np.float32)
    return _bbox_overlaps_t(torch.from_numpy(np.ascontiguousarray(boxes)), torch.from_numpy(np.ascontiguousarray(query_boxes))).numpy()


def bbox_transform_inv(boxes: np.ndarray, gt_boxes: np.ndarray, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> np.ndarray:
    """float32 regression targets (``utils/boxes.bbox_transform_inv``, ``data_utils.compute_targets``).

    Evaluated with NumPy in float32 in Detectron's operation order, so the targets are bit-identical to
    Detectron's (torch's float32 ``log`` differs in the last ulp).
    """
    b = np.asarray(boxes, dtype=np.float32)
    g = np.asarray(gt_boxes, dtype=np.float32)
    one, half = np.float32(1.0), np.float32(0.5)
    ex_w = b[:, 2] - b[:, 0] + one
    ex_h = b[:, 3] - b[:, 1] + one
    ex_cx = b[:, 0] + half * ex_w
    ex_cy = b[:, 1] + half * ex_h
    gt_w = g[:, 2] - g[:, 0] + one
    gt_h = g[:, 3] - g[:, 1] + one
    gt_cx = g[:, 0] + half * gt_w
    gt_cy = g[:, 1] + half * gt_h
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    targets = np.stack(
        [wx * (gt_cx - ex_cx) / ex_w, wy * (gt_cy - ex_cy) / ex_h, ww * np.log(gt_w / ex_w), wh * np.log(gt_h / ex_h)],
        axis=1,
    )
    return targets.astype(np.float32, copy=False).reshape(-1, 4)


class CocoJsonDataset:
    """A COCO-format annotation file with Detectron's class and keypoint bookkeeping.

    Contiguous class ``i + 1`` is the ``i``-th category of the file (``JsonDataset.__init__``: the order
    of ``COCO.getCatIds()``), 0 is background.

    Args:
        annotation_file: the json.
        image_dir: folder the ``file_name`` of each image is relative to.

    Raises:
        DetconvertError: the file is missing, not json, or lacks ``images``/``annotations``/``categories``.
    """

    def __init__(self, annotation_file: str, image_dir: str) -> None:
        self.annotation_file = str(annotation_file)
        self.image_dir = str(image_dir)
        try:
            with open(self.annotation_file, "r") as f:
                data = json.load(f)
        except OSError as exc:
            raise DetconvertError(f"cannot read dataset annotations: {exc.strerror}", self.annotation_file) from None
        except ValueError as exc:
            raise DetconvertError(f"not a json file: {exc}", self.annotation_file) from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(data, dict) or key not in data:
                raise DetconvertError(f"not a COCO-format dataset: no '{key}' list", self.annotation_file)
        self.data = data
        cats = data["categories"]
        self.category_ids = [int(c["id"]) for c in cats]
        self.classes = ["__background__"] + [str(c["name"]) for c in cats]
        self.num_classes = len(self.classes)
        self.json_category_id_to_contiguous_id = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.contiguous_category_id_to_json_id = {v: k for k, v in self.json_category_id_to_contiguous_id.items()}
        # Keypoints come from the 'person' category, as in JsonDataset._init_keypoints.
        self.keypoints: Optional[List[str]] = None
        for c in cats:
            if c.get("name") == "person" and "keypoints" in c:
                self.keypoints = list(c["keypoints"])
        self.num_keypoints = len(self.keypoints) if self.keypoints else 0
        self._anns_by_image: Dict[int, List[Mapping[str, Any]]] = {}
        for ann in data["annotations"]:
            self._anns_by_image.setdefault(int(ann["image_id"]), []).append(ann)

    def get_roidb(self, gt_min_area: float = -1) -> List[RoidbEntry]:
        """Ground-truth roidb in image-id order (``JsonDataset.get_roidb(gt=True)``).

        Args:
            gt_min_area: ``TRAIN.GT_MIN_AREA``: annotations with a smaller ``area`` are dropped.

        Returns:
            One entry per image, with class assignments (``max_overlaps``/``max_classes``).
        """
        images = sorted(self.data["images"], key=lambda im: int(im["id"]))
        roidb = []
        for im in images:
            entry = {
                "id": int(im["id"]),
                "height": int(im["height"]),
                "width": int(im["width"]),
                "image": os.path.join(self.image_dir, im["file_name"]),
                "flipped": False,
                "has_visible_keypoints": False,
            }
            self._add_gt_annotations(entry, gt_min_area)
            roidb.append(entry)
        _add_class_assignments(roidb)
        return roidb

    def _add_gt_annotations(self, entry: RoidbEntry, gt_min_area: float) -> None:
        """``JsonDataset._add_gt_annotations``: sanitise boxes, keep polygons of >= 3 points."""
        width, height = entry["width"], entry["height"]
        valid = []
        for obj in copy.deepcopy(self._anns_by_image.get(entry["id"], [])):
            if isinstance(obj.get("segmentation"), list):
                # A polygon needs >= 3 points: shorter pieces are dropped, as Detectron does.
                obj["segmentation"] = [p for p in obj["segmentation"] if len(p) >= 6]
            if obj["area"] < gt_min_area:
                continue
            if obj.get("ignore", 0) == 1:
                continue
            x, y, w, h = (float(v) for v in obj["bbox"])
            # utils/boxes.xywh_to_xyxy then clip_xyxy_to_image.
            x1, y1, x2, y2 = x, y, x + max(0.0, w - 1.0), y + max(0.0, h - 1.0)
            x1 = min(width - 1.0, max(0.0, x1))
            y1 = min(height - 1.0, max(0.0, y1))
            x2 = min(width - 1.0, max(0.0, x2))
            y2 = min(height - 1.0, max(0.0, y2))
            if obj["area"] > 0 and x2 > x1 and y2 > y1:
                obj["clean_bbox"] = [x1, y1, x2, y2]
                valid.append(obj)
        n = len(valid)
        boxes = np.zeros((n, 4), dtype=np.float32)
        gt_classes = np.zeros(n, dtype=np.int32)
        gt_overlaps = np.zeros((n, self.num_classes), dtype=np.float32)
        seg_areas = np.zeros(n, dtype=np.float32)
        is_crowd = np.zeros(n, dtype=bool)
        box_to_gt_ind_map = np.arange(n, dtype=np.int32)
        gt_keypoints = np.zeros((n, 3, self.num_keypoints), dtype=np.int32) if self.keypoints else None
        has_visible = False
        for ix, obj in enumerate(valid):
            cls = self.json_category_id_to_contiguous_id.get(int(obj["category_id"]))
            if cls is None:
                raise DetconvertError(
                    f"annotation {obj.get('id')} has category_id {obj['category_id']} not in 'categories'",
                    self.annotation_file,
                )
            boxes[ix] = obj["clean_bbox"]
            gt_classes[ix] = cls
            seg_areas[ix] = obj["area"]
            is_crowd[ix] = bool(obj.get("iscrowd", 0))
            if gt_keypoints is not None and "keypoints" in obj:
                kp = np.asarray(obj["keypoints"]).reshape(-1, 3)
                gt_keypoints[ix] = kp.T.astype(np.int32)
                if gt_keypoints[ix, 2].sum() > 0:
                    has_visible = True
            # Crowd boxes get overlap -1 with every class so they are never sampled.
            if is_crowd[ix]:
                gt_overlaps[ix, :] = -1.0
            else:
                gt_overlaps[ix, cls] = 1.0
        entry["boxes"] = boxes
        entry["segms"] = [obj["segmentation"] for obj in valid]
        entry["gt_classes"] = gt_classes
        entry["seg_areas"] = seg_areas
        entry["gt_overlaps"] = gt_overlaps
        entry["is_crowd"] = is_crowd
        entry["box_to_gt_ind_map"] = box_to_gt_ind_map
        if gt_keypoints is not None:
            entry["gt_keypoints"] = gt_keypoints
            entry["has_visible_keypoints"] = has_visible


def _add_class_assignments(roidb: List[RoidbEntry]) -> None:
    """``json_dataset._add_class_assignments``: max overlap and its class per box."""
    for entry in roidb:
        overlaps = entry["gt_overlaps"]
        entry["max_overlaps"] = overlaps.max(axis=1) if len(overlaps) else np.zeros(0, np.float32)
        entry["max_classes"] = overlaps.argmax(axis=1) if len(overlaps) else np.zeros(0, np.int64)


def flip_segms(segms: Sequence[Any], height: int, width: int) -> List[Any]:
    """Mirror polygons (``x -> width - x - 1``) and RLEs left/right (``utils/segms.flip_segms``)."""
    out = []
    for segm in segms:
        if isinstance(segm, list):
            flipped = []
            for poly in segm:
                p = np.array(poly, dtype=np.float64)
                p[0::2] = width - p[0::2] - 1
                flipped.append(p.tolist())
            out.append(flipped)
        else:
            rle = segm
            if isinstance(rle.get("counts"), list):
                rle = mask_util.frPyObjects([rle], height, width)
            mask = mask_util.decode(rle)
            mask = mask[:, ::-1]
            out.append(mask_util.encode(np.array(mask, order="F", dtype=np.uint8)))
    return out


def flip_keypoints(names: Sequence[str], keypoints: np.ndarray, width: int) -> np.ndarray:
    """Swap left/right keypoints and mirror x (``utils/keypoints.flip_keypoints``); invisible stay (0, 0)."""
    flipped = keypoints.copy()
    for left, right in COCO_KEYPOINT_FLIP_PAIRS:
        if left in names and right in names:
            li, ri = names.index(left), names.index(right)
            flipped[:, :, li] = keypoints[:, :, ri]
            flipped[:, :, ri] = keypoints[:, :, li]
    flipped[:, 0, :] = width - flipped[:, 0, :] - 1
    inds = np.where(flipped[:, 2, :] == 0)
    flipped[inds[0], 0, inds[1]] = 0
    return flipped


def extend_with_flipped_entries(roidb: List[RoidbEntry], keypoint_names: Optional[Sequence[str]] = None) -> None:
    """Append a horizontally flipped copy of every entry (``roidb.extend_with_flipped_entries``)."""
    flipped_entries = []
    for entry in roidb:
        width = entry["width"]
        boxes = entry["boxes"].copy()
        old_x1 = boxes[:, 0].copy()
        old_x2 = boxes[:, 2].copy()
        boxes[:, 0] = width - old_x2 - 1
        boxes[:, 2] = width - old_x1 - 1
        flipped = {k: v for k, v in entry.items() if k not in ("boxes", "segms", "gt_keypoints", "flipped")}
        flipped["boxes"] = boxes
        flipped["segms"] = flip_segms(entry["segms"], entry["height"], width)
        if "gt_keypoints" in entry and keypoint_names:
            flipped["gt_keypoints"] = flip_keypoints(keypoint_names, entry["gt_keypoints"], width)
        flipped["flipped"] = True
        flipped_entries.append(flipped)
    roidb.extend(flipped_entries)


def filter_for_training(roidb: List[RoidbEntry], cfg: Any) -> List[RoidbEntry]:
    """Drop entries with no fg and no bg box, or (keypoints) no visible keypoint (``roidb.filter_for_training``)."""

    def is_valid(entry: RoidbEntry) -> bool:
        overlaps = entry["max_overlaps"]
        fg = np.where(overlaps >= cfg.fg_thresh)[0]
        bg = np.where((overlaps < cfg.bg_thresh_hi) & (overlaps >= cfg.bg_thresh_lo))[0]
        valid = len(fg) > 0 or len(bg) > 0
        if cfg.keypoints_on:
            valid = valid and bool(entry.get("has_visible_keypoints", False))
        return valid

    return [e for e in roidb if is_valid(e)]


def compute_bbox_targets(entry: RoidbEntry, cfg: Any) -> np.ndarray:
    """``(class, tx, ty, tw, th)`` per box towards its best non-crowd gt (``roidb._compute_targets``)."""
    rois = entry["boxes"]
    overlaps = entry["max_overlaps"]
    labels = entry["max_classes"]
    gt_inds = np.where((entry["gt_classes"] > 0) & (entry["is_crowd"] == 0))[0]
    targets = np.zeros((rois.shape[0], 5), dtype=np.float32)
    if len(gt_inds) == 0:
        return targets
    ex_inds = np.where(overlaps >= cfg.bbox_thresh)[0]
    ex_gt_overlaps = bbox_overlaps(rois[ex_inds].astype(np.float32), rois[gt_inds].astype(np.float32))
    gt_assignment = ex_gt_overlaps.argmax(axis=1)
    targets[ex_inds, 0] = 1 if cfg.cls_agnostic_bbox_reg else labels[ex_inds]
    targets[ex_inds, 1:] = bbox_transform_inv(rois[ex_inds], rois[gt_inds[gt_assignment]], cfg.bbox_reg_weights)
    return targets


def add_bbox_regression_targets(roidb: List[RoidbEntry], cfg: Any) -> None:
    """Store ``bbox_targets`` on every entry (``roidb.add_bbox_regression_targets``)."""
    for entry in roidb:
        entry["bbox_targets"] = compute_bbox_targets(entry, cfg)


def add_proposals(roidb: List[RoidbEntry], rois: np.ndarray, im_scales: Sequence[float]) -> None:
    """Merge RPN proposals into the gt roidb entries in place (``json_dataset.add_proposals``, crowd_thresh=0).

    Proposals ``rois[:, 1:5]`` (network-input scale, batch index in column 0) are brought back to image
    scale by multiplying with float32 ``1 / im_scale`` (Detectron's NumPy-1 arithmetic: a float32 blob
    times a scalar stays float32). Each proposal records its IoU with the best gt (crowd gts included,
    as Detectron does: ``_merge_proposal_boxes_into_roidb``) under that gt's class.

    Args:
        roidb: minibatch entries (gt boxes only); modified in place.
        rois: float32 ``[R, 5]``.
        im_scales: per-entry scale factors.
    """
    for i, entry in enumerate(roidb):
        inv_scale = np.float32(1.0 / float(np.float32(im_scales[i])))
        boxes = (rois[rois[:, 0] == i, 1:] * inv_scale).astype(np.float32)
        num_boxes = boxes.shape[0]
        gt_overlaps = np.zeros((num_boxes, entry["gt_overlaps"].shape[1]), dtype=entry["gt_overlaps"].dtype)
        box_to_gt = -np.ones(num_boxes, dtype=entry["box_to_gt_ind_map"].dtype)
        gt_inds = np.where(entry["gt_classes"] > 0)[0]
        if len(gt_inds) > 0 and num_boxes > 0:
            gt_boxes = entry["boxes"][gt_inds]
            gt_classes = entry["gt_classes"][gt_inds]
            ov = bbox_overlaps(boxes, gt_boxes.astype(np.float32))
            argmaxes = ov.argmax(axis=1)
            maxes = ov.max(axis=1)
            nz = np.where(maxes > 0)[0]
            gt_overlaps[nz, gt_classes[argmaxes[nz]]] = maxes[nz]
            box_to_gt[nz] = gt_inds[argmaxes[nz]]
        entry["boxes"] = np.append(entry["boxes"], boxes, axis=0)
        entry["gt_classes"] = np.append(entry["gt_classes"], np.zeros(num_boxes, dtype=entry["gt_classes"].dtype))
        entry["seg_areas"] = np.append(entry["seg_areas"], np.zeros(num_boxes, dtype=entry["seg_areas"].dtype))
        entry["gt_overlaps"] = np.append(entry["gt_overlaps"], gt_overlaps, axis=0)
        entry["is_crowd"] = np.append(entry["is_crowd"], np.zeros(num_boxes, dtype=entry["is_crowd"].dtype))
        entry["box_to_gt_ind_map"] = np.append(entry["box_to_gt_ind_map"], box_to_gt)
    _add_class_assignments(roidb)


def combined_roidb_for_training(annotation_file: str, image_dir: str, cfg: Any) -> Tuple[List[RoidbEntry], CocoJsonDataset]:
    """The training roidb: gt entries, flipped copies, filtering, box targets (``roidb.combined_roidb_for_training``).

    Args:
        annotation_file: COCO-format json.
        image_dir: image folder.
        cfg: a :class:`~detconvert.train.config.TrainConfig`.

    Returns:
        ``(roidb, dataset)``.
    """
    ds = CocoJsonDataset(annotation_file, image_dir)
    roidb = ds.get_roidb(gt_min_area=cfg.gt_min_area)
    if cfg.use_flipped:
        extend_with_flipped_entries(roidb, ds.keypoints)
    roidb = filter_for_training(roidb, cfg)
    add_bbox_regression_targets(roidb, cfg)
    return roidb, ds


def minibatch_entry(entry: RoidbEntry) -> RoidbEntry:
    """A copy of the keys the RPN minibatch carries to the proposal-labelling op (``rpn.add_rpn_blobs``)."""
    keys = ("has_visible_keypoints", "boxes", "segms", "seg_areas", "gt_classes", "gt_overlaps", "is_crowd", "box_to_gt_ind_map", "gt_keypoints")
    return {k: copy.deepcopy(entry[k]) for k in keys if k in entry}
