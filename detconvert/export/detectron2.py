"""Detectron model -> a detectron2 checkpoint (``.pkl``) plus a detectron2 YAML.

The checkpoint is detectron2's own model-zoo layout, ``{'model': {name: ndarray}, '__author__':
'detconvert', 'matching_heuristics': False}``: ``DetectionCheckpointer`` then loads it by exact name
(no Caffe2 renaming heuristics, no suffix matching). The names are those of detectron2's modules
(``GeneralizedRCNN`` / ``ProposalNetwork`` / ``RetinaNet``); the facts come from detectron2's
``checkpoint/c2_model_loading.py`` (how it renames Caffe2 blobs), its ``modeling/backbone/{resnet,fpn}.py``
(``bottom_up``, ``fpn_lateral{s}``, ``fpn_output{s}``, ``top_block.p6/p7``), ``roi_heads`` and
``meta_arch/retinanet.py`` (``head.cls_subnet``: conv and ReLU interleaved).

Three things the Caffe2 loader of detectron2 does not do right, done right here:

* the C4 RPN's 15 anchors are ratio-major in Detectron and size-major in detectron2: the objectness
  and delta channels are permuted so that each channel keeps its anchor;
* a class-agnostic mask predictor (1 channel) keeps its channel (the loader would drop it);
* RetinaNet (``retnet_*``, ``fpn_6/7``) is mapped (the loader leaves it unmatched).
"""
from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

import numpy as np

from detconvert.errors import ConfigError, DetconvertError, MappingError, PathLike
from detconvert.export._common import (
    ExportReport,
    NameRule,
    SourceModel,
    affine_scale_blobs,
    check_outputs_free,
    detectron_blobs,
    lookup,
    split_blob,
)
from detconvert.io.atomic import atomic_write
from detconvert.spec import ArchSpec

__all__ = [
    "D2_MODULE_RULES",
    "D2_DROPPED",
    "detectron2_state_dict",
    "detectron2_config",
    "rpn_anchor_permutation",
    "unsupported_in_detectron2",
    "export_detectron2",
]

#: Detectron module blob -> detectron2 module path. ``{body}`` is the ResNet's prefix
#: (``backbone.bottom_up.`` under an FPN, ``backbone.`` for C4); a C4 model's ``res5`` belongs to
#: ``Res5ROIHeads`` and is moved to ``roi_heads.res5`` afterwards (:func:`_d2_module`).
D2_MODULE_RULES: Tuple[NameRule, ...] = (
    (r"res_conv1|conv1", "{body}stem.conv1"),  # stem conv (conv1_w) and its norm (res_conv1_bn_* / conv1_gn_*)
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch1", "{body}res{stage}.{block}.shortcut"),
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch2a", "{body}res{stage}.{block}.conv1"),
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch2b", "{body}res{stage}.{block}.conv2"),
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch2c", "{body}res{stage}.{block}.conv3"),
    (r"fpn_inner_res(?P<stage>[2-5])_\d+_sum(?:_lateral)?", "backbone.fpn_lateral{stage}"),
    (r"fpn_res(?P<stage>[2-5])_\d+_sum", "backbone.fpn_output{stage}"),
    (r"fpn_6", "backbone.top_block.p6"),  # LastLevelP6P7 on C5 (RetinaNet)
    (r"fpn_7", "backbone.top_block.p7"),
    # RPN: Detectron's FPN RPN blobs exist for the lowest level only (ConvShared): one d2 head.
    (r"conv_rpn(?:_fpn\d+)?", "proposal_generator.rpn_head.conv"),
    (r"rpn_cls_logits(?:_fpn\d+)?", "proposal_generator.rpn_head.objectness_logits"),
    (r"rpn_bbox_pred(?:_fpn\d+)?", "proposal_generator.rpn_head.anchor_deltas"),
    (r"fc6", "roi_heads.box_head.fc1"),
    (r"fc7", "roi_heads.box_head.fc2"),
    (r"head_conv(?P<n>\d+)", "roi_heads.box_head.conv{n}"),
    (r"cls_score", "roi_heads.box_predictor.cls_score"),
    (r"bbox_pred", "roi_heads.box_predictor.bbox_pred"),
    (r"_\[mask\]_fcn(?P<n>\d+)", "roi_heads.mask_head.mask_fcn{n}"),
    (r"_mask_fcn(?P<n>\d+)", "roi_heads.mask_head.mask_fcn{n}"),  # the GN mask head has no brackets
    (r"conv5_mask", "roi_heads.mask_head.deconv"),
    (r"mask_fcn_logits", "roi_heads.mask_head.predictor"),
    (r"conv_fcn(?P<n>\d+)", "roi_heads.keypoint_head.conv_fcn{n}"),
    (r"kps_score_lowres", "roi_heads.keypoint_head.score_lowres"),
    (r"retnet_cls_conv_n(?P<i>\d+)_fpn\d+", "head.cls_subnet.{seq}"),
    (r"retnet_bbox_conv_n(?P<i>\d+)_fpn\d+", "head.bbox_subnet.{seq}"),
    (r"retnet_cls_pred_fpn\d+", "head.cls_score"),
    (r"retnet_bbox_pred_fpn\d+", "head.bbox_pred"),
)

