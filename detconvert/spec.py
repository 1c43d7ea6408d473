"""The typed architecture spec: everything the model builder and the inference pipeline need.

A spec is derived from a Detectron config after Detectron's own ``assert_and_infer_cfg`` step
(:func:`detconvert.config.build_spec`) and is the only thing :mod:`detconvert.modeling` reads:
no module looks at a raw config. It is immutable, serialises to plain JSON (``to_dict``) and is
written into every converted checkpoint's metadata together with the :class:`Conventions`.

Module names are Detectron's, with the ``add_`` prefix and the Python module path removed
(``FPN.add_fpn_ResNet50_conv5_body`` -> body ``ResNet50_conv5`` with ``fpn`` set;
``fast_rcnn_heads.add_roi_2mlp_head`` -> ``roi_2mlp_head``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional, Tuple

NormKind = Literal["affine", "gn"]
Pipeline = Literal["e2e", "rpn_only", "precomputed_proposals", "retinanet"]
BoxHeadKind = Literal["roi_2mlp_head", "ResNet_roi_conv5_head", "roi_Xconv1fc_head", "roi_Xconv1fc_gn_head"]
MaskHeadKind = Literal[
    "mask_rcnn_fcn_head_v1up4convs",
    "mask_rcnn_fcn_head_v1up4convs_gn",
    "mask_rcnn_fcn_head_v1up",
    "mask_rcnn_fcn_head_v1upXconvs",
    "mask_rcnn_fcn_head_v1upXconvs_gn",
    "mask_rcnn_fcn_head_v0upshare",
    "mask_rcnn_fcn_head_v0up",
]
KeypointHeadKind = Literal["roi_pose_head_v1convX"]


@dataclass(frozen=True)
class Conventions:
    """Numeric conventions of Detectron, written into every converted file's metadata.

    They are fields (not hidden constants) because each one is a place where other ports differ.
    """

    channel_order: str = "BGR"  # cv2.imread order; the first conv's input channels are B, G, R
    pixel_means: Tuple[float, float, float] = (102.9801, 115.9465, 122.7717)  # BGR, subtracted in float64
    pixel_std: Optional[Tuple[float, float, float]] = None  # Detectron divides by nothing (no /255, no std)
    box_width_plus_one: bool = True  # width = x2 - x1 + 1 in decode, IoU, NMS, areas, FPN level mapping
    roi_align_aligned: bool = False  # Caffe2 RoIAlign: no -0.5 pixel shift, roi size forced >= 1
    background_index: int = 0  # cls_score column 0, bbox_pred columns 0:4, mask channel 0
    anchor_order: str = "ratio-major"  # anchor a = ratio_idx * n_sizes + size_idx
    rpn_activation: str = "sigmoid"  # A objectness channels, never a 2A softmax
    nms_tie_break: str = "detectron"  # among equal scores the highest index wins (argsort()[::-1])
    resize: str = "cv2.INTER_LINEAR on the mean-subtracted float image, sizes round(s*H), round(s*W)"


@dataclass(frozen=True)
class NormSpec:
    """Normalisation after every backbone/head conv: frozen AffineChannel (folded BN) or GroupNorm."""

    kind: NormKind = "affine"
    gn_num_groups: int = 32  # GROUP_NORM.NUM_GROUPS; used when gn_dim_per_group < 0
    gn_dim_per_group: int = -1  # GROUP_NORM.DIM_PER_GP
    gn_eps: float = 1e-5  # GROUP_NORM.EPSILON

    def groups_for(self, channels: int) -> int:
        """Detectron's ``get_group_gn``: groups from DIM_PER_GP if set, else NUM_GROUPS."""
        if self.gn_dim_per_group > 0:
            assert channels % self.gn_dim_per_group == 0
            return channels // self.gn_dim_per_group
        assert channels % self.gn_num_groups == 0
        return self.gn_num_groups


