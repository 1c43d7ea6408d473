"""Catalogue of the Detectron function names a config may name, and how we normalise them.

Detectron resolves ``MODEL.CONV_BODY``, ``FAST_RCNN.ROI_BOX_HEAD``, ``MRCNN.ROI_MASK_HEAD``,
``KRCNN.ROI_KEYPOINTS_HEAD`` and ``MODEL.TYPE`` with ``model_builder.get_func``, after mapping old
names through ``modeling/name_compat.py`` (``_RENAME``). Detectron.pytorch dropped the ``add_``
prefix (``FPN.fpn_ResNet50_conv5_body``) and never applied name_compat. We accept all three
spellings and write the canonical translated name: module path kept, ``add_`` stripped.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

# Detectron's name_compat._RENAME (old -> new), applied before anything else.
NAME_COMPAT: Dict[str, str] = {
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v1up4convs": "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs",
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v1up": "mask_rcnn_heads.mask_rcnn_fcn_head_v1up",
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v0upshare": "mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare",
    "mask_rcnn_heads.ResNet_mask_rcnn_fcn_head_v0up": "mask_rcnn_heads.mask_rcnn_fcn_head_v0up",
    "head_builder.add_roi_2mlp_head": "fast_rcnn_heads.add_roi_2mlp_head",
}

# Every function Detectron's modeling package defines for each option (canonical Detectron spelling).
MODULE_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "MODEL.CONV_BODY": (
        "ResNet.add_ResNet50_conv4_body",
        "ResNet.add_ResNet50_conv5_body",
        "ResNet.add_ResNet101_conv4_body",
        "ResNet.add_ResNet101_conv5_body",
        "ResNet.add_ResNet152_conv5_body",
        "FPN.add_fpn_ResNet50_conv5_body",
        "FPN.add_fpn_ResNet50_conv5_P2only_body",
        "FPN.add_fpn_ResNet101_conv5_body",
        "FPN.add_fpn_ResNet101_conv5_P2only_body",
        "FPN.add_fpn_ResNet152_conv5_body",
        "FPN.add_fpn_ResNet152_conv5_P2only_body",
        "VGG16.add_VGG16_conv5_body",
        "VGG_CNN_M_1024.add_VGG_CNN_M_1024_conv5_body",
    ),
    "FAST_RCNN.ROI_BOX_HEAD": (
        "fast_rcnn_heads.add_roi_2mlp_head",
        "fast_rcnn_heads.add_roi_Xconv1fc_head",
        "fast_rcnn_heads.add_roi_Xconv1fc_gn_head",
        "ResNet.add_ResNet_roi_conv5_head",
        "VGG16.add_VGG16_roi_fc_head",
        "VGG_CNN_M_1024.add_VGG_CNN_M_1024_roi_fc_head",
    ),
    "MRCNN.ROI_MASK_HEAD": (
        "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs",
        "mask_rcnn_heads.mask_rcnn_fcn_head_v1up4convs_gn",
        "mask_rcnn_heads.mask_rcnn_fcn_head_v1up",
        "mask_rcnn_heads.mask_rcnn_fcn_head_v1upXconvs",
        "mask_rcnn_heads.mask_rcnn_fcn_head_v1upXconvs_gn",
        "mask_rcnn_heads.mask_rcnn_fcn_head_v0upshare",
        "mask_rcnn_heads.mask_rcnn_fcn_head_v0up",
    ),
    "KRCNN.ROI_KEYPOINTS_HEAD": ("keypoint_rcnn_heads.add_roi_pose_head_v1convX",),
    "RESNETS.TRANS_FUNC": ("bottleneck_transformation", "bottleneck_gn_transformation"),
    "RESNETS.STEM_FUNC": ("basic_bn_stem", "basic_gn_stem"),
    "RESNETS.SHORTCUT_FUNC": ("basic_bn_shortcut", "basic_gn_shortcut"),
}

# MODEL.TYPE: the generic builders, and the deprecated model_builder functions that call
# generalized_rcnn (``fast_rcnn``, ``mask_rcnn``, ``keypoint_rcnn``, ``rpn``, ...).
MODEL_TYPES = ("generalized_rcnn", "retinanet", "rfcn")
MODEL_TYPE_ALIASES: Dict[str, Tuple[str, str]] = {
    "fast_rcnn": ("generalized_rcnn", "deprecated builder; calls generalized_rcnn"),
    "mask_rcnn": ("generalized_rcnn", "deprecated builder; calls generalized_rcnn (MODEL.MASK_ON selects the mask head)"),
    "keypoint_rcnn": ("generalized_rcnn", "deprecated builder; calls generalized_rcnn (MODEL.KEYPOINTS_ON)"),
    "mask_and_keypoint_rcnn": ("generalized_rcnn", "deprecated builder; calls generalized_rcnn"),
    "rpn": ("generalized_rcnn", "deprecated builder; calls generalized_rcnn (MODEL.RPN_ONLY)"),
    "fpn_rpn": ("generalized_rcnn", "deprecated builder; calls generalized_rcnn (MODEL.RPN_ONLY, FPN)"),
    "faster_rcnn": ("generalized_rcnn", "deprecated builder; calls generalized_rcnn (MODEL.FASTER_RCNN)"),
}


def strip_add(name: str) -> str:
    """``'FPN.add_fpn_ResNet50_conv5_body'`` -> ``'FPN.fpn_ResNet50_conv5_body'``."""
    module, _, func = name.rpartition(".")
    if func.startswith("add_"):
        func = func[len("add_"):]
    return f"{module}.{func}" if module else func


# translated (add_-stripped) name -> canonical Detectron name, per option.
_BY_TRANSLATED: Dict[str, Dict[str, str]] = {
    option: {strip_add(name): name for name in names} for option, names in MODULE_OPTIONS.items()
}


def resolve_module(option: str, name: str) -> Tuple[str, str, List[Tuple[str, str, str, str]]]:
    """Normalise a module-name option.

    Args:
        option: the config key, e.g. ``'FAST_RCNN.ROI_BOX_HEAD'``.
        name: its value as written (Detectron, old Detectron, or Detectron.pytorch spelling).

    Returns:
        ``(detectron_name, translated_name, steps)`` where ``steps`` are
        ``(kind, before, after, reason)`` for the report. ``''`` (unset) stays ``''``.

    Raises:
        KeyError: the name is not a Detectron function for this option (message: the valid names).
    """
    if name == "" or option not in MODULE_OPTIONS:
        return name, name, []
    steps: List[Tuple[str, str, str, str]] = []
    current = name
    if current in NAME_COMPAT:
        steps.append(("alias", current, NAME_COMPAT[current], "old function name; Detectron's modeling/name_compat.py renames it"))
        current = NAME_COMPAT[current]
    already_translated = current not in MODULE_OPTIONS[option]
    if already_translated:
        canonical = _BY_TRANSLATED[option].get(current)
        if canonical is None:
            # Detectron.pytorch spelling of a name_compat entry (e.g. head_builder.roi_2mlp_head)
            for old, new in NAME_COMPAT.items():
                if strip_add(old) == current:
                    canonical = new
                    steps.append(("alias", current, new, "old Detectron name (name_compat.py) in Detectron.pytorch spelling"))
                    break
        if canonical is None:
            raise KeyError(current)
        current = canonical
    translated = strip_add(current)
    if translated != current and not (already_translated and not steps):
        steps.append(("prefix", current, translated, "'add_' stripped from the function name (the translated spelling)"))
    return current, translated, steps


def valid_names(option: str) -> List[str]:
    """The translated spellings valid for ``option`` (for error messages)."""
    return [strip_add(n) for n in MODULE_OPTIONS.get(option, ())]


def resolve_model_type(name: str) -> Tuple[str, Optional[str]]:
    """``MODEL.TYPE`` -> (canonical type, reason if an alias was applied). Raises KeyError if unknown."""
    if name in MODEL_TYPES:
        return name, None
    if name in MODEL_TYPE_ALIASES:
        return MODEL_TYPE_ALIASES[name]
    if name.endswith("_frozen_features") and name[: -len("_frozen_features")] in (*MODEL_TYPE_ALIASES, "fast_rcnn"):
        return "generalized_rcnn", "deprecated builder; generalized_rcnn with a frozen body (same network at test time)"
    raise KeyError(name)