#: Detectron module blobs detectron2 has no tensor for (the operation exists, without weights).
D2_DROPPED: Dict[str, str] = {
    "kps_score": "Detectron's fixed bilinear up-sampling deconvolution; detectron2 up-samples the keypoint "
                 "heatmaps x2 with F.interpolate(bilinear, align_corners=False) (differs on border pixels)",
}

#: Detectron tensor kind -> detectron2 parameter name under the module path.
D2_PARAM = {"weight": "weight", "bias": "bias", "norm_weight": "norm.weight", "norm_bias": "norm.bias"}

#: detectron2's FrozenBatchNorm2d eps (``layers/batch_norm.py``): running_var = 1 - eps makes
#: ``weight / sqrt(running_var + eps)`` exactly Detectron's AffineChannel scale.
D2_FROZEN_BN_EPS = 1e-5

#: Detectron loss settings that detectron2 takes from its config (defaults differ): RPN smooth-L1
#: beta 1/9 (``rpn_heads.add_single_scale_rpn_losses`` / ``FPN.add_fpn_rpn_losses``), box head beta 1
#: (``fast_rcnn_heads.add_fast_rcnn_losses``: Caffe2 SmoothL1Loss default), RetinaNet BBOX_REG_BETA 0.11.
D2_RPN_SMOOTH_L1_BETA = 1.0 / 9.0
D2_BOX_SMOOTH_L1_BETA = 1.0

#: Numerics in which detectron2 differs from Detectron, for the report and the README.
D2_NUMERIC_NOTES: Tuple[str, ...] = (
    "detectron2 decodes boxes, computes IoU/NMS and FPN levels without Detectron's +1 pixel widths",
    "detectron2's anchors are not quantized (Detectron rounds widths/heights) and ANCHOR_GENERATOR.OFFSET is 0.0",
    "detectron2 pastes masks with grid_sample, not Detectron's expanded-box cv2 resize",
    "keypoint heatmaps are up-sampled with F.interpolate, not Detectron's fixed deconvolution",
    "results are close to Detectron's, not identical; detconvert itself reproduces Detectron",
)


def _d2_module(module_blob: str, spec: ArchSpec) -> Optional[str]:
    body = "backbone.bottom_up." if spec.fpn is not None else "backbone."
    name = lookup(D2_MODULE_RULES, module_blob, {"body": body})
    if name is not None and spec.body.last_stage == 4 and name.startswith(body + "res5."):
        name = "roi_heads." + name[len(body):]  # C4: Res5ROIHeads owns res5 (box and mask heads share it)
    return name


def rpn_anchor_permutation(spec: ArchSpec) -> Optional[np.ndarray]:
    """Detectron anchor index of each detectron2 anchor of the single-scale (C4) RPN, or None.

    Detectron's ``generate_anchors`` is ratio-major (``a = r * n_sizes + s``); detectron2's
    ``DefaultAnchorGenerator.generate_cell_anchors`` loops sizes outside ratios (``a = s * n_ratios + r``).
    FPN RPNs have one size per level, where both orders coincide.
    """
    rpn = spec.rpn
    if rpn is None or rpn.kind != "single_scale":
        return None
    n_sizes, n_ratios = len(rpn.anchor_sizes), len(rpn.aspect_ratios)
    perm = np.array([r * n_sizes + s for s in range(n_sizes) for r in range(n_ratios)], dtype=np.int64)
    return None if np.array_equal(perm, np.arange(perm.size)) else perm


