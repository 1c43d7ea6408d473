"""The Detectron config values the training targets, losses and solver read.

A frozen, typed view of the ``TRAIN`` / ``RPN`` / ``FPN`` / ``MRCNN`` / ``KRCNN`` / ``RETINANET`` /
``SOLVER`` keys with Detectron's defaults (``core/config.py``). Built from a nested Detectron-style
dict (a parsed YAML, or the ``cfg`` block of a reference ``run.json``) with :meth:`TrainConfig.from_detectron`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Tuple

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """Training-side Detectron settings (names follow ``core/config.py``)."""

    num_classes: int = 81  # MODEL.NUM_CLASSES
    cls_agnostic_bbox_reg: bool = False  # MODEL.CLS_AGNOSTIC_BBOX_REG
    bbox_reg_weights: Tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # MODEL.BBOX_REG_WEIGHTS
    mask_on: bool = False  # MODEL.MASK_ON
    keypoints_on: bool = False  # MODEL.KEYPOINTS_ON
    retinanet: bool = False  # MODEL.TYPE == 'retinanet'
    # TRAIN
    scales: Tuple[int, ...] = (600,)
    max_size: int = 1000
    ims_per_batch: int = 2
    batch_size_per_im: int = 64
    fg_fraction: float = 0.25
    fg_thresh: float = 0.5
    bg_thresh_hi: float = 0.5
    bg_thresh_lo: float = 0.0
    bbox_thresh: float = 0.5
    use_flipped: bool = True
    gt_min_area: float = -1
    crowd_filter_thresh: float = 0.7
    rpn_positive_overlap: float = 0.7
    rpn_negative_overlap: float = 0.3
    rpn_fg_fraction: float = 0.5
    rpn_batch_size_per_im: int = 256
    rpn_straddle_thresh: float = 0
    rpn_post_nms_top_n: int = 2000
    # RPN (single level)
    rpn_stride: int = 16
    rpn_sizes: Tuple[float, ...] = (32, 64, 128, 256, 512)
    rpn_aspect_ratios: Tuple[float, ...] = (0.5, 1, 2)
    # FPN
    fpn_on: bool = False
    coarsest_stride: int = 32
    rpn_min_level: int = 2
    rpn_max_level: int = 6
    rpn_anchor_start_size: float = 32
    fpn_rpn_aspect_ratios: Tuple[float, ...] = (0.5, 1, 2)
    roi_min_level: int = 2
    roi_max_level: int = 5
    roi_canonical_scale: int = 224
    roi_canonical_level: int = 4
    # MRCNN / KRCNN
    mask_resolution: int = 14
    cls_specific_mask: bool = True
    weight_loss_mask: float = 1.0
    num_keypoints: int = -1
    heatmap_size: int = -1
    keypoint_loss_weight: float = 1.0
    normalize_by_visible_keypoints: bool = True
    min_keypoint_count_for_valid_minibatch: int = 20
    # RETINANET
    retinanet_scales_per_octave: int = 3
    retinanet_aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    retinanet_anchor_scale: float = 4
    retinanet_positive_overlap: float = 0.5
    retinanet_negative_overlap: float = 0.4
    retinanet_class_specific_bbox: bool = False
    retinanet_loss_alpha: float = 0.25
    retinanet_loss_gamma: float = 2.0
    retinanet_bbox_reg_beta: float = 0.11
    retinanet_bbox_reg_weight: float = 1.0
    retinanet_softmax: bool = False

    _KEYS = {
        "num_classes": ("MODEL", "NUM_CLASSES"),
        "cls_agnostic_bbox_reg": ("MODEL", "CLS_AGNOSTIC_BBOX_REG"),
        "bbox_reg_weights": ("MODEL", "BBOX_REG_WEIGHTS"),
        "mask_on": ("MODEL", "MASK_ON"),
        "keypoints_on": ("MODEL", "KEYPOINTS_ON"),
        "scales": ("TRAIN", "SCALES"),
        "max_size": ("TRAIN", "MAX_SIZE"),
        "ims_per_batch": ("TRAIN", "IMS_PER_BATCH"),
        "batch_size_per_im": ("TRAIN", "BATCH_SIZE_PER_IM"),
        "fg_fraction": ("TRAIN", "FG_FRACTION"),
        "fg_thresh": ("TRAIN", "FG_THRESH"),
        "bg_thresh_hi": ("TRAIN", "BG_THRESH_HI"),
        "bg_thresh_lo": ("TRAIN", "BG_THRESH_LO"),
        "bbox_thresh": ("TRAIN", "BBOX_THRESH"),
        "use_flipped": ("TRAIN", "USE_FLIPPED"),
        "gt_min_area": ("TRAIN", "GT_MIN_AREA"),
        "crowd_filter_thresh": ("TRAIN", "CROWD_FILTER_THRESH"),
        "rpn_positive_overlap": ("TRAIN", "RPN_POSITIVE_OVERLAP"),
        "rpn_negative_overlap": ("TRAIN", "RPN_NEGATIVE_OVERLAP"),
        "rpn_fg_fraction": ("TRAIN", "RPN_FG_FRACTION"),
        "rpn_batch_size_per_im": ("TRAIN", "RPN_BATCH_SIZE_PER_IM"),
        "rpn_straddle_thresh": ("TRAIN", "RPN_STRADDLE_THRESH"),
        "rpn_post_nms_top_n": ("TRAIN", "RPN_POST_NMS_TOP_N"),
        "rpn_stride": ("RPN", "STRIDE"),
        "rpn_sizes": ("RPN", "SIZES"),
        "rpn_aspect_ratios": ("RPN", "ASPECT_RATIOS"),
        "fpn_on": ("FPN", "FPN_ON"),
        "coarsest_stride": ("FPN", "COARSEST_STRIDE"),
        "rpn_min_level": ("FPN", "RPN_MIN_LEVEL"),
        "rpn_max_level": ("FPN", "RPN_MAX_LEVEL"),
        "rpn_anchor_start_size": ("FPN", "RPN_ANCHOR_START_SIZE"),
        "fpn_rpn_aspect_ratios": ("FPN", "RPN_ASPECT_RATIOS"),
        "roi_min_level": ("FPN", "ROI_MIN_LEVEL"),
        "roi_max_level": ("FPN", "ROI_MAX_LEVEL"),
        "roi_canonical_scale": ("FPN", "ROI_CANONICAL_SCALE"),
        "roi_canonical_level": ("FPN", "ROI_CANONICAL_LEVEL"),
        "mask_resolution": ("MRCNN", "RESOLUTION"),
        "cls_specific_mask": ("MRCNN", "CLS_SPECIFIC_MASK"),
        "weight_loss_mask": ("MRCNN", "WEIGHT_LOSS_MASK"),
        "num_keypoints": ("KRCNN", "NUM_KEYPOINTS"),
        "heatmap_size": ("KRCNN", "HEATMAP_SIZE"),
        "keypoint_loss_weight": ("KRCNN", "LOSS_WEIGHT"),
        "normalize_by_visible_keypoints": ("KRCNN", "NORMALIZE_BY_VISIBLE_KEYPOINTS"),
        "min_keypoint_count_for_valid_minibatch": ("KRCNN", "MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH"),
        "retinanet_scales_per_octave": ("RETINANET", "SCALES_PER_OCTAVE"),
        "retinanet_aspect_ratios": ("RETINANET", "ASPECT_RATIOS"),
        "retinanet_anchor_scale": ("RETINANET", "ANCHOR_SCALE"),
        "retinanet_positive_overlap": ("RETINANET", "POSITIVE_OVERLAP"),
        "retinanet_negative_overlap": ("RETINANET", "NEGATIVE_OVERLAP"),
        "retinanet_class_specific_bbox": ("RETINANET", "CLASS_SPECIFIC_BBOX"),
        "retinanet_loss_alpha": ("RETINANET", "LOSS_ALPHA"),
        "retinanet_loss_gamma": ("RETINANET", "LOSS_GAMMA"),
        "retinanet_bbox_reg_beta": ("RETINANET", "BBOX_REG_BETA"),
        "retinanet_bbox_reg_weight": ("RETINANET", "BBOX_REG_WEIGHT"),
        "retinanet_softmax": ("RETINANET", "SOFTMAX"),
    }

    @classmethod
    def from_detectron(cls, cfg: Mapping[str, Any]) -> "TrainConfig":
        """Read the values from a nested Detectron config dict; missing keys keep Detectron's defaults.

        Args:
            cfg: e.g. ``{"TRAIN": {"SCALES": [800], ...}, "MODEL": {...}}``.

        Returns:
            The config.
        """
        values = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, (section, key) in cls._KEYS.items():
            sub = cfg.get(section)
            if isinstance(sub, Mapping) and key in sub:
                value = sub[key]
                if isinstance(value, (list, tuple)):
                    value = tuple(value)
                values[name] = value
        model_type = str(cfg.get("MODEL", {}).get("TYPE", ""))
        values["retinanet"] = model_type == "retinanet" or bool(cfg.get("RETINANET", {}).get("RETINANET_ON", False))
        del types
        return cls(**values)

    def with_(self, **changes: Any) -> "TrainConfig":
        """A copy with some values changed."""
        return replace(self, **changes)
