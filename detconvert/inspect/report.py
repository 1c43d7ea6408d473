"""``inspect_weights``: what a weight file is, read from its blob names and shapes alone.

The naming rules are Detectron's (see ``detectron/modeling/ResNet.py``, ``FPN.py``, ``rpn_heads.py``,
``fast_rcnn_heads.py``, ``mask_rcnn_heads.py``, ``keypoint_rcnn_heads.py``, ``retinanet_heads.py``).
The embedded cfg, when the file has one, is summarised separately and compared with what the blobs
say, so a file whose cfg and blobs disagree is visible before anything is built.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from detconvert.errors import ConfigError
from detconvert.io.weights import WeightFile, describe_metadata

#: Block counts of res2..res5 per ResNet depth (``ResNet.add_ResNet{50,101,152}_conv{4,5}_body``).
RESNET_BLOCK_COUNTS: Dict[int, Tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

_BLOCK = re.compile(r"^res([2-5])_(\d+)_branch2a_w$")
_FPN_OUTPUT = re.compile(r"^fpn_res([2-5])_\d+_sum_w$")
_RPN_FPN = re.compile(r"^conv_rpn_fpn(\d+)_w$")
_RETNET_CLS = re.compile(r"^retnet_cls_pred_fpn(\d+)_w$")
_KPS_FCN = re.compile(r"^conv_fcn(\d+)_w$")
_HEAD_CONV = re.compile(r"^head_conv(\d+)_w$")

STRIDE_1X1_NOTE = (
    "RESNETS.STRIDE_1X1 (stride on the 1x1 or the 3x3 conv) is not visible in the blobs: "
    "take it from the config (True for MSRA ResNets, False for ResNeXt and GN models)"
)


@dataclass(frozen=True)
class Architecture:
    """The network a set of Detectron blobs describes (None where the blobs do not say)."""

    kind: str  # "detector", "rpn_only", "backbone_only", "partial", "unknown"
    conv_body: Optional[str] = None  # Detectron's CONV_BODY, e.g. "FPN.add_fpn_ResNet50_conv5_body"
    depth: Optional[int] = None  # 50, 101, 152
    block_counts: Optional[Tuple[int, ...]] = None  # blocks of res2..res5 found
    num_groups: Optional[int] = None  # ResNeXt cardinality (1 for ResNet)
    width_per_group: Optional[int] = None
    norm: Optional[str] = None  # "affine" (frozen BN) or "gn"
    fpn: bool = False
    fpn_min_level: Optional[int] = None
    fpn_extra_conv_levels: bool = False  # fpn_6/fpn_7 convs (RetinaNet) instead of a max-pooled P6
    fpn_gn: bool = False
    rpn: Optional[str] = None  # "single_scale" or "fpn"
    rpn_anchors_per_location: Optional[int] = None
    retinanet: bool = False
    retinanet_anchors_per_location: Optional[int] = None
    box_head: Optional[str] = None  # roi_2mlp_head / ResNet_roi_conv5_head / roi_Xconv1fc(_gn)_head
    mask_head: Optional[str] = None  # mask_rcnn_fcn_head_* name
    keypoint_head: Optional[str] = None  # roi_pose_head_v1convX
    num_keypoints: Optional[int] = None
    num_classes: Optional[int] = None  # background included
    cls_agnostic_bbox_reg: Optional[bool] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Inspection:
    """Everything ``detconvert inspect`` reports about one file."""

    path: str
    flavour: str
    size: int
    num_blobs: int
    num_parameters: int
    num_bytes: int
    num_momentum: int
    architecture: Architecture
    preserved: Tuple[str, ...]  # ImageNet leftovers the model never reads (fc1000_*, pred_*, zero conv biases)
    usable_for: str
    notes: Tuple[str, ...] = ()
    sha256: Optional[str] = None
    cfg_summary: Optional[Dict[str, Any]] = None
    cfg_agrees: Optional[bool] = None  # None: no cfg to compare with
    cfg_disagreements: Tuple[str, ...] = ()
    metadata: Dict[str, str] = field(default_factory=dict)
    pipeline: Optional[str] = None  # e2e / retinanet / rpn_only / precomputed_proposals, from the blobs
    inputs: Optional[str] = None  # what the model needs to run, in words
    outputs: Optional[str] = None  # what it produces
    test_time: Optional[str] = None  # "test-time augmentation: N passes ..." from the file's own config

    @property
    def momentum_present(self) -> bool:
        return self.num_momentum > 0

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able dict (``inspect --json``)."""
        out = dataclasses.asdict(self)
        out["momentum_present"] = self.momentum_present
        return json.loads(json.dumps(out, default=_json_default))

    def format_text(self) -> str:
        """The human-readable report."""
        arch = self.architecture
        lines = [
            f"file:        {self.path}",
            f"flavour:     {self.flavour}",
            f"size:        {self.size:,} bytes" + (f"  sha256 {self.sha256}" if self.sha256 else ""),
            f"blobs:       {self.num_blobs} float32 ({self.num_parameters:,} values, {self.num_bytes:,} bytes)"
            f", momentum: {self.num_momentum if self.num_momentum else 'none'}"
            f", preserved leftovers: {len(self.preserved)}",
            f"kind:        {arch.kind}",
        ]
        if self.inputs:
            lines.append(f"inputs:      {self.inputs}")
            lines.append(f"outputs:     {self.outputs}")
        if self.test_time:
            lines.append(f"test time:   {self.test_time}")
        if arch.depth or arch.block_counts:
            resnet = "ResNeXt" if (arch.num_groups or 1) > 1 else "ResNet"
            body = f"{resnet}-{arch.depth or '?'} blocks {arch.block_counts}"
            if (arch.num_groups or 1) > 1:
                body += f" {arch.num_groups}x{arch.width_per_group}d"
            body += f", norm {'GroupNorm' if arch.norm == 'gn' else 'AffineChannel (frozen BN)'}"
            lines.append(f"body:        {body}" + (f"  [{arch.conv_body}]" if arch.conv_body else ""))
        if arch.fpn:
            top = 7 if arch.fpn_extra_conv_levels else 6
            lines.append(f"fpn:         P{arch.fpn_min_level}-P{top}" + (" with GN" if arch.fpn_gn else "")
                         + (" (fpn_6/fpn_7 convs)" if arch.fpn_extra_conv_levels else " (P6 by max-pool)"))
        if arch.rpn:
            lines.append(f"rpn:         {arch.rpn}, {arch.rpn_anchors_per_location} anchors per location")
        if arch.retinanet:
            lines.append(f"retinanet:   {arch.retinanet_anchors_per_location} anchors per location")
        for label, value in (("box head", arch.box_head), ("mask head", arch.mask_head),
                             ("keypoints", arch.keypoint_head)):
            if value:
                extra = f", {arch.num_keypoints} keypoints" if label == "keypoints" else ""
                lines.append(f"{label + ':':<13}{value}{extra}")
        if arch.num_classes is not None:
            agnostic = ", class-agnostic box regression" if arch.cls_agnostic_bbox_reg else ""
            lines.append(f"classes:     {arch.num_classes} (background included){agnostic}")
        if self.cfg_summary is not None:
            summary = ", ".join(f"{k}={v}" for k, v in self.cfg_summary.items())
            lines.append(f"cfg:         {summary}")
            verdict = "agrees with the blobs" if self.cfg_agrees else "DISAGREES with the blobs: " + "; ".join(
                self.cfg_disagreements)
            lines.append(f"cfg check:   {verdict}")
        for key, value in self.metadata.items():
            lines.append(f"metadata:    {key} = {value}")
        lines.append(f"use:         {self.usable_for}")
        for note in self.notes:
            lines.append(f"note:        {note}")
        return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    return str(value)