def unsupported_in_detectron2(spec: ArchSpec) -> List[str]:
    """What detectron2 cannot express in this network (empty: exportable)."""
    problems = []
    norm = spec.body.norm
    uses_gn = norm.kind == "gn" or (spec.fpn is not None and spec.fpn.use_gn) or (
        spec.box_head is not None and spec.box_head.kind.endswith("_gn_head")) or (
        spec.mask_head is not None and spec.mask_head.kind.endswith("_gn"))
    if uses_gn and (norm.gn_dim_per_group > 0 or norm.gn_num_groups != 32):
        problems.append("GroupNorm with other than 32 groups (detectron2's get_norm('GN') is GroupNorm(32, C))")
    if spec.body.res5_dilation not in (1, 2):
        problems.append(f"RESNETS.RES5_DILATION {spec.body.res5_dilation} (detectron2 allows 1 or 2)")
    if spec.body.stem_out_dim != 64 and spec.fpn is None:
        pass  # STEM_OUT_CHANNELS / RES2_OUT_CHANNELS are written to the YAML
    m = spec.mask_head
    if m is not None:
        if m.kind == "mask_rcnn_fcn_head_v0up":
            problems.append("mask head v0up (its own res5 copy; detectron2's Res5ROIHeads shares res5 with the box head)")
        if m.upsample_ratio > 1:
            problems.append("MRCNN.UPSAMPLE_RATIO > 1 (no up-sampled mask logits in detectron2)")
        if m.use_fc_output:
            problems.append("MRCNN.USE_FC_OUTPUT (detectron2's mask predictor is a 1x1 conv)")
        if m.dilation != 1 and m.kind not in ("mask_rcnn_fcn_head_v0upshare",):
            problems.append(f"MRCNN.DILATION {m.dilation} (detectron2's mask convs are 3x3, padding 1)")
    k = spec.keypoint_head
    if k is not None and not (k.use_deconv_output and not k.use_deconv and k.deconv_kernel == 4 and k.up_scale == 2):
        problems.append("a keypoint head other than 'convs -> ConvTranspose 4x4/2 -> x2 up-sampling' "
                        "(detectron2's KRCNNConvDeconvUpsampleHead)")
    r = spec.retinanet
    if r is not None:
        if r.softmax:
            problems.append("RETINANET.SOFTMAX (detectron2's RetinaNet is sigmoid only)")
        if r.share_cls_bbox_tower:
            problems.append("RETINANET.SHARE_CLS_BBOX_TOWER (detectron2 always has two towers)")
        if r.class_specific_bbox:
            problems.append("RETINANET.CLASS_SPECIFIC_BBOX (detectron2 regresses one box per anchor)")
    return problems


def detectron2_state_dict(model) -> Tuple[Dict[str, np.ndarray], Dict[str, str], Dict[str, str]]:
    """detectron2 names and values of every tensor of ``model`` (a DetectronModel).

    See :func:`blobs_to_detectron2` for the return value.
    """
    return blobs_to_detectron2(model.spec, detectron_blobs(model), affine_scale_blobs(model))


def blobs_to_detectron2(
    spec: ArchSpec, blobs: Mapping[str, np.ndarray], affine: Set[str]
) -> Tuple[Dict[str, np.ndarray], Dict[str, str], Dict[str, str]]:
    """Rename and re-lay-out Detectron blobs for detectron2.

    Args:
        spec: the network's spec (C4 or FPN decides where ``res5`` lives; the RPN anchor order).
        blobs: Detectron blob -> array (e.g. :func:`~detconvert.export._common.detectron_blobs`).
        affine: the blobs that are AffineChannel scales (they get FrozenBatchNorm2d running statistics).

    Returns:
        ``(state, provenance, dropped)``: ``state`` d2 name -> float32 array; ``provenance`` d2 name ->
        the Detectron blob it came from (``"(FrozenBN)"`` for the added running statistics);
        ``dropped`` Detectron blob -> why it has no detectron2 tensor.

    Raises:
        MappingError: a blob without a rule (a bug: every Detectron module must be mapped or dropped),
            or two blobs mapped to one name.
    """
    perm = rpn_anchor_permutation(spec)
    cls_specific_mask = spec.mask_head is None or spec.mask_head.cls_specific_mask
    state: Dict[str, np.ndarray] = {}
    provenance: Dict[str, str] = {}
    dropped: Dict[str, str] = {}
    for blob, value in blobs.items():
        module_blob, kind = split_blob(blob)
        if module_blob in D2_DROPPED:
            dropped[blob] = D2_DROPPED[module_blob]
            continue
        module = _d2_module(module_blob, spec)
        if module is None:
            raise MappingError(f"no detectron2 name for Detectron blob {blob}", "detectron2")
        name = f"{module}.{D2_PARAM[kind]}"
        if name in state:
            raise MappingError(f"{provenance[name]} and {blob} both map to {name}", "detectron2")
        state[name] = _d2_value(module, value, perm, cls_specific_mask)
        provenance[name] = blob
        if blob in affine:
            # FrozenBatchNorm2d buffers: mean 0, var 1 - eps, so that the affine is exactly (s, b).
            base = name[: -len("weight")]
            state[base + "running_mean"] = np.zeros_like(value)
            state[base + "running_var"] = np.full_like(value, 1.0 - D2_FROZEN_BN_EPS)
            provenance[base + "running_mean"] = provenance[base + "running_var"] = "(FrozenBN)"
    return state, provenance, dropped


