"""From an inferred config to the typed :class:`detconvert.spec.ArchSpec`, and back to words.

What Detectron builds is decided in ``modeling/model_builder.py`` (which heads exist),
``modeling/ResNet.py`` (block counts, stride placement, GN vs affine), ``modeling/FPN.py``
(``get_min_max_levels``, extra levels) and the head modules; the rules below cite them.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

from detconvert.config.modules import resolve_model_type, resolve_module, strip_add
from detconvert.errors import ConfigError, PathLike
from detconvert.spec import (
    ArchSpec,
    AugSpec,
    BoxHeadSpec,
    Conventions,
    FPNSpec,
    KeypointHeadSpec,
    MaskHeadSpec,
    NormSpec,
    ResNetSpec,
    RetinaNetSpec,
    RoIXformSpec,
    RPNSpec,
    TestSpec,
)

# ResNet.py: add_ResNet{50,101,152}_conv{4,5}_body block counts of res2..res5.
BLOCK_COUNTS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# FPN.py: LOWEST_BACKBONE_LVL / HIGHEST_BACKBONE_LVL.
_LOWEST_BACKBONE_LVL, _HIGHEST_BACKBONE_LVL = 2, 5
# Convs before the mask up-sampling, per mask head (mask_rcnn_heads.py).
MASK_HEAD_CONVS = {
    "mask_rcnn_fcn_head_v1up4convs": 4,
    "mask_rcnn_fcn_head_v1up4convs_gn": 4,
    "mask_rcnn_fcn_head_v1up": 2,
    "mask_rcnn_fcn_head_v0upshare": 0,
    "mask_rcnn_fcn_head_v0up": 0,
}
# Body output width of the C4 bodies (res4) for the single-scale RPN and the res5 box head input.
_C4_DIM = 1024


def _func(name: str) -> str:
    return strip_add(name).rpartition(".")[2]


def _parse_body(conv_body: str) -> Tuple[bool, int, int]:
    """``'FPN.fpn_ResNet101_conv5_body'`` -> (fpn, depth, last_stage)."""
    func = _func(conv_body)
    fpn = func.startswith("fpn_")
    core = func[4:] if fpn else func
    if core.endswith("_P2only_body"):
        raise ConfigError(f"key MODEL.CONV_BODY: {conv_body} (P2-only FPN) is not supported by detconvert")
    if not core.startswith("ResNet") or not core.endswith("_body"):
        raise ConfigError(f"key MODEL.CONV_BODY: {conv_body} is not a ResNet body; detconvert builds ResNet/ResNeXt bodies only")
    depth_str, _, stage = core[len("ResNet"):-len("_body")].partition("_conv")
    return fpn, int(depth_str), int(stage)


def _norm(cfg: Mapping[str, Any]) -> NormSpec:
    r = cfg["RESNETS"]
    kinds = {"gn" if "_gn_" in r[k] else "affine" for k in ("TRANS_FUNC", "STEM_FUNC", "SHORTCUT_FUNC")}
    if len(kinds) != 1:
        raise ConfigError("keys RESNETS.TRANS_FUNC/STEM_FUNC/SHORTCUT_FUNC mix BN and GN functions; detconvert builds one norm per body")
    g = cfg["GROUP_NORM"]
    return NormSpec(kind=kinds.pop(), gn_num_groups=g["NUM_GROUPS"], gn_dim_per_group=g["DIM_PER_GP"], gn_eps=float(g["EPSILON"]))


def _fpn_levels(cfg: Mapping[str, Any]) -> Tuple[int, int]:
    """FPN.get_min_max_levels: the pyramid levels the FPN builds."""
    f = cfg["FPN"]
    lo, hi = _LOWEST_BACKBONE_LVL, _HIGHEST_BACKBONE_LVL
    if f["MULTILEVEL_RPN"] and not f["MULTILEVEL_ROIS"]:
        lo, hi = f["RPN_MIN_LEVEL"], f["RPN_MAX_LEVEL"]
    elif f["MULTILEVEL_ROIS"] and not f["MULTILEVEL_RPN"]:
        lo, hi = f["ROI_MIN_LEVEL"], f["ROI_MAX_LEVEL"]
    elif f["MULTILEVEL_RPN"] and f["MULTILEVEL_ROIS"]:
        lo, hi = min(f["RPN_MIN_LEVEL"], f["ROI_MIN_LEVEL"]), max(f["RPN_MAX_LEVEL"], f["ROI_MAX_LEVEL"])
    return lo, hi


def _xform(section: Mapping[str, Any]) -> RoIXformSpec:
    return RoIXformSpec(
        method=section["ROI_XFORM_METHOD"],
        resolution=section["ROI_XFORM_RESOLUTION"],
        sampling_ratio=section["ROI_XFORM_SAMPLING_RATIO"],
    )


def build_spec(cfg: Mapping[str, Any], source: Optional[PathLike] = None) -> ArchSpec:
    """The architecture a (translated or Detectron) inferred config describes.

    ``source`` (``TranslatedConfig.source``: the config file) is named by every error, as the
    translation's own errors do. See :func:`_build_spec` for the rest.
    """
    try:
        return _build_spec(cfg)
    except ConfigError as exc:
        if source is None or exc.source is not None:
            raise
        raise ConfigError(exc.message, source) from None


def _build_spec(cfg: Mapping[str, Any]) -> ArchSpec:
    """The architecture a (translated or Detectron) inferred config describes.

    Args:
        cfg: ``TranslatedConfig.cfg`` (or ``.detectron_cfg``; module names in any accepted spelling).

    Returns:
        The :class:`~detconvert.spec.ArchSpec`.

    Raises:
        ConfigError: the config names a network detconvert cannot build (VGG, R-FCN, P2-only FPN,
            mixed BN/GN), or no class count.
    """
    model = cfg["MODEL"]
    names = {}
    for key in ("MODEL.CONV_BODY", "FAST_RCNN.ROI_BOX_HEAD", "MRCNN.ROI_MASK_HEAD", "KRCNN.ROI_KEYPOINTS_HEAD"):
        section, leaf = key.split(".")
        try:
            names[key] = resolve_module(key, cfg[section][leaf])[1]
        except KeyError:
            raise ConfigError(f"key {key}: unknown module name {cfg[section][leaf]!r}") from None
    try:
        model_type = resolve_model_type(model["TYPE"])[0] if model["TYPE"] else "generalized_rcnn"
    except KeyError:
        raise ConfigError(f"key MODEL.TYPE: unknown model type {model['TYPE']!r}") from None
    if model_type == "rfcn":
        raise ConfigError("key MODEL.TYPE: R-FCN is not supported by detconvert (no Detectron config uses it)")
    retinanet_on = bool(cfg["RETINANET"]["RETINANET_ON"])
    meta_arch = "retinanet" if (model_type == "retinanet" or retinanet_on) else "generalized_rcnn"
    if meta_arch == "retinanet" and not retinanet_on:
        raise ConfigError("key RETINANET.RETINANET_ON must be True for MODEL.TYPE retinanet (Detectron's assert)")
    if names["MODEL.CONV_BODY"] == "":
        raise ConfigError("key MODEL.CONV_BODY is not set")
    is_fpn_body, depth, last_stage = _parse_body(names["MODEL.CONV_BODY"])
    if depth not in BLOCK_COUNTS:
        raise ConfigError(f"key MODEL.CONV_BODY: ResNet depth {depth} is not one of 50, 101, 152")
    fpn_on = bool(cfg["FPN"]["FPN_ON"])
    if fpn_on != is_fpn_body:
        raise ConfigError(f"keys FPN.FPN_ON ({fpn_on}) and MODEL.CONV_BODY ({names['MODEL.CONV_BODY']}) disagree")
    r = cfg["RESNETS"]
    body = ResNetSpec(
        depth=depth,
        block_counts=BLOCK_COUNTS[depth],
        last_stage=last_stage,
        num_groups=r["NUM_GROUPS"],
        width_per_group=r["WIDTH_PER_GROUP"],
        stride_1x1=bool(r["STRIDE_1X1"]),
        res5_dilation=r["RES5_DILATION"],
        freeze_at=cfg["TRAIN"]["FREEZE_AT"],
        norm=_norm(cfg),
    )
    num_classes = int(model["NUM_CLASSES"])
    rpn_only = bool(model["RPN_ONLY"])
    if num_classes <= 0 and not rpn_only:
        raise ConfigError("key MODEL.NUM_CLASSES is not set: pass --dataset or --weights")

    if meta_arch == "retinanet":
        pipeline = "retinanet"
    elif rpn_only:
        pipeline = "rpn_only"
    elif cfg["RPN"]["RPN_ON"]:
        pipeline = "e2e"
    else:
        pipeline = "precomputed_proposals"

    f = cfg["FPN"]
    fpn = None
    if fpn_on:
        lo, hi = _fpn_levels(cfg)
        fpn = FPNSpec(
            dim=f["DIM"],
            min_level=lo,
            max_level=hi,
            extra_conv_levels=bool(f["EXTRA_CONV_LEVELS"]),
            use_gn=bool(f["USE_GN"]),
            zero_init_lateral=bool(f["ZERO_INIT_LATERAL"]),
            coarsest_stride=f["COARSEST_STRIDE"],
            roi_min_level=f["ROI_MIN_LEVEL"],
            roi_max_level=f["ROI_MAX_LEVEL"],
            roi_canonical_level=f["ROI_CANONICAL_LEVEL"],
            roi_canonical_scale=f["ROI_CANONICAL_SCALE"],
            multilevel_rois=bool(f["MULTILEVEL_ROIS"]),
            multilevel_rpn=bool(f["MULTILEVEL_RPN"]),
        )

    t = cfg["TEST"]
    rpn = None
    if cfg["RPN"]["RPN_ON"] and meta_arch == "generalized_rcnn":
        common = dict(
            pre_nms_top_n=t["RPN_PRE_NMS_TOP_N"],
            post_nms_top_n=t["RPN_POST_NMS_TOP_N"],
            nms_thresh=float(t["RPN_NMS_THRESH"]),
            min_size=float(t["RPN_MIN_SIZE"]),
        )
        if fpn_on and f["MULTILEVEL_RPN"]:
            levels = range(f["RPN_MIN_LEVEL"], f["RPN_MAX_LEVEL"] + 1)
            rpn = RPNSpec(
                kind="fpn",
                # FPN.add_fpn_rpn_outputs: anchor size RPN_ANCHOR_START_SIZE * 2**(level - RPN_MIN_LEVEL)
                anchor_sizes=tuple(float(f["RPN_ANCHOR_START_SIZE"] * 2.0 ** (lvl - f["RPN_MIN_LEVEL"])) for lvl in levels),
                aspect_ratios=tuple(float(a) for a in f["RPN_ASPECT_RATIOS"]),
                anchor_stride=2 ** f["RPN_MIN_LEVEL"],
                min_level=f["RPN_MIN_LEVEL"],
                max_level=f["RPN_MAX_LEVEL"],
                conv_dim=f["DIM"],
                **common,
            )
        else:
            rpn = RPNSpec(
                kind="single_scale",
                anchor_sizes=tuple(float(s) for s in cfg["RPN"]["SIZES"]),
                aspect_ratios=tuple(float(a) for a in cfg["RPN"]["ASPECT_RATIOS"]),
                anchor_stride=cfg["RPN"]["STRIDE"],
                conv_dim=_C4_DIM if last_stage == 4 else 2048,
                **common,
            )

    bbox_weights = tuple(float(w) for w in model["BBOX_REG_WEIGHTS"])
    box_head = None
    if meta_arch == "generalized_rcnn" and not rpn_only:
        kind = _func(names["FAST_RCNN.ROI_BOX_HEAD"])
        if kind not in ("roi_2mlp_head", "ResNet_roi_conv5_head", "roi_Xconv1fc_head", "roi_Xconv1fc_gn_head"):
            raise ConfigError(f"key FAST_RCNN.ROI_BOX_HEAD: {names['FAST_RCNN.ROI_BOX_HEAD'] or 'unset'} is not supported")
        fr = cfg["FAST_RCNN"]
        box_head = BoxHeadSpec(
            kind=kind,
            roi_xform=_xform(fr),
            mlp_dim=fr["MLP_HEAD_DIM"],
            conv_dim=fr["CONV_HEAD_DIM"],
            num_convs=fr["NUM_STACKED_CONVS"],
            cls_agnostic_bbox_reg=bool(model["CLS_AGNOSTIC_BBOX_REG"]),
            bbox_reg_weights=bbox_weights,
        )

    mask_head = None
    if meta_arch == "generalized_rcnn" and model["MASK_ON"]:
        kind = _func(names["MRCNN.ROI_MASK_HEAD"])
        if kind not in MASK_HEAD_CONVS:
            raise ConfigError(
                f"key MRCNN.ROI_MASK_HEAD: {names['MRCNN.ROI_MASK_HEAD'] or 'unset'} cannot be used as a mask head "
                "(the Xconvs variants need a conv count Detectron never passes from the config)"
            )
        m = cfg["MRCNN"]
        mask_head = MaskHeadSpec(
            kind=kind,
            roi_xform=_xform(m),
            resolution=m["RESOLUTION"],
            dim_reduced=m["DIM_REDUCED"],
            num_convs=MASK_HEAD_CONVS[kind],
            dilation=m["DILATION"],
            upsample_ratio=m["UPSAMPLE_RATIO"],
            cls_specific_mask=bool(m["CLS_SPECIFIC_MASK"]),
            use_fc_output=bool(m["USE_FC_OUTPUT"]),
            thresh_binarize=float(m["THRESH_BINARIZE"]),
        )

    keypoint_head = None
    if meta_arch == "generalized_rcnn" and model["KEYPOINTS_ON"]:
        kind = _func(names["KRCNN.ROI_KEYPOINTS_HEAD"])
        if kind != "roi_pose_head_v1convX":
            raise ConfigError(f"key KRCNN.ROI_KEYPOINTS_HEAD: {names['KRCNN.ROI_KEYPOINTS_HEAD'] or 'unset'} is not supported")
        k = cfg["KRCNN"]
        keypoint_head = KeypointHeadSpec(
            kind=kind,
            roi_xform=_xform(k),
            num_keypoints=k["NUM_KEYPOINTS"],
            conv_head_dim=k["CONV_HEAD_DIM"],
            conv_head_kernel=k["CONV_HEAD_KERNEL"],
            num_stacked_convs=k["NUM_STACKED_CONVS"],
            heatmap_size=k["HEATMAP_SIZE"],
            up_scale=k["UP_SCALE"],
            use_deconv=bool(k["USE_DECONV"]),
            deconv_dim=k["DECONV_DIM"],
            deconv_kernel=k["DECONV_KERNEL"],
            use_deconv_output=bool(k["USE_DECONV_OUTPUT"]),
            inference_min_size=k["INFERENCE_MIN_SIZE"],
            keypoint_confidence=k["KEYPOINT_CONFIDENCE"],
            nms_oks=bool(k["NMS_OKS"]),
        )

    retinanet = None
    if meta_arch == "retinanet":
        if not fpn_on:
            raise ConfigError("RetinaNet needs FPN.FPN_ON (retinanet_heads.add_fpn_retinanet_outputs)")
        rt = cfg["RETINANET"]
        retinanet = RetinaNetSpec(
            num_convs=rt["NUM_CONVS"],
            anchor_scale=float(rt["ANCHOR_SCALE"]),
            scales_per_octave=rt["SCALES_PER_OCTAVE"],
            aspect_ratios=tuple(float(a) for a in rt["ASPECT_RATIOS"]),
            softmax=bool(rt["SOFTMAX"]),
            share_cls_bbox_tower=bool(rt["SHARE_CLS_BBOX_TOWER"]),
            class_specific_bbox=bool(rt["CLASS_SPECIFIC_BBOX"]),
            prior_prob=float(rt["PRIOR_PROB"]),
            inference_th=float(rt["INFERENCE_TH"]),
            pre_nms_top_n=rt["PRE_NMS_TOP_N"],
        )

    bbox_aug, mask_aug, kps_aug = test_augmentation(t, pipeline, mask_head, keypoint_head)
    test = TestSpec(
        scale=t["SCALE"],
        max_size=t["MAX_SIZE"],
        nms=float(t["NMS"]),
        score_thresh=float(t["SCORE_THRESH"]),
        detections_per_im=t["DETECTIONS_PER_IM"],
        soft_nms=bool(t["SOFT_NMS"]["ENABLED"]),
        soft_nms_method=t["SOFT_NMS"]["METHOD"],
        soft_nms_sigma=float(t["SOFT_NMS"]["SIGMA"]),
        bbox_vote=bool(t["BBOX_VOTE"]["ENABLED"]),
        bbox_vote_thresh=float(t["BBOX_VOTE"]["VOTE_TH"]),
        bbox_vote_method=t["BBOX_VOTE"]["SCORING_METHOD"],
        bbox_vote_beta=float(t["BBOX_VOTE"]["SCORING_METHOD_BETA"]),
        bbox_aug=bbox_aug,
        mask_aug=mask_aug,
        kps_aug=kps_aug,
        force_json_dataset_eval=bool(t["FORCE_JSON_DATASET_EVAL"]),
        dedup_boxes=float(cfg["DEDUP_BOXES"]),
        bbox_xform_clip=float(cfg["BBOX_XFORM_CLIP"]),
        proposal_limit=t["PROPOSAL_LIMIT"],
    )
    means = [float(v) for v in list(cfg["PIXEL_MEANS"].reshape(-1))]
    conventions = Conventions(pixel_means=tuple(means))
    return ArchSpec(
        meta_arch=meta_arch,
        pipeline=pipeline,
        body=body,
        num_classes=num_classes,
        test=test,
        fpn=fpn,
        rpn=rpn,
        box_head=box_head,
        mask_head=mask_head,
        keypoint_head=keypoint_head,
        retinanet=retinanet,
        conventions=conventions,
        conv_body_name=names["MODEL.CONV_BODY"],
    )


# core/test.py: the combination heuristics each block implements (anything else is NotImplementedError there).
_SCORE_COORD_HEURS = ("ID", "AVG", "UNION")
_MASK_HEURS = ("SOFT_AVG", "SOFT_MAX", "LOGIT_AVG")
_KPS_HEURS = ("HM_AVG", "HM_MAX")
#: utils/keypoints.get_keypoints: flip_heatmaps swaps the left/right channels of the 17 COCO keypoints.
_COCO_NUM_KEYPOINTS = 17


def _aug_block(block: Mapping[str, Any]) -> AugSpec:
    return AugSpec(
        enabled=bool(block["ENABLED"]),
        h_flip=bool(block["H_FLIP"]),
        scales=tuple(int(s) for s in block["SCALES"]),
        max_size=int(block["MAX_SIZE"]),
        scale_h_flip=bool(block["SCALE_H_FLIP"]),
        scale_size_dep=bool(block["SCALE_SIZE_DEP"]),
        aspect_ratios=tuple(float(a) for a in block["ASPECT_RATIOS"]),
        aspect_ratio_h_flip=bool(block["ASPECT_RATIO_H_FLIP"]),
        score_heur=str(block.get("SCORE_HEUR", "UNION")),
        coord_heur=str(block.get("COORD_HEUR", "UNION")),
        heur=str(block.get("HEUR", "")),
        area_th=float(block.get("AREA_TH", 180.0**2)),
    )


def test_augmentation(t: Mapping[str, Any], pipeline: str, mask_head: Any, keypoint_head: Any) -> Tuple[AugSpec, AugSpec, AugSpec]:
    """``TEST.BBOX_AUG`` / ``MASK_AUG`` / ``KPS_AUG`` as :class:`AugSpec`, refusing what Detectron cannot run.

    A block is checked only when ``core/test.im_detect_all`` would run it (enabled, and the model has
    the head it augments; RetinaNet and RPN-only test paths never read these blocks). Refused, naming
    the key: an unknown heuristic, ``SCORE_HEUR`` / ``COORD_HEUR`` where one is ``UNION`` and the other
    not, anything but ``UNION`` for an end-to-end (``FASTER_RCNN``) model, ``SCALE_SIZE_DEP`` for boxes
    and masks (Detectron asserts each of these), flipped heatmaps for a model without the 17 COCO
    keypoints (``flip_heatmaps`` would swap the wrong channels), non-positive scales or ratios.
    """
    bbox, mask, kps = (_aug_block(t[name]) for name in ("BBOX_AUG", "MASK_AUG", "KPS_AUG"))
    runs = (
        ("TEST.BBOX_AUG", bbox, pipeline in ("e2e", "precomputed_proposals")),
        ("TEST.MASK_AUG", mask, mask_head is not None and pipeline in ("e2e", "precomputed_proposals")),
        ("TEST.KPS_AUG", kps, keypoint_head is not None and pipeline in ("e2e", "precomputed_proposals")),
    )
    for key, aug, applies in runs:
        if not (aug.enabled and applies):
            continue
        if any(s <= 0 for s in aug.scales) or aug.max_size <= 0:
            raise ConfigError(f"key {key}.SCALES / MAX_SIZE: scales must be positive, got {list(aug.scales)} / {aug.max_size}")
        if any(a <= 0 for a in aug.aspect_ratios):
            raise ConfigError(f"key {key}.ASPECT_RATIOS: ratios must be positive, got {list(aug.aspect_ratios)}")
    if bbox.enabled and runs[0][2]:
        for leaf, heur in (("SCORE_HEUR", bbox.score_heur), ("COORD_HEUR", bbox.coord_heur)):
            if heur not in _SCORE_COORD_HEURS:
                raise ConfigError(f"key TEST.BBOX_AUG.{leaf}: {heur!r} is not implemented (Detectron has "
                                  f"{', '.join(_SCORE_COORD_HEURS)})")
        if (bbox.score_heur == "UNION") != (bbox.coord_heur == "UNION"):
            raise ConfigError("keys TEST.BBOX_AUG.SCORE_HEUR / COORD_HEUR: UNION must be used for both or neither "
                              f"(got {bbox.score_heur} / {bbox.coord_heur}; Detectron's assert)")
        if pipeline == "e2e" and bbox.score_heur != "UNION":
            raise ConfigError(f"key TEST.BBOX_AUG.SCORE_HEUR: {bbox.score_heur} cannot combine an end-to-end "
                              "(FASTER_RCNN) model's passes, whose proposals differ per pass: use UNION (Detectron's assert)")
        if bbox.scale_size_dep:
            raise ConfigError("key TEST.BBOX_AUG.SCALE_SIZE_DEP: size-dependent scaling of boxes is not implemented "
                              "(Detectron asserts it off; AREA_TH_LO / AREA_TH_HI are unused)")
    if mask.enabled and runs[1][2]:
        if mask.heur not in _MASK_HEURS:
            raise ConfigError(f"key TEST.MASK_AUG.HEUR: {mask.heur!r} is not implemented (Detectron has "
                              f"{', '.join(_MASK_HEURS)})")
        if mask.scale_size_dep:
            raise ConfigError("key TEST.MASK_AUG.SCALE_SIZE_DEP: size-dependent scaling of masks is not implemented "
                              "(Detectron asserts it off; AREA_TH is unused)")
    if kps.enabled and runs[2][2]:
        if kps.heur not in _KPS_HEURS:
            raise ConfigError(f"key TEST.KPS_AUG.HEUR: {kps.heur!r} is not implemented (Detectron has "
                              f"{', '.join(_KPS_HEURS)})")
        flips = kps.h_flip or (kps.scale_h_flip and kps.scales) or (kps.aspect_ratio_h_flip and kps.aspect_ratios)
        if flips and keypoint_head.num_keypoints != _COCO_NUM_KEYPOINTS:
            raise ConfigError(f"key TEST.KPS_AUG.H_FLIP: flipped heatmaps swap the left/right channels of the 17 COCO "
                              f"keypoints; this model has {keypoint_head.num_keypoints}")
    return bbox, mask, kps


def augmentation_passes(spec: ArchSpec) -> Tuple[int, int, int]:
    """``(box, mask, keypoint)`` network passes per image of ``spec``'s test path (``core/test.im_detect_all``).

    Boxes: one pass without ``TEST.BBOX_AUG`` (RetinaNet and RPN-only models always one). Masks and
    keypoints: 0 without their ``*_AUG`` (the heads run on the box pass's features), else one body pass
    plus head per transform.
    """
    t = spec.test
    two_stage = spec.pipeline in ("e2e", "precomputed_proposals")
    box = t.bbox_aug.num_passes if (two_stage and t.bbox_aug.enabled) else 1
    mask = t.mask_aug.num_passes if (two_stage and spec.mask_head is not None and t.mask_aug.enabled) else 0
    kps = t.kps_aug.num_passes if (two_stage and spec.keypoint_head is not None and t.kps_aug.enabled) else 0
    return box, mask, kps


def augmentation_line(spec: ArchSpec) -> str:
    """``test-time augmentation: N passes (...)`` for ``config --explain`` and ``inspect``."""
    box, mask, kps = augmentation_passes(spec)
    # Network passes run: the mask / keypoint stages' identity transform reads the box stage's last maps.
    total = box + max(mask - 1, 0) + max(kps - 1, 0)
    if total == 1 and not mask and not kps:
        t = spec.test
        if t.bbox_aug.enabled and spec.pipeline in ("retinanet", "rpn_only"):
            why = "RetinaNet" if spec.pipeline == "retinanet" else "RPN-only"
            return f"test-time augmentation: off, 1 pass (TEST.BBOX_AUG is on, but Detectron's {why} test path never reads it)"
        return "test-time augmentation: off, 1 pass"
    parts = [f"{box} for boxes"] + ([f"{mask - 1} more for masks"] if mask else []) + (
        [f"{kps - 1} more for keypoints"] if kps else [])
    return (f"test-time augmentation: {total} passes per image ({', '.join(parts)}); "
            "--set TEST.BBOX_AUG.ENABLED False (and MASK_AUG / KPS_AUG) turns it off")


def explain(spec: ArchSpec) -> str:
    """The resolved network in words (``detconvert config --explain``)."""
    b = spec.body
    lines: List[str] = []
    family = f"ResNeXt-{b.depth} {b.num_groups}x{b.width_per_group}d" if b.num_groups > 1 else f"ResNet-{b.depth}"
    norm = "GroupNorm" if b.norm.kind == "gn" else "frozen affine (folded BN)"
    pipe = {
        "e2e": "end-to-end: the network's own RPN proposes boxes",
        "rpn_only": "RPN only: outputs proposals, no detections",
        "precomputed_proposals": "two-stage with precomputed proposals (needs a proposal source, e.g. the matching rpn_* model)",
        "retinanet": "one-stage RetinaNet",
    }[spec.pipeline]
    lines.append(f"Detectron {spec.meta_arch} network, {pipe}.")
    from detconvert.config.model_io import io_lines

    lines.extend(io_lines(spec.pipeline))
    lines.append(
        f"Body: {family} ({'-'.join(map(str, b.block_counts))} blocks), res2..res{b.last_stage}, {norm}, "
        f"stride on the {'1x1' if b.stride_1x1 else '3x3'} conv, frozen up to {'nothing' if b.freeze_at == 0 else f'res{b.freeze_at}'}"
        + (" (res5 runs in the RoI head: C4)" if b.last_stage == 4 else "")
        + "."
    )
    if spec.fpn:
        f = spec.fpn
        extra = "fpn_6/fpn_7 convs" if f.extra_conv_levels else "max-pool P6" if f.max_level > 5 else "no extra level"
        lines.append(
            f"FPN: P{f.min_level}-P{f.max_level}, {f.dim} channels, {extra}{', GroupNorm' if f.use_gn else ''}; "
            f"input padded to a multiple of {f.coarsest_stride}."
        )
    if spec.rpn:
        r = spec.rpn
        if r.kind == "fpn":
            lines.append(
                f"RPN: shared over P{r.min_level}-P{r.max_level}, {r.num_anchors} anchors per position (sizes "
                f"{', '.join(f'{s:g}' for s in r.anchor_sizes)}, ratios {', '.join(f'{a:g}' for a in r.aspect_ratios)}); "
                f"test: top {r.pre_nms_top_n} pre-NMS / {r.post_nms_top_n} post-NMS per level, NMS {r.nms_thresh:g}."
            )
        else:
            lines.append(
                f"RPN: single scale, stride {r.anchor_stride}, {r.num_anchors} anchors (sizes "
                f"{', '.join(f'{s:g}' for s in r.anchor_sizes)} x ratios {', '.join(f'{a:g}' for a in r.aspect_ratios)}); "
                f"test: top {r.pre_nms_top_n} pre-NMS / {r.post_nms_top_n} post-NMS, NMS {r.nms_thresh:g}."
            )
    if spec.box_head:
        h = spec.box_head
        x = h.roi_xform
        lines.append(
            f"Box head: {h.kind} on {x.method} {x.resolution}x{x.resolution} (sampling ratio {x.sampling_ratio}), "
            f"{spec.num_classes} classes incl. background, "
            f"{'class-agnostic' if h.cls_agnostic_bbox_reg else 'class-specific'} box regression, weights {h.bbox_reg_weights}."
        )
    if spec.mask_head:
        m = spec.mask_head
        lines.append(
            f"Mask head: {m.kind} on {m.roi_xform.method} {m.roi_xform.resolution}x{m.roi_xform.resolution} "
            f"(sampling ratio {m.roi_xform.sampling_ratio}), {m.resolution}x{m.resolution} masks, "
            f"{'per class' if m.cls_specific_mask else 'class-agnostic'}, threshold {m.thresh_binarize:g}."
        )
    if spec.keypoint_head:
        k = spec.keypoint_head
        lines.append(
            f"Keypoint head: {k.kind}, {k.num_stacked_convs} convs x {k.conv_head_dim}, on {k.roi_xform.method} "
            f"{k.roi_xform.resolution}x{k.roi_xform.resolution}, {k.num_keypoints} keypoints, {k.heatmap_size}x{k.heatmap_size} heatmaps."
        )
    if spec.retinanet:
        rt = spec.retinanet
        lines.append(
            f"RetinaNet head: {rt.num_convs}+{rt.num_convs} convs, {rt.num_anchors} anchors per position "
            f"({rt.scales_per_octave} scales x ratios {', '.join(f'{a:g}' for a in rt.aspect_ratios)}), "
            f"{'softmax' if rt.softmax else 'sigmoid'} over {spec.num_classes - 1} classes, score > {rt.inference_th:g}, "
            f"top {rt.pre_nms_top_n} per level."
        )
    t = spec.test
    extras = [n for n, on in (("soft-NMS", t.soft_nms), ("box voting", t.bbox_vote)) if on]
    lines.append(
        f"Test: shorter side {t.scale}, longer side at most {t.max_size}; NMS {t.nms:g}, score > {t.score_thresh:g}, "
        f"{t.detections_per_im} detections per image"
        + (f"; the config also asks for {', '.join(extras)}" if extras else "")
        + "."
    )
    lines.append(augmentation_line(spec) + ".")
    c = spec.conventions
    lines.append(
        f"Conventions: {c.channel_order} input minus pixel means {c.pixel_means}, no std; boxes with +1 widths; "
        f"RoIAlign aligned=False; class {c.background_index} is background."
    )
    return "\n".join(lines)
