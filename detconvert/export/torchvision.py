"""Detectron model -> a ``state_dict`` for torchvision's ``{fasterrcnn,maskrcnn,keypointrcnn}_resnet50_fpn``.

torchvision's module names (``backbone.body.layer1.0.conv1``, ``backbone.fpn.inner_blocks.0.0``,
``rpn.head.conv.0.0``, ``roi_heads.mask_head.0.0``, ``roi_heads.keypoint_head.0`` ...) are those of
torchvision 0.29's builders; the export test loads the result into them with ``strict=True``.

Conversions:

* AffineChannel (folded BN) -> ``FrozenBatchNorm2d`` with ``running_mean = 0`` and
  ``running_var = 1 - eps`` (torchvision's eps is 1e-5), so ``weight / sqrt(var + eps)`` is the scale.
* Detectron's first conv reads **BGR** images minus the means with no scaling; torchvision feeds RGB
  in [0, 1] through ``GeneralizedRCNNTransform``. The conv1 input channels are flipped to RGB and
  the model is built with ``image_mean = means[::-1] / 255`` and ``image_std = 1 / 255``
  (:func:`torchvision_builder_kwargs`), which makes the normalised input exactly Detectron's blob.
* torchvision keeps the background at class 0 in ``cls_score``, ``bbox_pred`` and the mask logits, as
  Detectron does: the class layers are copied as they are.

What torchvision cannot express is refused (:func:`unsupported_in_torchvision`). MSRA ResNets stride in
the 1x1 conv (``RESNETS.STRIDE_1X1``), torchvision's Bottleneck in the 3x3: refused unless
``allow_architecture_change`` (the weights then run in a different network).
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Set, Tuple

import numpy as np

from detconvert.errors import ConfigError, MappingError, PathLike
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
    "TV_CONV_RULES",
    "TV_NORM_RULES",
    "TV_DROPPED",
    "blobs_to_torchvision",
    "torchvision_state_dict",
    "torchvision_builder",
    "torchvision_builder_kwargs",
    "unsupported_in_torchvision",
    "export_torchvision",
]

#: Detectron module blob -> torchvision module path of the conv / linear layer.
TV_CONV_RULES: Tuple[NameRule, ...] = (
    (r"conv1", "backbone.body.conv1"),
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch1", "backbone.body.layer{layer}.{block}.downsample.0"),
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch2a", "backbone.body.layer{layer}.{block}.conv1"),
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch2b", "backbone.body.layer{layer}.{block}.conv2"),
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch2c", "backbone.body.layer{layer}.{block}.conv3"),
    # FeaturePyramidNetwork: inner_blocks / layer_blocks are lists finest first (index = stage - 2),
    # each a Conv2dNormActivation whose conv is ".0".
    (r"fpn_inner_res(?P<stage>[2-5])_\d+_sum(?:_lateral)?", "backbone.fpn.inner_blocks.{level}.0"),
    (r"fpn_res(?P<stage>[2-5])_\d+_sum", "backbone.fpn.layer_blocks.{level}.0"),
    (r"conv_rpn_fpn\d+", "rpn.head.conv.0.0"),
    (r"rpn_cls_logits_fpn\d+", "rpn.head.cls_logits"),
    (r"rpn_bbox_pred_fpn\d+", "rpn.head.bbox_pred"),
    (r"fc6", "roi_heads.box_head.fc6"),
    (r"fc7", "roi_heads.box_head.fc7"),
    (r"cls_score", "roi_heads.box_predictor.cls_score"),
    (r"bbox_pred", "roi_heads.box_predictor.bbox_pred"),
    (r"_\[mask\]_fcn(?P<n>\d+)", "roi_heads.mask_head.{n0}.0"),  # MaskRCNNHeads: Conv2dNormActivation list
    (r"conv5_mask", "roi_heads.mask_predictor.conv5_mask"),
    (r"mask_fcn_logits", "roi_heads.mask_predictor.mask_fcn_logits"),
    (r"conv_fcn(?P<n>\d+)", "roi_heads.keypoint_head.{seq}"),  # KeypointRCNNHeads: conv, ReLU, conv, ...
    (r"kps_score_lowres", "roi_heads.keypoint_predictor.kps_score_lowres"),
)

#: Detectron module blob of an AffineChannel -> torchvision FrozenBatchNorm2d path.
TV_NORM_RULES: Tuple[NameRule, ...] = (
    (r"res_conv1", "backbone.body.bn1"),
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch1", "backbone.body.layer{layer}.{block}.downsample.1"),
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch2a", "backbone.body.layer{layer}.{block}.bn1"),
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch2b", "backbone.body.layer{layer}.{block}.bn2"),
    (r"res(?P<stage>[2-5])_(?P<block>\d+)_branch2c", "backbone.body.layer{layer}.{block}.bn3"),
)

TV_DROPPED: Dict[str, str] = {
    "kps_score": "Detectron's fixed bilinear up-sampling deconvolution; torchvision up-samples the keypoint "
                 "heatmaps x2 with F.interpolate(bilinear, align_corners=False) (differs on border pixels)",
}

#: torchvision.ops.misc.FrozenBatchNorm2d's default eps (checked against the installed torchvision by the tests).
TV_FROZEN_BN_EPS = 1e-5

TV_NUMERIC_NOTES: Tuple[str, ...] = (
    "torchvision decodes boxes and computes IoU/NMS without Detectron's +1 pixel widths; its anchors are not "
    "quantized; FPN levels use sqrt(area) without +1",
    "torchvision's MultiScaleRoIAlign is aligned=False with sampling_ratio=2, as Detectron's FPN configs",
    "torchvision resizes with bilinear interpolation on the RGB [0,1] image, pastes masks differently and "
    "up-samples keypoint heatmaps with F.interpolate: detections are close to Detectron's, not identical",
)


def unsupported_in_torchvision(spec: ArchSpec) -> List[str]:
    """What torchvision's R-50-FPN detection builders cannot express in this network (empty: exportable).

    The MSRA stride placement is not listed here (see :func:`export_torchvision`).
    """
    problems = []
    body = spec.body
    if spec.meta_arch != "generalized_rcnn" or spec.retinanet is not None:
        problems.append("RetinaNet (torchvision's retinanet_resnet50_fpn builds P6 from P5 (v1) or uses GroupNorm "
                        "heads (v2), Detectron builds P6 from C5 without norm)")
    if spec.pipeline != "e2e":
        problems.append(f"a {spec.pipeline} model (torchvision's detectors always run an RPN and a box head)")
    if spec.fpn is None:
        problems.append("a C4 model (torchvision has no res5 RoI head)")
    elif not (spec.fpn.min_level == 2 and spec.fpn.max_level == 6 and not spec.fpn.extra_conv_levels):
        problems.append("an FPN other than P2-P6 with a max-pooled P6")
    elif spec.fpn.use_gn or spec.fpn.dim != 256:
        problems.append("an FPN with GroupNorm or other than 256 channels")
    if body.norm.kind != "affine":
        problems.append("GroupNorm in the backbone (torchvision's ResNet uses FrozenBatchNorm2d)")
    if body.depth != 50 or body.block_counts != (3, 4, 6, 3):
        problems.append(f"ResNet-{body.depth} (torchvision's detection builders are ResNet-50 only)")
    if body.num_groups != 1 or body.width_per_group != 64:
        problems.append(f"ResNeXt groups {body.num_groups}x{body.width_per_group}d (torchvision's builders use 1x64d)")
    if body.res5_dilation != 1:
        problems.append("a dilated res5")
    box = spec.box_head
    if box is not None and (box.kind != "roi_2mlp_head" or box.mlp_dim != 1024 or box.roi_xform.resolution != 7):
        problems.append(f"box head {box.kind} (torchvision's is TwoMLPHead 1024 on 7x7 RoIs)")
    if box is not None and box.cls_agnostic_bbox_reg:
        problems.append("class-agnostic box regression (torchvision's bbox_pred is 4 x num_classes)")
    m = spec.mask_head
    if m is not None and (m.kind != "mask_rcnn_fcn_head_v1up4convs" or m.dim_reduced != 256 or m.dilation != 1
                          or m.upsample_ratio > 1 or not m.cls_specific_mask or m.roi_xform.resolution != 14):
        problems.append(f"mask head {m.kind} (torchvision's is 4 convs of 256, 3x3, then a 2x deconvolution, "
                        "class-specific, on 14x14 RoIs)")
    k = spec.keypoint_head
    if k is not None and not (k.num_stacked_convs == 8 and k.conv_head_dim == 512 and k.conv_head_kernel == 3
                              and k.use_deconv_output and not k.use_deconv and k.deconv_kernel == 4
                              and k.up_scale == 2 and k.roi_xform.resolution == 14):
        problems.append("a keypoint head other than 8 convs of 512 + ConvTranspose 4x4/2 + x2 up-sampling")
    return problems


def torchvision_builder(spec: ArchSpec) -> str:
    """Name of the ``torchvision.models.detection`` builder for ``spec``."""
    if spec.keypoint_head is not None:
        return "keypointrcnn_resnet50_fpn"
    if spec.mask_head is not None:
        return "maskrcnn_resnet50_fpn"
    return "fasterrcnn_resnet50_fpn"


def torchvision_builder_kwargs(spec: ArchSpec) -> Dict[str, Any]:
    """Keyword arguments for the builder that reproduce Detectron's input normalisation and test settings."""
    means = spec.conventions.pixel_means
    kwargs: Dict[str, Any] = {
        "weights": None,
        "weights_backbone": None,
        "num_classes": spec.num_classes,  # torchvision counts the background too
        # (x_rgb01 - mean/255) / (1/255) = 255 x - mean: Detectron's blob, in RGB (conv1 is flipped).
        "image_mean": [m / 255.0 for m in reversed(means)],
        "image_std": [1.0 / 255.0] * 3,
        "min_size": spec.test.scale,
        "max_size": spec.test.max_size,
        "box_score_thresh": spec.test.score_thresh,
        "box_nms_thresh": spec.test.nms,
        "box_detections_per_img": spec.test.detections_per_im,
    }
    if spec.rpn is not None:
        kwargs.update(rpn_pre_nms_top_n_test=spec.rpn.pre_nms_top_n, rpn_post_nms_top_n_test=spec.rpn.post_nms_top_n,
                      rpn_nms_thresh=spec.rpn.nms_thresh)
    if spec.keypoint_head is not None:
        kwargs["num_keypoints"] = spec.keypoint_head.num_keypoints
    return kwargs