def _d2_value(module: str, value: np.ndarray, perm: Optional[np.ndarray], cls_specific_mask: bool) -> np.ndarray:
    if module == "roi_heads.box_predictor.cls_score":
        return np.concatenate([value[1:], value[:1]])  # detectron2: background is the LAST class
    if module == "roi_heads.box_predictor.bbox_pred":
        return value[4:].copy()  # no background box (class-agnostic: 8 -> 4 rows)
    if module == "roi_heads.mask_head.predictor" and cls_specific_mask:
        return value[1:].copy()  # no background mask channel
    if perm is not None and module == "proposal_generator.rpn_head.objectness_logits":
        return value[perm].copy()
    if perm is not None and module == "proposal_generator.rpn_head.anchor_deltas":
        rows = (4 * perm[:, None] + np.arange(4)[None, :]).reshape(-1)  # deltas are anchor-major (4a + k)
        return value[rows].copy()
    return value


def detectron2_config(spec: ArchSpec, weights: str = "") -> Dict[str, Any]:
    """A detectron2 config (nested dict) reproducing the architecture and Detectron's test settings.

    Settings detectron2 cannot change (box coding without +1, anchor quantization, mask paste) are
    listed in :data:`D2_NUMERIC_NOTES`, not here.
    """
    body = spec.body
    gn = body.norm.kind == "gn"
    model: Dict[str, Any] = {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": weights,
        "MASK_ON": spec.mask_head is not None,
        "KEYPOINT_ON": spec.keypoint_head is not None,
        "LOAD_PROPOSALS": spec.pipeline == "precomputed_proposals",
        # Detectron's means (BGR), no std: detectron2's own defaults are 103.53/116.28/123.675.
        "PIXEL_MEAN": [float(v) for v in spec.conventions.pixel_means],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": int(body.freeze_at)},
        "RESNETS": {
            "DEPTH": int(body.depth),
            "NUM_GROUPS": int(body.num_groups),
            "WIDTH_PER_GROUP": int(body.width_per_group),
            "STRIDE_IN_1X1": bool(body.stride_1x1),
            "NORM": "GN" if gn else "FrozenBN",
            "RES5_DILATION": int(body.res5_dilation),
            "STEM_OUT_CHANNELS": int(body.stem_out_dim),
            "RES2_OUT_CHANNELS": int(body.res2_out_dim),
            "OUT_FEATURES": ["res4"],
        },
    }
    fpn = spec.fpn
    if fpn is not None:
        model["BACKBONE"]["NAME"] = "build_retinanet_resnet_fpn_backbone" if spec.retinanet else "build_resnet_fpn_backbone"
        stages = [f"res{s}" for s in range(fpn.min_level, 6)]
        model["RESNETS"]["OUT_FEATURES"] = stages
        model["FPN"] = {"IN_FEATURES": stages, "OUT_CHANNELS": int(fpn.dim), "NORM": "GN" if fpn.use_gn else "",
                        "FUSE_TYPE": "sum"}
    rpn = spec.rpn
    if rpn is not None:
        if rpn.kind == "fpn":
            sizes = [[float(s)] for s in rpn.anchor_sizes]
            in_features = [f"p{lvl}" for lvl in range(rpn.min_level, rpn.max_level + 1)]
        else:
            sizes = [[float(s) for s in rpn.anchor_sizes]]
            in_features = [f"res{body.last_stage}"]
        model["ANCHOR_GENERATOR"] = {"SIZES": sizes, "ASPECT_RATIOS": [[float(r) for r in rpn.aspect_ratios]],
                                     "OFFSET": 0.0}
        model["RPN"] = {
            "IN_FEATURES": in_features,
            "PRE_NMS_TOPK_TEST": int(rpn.pre_nms_top_n),
            "POST_NMS_TOPK_TEST": int(rpn.post_nms_top_n),
            "NMS_THRESH": float(rpn.nms_thresh),
            "BBOX_REG_WEIGHTS": [1.0, 1.0, 1.0, 1.0],
            "SMOOTH_L1_BETA": D2_RPN_SMOOTH_L1_BETA,
        }
        model["PROPOSAL_GENERATOR"] = {"NAME": "RPN"}
    elif spec.pipeline == "precomputed_proposals":
        model["PROPOSAL_GENERATOR"] = {"NAME": "PrecomputedProposals"}
    if spec.pipeline == "rpn_only":
        model["META_ARCHITECTURE"] = "ProposalNetwork"
    if spec.box_head is not None:
        _box_config(spec, model)
    if spec.retinanet is not None:
        _retinanet_config(spec, model)
    test = spec.test
    return {
        "MODEL": model,
        "INPUT": {"FORMAT": spec.conventions.channel_order, "MIN_SIZE_TEST": int(test.scale),
                  "MAX_SIZE_TEST": int(test.max_size)},
        "TEST": {"DETECTIONS_PER_IMAGE": int(test.detections_per_im)},
        "VERSION": 2,
    }