@dataclass(frozen=True)
class ResNetSpec:
    """ResNet / ResNeXt body (``res2``..``res{last_stage}``) with Detectron's blob names."""

    depth: int  # 50, 101 or 152
    block_counts: Tuple[int, ...]  # blocks in res2, res3, res4, res5 (e.g. (3, 4, 6, 3))
    last_stage: int  # 4 for *_conv4_body (C4: res5 lives in the RoI head), 5 for *_conv5_body
    num_groups: int = 1  # RESNETS.NUM_GROUPS (ResNeXt cardinality)
    width_per_group: int = 64  # RESNETS.WIDTH_PER_GROUP
    stride_1x1: bool = True  # RESNETS.STRIDE_1X1: stride on branch2a (MSRA) or branch2b (ResNeXt, GN)
    res5_dilation: int = 1  # RESNETS.RES5_DILATION
    freeze_at: int = 2  # TRAIN.FREEZE_AT: conv1 and res2..res{freeze_at} get no gradient
    norm: NormSpec = field(default_factory=NormSpec)
    # Widths Detectron hard-codes (ResNet.add_ResNet_convX_body: stem 64, res2 256, doubling per
    # stage). Fields only so that a TINY Detectron-architecture network can be built (the training
    # overfit test and the shipped shapes demo model); every Detectron config keeps the defaults.
    stem_out_dim: int = 64
    res2_out_dim: int = 256

    @property
    def stem_out(self) -> int:
        return self.stem_out_dim

    def inner_dim(self, stage: int) -> int:
        """``d_inner`` of the bottleneck of stage ``stage`` (2..5)."""
        return self.num_groups * self.width_per_group * 2 ** (stage - 2)

    def out_dim(self, stage: int) -> int:
        return self.res2_out_dim * 2 ** (stage - 2)


@dataclass(frozen=True)
class FPNSpec:
    """Feature pyramid over the ResNet body (Detectron ``FPN.add_fpn``)."""

    dim: int = 256  # FPN.DIM
    min_level: int = 2  # lowest pyramid level built (2 for R-CNN, 3 for RetinaNet)
    max_level: int = 6  # highest level (6 via max-pool for R-CNN; 7 via fpn_6/fpn_7 convs for RetinaNet)
    extra_conv_levels: bool = False  # FPN.EXTRA_CONV_LEVELS: fpn_6 (from C5) and fpn_7 instead of a max-pool P6
    use_gn: bool = False  # FPN.USE_GN
    zero_init_lateral: bool = False  # FPN.ZERO_INIT_LATERAL (training init only)
    coarsest_stride: int = 32  # FPN.COARSEST_STRIDE: input blobs are zero-padded to a multiple
    roi_min_level: int = 2  # FPN.ROI_MIN_LEVEL
    roi_max_level: int = 5  # FPN.ROI_MAX_LEVEL
    roi_canonical_level: int = 4  # FPN.ROI_CANONICAL_LEVEL
    roi_canonical_scale: int = 224  # FPN.ROI_CANONICAL_SCALE
    multilevel_rois: bool = True  # FPN.MULTILEVEL_ROIS
    multilevel_rpn: bool = True  # FPN.MULTILEVEL_RPN


@dataclass(frozen=True)
class RPNSpec:
    """Region proposal network: single-scale on C4 or shared across FPN levels."""

    kind: Literal["single_scale", "fpn"]
    anchor_sizes: Tuple[float, ...]  # single scale: RPN.SIZES; FPN: one size per level (START_SIZE * 2**(l-min))
    aspect_ratios: Tuple[float, ...]  # RPN.ASPECT_RATIOS or FPN.RPN_ASPECT_RATIOS
    anchor_stride: int = 16  # single scale: RPN.STRIDE; FPN: 2**level per level
    min_level: int = 2  # FPN.RPN_MIN_LEVEL (FPN only)
    max_level: int = 6  # FPN.RPN_MAX_LEVEL (FPN only)
    conv_dim: int = 1024  # channels of conv_rpn (= input dim: 1024 on C4 res4, FPN.DIM on FPN)
    pre_nms_top_n: int = 1000  # TEST.RPN_PRE_NMS_TOP_N (per level with FPN)
    post_nms_top_n: int = 1000  # TEST.RPN_POST_NMS_TOP_N (per level with FPN; also the collect top-N)
    nms_thresh: float = 0.7  # TEST.RPN_NMS_THRESH
    min_size: float = 0.0  # TEST.RPN_MIN_SIZE (in original-image pixels; Detectron uses max(min_size, 1))

    @property
    def num_anchors(self) -> int:
        if self.kind == "fpn":
            return len(self.aspect_ratios)
        return len(self.anchor_sizes) * len(self.aspect_ratios)


@dataclass(frozen=True)
class RoIXformSpec:
    """How RoI features are pooled (Caffe2 RoIAlign, ``aligned=False``)."""

    method: str = "RoIAlign"  # *.ROI_XFORM_METHOD
    resolution: int = 7  # *.ROI_XFORM_RESOLUTION
    sampling_ratio: int = 0  # *.ROI_XFORM_SAMPLING_RATIO (0 = adaptive ceil(roi/bin))