def blobs_to_torchvision(
    blobs: Mapping[str, np.ndarray], affine: Set[str], *, flip_input_channels: bool = True
) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Rename Detectron blobs to torchvision names (FrozenBN buffers added, conv1 made RGB).

    Returns:
        ``(state, dropped)``: torchvision name -> float32 array; Detectron blob -> why it has no tensor.

    Raises:
        MappingError: a blob without a torchvision name, or two blobs on one name.
    """
    state: Dict[str, np.ndarray] = {}
    dropped: Dict[str, str] = {}
    for blob, value in blobs.items():
        module_blob, kind = split_blob(blob)
        if module_blob in TV_DROPPED:
            dropped[blob] = TV_DROPPED[module_blob]
            continue
        if kind.startswith("norm_"):
            module = lookup(TV_NORM_RULES, module_blob, {})
            param = kind[len("norm_"):]
        else:
            module = lookup(TV_CONV_RULES, module_blob, {})
            param = kind
        if module is None:
            raise MappingError(f"no torchvision name for Detectron blob {blob}", "torchvision")
        name = f"{module}.{param}"
        if name in state:
            raise MappingError(f"two blobs map to {name}", "torchvision")
        if name == "backbone.body.conv1.weight" and flip_input_channels:
            value = value[:, ::-1].copy()  # BGR -> RGB input channels
        state[name] = value
        if blob in affine:
            state[f"{module}.running_mean"] = np.zeros_like(value)
            state[f"{module}.running_var"] = np.full_like(value, 1.0 - TV_FROZEN_BN_EPS)
    return state, dropped


def torchvision_state_dict(model) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """:func:`blobs_to_torchvision` of a DetectronModel's tensors."""
    return blobs_to_torchvision(detectron_blobs(model), affine_scale_blobs(model))