def _pooler(xform) -> Dict[str, Any]:
    # POOLER_TYPE "ROIAlign" is detectron2's legacy aligned=False RoIAlign (its default ROIAlignV2 shifts -0.5).
    return {"POOLER_RESOLUTION": int(xform.resolution), "POOLER_SAMPLING_RATIO": int(xform.sampling_ratio),
            "POOLER_TYPE": "ROIAlign"}


def _box_config(spec: ArchSpec, model: Dict[str, Any]) -> None:
    box = spec.box_head
    c4 = box.kind == "ResNet_roi_conv5_head"
    fpn = spec.fpn
    model["ROI_HEADS"] = {
        "NAME": "Res5ROIHeads" if c4 else "StandardROIHeads",
        "NUM_CLASSES": spec.num_classes - 1,  # detectron2 counts foreground classes only
        "IN_FEATURES": [f"res{spec.body.last_stage}"] if fpn is None else
        [f"p{lvl}" for lvl in range(fpn.roi_min_level, fpn.roi_max_level + 1)],
        "SCORE_THRESH_TEST": float(spec.test.score_thresh),
        "NMS_THRESH_TEST": float(spec.test.nms),
    }
    num_convs = box.num_convs if box.kind.startswith("roi_Xconv1fc") else 0
    model["ROI_BOX_HEAD"] = {
        "NAME": "FastRCNNConvFCHead",
        "NUM_FC": {"roi_2mlp_head": 2, "ResNet_roi_conv5_head": 0}.get(box.kind, 1),
        "FC_DIM": int(box.mlp_dim),
        "NUM_CONV": int(num_convs),
        "CONV_DIM": int(box.conv_dim),
        "NORM": "GN" if box.kind.endswith("_gn_head") else "",
        "BBOX_REG_WEIGHTS": [float(w) for w in box.bbox_reg_weights],
        "CLS_AGNOSTIC_BBOX_REG": bool(box.cls_agnostic_bbox_reg),
        "SMOOTH_L1_BETA": D2_BOX_SMOOTH_L1_BETA,
        **_pooler(box.roi_xform),
    }
    mask = spec.mask_head
    if mask is not None:
        convs = {"mask_rcnn_fcn_head_v1up4convs": 4, "mask_rcnn_fcn_head_v1up4convs_gn": 4,
                 "mask_rcnn_fcn_head_v1up": 2, "mask_rcnn_fcn_head_v0upshare": 0}.get(mask.kind, mask.num_convs)
        model["ROI_MASK_HEAD"] = {
            "NAME": "MaskRCNNConvUpsampleHead",
            "NUM_CONV": int(convs),
            "CONV_DIM": int(mask.dim_reduced),
            "NORM": "GN" if mask.kind.endswith("_gn") else "",
            "CLS_AGNOSTIC_MASK": not mask.cls_specific_mask,
            **_pooler(mask.roi_xform),
        }
    kp = spec.keypoint_head
    if kp is not None:
        model["ROI_KEYPOINT_HEAD"] = {
            "NAME": "KRCNNConvDeconvUpsampleHead",
            "CONV_DIMS": [int(kp.conv_head_dim)] * int(kp.num_stacked_convs),
            "NUM_KEYPOINTS": int(kp.num_keypoints),
            **_pooler(kp.roi_xform),
        }