@dataclass(frozen=True)
class BoxHeadSpec:
    kind: BoxHeadKind
    roi_xform: RoIXformSpec
    mlp_dim: int = 1024  # FAST_RCNN.MLP_HEAD_DIM
    conv_dim: int = 256  # FAST_RCNN.CONV_HEAD_DIM (Xconv1fc heads)
    num_convs: int = 4  # FAST_RCNN.NUM_STACKED_CONVS (Xconv1fc heads)
    cls_agnostic_bbox_reg: bool = False  # MODEL.CLS_AGNOSTIC_BBOX_REG: bbox_pred is 8 wide
    bbox_reg_weights: Tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)  # MODEL.BBOX_REG_WEIGHTS


@dataclass(frozen=True)
class MaskHeadSpec:
    kind: MaskHeadKind
    roi_xform: RoIXformSpec
    resolution: int = 28  # MRCNN.RESOLUTION (output mask size)
    dim_reduced: int = 256  # MRCNN.DIM_REDUCED
    num_convs: int = 4  # convs before the up-sampling deconv (4 for v1up4convs, 2 for v1up)
    dilation: int = 2  # MRCNN.DILATION
    upsample_ratio: int = 1  # MRCNN.UPSAMPLE_RATIO (>1 adds the fixed bilinear mask_fcn_logits_up)
    cls_specific_mask: bool = True  # MRCNN.CLS_SPECIFIC_MASK
    use_fc_output: bool = False  # MRCNN.USE_FC_OUTPUT
    thresh_binarize: float = 0.5  # MRCNN.THRESH_BINARIZE


@dataclass(frozen=True)
class KeypointHeadSpec:
    kind: KeypointHeadKind
    roi_xform: RoIXformSpec
    num_keypoints: int = 17  # KRCNN.NUM_KEYPOINTS
    conv_head_dim: int = 256  # KRCNN.CONV_HEAD_DIM
    conv_head_kernel: int = 3  # KRCNN.CONV_HEAD_KERNEL
    num_stacked_convs: int = 8  # KRCNN.NUM_STACKED_CONVS
    heatmap_size: int = -1  # KRCNN.HEATMAP_SIZE
    up_scale: int = -1  # KRCNN.UP_SCALE (fixed bilinear ConvTranspose when > 1)
    use_deconv: bool = False  # KRCNN.USE_DECONV
    deconv_dim: int = 256  # KRCNN.DECONV_DIM
    deconv_kernel: int = 4  # KRCNN.DECONV_KERNEL
    use_deconv_output: bool = False  # KRCNN.USE_DECONV_OUTPUT
    inference_min_size: int = 0  # KRCNN.INFERENCE_MIN_SIZE
    keypoint_confidence: str = "bbox"  # KRCNN.KEYPOINT_CONFIDENCE
    nms_oks: bool = False  # KRCNN.NMS_OKS


@dataclass(frozen=True)
class RetinaNetSpec:
    num_convs: int = 4  # RETINANET.NUM_CONVS
    anchor_scale: float = 4.0  # RETINANET.ANCHOR_SCALE
    scales_per_octave: int = 3  # RETINANET.SCALES_PER_OCTAVE
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)  # RETINANET.ASPECT_RATIOS (config order is kept)
    softmax: bool = False  # RETINANET.SOFTMAX
    share_cls_bbox_tower: bool = False  # RETINANET.SHARE_CLS_BBOX_TOWER
    class_specific_bbox: bool = False  # RETINANET.CLASS_SPECIFIC_BBOX
    prior_prob: float = 0.01  # RETINANET.PRIOR_PROB
    inference_th: float = 0.05  # RETINANET.INFERENCE_TH
    pre_nms_top_n: int = 1000  # RETINANET.PRE_NMS_TOP_N
    bbox_reg_weights: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    @property
    def num_anchors(self) -> int:
        return self.scales_per_octave * len(self.aspect_ratios)