# ---------------------------------------------------------------------------------------------------
# reading the architecture from shapes


def _shape(blobs: Mapping[str, np.ndarray], name: str) -> Optional[Tuple[int, ...]]:
    array = blobs.get(name)
    return None if array is None else tuple(array.shape)


def _depth_of(counts: Dict[int, int]) -> Optional[int]:
    """Depth from blocks per stage; res5 may be absent (C4 RPN-only bodies end at res4)."""
    for depth, table in RESNET_BLOCK_COUNTS.items():
        if all(counts.get(stage) == table[stage - 2] for stage in (2, 3, 4)) and counts.get(5) in (None, table[3]):
            return depth
    return None


def read_architecture(blobs: Mapping[str, np.ndarray]) -> Architecture:
    """The architecture a Detectron blob dict describes, from names and shapes only.

    Args:
        blobs: Detectron blob names (the names the trained file stores) to arrays (only shapes are read).
    """
    f: Dict[str, Any] = {}
    counts: Dict[int, int] = {}
    for name in blobs:
        match = _BLOCK.match(name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            counts[stage] = max(counts.get(stage, 0), block + 1)
    has_body = "conv1_w" in blobs or bool(counts)
    if has_body:
        f["block_counts"] = tuple(counts[s] for s in sorted(counts))
        f["depth"] = _depth_of(counts)
        f["norm"] = "gn" if ("conv1_gn_s" in blobs or "res2_0_branch2a_gn_s" in blobs) else "affine"
        branch2b = _shape(blobs, "res2_0_branch2b_w")
        if branch2b is not None and branch2b[1] > 0:
            d_inner = branch2b[0]
            f["num_groups"] = d_inner // branch2b[1]  # ResNeXt: shape[1] = d_inner / groups
            f["width_per_group"] = d_inner // f["num_groups"]

    # FPN (FPN.add_fpn): output convs fpn_res{s}_{b}_sum, extra levels fpn_6/fpn_7.
    fpn_stages = sorted(int(m.group(1)) for m in map(_FPN_OUTPUT.match, blobs) if m)
    if fpn_stages:
        f["fpn"] = True
        f["fpn_min_level"] = fpn_stages[0]
        f["fpn_extra_conv_levels"] = "fpn_6_w" in blobs
        f["fpn_gn"] = any(name.startswith("fpn_") and name.endswith("_gn_s") for name in blobs)

    # RPN: single scale (conv_rpn_*) or FPN (conv_rpn_fpn{min}_*, shared by all levels).
    fpn_rpn = sorted(int(m.group(1)) for m in map(_RPN_FPN.match, blobs) if m)
    if fpn_rpn:
        f["rpn"] = "fpn"
        logits = _shape(blobs, f"rpn_cls_logits_fpn{fpn_rpn[0]}_w")
        f["rpn_anchors_per_location"] = logits[0] if logits else None
    elif "conv_rpn_w" in blobs:
        f["rpn"] = "single_scale"
        logits = _shape(blobs, "rpn_cls_logits_w")
        f["rpn_anchors_per_location"] = logits[0] if logits else None

    # RetinaNet (retinanet_heads): only the lowest level's parameters exist.
    retnet = sorted(int(m.group(1)) for m in map(_RETNET_CLS.match, blobs) if m)
    if retnet:
        level = retnet[0]
        f["retinanet"] = True
        cls_rows = _shape(blobs, f"retnet_cls_pred_fpn{level}_w")[0]
        bbox = _shape(blobs, f"retnet_bbox_pred_fpn{level}_w")
        anchors = bbox[0] // 4 if bbox else None
        f["retinanet_anchors_per_location"] = anchors
        if anchors:
            # Sigmoid classifier (RETINANET.SOFTMAX False, every config): A * (C - 1) channels.
            f["num_classes"] = cls_rows // anchors + 1

    # Fast R-CNN box head and outputs.
    cls_score = _shape(blobs, "cls_score_w")
    head_convs = [int(m.group(1)) for m in map(_HEAD_CONV.match, blobs) if m]
    if head_convs:
        f["box_head"] = "roi_Xconv1fc_gn_head" if "head_conv1_gn_s" in blobs else "roi_Xconv1fc_head"
    elif "fc6_w" in blobs and "fc7_w" in blobs:
        f["box_head"] = "roi_2mlp_head"
    elif cls_score is not None and not fpn_stages and counts.get(5):
        f["box_head"] = "ResNet_roi_conv5_head"  # C4: res5 runs inside the RoI head
    if cls_score is not None:
        f["num_classes"] = cls_score[0]
        bbox_pred = _shape(blobs, "bbox_pred_w")
        if bbox_pred is not None:
            # 8 rows = background + one class-agnostic box; ambiguous only when there are 2 classes.
            f["cls_agnostic_bbox_reg"] = bbox_pred[0] == 8 and cls_score[0] != 2

    # Mask heads.
    if "mask_fcn_logits_w" in blobs:
        gn = "_mask_fcn1_gn_s" in blobs
        convs = [n for n in blobs if re.match(r"^_\[mask\]_fcn\d+_w$|^_mask_fcn\d+_w$", n)]
        if convs:
            if gn:
                f["mask_head"] = "mask_rcnn_fcn_head_v1up4convs_gn" if len(convs) == 4 else \
                    "mask_rcnn_fcn_head_v1upXconvs_gn"
            else:
                f["mask_head"] = {4: "mask_rcnn_fcn_head_v1up4convs", 2: "mask_rcnn_fcn_head_v1up"}.get(
                    len(convs), "mask_rcnn_fcn_head_v1upXconvs")
        elif any(n.startswith("_[mask]_res5_") for n in blobs):
            f["mask_head"] = "mask_rcnn_fcn_head_v0up"  # its own res5 copy is in the file
        else:
            f["mask_head"] = "mask_rcnn_fcn_head_v0upshare"  # re-uses the box head's res5_* at test time

    # Keypoint head.
    kps_convs = [int(m.group(1)) for m in map(_KPS_FCN.match, blobs) if m]
    lowres = _shape(blobs, "kps_score_lowres_w")
    if kps_convs or lowres is not None or "kps_score_w" in blobs:
        f["keypoint_head"] = "roi_pose_head_v1convX"
        if lowres is not None:
            f["num_keypoints"] = lowres[1]  # ConvTranspose (C_in, C_out=K, k, k)
        elif "kps_score_w" in blobs:
            f["num_keypoints"] = _shape(blobs, "kps_score_w")[0]

    # Body name and kind.
    if f.get("depth"):
        if fpn_stages:
            f["conv_body"] = f"FPN.add_fpn_ResNet{f['depth']}_conv5_body"
        elif f.get("box_head") == "ResNet_roi_conv5_head" or not counts.get(5):
            f["conv_body"] = f"ResNet.add_ResNet{f['depth']}_conv4_body"
        else:
            f["conv_body"] = f"ResNet.add_ResNet{f['depth']}_conv5_body"
    if f.get("retinanet") or f.get("box_head"):
        kind = "detector"
    elif cls_score is not None:
        kind = "partial"  # output layers without a recognisable box head (a truncated inventory)
    elif f.get("rpn"):
        kind = "rpn_only"
    elif has_body:
        kind = "backbone_only"
    else:
        kind = "unknown"
    return Architecture(kind=kind, **f)


def preserved_leftovers(blobs: Mapping[str, np.ndarray]) -> List[str]:
    """ImageNet-initialisation leftovers Detectron writes back unused (``__preserve__``, utils/net.py).

    The classifier (``fc1000_*`` for MSRA, ``pred_*`` for others) and the all-zero conv biases that
    ``pickle_caffe_blobs.add_missing_biases`` added to bias-free convs (those followed by an
    AffineChannel/GN, i.e. with a ``<conv>_bn_s``/``<conv>_gn_s`` sibling).
    """
    out = []
    for name in blobs:
        if name.startswith(("fc1000_", "pred_")):
            out.append(name)
        elif name.endswith("_b") and not name.endswith(("_bn_b", "_gn_b")):
            conv = name[:-2]
            stem = "res_conv1" if conv == "conv1" else conv  # the stem's BN is named res_conv1_bn
            if f"{conv}_w" in blobs and (f"{stem}_bn_s" in blobs or f"{conv}_gn_s" in blobs):
                out.append(name)
    return out


# ---------------------------------------------------------------------------------------------------
# the embedded cfg


def _function_name(value: Any) -> str:
    """``'fast_rcnn_heads.add_roi_2mlp_head'`` -> ``'roi_2mlp_head'`` (Detectron's add_ prefix dropped)."""
    text = str(value or "").rsplit(".", 1)[-1]
    return text[4:] if text.startswith("add_") else text


# The sections and keys of an embedded cfg that summarise_cfg / compare_with_cfg read.
_CFG_KEYS_READ = {
    "MODEL": ("TYPE", "CONV_BODY", "NUM_CLASSES", "MASK_ON", "KEYPOINTS_ON"),
    "RESNETS": ("NUM_GROUPS", "WIDTH_PER_GROUP", "STRIDE_1X1", "TRANS_FUNC"),
    "FPN": ("FPN_ON",), "RPN": ("RPN_ON",), "RETINANET": ("RETINANET_ON",),
    "FAST_RCNN": ("ROI_BOX_HEAD",), "MRCNN": ("ROI_MASK_HEAD",),
}


def check_cfg_sections(cfg: Mapping[str, Any]) -> None:
    """The sections the summary reads are mappings and their values plain scalars, as in every
    Detectron cfg (a missing section or key is fine: it reads as None).

    Raises:
        ConfigError: e.g. ``the embedded cfg's MODEL is a str, not a section of keys``.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"the embedded cfg is a {type(cfg).__name__}, not a mapping of sections")
    for name, keys in _CFG_KEYS_READ.items():
        section = cfg.get(name, {})
        if not isinstance(section, Mapping):
            raise ConfigError(f"the embedded cfg's {name} is a {type(section).__name__}, not a section of keys")
        for key in keys:
            value = section.get(key)
            if not isinstance(value, (str, int, float, type(None))):  # bool is an int
                raise ConfigError(f"the embedded cfg's {name}.{key} is a {type(value).__name__}, not a value")


def summarise_cfg(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """The architecture-defining values of an embedded cfg.

    Raises:
        ConfigError: a section it reads is not a mapping (see :func:`check_cfg_sections`).
    """
    check_cfg_sections(cfg)
    model, resnets = cfg.get("MODEL", {}), cfg.get("RESNETS", {})
    summary = {
        "MODEL.TYPE": model.get("TYPE"),
        "MODEL.CONV_BODY": model.get("CONV_BODY"),
        "MODEL.NUM_CLASSES": model.get("NUM_CLASSES"),
        "RESNETS": f"{resnets.get('NUM_GROUPS')}x{resnets.get('WIDTH_PER_GROUP')}d "
                   f"STRIDE_1X1={resnets.get('STRIDE_1X1')}",
        "FPN_ON": cfg.get("FPN", {}).get("FPN_ON"),
        "RPN_ON": cfg.get("RPN", {}).get("RPN_ON"),
        "RETINANET_ON": cfg.get("RETINANET", {}).get("RETINANET_ON"),
        "MASK_ON": model.get("MASK_ON"),
        "KEYPOINTS_ON": model.get("KEYPOINTS_ON"),
    }
    return summary


def compare_with_cfg(arch: Architecture, cfg: Mapping[str, Any]) -> List[str]:
    """Where the embedded cfg and the blobs disagree (empty list: they agree).

    Raises:
        ConfigError: a section it reads is not a mapping (see :func:`check_cfg_sections`).
    """
    check_cfg_sections(cfg)
    model, resnets = cfg.get("MODEL", {}), cfg.get("RESNETS", {})
    out: List[str] = []

    def check(label: str, from_cfg: Any, from_blobs: Any) -> None:
        if from_blobs is not None and from_cfg != from_blobs:
            out.append(f"{label}: cfg {from_cfg!r}, blobs {from_blobs!r}")

    check("MODEL.CONV_BODY", model.get("CONV_BODY"), arch.conv_body)
    check("RESNETS.NUM_GROUPS", resnets.get("NUM_GROUPS"), arch.num_groups)
    if arch.num_groups is not None:
        check("RESNETS.WIDTH_PER_GROUP", resnets.get("WIDTH_PER_GROUP"), arch.width_per_group)
    if arch.kind != "rpn_only":
        check("MODEL.NUM_CLASSES", model.get("NUM_CLASSES"), arch.num_classes)
    check("RETINANET.RETINANET_ON", bool(cfg.get("RETINANET", {}).get("RETINANET_ON")), arch.retinanet)
    check("MODEL.MASK_ON", bool(model.get("MASK_ON")), arch.mask_head is not None)
    check("MODEL.KEYPOINTS_ON", bool(model.get("KEYPOINTS_ON")), arch.keypoint_head is not None)
    if arch.box_head:
        check("FAST_RCNN.ROI_BOX_HEAD", _function_name(cfg.get("FAST_RCNN", {}).get("ROI_BOX_HEAD")), arch.box_head)
    if arch.mask_head:
        check("MRCNN.ROI_MASK_HEAD", _function_name(cfg.get("MRCNN", {}).get("ROI_MASK_HEAD")), arch.mask_head)
    norm = "gn" if "gn" in str(resnets.get("TRANS_FUNC", "")) else "affine"
    check("RESNETS.TRANS_FUNC (norm)", norm, arch.norm)
    return out


def pipeline_of(arch: Architecture) -> Optional[str]:
    """The test pipeline the blobs imply: a box head without RPN blobs reads precomputed proposals
    (Detectron's fast_rcnn_* models); None for files that are not a runnable network."""
    if arch.kind == "rpn_only":
        return "rpn_only"
    if arch.kind != "detector":
        return None
    if arch.retinanet:
        return "retinanet"
    return "e2e" if arch.rpn else "precomputed_proposals"


def _usable_for(arch: Architecture, flavour: str) -> str:
    if flavour in ("detectron2", "torch", "safetensors") and arch.kind == "unknown":
        return (f"a {flavour} file without Detectron blob names: detconvert's Detectron mappings do not apply; "
                "inspect its keys or load it with the tool that wrote it")
    if arch.kind == "backbone_only":
        return "ImageNet backbone only: use as initialisation, not with --load_detectron"
    if arch.kind == "rpn_only":
        return "RPN proposals only (no box head): generate proposals, or initialise a detector's body and RPN"
    if arch.kind == "partial":
        return "an incomplete network (output layers without a recognisable box head): not enough to build a detector"
    if arch.kind == "detector":
        return "a complete detector: run inference, evaluate, convert, or fine-tune (--load_detectron)"
    return "no Detectron architecture recognised in these blobs"


def test_time_of(wf: WeightFile) -> Optional[str]:
    """How the file's own config runs at test time (``test-time augmentation: N passes ...``).

    From a converted checkpoint's stored spec, else a detector's embedded cfg; None when neither builds
    a network. A ``TEST.*_AUG`` setting detconvert refuses is reported as refused.
    """
    from detconvert.config.build_spec import augmentation_line
    from detconvert.errors import DetconvertError
    from detconvert.spec import ArchSpec

    try:
        if "spec" in wf.metadata:
            spec = ArchSpec.from_dict(json.loads(wf.metadata["spec"]))
        elif wf.cfg is not None and wf.flavour == "detectron_detector":
            from detconvert.config import build_spec, translate_config

            spec = build_spec(translate_config(wf.cfg, weights_cfg_or_blobs=wf).cfg)
        else:
            return None
    except DetconvertError as exc:
        return f"refused: {exc.message}" if "_AUG" in exc.message else None
    except (KeyError, TypeError, ValueError):  # a stored spec this version cannot read
        return None
    return augmentation_line(spec)


def inspect_weights(wf: WeightFile, with_sha256: bool = False) -> Inspection:
    """Describe a weight file: flavour, counts, architecture from blobs, cfg summary and agreement.

    Args:
        wf: what :func:`detconvert.io.weights.load_weights` returned.
        with_sha256: also hash the file (a second pass over it).
    """
    arch = read_architecture(wf.blobs)
    notes: List[str] = []
    if arch.depth or arch.block_counts:
        notes.append(STRIDE_1X1_NOTE)
    if arch.kind == "unknown" and wf.blobs:
        first = next(iter(wf.blobs))
        notes.append(f"blob names are not Detectron's (e.g. {first!r})")
    if wf.cfg_error:
        notes.append(f"the embedded cfg could not be read: {wf.cfg_error}")
    if wf.flavour == "detectron_detector" and wf.cfg_text is None:
        notes.append("the file has no embedded cfg: pass the config explicitly")
    cfg_summary, agrees, disagreements = None, None, []
    if wf.cfg is not None:
        try:
            cfg_summary = summarise_cfg(wf.cfg)
            disagreements = compare_with_cfg(arch, wf.cfg)
            agrees = not disagreements
        except ConfigError as exc:  # the weights stay usable; the cfg is reported as unreadable
            notes.append(f"the embedded cfg could not be read: {exc.message}")
    from detconvert.config.model_io import pipeline_io

    pipeline = pipeline_of(arch)
    inputs, outputs = pipeline_io(pipeline)
    return Inspection(
        path=str(wf.path),
        flavour=wf.flavour,
        size=wf.size,
        num_blobs=len(wf.blobs),
        num_parameters=wf.num_parameters,
        num_bytes=wf.num_bytes,
        num_momentum=len(wf.momentum),
        architecture=arch,
        preserved=tuple(preserved_leftovers(wf.blobs)),
        usable_for=_usable_for(arch, wf.flavour),
        notes=tuple(notes),
        sha256=wf.sha256 if with_sha256 else None,
        cfg_summary=cfg_summary,
        cfg_agrees=agrees,
        cfg_disagreements=tuple(disagreements),
        metadata=describe_metadata(wf),
        pipeline=pipeline,
        inputs=inputs,
        outputs=outputs,
        test_time=test_time_of(wf) if arch.kind == "detector" else None,
    )