STRIDE_1X1_EXPLANATION = (
    "RESNETS.STRIDE_1X1 is True: this MSRA ResNet strides in the 1x1 conv (branch2a) of each stage's first "
    "block, torchvision's Bottleneck in the 3x3 (conv2); the same weights in torchvision compute a different "
    "network (accuracy drops, cf. pytorch/vision#191)"
)


def export_torchvision(
    src: SourceModel, output: PathLike, *, force: bool = False, allow_architecture_change: bool = False
) -> ExportReport:
    """Write a torchvision ``state_dict`` (``torch.save``) to ``output``.

    Raises:
        ConfigError: torchvision cannot express the network (named), or an MSRA ResNet without
            ``allow_architecture_change``.
    """
    import torch

    start = time.perf_counter()
    out = Path(output)
    check_outputs_free([out], force)
    spec = src.model.spec
    problems = unsupported_in_torchvision(spec)
    if problems:
        raise ConfigError("torchvision's R-50-FPN detectors cannot express " + "; ".join(problems), src.path)
    warnings = []
    if spec.body.stride_1x1:
        if not allow_architecture_change:
            raise ConfigError(STRIDE_1X1_EXPLANATION + "; pass --allow-architecture-change to export anyway", src.path)
        warnings.append(STRIDE_1X1_EXPLANATION + ". Exported anyway (--allow-architecture-change): outputs WILL differ "
                        "from Detectron's")
    state, dropped = torchvision_state_dict(src.model)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    with atomic_write(out, "wb", force=force) as handle:
        handle.write(buffer.getvalue())
    builder = torchvision_builder(spec)
    kwargs = torchvision_builder_kwargs(spec)
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in ("weights", "weights_backbone"))
    notes = [f"load with: m = torchvision.models.detection.{builder}(weights=None, weights_backbone=None, {shown}); "
             f"m.load_state_dict(torch.load('{out}'))",
             "conv1 takes RGB (flipped from Detectron's BGR); feed RGB images in [0, 1] as torchvision expects",
             "class indices are Detectron's (0 = background)"]
    notes += list(TV_NUMERIC_NOTES)
    return ExportReport(target="torchvision", outputs=[out], num_tensors=len(state), notes=notes, warnings=warnings,
                        dropped=dropped, seconds=time.perf_counter() - start,
                        details={"builder": builder, "builder_kwargs": kwargs})