@dataclass(frozen=True)
class AugSpec:
    """One test-time augmentation block: ``TEST.BBOX_AUG``, ``TEST.MASK_AUG`` or ``TEST.KPS_AUG``.

    The transforms are the same in the three blocks (``core/test.py``): the horizontal flip at
    ``TEST.SCALE``, each of ``scales`` (shorter side, longer side capped at ``max_size``) and its flip,
    each of ``aspect_ratios`` (width-relative) and its flip. The fields a block does not have keep their
    defaults (``score_heur`` / ``coord_heur`` are BBOX_AUG's, ``heur`` / ``area_th`` MASK_AUG's and KPS_AUG's).
    """

    enabled: bool = False  # TEST.*_AUG.ENABLED
    h_flip: bool = False  # H_FLIP
    scales: Tuple[int, ...] = ()  # SCALES
    max_size: int = 4000  # MAX_SIZE (of the SCALES passes)
    scale_h_flip: bool = False  # SCALE_H_FLIP
    scale_size_dep: bool = False  # SCALE_SIZE_DEP (KPS_AUG only; Detectron asserts it off for boxes and masks)
    aspect_ratios: Tuple[float, ...] = ()  # ASPECT_RATIOS
    aspect_ratio_h_flip: bool = False  # ASPECT_RATIO_H_FLIP
    score_heur: str = "UNION"  # BBOX_AUG.SCORE_HEUR: ID, AVG, UNION
    coord_heur: str = "UNION"  # BBOX_AUG.COORD_HEUR: ID, AVG, UNION
    heur: str = ""  # MASK_AUG.HEUR (SOFT_AVG, SOFT_MAX, LOGIT_AVG) / KPS_AUG.HEUR (HM_AVG, HM_MAX)
    area_th: float = 180.0**2  # KPS_AUG.AREA_TH: small+medium vs large boxes under SCALE_SIZE_DEP

    @property
    def num_passes(self) -> int:
        """Network passes Detectron runs for this block when enabled (the identity pass included)."""
        flips = 1 + int(self.scale_h_flip)
        return 1 + int(self.h_flip) + flips * len(self.scales) + (1 + int(self.aspect_ratio_h_flip)) * len(self.aspect_ratios)


@dataclass(frozen=True)
class TestSpec:
    """Test-time sizes and thresholds (Detectron ``TEST.*`` plus the global constants they use)."""

    scale: int = 600  # TEST.SCALE (shorter side)
    max_size: int = 1000  # TEST.MAX_SIZE (longer side cap)
    nms: float = 0.3  # TEST.NMS (per class)
    score_thresh: float = 0.05  # TEST.SCORE_THRESH (strict >)
    detections_per_im: int = 100  # TEST.DETECTIONS_PER_IM (ties at the cut-off are kept)
    soft_nms: bool = False  # TEST.SOFT_NMS.ENABLED
    soft_nms_method: str = "linear"
    soft_nms_sigma: float = 0.5
    bbox_vote: bool = False  # TEST.BBOX_VOTE.ENABLED
    bbox_vote_thresh: float = 0.8
    bbox_vote_method: str = "ID"
    bbox_vote_beta: float = 1.0
    bbox_aug: AugSpec = field(default_factory=AugSpec)  # TEST.BBOX_AUG (detconvert.inference.tta)
    mask_aug: AugSpec = field(default_factory=AugSpec)  # TEST.MASK_AUG
    kps_aug: AugSpec = field(default_factory=AugSpec)  # TEST.KPS_AUG
    force_json_dataset_eval: bool = False
    dedup_boxes: float = 0.0625  # DEDUP_BOXES (precomputed-proposal models only)
    bbox_xform_clip: float = 4.135166556742356  # BBOX_XFORM_CLIP = log(1000/16)
    proposal_limit: int = 2000  # TEST.PROPOSAL_LIMIT (precomputed proposals)


@dataclass(frozen=True)
class ArchSpec:
    """One Detectron network, resolved: what to build and how to run it."""

    meta_arch: Literal["generalized_rcnn", "retinanet"]
    pipeline: Pipeline
    body: ResNetSpec
    num_classes: int  # background included (81 for COCO, 2 for person keypoints)
    test: TestSpec
    fpn: Optional[FPNSpec] = None
    rpn: Optional[RPNSpec] = None
    box_head: Optional[BoxHeadSpec] = None
    mask_head: Optional[MaskHeadSpec] = None
    keypoint_head: Optional[KeypointHeadSpec] = None
    retinanet: Optional[RetinaNetSpec] = None
    conventions: Conventions = field(default_factory=Conventions)
    conv_body_name: str = ""  # Detectron's CONV_BODY after translation, e.g. "FPN.fpn_ResNet50_conv5_body"

    @property
    def is_fpn(self) -> bool:
        return self.fpn is not None

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ArchSpec":
        """Inverse of :meth:`to_dict` (as read back from a checkpoint's JSON metadata)."""
        test = data.get("test")
        if isinstance(test, dict) and any(isinstance(test.get(k), bool) for k in _AUG_KEYS):
            # Checkpoints written before test-time augmentation ran stored only TEST.*_AUG.ENABLED.
            test = {**test, **{k: {"enabled": test[k]} for k in _AUG_KEYS if isinstance(test.get(k), bool)}}
            data = {**data, "test": test}
        return _from_dict(cls, data)


_AUG_KEYS = ("bbox_aug", "mask_aug", "kps_aug")


def _from_dict(cls: Any, data: Any) -> Any:
    import typing

    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name])
    return cls(**kwargs)


def _coerce(tp: Any, value: Any) -> Any:
    import typing

    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value)
    if origin is tuple:
        return tuple(value)
    return value
