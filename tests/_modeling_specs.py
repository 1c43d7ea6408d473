"""ArchSpecs for the modeling tests: from ``detconvert.config`` when it exists, else a test-only translation.

The fallback reads ``../shared/reference/cfg_dumps/<id>.yaml`` (Detectron's cfg after
``assert_and_infer_cfg``) and maps only the keys the model builder needs. It exists so the modeling
tests do not wait on the config translator; :func:`spec_for` prefers the library's translator.
"""
from __future__ import annotations

import re
from typing import Any, Dict

from detconvert import spec as S
from detconvert.io.cfg_yaml import load_detectron_cfg_text
from tests._shared import REFERENCE

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def cfg_dump(config_id: str) -> Dict[str, Any]:
    path = REFERENCE / "cfg_dumps" / f"{config_id}.yaml"
    return load_detectron_cfg_text(path.read_text(), source=path)


def spec_for(config_id: str) -> S.ArchSpec:
    """The ArchSpec of a config id (library translator if present, test fallback otherwise)."""
    cfg = cfg_dump(config_id)
    try:
        from detconvert.config import build_spec  # type: ignore[attr-defined]
    except ImportError:
        return spec_from_cfg(cfg)
    return build_spec(cfg)


def _head(name: str) -> str:
    return name.split(".")[-1].replace("add_", "", 1) if name else ""


def _xform(section: Dict[str, Any]) -> S.RoIXformSpec:
    return S.RoIXformSpec(
        section["ROI_XFORM_METHOD"], section["ROI_XFORM_RESOLUTION"], section["ROI_XFORM_SAMPLING_RATIO"]
    )


def spec_from_cfg(cfg: Dict[str, Any]) -> S.ArchSpec:
    """Test-only translation of the keys that shape the network."""
    m, r, gn = cfg["MODEL"], cfg["RESNETS"], cfg["GROUP_NORM"]
    body_name = m["CONV_BODY"]
    depth = int(re.search(r"ResNet(\d+)", body_name).group(1))
    norm = S.NormSpec(
        kind="gn" if "gn" in r["TRANS_FUNC"] else "affine",
        gn_num_groups=gn["NUM_GROUPS"], gn_dim_per_group=gn["DIM_PER_GP"], gn_eps=gn["EPSILON"],
    )
    body = S.ResNetSpec(
        depth=depth, block_counts=BLOCKS[depth], last_stage=5 if "conv5" in body_name else 4,
        num_groups=r["NUM_GROUPS"], width_per_group=r["WIDTH_PER_GROUP"], stride_1x1=r["STRIDE_1X1"],
        res5_dilation=r["RES5_DILATION"], freeze_at=cfg["TRAIN"]["FREEZE_AT"], norm=norm,
    )
    retina = cfg["RETINANET"]["RETINANET_ON"]
    f = cfg["FPN"]
    fpn = None
    if f["FPN_ON"]:
        lo, hi = f["RPN_MIN_LEVEL"], f["RPN_MAX_LEVEL"]
        fpn = S.FPNSpec(dim=f["DIM"], min_level=lo, max_level=hi, extra_conv_levels=f["EXTRA_CONV_LEVELS"],
                        use_gn=f["USE_GN"], coarsest_stride=f["COARSEST_STRIDE"])
    feat_dim = f["DIM"] if fpn else body.out_dim(4)
    rpn = None
    if cfg["RPN"]["RPN_ON"]:
        if fpn is not None and f["MULTILEVEL_RPN"]:
            rpn = S.RPNSpec("fpn", tuple(), tuple(f["RPN_ASPECT_RATIOS"]), min_level=f["RPN_MIN_LEVEL"],
                            max_level=f["RPN_MAX_LEVEL"], conv_dim=feat_dim)
        else:
            rpn = S.RPNSpec("single_scale", tuple(cfg["RPN"]["SIZES"]), tuple(cfg["RPN"]["ASPECT_RATIOS"]),
                            anchor_stride=cfg["RPN"]["STRIDE"], conv_dim=feat_dim)
    box = mask = kps = None
    if not retina and not m["RPN_ONLY"]:
        fr = cfg["FAST_RCNN"]
        box = S.BoxHeadSpec(_head(fr["ROI_BOX_HEAD"]), _xform(fr), mlp_dim=fr["MLP_HEAD_DIM"],
                            conv_dim=fr["CONV_HEAD_DIM"], num_convs=fr["NUM_STACKED_CONVS"],
                            cls_agnostic_bbox_reg=m["CLS_AGNOSTIC_BBOX_REG"])
        if m["MASK_ON"]:
            mr = cfg["MRCNN"]
            mask = S.MaskHeadSpec(_head(mr["ROI_MASK_HEAD"]), _xform(mr), resolution=mr["RESOLUTION"],
                                  dim_reduced=mr["DIM_REDUCED"], dilation=mr["DILATION"],
                                  upsample_ratio=mr["UPSAMPLE_RATIO"], cls_specific_mask=mr["CLS_SPECIFIC_MASK"],
                                  use_fc_output=mr["USE_FC_OUTPUT"])
        if m["KEYPOINTS_ON"]:
            k = cfg["KRCNN"]
            kps = S.KeypointHeadSpec(
                _head(k["ROI_KEYPOINTS_HEAD"]), _xform(k), num_keypoints=k["NUM_KEYPOINTS"],
                conv_head_dim=k["CONV_HEAD_DIM"], conv_head_kernel=k["CONV_HEAD_KERNEL"],
                num_stacked_convs=k["NUM_STACKED_CONVS"], heatmap_size=k["HEATMAP_SIZE"], up_scale=k["UP_SCALE"],
                use_deconv=k["USE_DECONV"], deconv_dim=k["DECONV_DIM"], deconv_kernel=k["DECONV_KERNEL"],
                use_deconv_output=k["USE_DECONV_OUTPUT"])
    rn = None
    if retina:
        rc = cfg["RETINANET"]
        rn = S.RetinaNetSpec(num_convs=rc["NUM_CONVS"], scales_per_octave=rc["SCALES_PER_OCTAVE"],
                             aspect_ratios=tuple(rc["ASPECT_RATIOS"]), softmax=rc["SOFTMAX"],
                             share_cls_bbox_tower=rc["SHARE_CLS_BBOX_TOWER"],
                             class_specific_bbox=rc["CLASS_SPECIFIC_BBOX"])
    pipeline = "retinanet" if retina else ("rpn_only" if m["RPN_ONLY"] else ("e2e" if m["FASTER_RCNN"] else "precomputed_proposals"))
    return S.ArchSpec(meta_arch="retinanet" if retina else "generalized_rcnn", pipeline=pipeline, body=body,
                      num_classes=m["NUM_CLASSES"], test=S.TestSpec(), fpn=fpn, rpn=rpn, box_head=box,
                      mask_head=mask, keypoint_head=kps, retinanet=rn)