def _retinanet_config(spec: ArchSpec, model: Dict[str, Any]) -> None:
    r = spec.retinanet
    fpn = spec.fpn
    levels = range(fpn.min_level, fpn.max_level + 1)
    octaves = [2.0 ** (o / r.scales_per_octave) for o in range(r.scales_per_octave)]
    model["META_ARCHITECTURE"] = "RetinaNet"
    # Detectron: anchor size ANCHOR_SCALE * stride per level, octave-major then ratios = d2's size-major order.
    model["ANCHOR_GENERATOR"] = {
        "SIZES": [[float(r.anchor_scale * 2 ** lvl * o) for o in octaves] for lvl in levels],
        "ASPECT_RATIOS": [[float(a) for a in r.aspect_ratios]],
        "OFFSET": 0.0,
    }
    model["RETINANET"] = {
        "NUM_CLASSES": spec.num_classes - 1,
        "IN_FEATURES": [f"p{lvl}" for lvl in levels],
        "NUM_CONVS": int(r.num_convs),
        "PRIOR_PROB": float(r.prior_prob),
        "SCORE_THRESH_TEST": float(r.inference_th),
        "TOPK_CANDIDATES_TEST": int(r.pre_nms_top_n),
        "NMS_THRESH_TEST": float(spec.test.nms),
        "BBOX_REG_WEIGHTS": [float(w) for w in r.bbox_reg_weights],
        "SMOOTH_L1_LOSS_BETA": 0.11,  # Detectron RETINANET.BBOX_REG_BETA
    }


def _no_alias_dumper():
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):  # write repeated lists out instead of &id001 anchors
            return True

    return Dumper


def export_detectron2(src: SourceModel, output: PathLike, *, force: bool = False) -> ExportReport:
    """Write ``output`` (a detectron2 ``.pkl``) and ``output`` with ``.yaml`` (its detectron2 config).

    Raises:
        ConfigError: the network uses something detectron2 cannot express (named).
        DetconvertError: ``output`` does not end in ``.pkl`` (detectron2 would ``torch.load`` it), or an
            output exists without ``force``.
    """
    start = time.perf_counter()
    out = Path(output)
    if out.suffix != ".pkl":
        raise DetconvertError("detectron2 reads only *.pkl files as pickles (anything else goes to torch.load): "
                              "name the output OUT.pkl", out)
    yaml_path = out.with_suffix(".yaml")
    check_outputs_free([out, yaml_path], force)
    spec = src.model.spec
    problems = unsupported_in_detectron2(spec)
    if problems:
        raise ConfigError("detectron2 cannot express " + "; ".join(problems), src.path)
    state, provenance, dropped = detectron2_state_dict(src.model)
    payload = pickle.dumps({"model": state, "__author__": "detconvert", "matching_heuristics": False}, protocol=4)
    config = detectron2_config(spec, weights=str(out))
    import yaml

    header = (f"# detectron2 config written by detconvert for {src.path.name}\n"
              f"# class names (detectron2 index = Detectron index - 1): {src.class_names[1:]}\n")
    with atomic_write(out, "wb", force=force) as handle:
        handle.write(payload)
    with atomic_write(yaml_path, "w", force=force) as handle:
        handle.write(header + yaml.dump(config, Dumper=_no_alias_dumper(), sort_keys=False, default_flow_style=None))
    notes = [f"load with: cfg.merge_from_file('{yaml_path}'); DetectionCheckpointer(model).load('{out}')",
             "detectron2 class index = Detectron class index - 1 (background moved last in cls_score, dropped "
             "from bbox_pred and the mask predictor)"]
    if rpn_anchor_permutation(spec) is not None:
        notes.append("RPN channels permuted from Detectron's ratio-major to detectron2's size-major anchor order")
    notes += list(D2_NUMERIC_NOTES)
    return ExportReport(target="detectron2", outputs=[out, yaml_path], num_tensors=len(state), notes=notes,
                        dropped=dropped, seconds=time.perf_counter() - start,
                        details={"provenance": provenance})
