"""Detectron's test path over a :class:`~detconvert.modeling.detector.DetectronModel`, as one explicit chain.

Four pipelines, picked by :attr:`ArchSpec.pipeline`:

* ``e2e`` (``core/test.im_detect_all``): image blob -> body (+ FPN) -> RPN -> proposals (per level
  ``GenerateProposals``: pre-NMS top-N, NMS 0.7, post-NMS top-N; FPN: ``CollectAndDistribute`` keeps
  the best ``RPN_POST_NMS_TOP_N``) -> box head on (multi-level) RoIAlign -> boxes decoded and
  post-processed in ORIGINAL image pixels (``box_results_with_nms_and_limit``) -> mask head on
  ``mask_rois`` = final boxes x ``im_scale`` -> ``segm_results`` -> keypoint head on
  ``keypoint_rois`` -> ``keypoint_results``.
* ``rpn_only`` (``core/rpn_generator.im_proposals``): the proposals themselves; with FPN the levels are
  merged and the best ``RPN_POST_NMS_TOP_N`` kept, without a second NMS.
* ``precomputed_proposals`` (``im_detect_bbox(boxes=...)``): given boxes per image (original pixels)
  are prepared like Detectron's roidb (``json_dataset._add_proposals_from_file``: clip, unique, drop
  small, ``TEST.PROPOSAL_LIMIT``), scaled by ``im_scale``, de-duplicated with ``DEDUP_BOXES``, run
  through the heads and mapped back.
* ``retinanet`` (``core/test_retinanet.im_detect_bbox``): per level threshold (0 on the top level)
  and top-N, decode with (1, 1, 1, 1), divide by ``im_scale``, clip, per-class NMS over all levels,
  global top-N.

A batch of images runs as one blob (each image at its own scale, padded to the batch maximum); every
per-image step (top-N cuts, post-processing) is done per image. With ``keep_blobs`` the intermediate
tensors are returned as NumPy arrays under Detectron's blob names (RoI blobs keep the batch index in
column 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from detconvert.modeling.detector import DetectronModel
from detconvert.ops import (
    BoxResults,
    ImageBlob,
    batched_nms,
    bbox_transform,
    box_results_with_nms_and_limit,
    clip_tiled_boxes,
    collect_fpn_proposals,
    decode_box_predictions,
    fpn_rpn_cell_anchors,
    generate_anchors,
    generate_proposals,
    get_images_blob,
    grid_anchors,
    heatmaps_to_keypoints,
    map_rois_to_fpn_levels,
    multilevel_roi_align,
    retinanet_cell_anchors,
    roi_align,
    segm_results,
    stable_topk_desc,
)
from detconvert.inference.precision import PrecisionPolicy, resolve_precision
from detconvert.ops.fpn_levels import distribute_rois_to_levels
from detconvert.spec import ArchSpec, RoIXformSpec
from detconvert.structures import Detections

__all__ = ["PipelineOutput", "run_pipeline", "prepare_proposals", "make_image_blob", "BodyPass", "body_pass",
           "box_predictions", "box_post_processing", "mask_probabilities", "keypoint_heatmaps",
           "assemble_detections", "split_per_image"]

#: ``utils/boxes.unique_boxes`` and ``core/test.im_detect_bbox`` hash a box as a dot product with these.
_HASH_WEIGHTS_4 = np.array([1, 1e3, 1e6, 1e9])
_HASH_WEIGHTS_5 = np.array([1, 1e3, 1e6, 1e9, 1e12])
#: ``json_dataset.get_roidb(min_proposal_size=2)`` at test time (``filter_small_boxes``).
MIN_PROPOSAL_SIZE = 2


@dataclass
class PipelineOutput:
    """Result of :func:`run_pipeline`: one :class:`Detections` per image, plus the kept blobs."""

    detections: List[Detections]
    blobs: Dict[str, np.ndarray] = field(default_factory=dict)


class _Blobs:
    """Collects intermediate tensors under Detectron names when asked to (no copies otherwise)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.data: Dict[str, np.ndarray] = {}

    def put(self, name: str, value) -> None:
        if not self.enabled:
            return
        if isinstance(value, Tensor):
            value = value.detach().cpu().numpy()
        self.data[name] = np.array(value, copy=True)


def make_image_blob(
    spec: ArchSpec, images: Sequence[np.ndarray], *, scale: Optional[int] = None, max_size: Optional[int] = None
) -> ImageBlob:
    """Detectron's network input for ``images`` (``utils/blob.get_image_blob``; FPN: padded to COARSEST_STRIDE).

    ``scale`` / ``max_size`` default to ``TEST.SCALE`` / ``TEST.MAX_SIZE``.
    """
    stride = spec.fpn.coarsest_stride if spec.fpn is not None else None
    return get_images_blob(
        images, spec.test.scale if scale is None else scale, spec.test.max_size if max_size is None else max_size,
        pixel_means=spec.conventions.pixel_means, coarsest_stride=stride,
    )


# ------------------------------------------------------------------------------------------- RoI pooling


def _roi_levels(spec: ArchSpec, rois: Tensor) -> Tensor:
    fpn = spec.fpn
    return map_rois_to_fpn_levels(
        rois[:, 1:5], fpn.roi_min_level, fpn.roi_max_level,
        canonical_scale=fpn.roi_canonical_scale, canonical_level=fpn.roi_canonical_level,
    )


def _pool(
    model: DetectronModel,
    spec: ArchSpec,
    feats: Dict[str, Tensor],
    rois: Tensor,
    xform: RoIXformSpec,
    blobs: _Blobs,
    name: str,
) -> Tensor:
    """``RoIFeatureTransform``: RoIAlign on the body output (C4) or on FPN levels by RoI size.

    With ``FPN.MULTILEVEL_ROIS`` each RoI is pooled from the level ``map_rois_to_fpn_levels`` gives it
    (``_add_multilevel_rois_for_test``); the blobs ``<name>_fpn<l>`` and ``<name>_idx_restore_int32``
    are recorded as Detectron names them.
    """
    blobs.put(name, rois)
    if spec.fpn is not None and spec.fpn.multilevel_rois:
        fpn = spec.fpn
        levels = _roi_levels(spec, rois)
        if blobs.enabled:
            per_level, restore = distribute_rois_to_levels(rois, levels, fpn.roi_min_level, fpn.roi_max_level)
            for lvl, r in zip(range(fpn.roi_min_level, fpn.roi_max_level + 1), per_level):
                blobs.put(f"{name}_fpn{lvl}", r)
            blobs.put(f"{name}_idx_restore_int32", restore.to(torch.int32))
        pyramid = model.pyramid(feats)
        first = fpn.roi_min_level - fpn.min_level
        maps = pyramid[first:first + fpn.roi_max_level - fpn.roi_min_level + 1]
        scales = [2.0 ** -lvl for lvl in range(fpn.roi_min_level, fpn.roi_max_level + 1)]
        return multilevel_roi_align(maps, rois, levels, fpn.roi_min_level, xform.resolution, scales,
                                    xform.sampling_ratio)
    if spec.fpn is not None:
        # Single-level FPN RoI pooling (MULTILEVEL_ROIS off): the finest RoI level.
        pyramid = model.pyramid(feats)
        lvl = spec.fpn.roi_min_level
        return roi_align(pyramid[lvl - spec.fpn.min_level], rois, xform.resolution, 2.0 ** -lvl, xform.sampling_ratio)
    stage = spec.body.last_stage
    return roi_align(feats[f"res{stage}"], rois, xform.resolution, 2.0 ** -stage, xform.sampling_ratio)


# --------------------------------------------------------------------------------------------------- RPN


def _rpn_proposals(
    model: DetectronModel, spec: ArchSpec, feats: Dict[str, Tensor], im_info: Tensor, blobs: _Blobs,
    policy: PrecisionPolicy,
) -> Tuple[Tensor, Tensor]:
    """RPN head + ``GenerateProposals`` (per level with FPN) + the FPN collect step.

    Returns:
        ``(rois [R, 5], probs [R])``: FPN: the per-image best ``RPN_POST_NMS_TOP_N`` of all levels by
        score (``collect``); C4: ``rpn_rois`` as generated.
    """
    rpn = spec.rpn
    pyramid = model.pyramid(feats)
    common = dict(
        pre_nms_top_n=rpn.pre_nms_top_n, post_nms_top_n=rpn.post_nms_top_n, nms_thresh=rpn.nms_thresh,
        min_size=rpn.min_size, bbox_xform_clip=spec.test.bbox_xform_clip,
    )
    if rpn.kind == "fpn":
        first = rpn.min_level - spec.fpn.min_level
        maps = pyramid[first:first + rpn.max_level - rpn.min_level + 1]
        logits, deltas = policy.run(model.rpn_head, maps)
        rois_l, probs_l = [], []
        for lvl, lg, dl in zip(range(rpn.min_level, rpn.max_level + 1), logits, deltas):
            probs = torch.sigmoid(lg)
            blobs.put(f"rpn_cls_logits_fpn{lvl}", lg)
            blobs.put(f"rpn_cls_probs_fpn{lvl}", probs)
            blobs.put(f"rpn_bbox_pred_fpn{lvl}", dl)
            # FPN.add_fpn_rpn_outputs: one anchor size per level, RPN_ANCHOR_START_SIZE * 2**(l - min)
            cell = fpn_rpn_cell_anchors(lvl, min_level=rpn.min_level, start_size=rpn.anchor_sizes[0],
                                        aspect_ratios=rpn.aspect_ratios)
            r, p = generate_proposals(probs, dl, im_info, cell, 2.0 ** lvl, **common)
            blobs.put(f"rpn_rois_fpn{lvl}", r)
            blobs.put(f"rpn_roi_probs_fpn{lvl}", p)
            rois_l.append(r)
            probs_l.append(p)
        # collect_and_distribute_fpn_rpn_proposals.collect (each image its own top-N).
        return collect_fpn_proposals(rois_l, probs_l, rpn.post_nms_top_n)
    logits, deltas = policy.run(model.rpn_head, [pyramid[-1]])
    probs = torch.sigmoid(logits[0])
    blobs.put("rpn_cls_logits", logits[0])
    blobs.put("rpn_cls_probs", probs)
    blobs.put("rpn_bbox_pred", deltas[0])
    cell = generate_anchors(stride=rpn.anchor_stride, sizes=rpn.anchor_sizes, aspect_ratios=rpn.aspect_ratios)
    rois, roi_probs = generate_proposals(probs, deltas[0], im_info, cell, float(rpn.anchor_stride), **common)
    blobs.put("rpn_rois", rois)
    blobs.put("rpn_roi_probs", roi_probs)
    return rois, roi_probs.reshape(-1)


# ------------------------------------------------------------------------------- precomputed proposals


def prepare_proposals(
    boxes: np.ndarray, im_h: int, im_w: int, *, proposal_limit: int = 2000, min_size: int = MIN_PROPOSAL_SIZE
) -> np.ndarray:
    """Given proposals as Detectron's test roidb holds them (``json_dataset._add_proposals_from_file``).

    Clip to the image (``clip_boxes_to_image``), drop duplicates keeping the first
    (``unique_boxes``), drop boxes with a side ``<= min_size`` (``filter_small_boxes``, no ``+1``),
    then keep the first ``proposal_limit`` (``TEST.PROPOSAL_LIMIT``).

    Args:
        boxes: ``[R, 4]`` (or ``[R, >=4]``) boxes in original-image pixels, best first.
        im_h, im_w: original image size.
        proposal_limit: ``TEST.PROPOSAL_LIMIT`` (``<= 0``: no limit).
        min_size: minimum side (Detectron's test roidb uses 2).

    Returns:
        float32 ``[R', 4]``.
    """
    b = np.asarray(boxes, dtype=np.float32)[:, :4].copy()
    b[:, 0::2] = np.minimum(np.maximum(b[:, 0::2], 0), im_w - 1)
    b[:, 1::2] = np.minimum(np.maximum(b[:, 1::2], 0), im_h - 1)
    _, index = np.unique(np.round(b.astype(np.float64)).dot(_HASH_WEIGHTS_4), return_index=True)
    b = b[np.sort(index)]
    keep = ((b[:, 2] - b[:, 0]) > min_size) & ((b[:, 3] - b[:, 1]) > min_size)
    b = b[keep]
    return b[:proposal_limit] if proposal_limit > 0 else b


def _given_rois(
    spec: ArchSpec, proposals: Sequence[np.ndarray], blob: ImageBlob, device: torch.device
) -> Tuple[Tensor, List[np.ndarray], List[np.ndarray]]:
    """``_get_rois_blob`` + ``DEDUP_BOXES`` for each image (``core/test.im_detect_bbox``).

    Returns:
        ``(rois [R, 5] float32 on device, per-image boxes kept after de-duplication (original pixels),
        per-image inverse indices restoring the un-deduplicated rows)``.
    """
    rows, kept_boxes, inverse = [], [], []
    for i, boxes in enumerate(proposals):
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scaled = boxes.astype(np.float64) * blob.im_scales[i]  # _project_im_rois, float64 then float32
        rois = np.hstack([np.zeros((len(boxes), 1)), scaled]).astype(np.float32)
        inv = np.arange(len(boxes))
        if spec.test.dedup_boxes > 0 and len(boxes):
            hashes = np.round(rois.astype(np.float64) * spec.test.dedup_boxes).dot(_HASH_WEIGHTS_5)
            _, index, inv = np.unique(hashes, return_index=True, return_inverse=True)
            rois, boxes = rois[index], boxes[index]
        rois[:, 0] = i
        rows.append(rois)
        kept_boxes.append(boxes)
        inverse.append(np.asarray(inv).reshape(-1))
    rois_all = np.concatenate(rows) if rows else np.zeros((0, 5), np.float32)
    return torch.from_numpy(rois_all).to(device), kept_boxes, inverse


# ----------------------------------------------------------------------------------------------- heads


def _empty_detections(num: int, spec: ArchSpec, hw: Tuple[int, int]) -> Detections:
    return Detections(
        boxes=np.zeros((0, 4), np.float32), scores=np.zeros((0,), np.float32), classes=np.zeros((0,), np.int64),
        image_size=hw,
        masks=[] if spec.mask_head is not None else None,
        keypoints=(np.zeros((0, 4, spec.keypoint_head.num_keypoints), np.float32)
                   if spec.keypoint_head is not None else None),
    )


def _scaled_rois(per_image_boxes: List[Tensor], im_scales: np.ndarray, device: torch.device) -> Tensor:
    """``_get_rois_blob(boxes, im_scale)``: float64 ``boxes * im_scale`` rounded to float32, batch index first."""
    rows = []
    for i, boxes in enumerate(per_image_boxes):
        scaled = (boxes.to(torch.float64) * float(im_scales[i])).to(torch.float32)
        rows.append(torch.cat([scaled.new_full((scaled.shape[0], 1), float(i)), scaled], dim=1))
    if not rows:
        return torch.zeros((0, 5), dtype=torch.float32, device=device)
    return torch.cat(rows)


def _contiguous_pooling_maps(model: DetectronModel, spec: ArchSpec, feats: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """``feats`` with the maps RoIs are pooled from made NCHW-contiguous.

    In ``fast`` the CPU backbone runs channels-last; torchvision's CPU RoIAlign reads NCHW and would copy
    a map again for every pooling (box, mask and keypoint heads). Converting once saves those copies.
    """
    if spec.fpn is not None:
        names = list(model.fpn.feature_names)
    else:
        names = [f"res{spec.body.last_stage}"]
    return {**feats, **{name: feats[name].contiguous() for name in names}}


@dataclass
class BodyPass:
    """Images through the body (+ FPN) at one scale: what every head of that pass reads.

    Attributes:
        feats: the body's (and FPN's) output maps by Detectron name.
        blob: the network input (:class:`~detconvert.ops.ImageBlob`: scales, ``im_info``).
        image_hw: each image's original ``(height, width)``.
        device: where the maps live.
    """

    feats: Dict[str, Tensor]
    blob: ImageBlob
    image_hw: List[Tuple[int, int]]
    device: torch.device
    _pooling: Optional[Dict[str, Tensor]] = None

    def pooling_feats(self, model: DetectronModel, policy: PrecisionPolicy) -> Dict[str, Tensor]:
        """``feats`` as RoIAlign reads them (NCHW-contiguous once, when the body ran channels-last)."""
        if self._pooling is None:
            self._pooling = self.feats
            if self.device.type == "cpu" and policy.channels_last:
                self._pooling = _contiguous_pooling_maps(model, model.spec, self.feats)
        return self._pooling


def body_pass(
    model: DetectronModel,
    images: Sequence[np.ndarray],
    *,
    policy: PrecisionPolicy,
    device: torch.device,
    scale: Optional[int] = None,
    max_size: Optional[int] = None,
    blobs: Optional[_Blobs] = None,
) -> BodyPass:
    """``utils/blob.get_image_blob`` + the body: ``core/test.im_conv_body_only`` at ``scale`` / ``max_size``.

    Call inside ``torch.inference_mode()`` and ``policy.numerics()``. ``scale`` / ``max_size`` default to
    ``TEST.SCALE`` / ``TEST.MAX_SIZE`` (test-time augmentation passes its own).
    """
    spec = model.spec
    blobs = blobs or _Blobs(False)
    blob = make_image_blob(spec, images, scale=scale, max_size=max_size)
    data = policy.prepare_input(torch.from_numpy(blob.data).to(device))
    blobs.put("im_info", blob.im_info)
    feats = policy.run(model.features, data)
    del data
    if blobs.enabled:
        for name, value in feats.items():
            blobs.put(name, value)
    return BodyPass(feats=feats, blob=blob, image_hw=[(int(im.shape[0]), int(im.shape[1])) for im in images],
                    device=device)


def box_predictions(
    model: DetectronModel,
    body: BodyPass,
    *,
    policy: PrecisionPolicy,
    proposals: Optional[Sequence[np.ndarray]] = None,
    blobs: Optional[_Blobs] = None,
) -> List[Tuple[Tensor, Tensor]]:
    """``core/test.im_detect_bbox`` on a :class:`BodyPass`: per image ``(scores [R, C], boxes [R, 4C])``.

    End-to-end models propose with their RPN on this pass's maps; precomputed-proposal models take
    ``proposals`` (per image, original pixels, already :func:`prepare_proposals`-ed), scaled and
    de-duplicated (``DEDUP_BOXES``) and mapped back to every given row. Boxes are decoded and clipped
    in the image's original pixels, before any thresholding or NMS.
    """
    spec = model.spec
    blobs = blobs or _Blobs(False)
    device = body.device
    given = None
    if spec.pipeline == "precomputed_proposals":
        rois, kept, inverse = _given_rois(spec, proposals, body.blob, device)
        given = (kept, inverse)
    else:
        im_info = torch.from_numpy(body.blob.im_info).to(device)
        rois, _ = _rpn_proposals(model, spec, body.feats, im_info, blobs, policy)
    feats = body.pooling_feats(model, policy)
    bh = spec.box_head
    pooled = _pool(model, spec, feats, rois, bh.roi_xform, blobs, "rois")
    cls_score, bbox_pred = policy.run(lambda x: model.box_predictor(model.box_head(x)), policy.prepare_input(pooled))
    del pooled
    cls_prob = torch.softmax(cls_score, dim=1)
    blobs.put("cls_score", cls_score)
    blobs.put("cls_prob", cls_prob)
    blobs.put("bbox_pred", bbox_pred)

    image_of_roi = rois[:, 0].to(torch.int64)
    out = []
    for i, hw in enumerate(body.image_hw):
        sel = torch.nonzero(image_of_roi == i, as_tuple=False).flatten()
        scale = float(body.blob.im_scales[i])
        if given is None:
            # FASTER_RCNN: boxes = rois[:, 1:5] / im_scale, decoded in original pixels.
            ref = rois[sel]
        else:
            ref = torch.from_numpy(given[0][i]).to(device)
            scale = 1.0  # the given boxes are already in original pixels
        boxes = decode_box_predictions(
            ref, bbox_pred[sel], scale, hw, spec.num_classes,
            weights=bh.bbox_reg_weights, bbox_xform_clip=spec.test.bbox_xform_clip,
            cls_agnostic_bbox_reg=bh.cls_agnostic_bbox_reg,
        )
        scores = cls_prob[sel]
        if given is not None:  # DEDUP_BOXES: map back to every given proposal
            inv = torch.from_numpy(given[1][i]).to(device)
            scores, boxes = scores[inv], boxes[inv]
        out.append((scores, boxes))
    return out


def box_post_processing(spec: ArchSpec, scores, boxes) -> BoxResults:
    """``core/test.box_results_with_nms_and_limit`` with ``spec.test``'s thresholds, soft-NMS and box voting."""
    t = spec.test
    return box_results_with_nms_and_limit(
        scores, boxes, score_thresh=t.score_thresh, nms_thresh=t.nms, detections_per_im=t.detections_per_im,
        soft_nms_method=t.soft_nms_method if t.soft_nms else None, soft_nms_sigma=t.soft_nms_sigma,
        bbox_vote_thresh=t.bbox_vote_thresh if t.bbox_vote else None, bbox_vote_method=t.bbox_vote_method,
        bbox_vote_beta=t.bbox_vote_beta,
    )


def _head_input(model: DetectronModel, body: BodyPass, boxes: Sequence[Tensor], roi_xform: RoIXformSpec,
                policy: PrecisionPolicy, blobs: _Blobs, rois_blob: str) -> Tensor:
    """What the mask and keypoint heads share: boxes in original pixels -> scaled RoIs (``rois_blob``) ->
    pooled features, laid out for ``policy``."""
    rois = _scaled_rois(list(boxes), body.blob.im_scales, body.device)
    pooled = _pool(model, model.spec, body.pooling_feats(model, policy), rois, roi_xform, blobs, rois_blob)
    return policy.prepare_input(pooled)


def mask_probabilities(
    model: DetectronModel, body: BodyPass, boxes: Sequence[Tensor], *, policy: PrecisionPolicy,
    blobs: Optional[_Blobs] = None,
) -> Tensor:
    """``core/test.im_detect_mask``: ``[sum R, K, M, M]`` soft masks of ``boxes`` (per image, original pixels)."""
    blobs = blobs or _Blobs(False)
    pooled = _head_input(model, body, boxes, model.spec.mask_head.roi_xform, policy, blobs, "mask_rois")
    probs = torch.sigmoid(policy.run(model.mask_head, pooled))
    blobs.put("mask_fcn_probs", probs)
    return probs


def keypoint_heatmaps(
    model: DetectronModel, body: BodyPass, boxes: Sequence[Tensor], *, policy: PrecisionPolicy,
    blobs: Optional[_Blobs] = None,
) -> Tensor:
    """``core/test.im_detect_keypoints``: ``[sum R, J, H, H]`` heatmap logits of ``boxes`` (original pixels)."""
    blobs = blobs or _Blobs(False)
    pooled = _head_input(model, body, boxes, model.spec.keypoint_head.roi_xform, policy, blobs, "keypoint_rois")
    lowres, heatmaps = policy.run(model.keypoint_head, pooled, return_lowres=True)
    if lowres is not None:
        blobs.put("kps_score_lowres", lowres)
    blobs.put("kps_score", heatmaps)
    return heatmaps


def assemble_detections(
    spec: ArchSpec,
    results: Sequence[BoxResults],
    image_hw: Sequence[Tuple[int, int]],
    masks: Optional[Sequence[np.ndarray]] = None,
    heatmaps: Optional[Sequence[np.ndarray]] = None,
) -> List[Detections]:
    """Final :class:`Detections` per image: ``segm_results`` of ``masks`` and ``keypoint_results`` of ``heatmaps``.

    ``masks[i]`` / ``heatmaps[i]`` are image ``i``'s ``[R_i, K, M, M]`` (or own-class ``[R_i, M, M]``)
    soft masks and ``[R_i, J, H, H]`` heatmaps, one per detection of ``results[i]`` (None: head absent).
    """
    dets = []
    for i, res in enumerate(results):
        d = _empty_detections(0, spec, image_hw[i])
        d.boxes = res.boxes.cpu().numpy().astype(np.float32)
        d.scores = res.scores.cpu().numpy().astype(np.float32)
        d.classes = res.classes.cpu().numpy().astype(np.int64)
        h, w = image_hw[i]
        if masks is not None and len(d):
            d.masks = segm_results(masks[i], d.boxes, h, w, classes=d.classes, thresh=spec.mask_head.thresh_binarize)
        if heatmaps is not None and len(d):
            # keypoint_results: heatmaps_to_keypoints on the final boxes (KRCNN.NMS_OKS is off in every
            # Detectron config and not reproduced).
            d.keypoints = heatmaps_to_keypoints(heatmaps[i], d.boxes,
                                                inference_min_size=spec.keypoint_head.inference_min_size)
        dets.append(d)
    return dets


def split_per_image(values: np.ndarray, results: Sequence[BoxResults]) -> List[np.ndarray]:
    """Rows of ``values`` (one per detection of all images, in order) cut into one array per image."""
    bounds = np.cumsum([0] + [len(r) for r in results])
    return [values[bounds[i]:bounds[i + 1]] for i in range(len(results))]


def _rcnn_heads(
    model: DetectronModel,
    body: BodyPass,
    blobs: _Blobs,
    policy: PrecisionPolicy,
    proposals: Optional[Sequence[np.ndarray]] = None,
) -> List[Detections]:
    """Box head -> post-processing -> mask and keypoint heads (``im_detect_all`` after the body)."""
    spec = model.spec
    results = [box_post_processing(spec, scores, boxes)
               for scores, boxes in box_predictions(model, body, policy=policy, proposals=proposals, blobs=blobs)]
    det_boxes = [r.boxes for r in results]
    masks = heatmaps = None
    if sum(len(r) for r in results) and spec.mask_head is not None:
        probs = mask_probabilities(model, body, det_boxes, policy=policy, blobs=blobs)
        masks = split_per_image(probs.cpu().numpy(), results)
    if sum(len(r) for r in results) and spec.keypoint_head is not None:
        maps = keypoint_heatmaps(model, body, det_boxes, policy=policy, blobs=blobs)
        heatmaps = split_per_image(maps.cpu().numpy(), results)
    return assemble_detections(spec, results, body.image_hw, masks, heatmaps)


# ------------------------------------------------------------------------------------------- RetinaNet


def _retinanet(
    model: DetectronModel, spec: ArchSpec, feats: Dict[str, Tensor], blob: ImageBlob,
    image_hw: List[Tuple[int, int]], blobs: _Blobs, policy: PrecisionPolicy,
) -> List[Detections]:
    """``core/test_retinanet.im_detect_bbox`` per image."""
    rt = spec.retinanet
    head = model.retinanet_head
    pyramid = model.pyramid(feats)
    cls_logits, box_deltas = policy.run(head, pyramid)
    levels = list(range(spec.fpn.min_level, spec.fpn.max_level + 1))
    num_fg = spec.num_classes - 1
    a = rt.num_anchors
    probs_l = []
    for lvl, lg, dl in zip(levels, cls_logits, box_deltas):
        p = head.probabilities(lg)
        blobs.put(f"retnet_cls_prob_fpn{lvl}", p)
        blobs.put(f"retnet_bbox_pred_fpn{lvl}", dl)
        probs_l.append(p)

    dets = []
    for i in range(len(image_hw)):
        cand_boxes, cand_scores, cand_classes = [], [], []
        for lvl, prob, deltas in zip(levels, probs_l, box_deltas):
            _, ch, hgt, wid = prob.shape
            k = ch // a
            prob_i = prob[i].reshape(a, k, hgt, wid)
            if rt.softmax:
                prob_i = prob_i[:, 1:]  # drop the background channel
                k -= 1
            flat = prob_i.reshape(-1)
            # The coarsest level is thresholded at 0 so that small images still give candidates.
            th = rt.inference_th if lvl < levels[-1] else 0.0
            cand = torch.nonzero(flat > th, as_tuple=False).flatten()
            if cand.numel() == 0:
                continue
            top = stable_topk_desc(flat[cand], rt.pre_nms_top_n)  # Detectron: argpartition (unordered)
            idx = cand[top]
            scores = flat[idx]
            x = idx % wid
            y = (idx // wid) % hgt
            cls = (idx // (wid * hgt)) % k
            anchor = idx // (wid * hgt * k)
            cell = retinanet_cell_anchors(lvl, scales_per_octave=rt.scales_per_octave,
                                          aspect_ratios=rt.aspect_ratios, anchor_scale=rt.anchor_scale)
            anchors = grid_anchors(cell, hgt, wid, 2.0 ** lvl, device=flat.device)
            ref = anchors[(y * wid + x) * a + anchor]
            if rt.class_specific_bbox:
                d = deltas[i].reshape(a, num_fg, 4, hgt, wid)[anchor, cls, :, y, x]
            else:
                d = deltas[i].reshape(a, 4, hgt, wid)[anchor, :, y, x]
            boxes = bbox_transform(ref, d, rt.bbox_reg_weights, spec.test.bbox_xform_clip)
            boxes = boxes / torch.tensor(np.float32(blob.im_scales[i]), device=boxes.device)  # float32 division
            boxes = clip_tiled_boxes(boxes, float(image_hw[i][0]), float(image_hw[i][1]))
            cand_boxes.append(boxes)
            cand_scores.append(scores)
            cand_classes.append(cls + 1)
        d = _empty_detections(0, spec, image_hw[i])
        if cand_boxes:
            boxes = torch.cat(cand_boxes)
            scores = torch.cat(cand_scores)
            classes = torch.cat(cand_classes)
            keep = batched_nms(boxes, scores, classes, spec.test.nms)
            boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
            order = stable_topk_desc(scores, spec.test.detections_per_im)  # sort all again, keep the top N
            boxes, scores, classes = boxes[order], scores[order], classes[order]
            by_class = torch.argsort(classes, stable=True)  # cls_boxes: class by class, by score within
            d.boxes = boxes[by_class].cpu().numpy().astype(np.float32)
            d.scores = scores[by_class].cpu().numpy().astype(np.float32)
            d.classes = classes[by_class].cpu().numpy().astype(np.int64)
        dets.append(d)
    return dets


# ------------------------------------------------------------------------------------------ entry point


def run_pipeline(
    model: DetectronModel,
    images: Sequence[np.ndarray],
    *,
    proposals: Optional[Sequence[np.ndarray]] = None,
    keep_blobs: bool = False,
    device: Optional[torch.device] = None,
    precision: Optional[PrecisionPolicy] = None,
) -> PipelineOutput:
    """Run Detectron's test path for ``model.spec`` on a batch of BGR ``uint8`` images.

    Args:
        model: a :class:`DetectronModel` with weights loaded (eval mode).
        images: ``H x W x 3`` BGR ``uint8`` arrays (``cv2.imread``).
        proposals: for ``precomputed_proposals`` models: per image ``[R, 4]`` boxes in original-image
            pixels, best first (Detectron's proposal file ``boxes`` entries).
        keep_blobs: also return intermediate blobs under Detectron's names.
        device: where to run (default: the model's device).
        precision: the :class:`~detconvert.inference.precision.PrecisionPolicy` (default: exact). In fast
            the network modules run under autocast and hand float32 to every op after them (RoIAlign,
            decoding, NMS, thresholds, mask paste, keypoints); the model must be in the policy's memory
            format (:meth:`PrecisionPolicy.prepare_model`, done by :class:`Predictor`).

    Returns:
        :class:`PipelineOutput`; detections are in original-image pixels, class by class.

    Raises:
        ValueError: proposals missing for a precomputed-proposal model (or one list per image expected).
    """
    spec = model.spec
    if device is None:
        device = next(model.parameters()).device
    policy = precision if precision is not None else resolve_precision("exact", device)
    blobs = _Blobs(keep_blobs)
    image_hw = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    if spec.pipeline == "precomputed_proposals":
        if proposals is None or len(proposals) != len(images):
            raise ValueError("this model reads precomputed proposals: pass one [R, 4] box array per image")
        proposals = [
            prepare_proposals(p, h, w, proposal_limit=spec.test.proposal_limit) for p, (h, w) in zip(proposals, image_hw)
        ]
    with torch.inference_mode(), policy.numerics():
        body = body_pass(model, images, policy=policy, device=device, blobs=blobs)
        if spec.pipeline == "retinanet":
            dets = _retinanet(model, spec, body.feats, body.blob, image_hw, blobs, policy)
        elif spec.pipeline == "rpn_only":
            im_info = torch.from_numpy(body.blob.im_info).to(device)
            rois, probs = _rpn_proposals(model, spec, body.feats, im_info, blobs, policy)
            dets = _proposal_detections(rois, probs, body.blob, image_hw)
        else:
            dets = _rcnn_heads(model, body, blobs, policy, proposals=proposals)
    return PipelineOutput(detections=dets, blobs=blobs.data)


def _proposal_detections(rois: Tensor, probs: Tensor, blob: ImageBlob, image_hw) -> List[Detections]:
    """``im_proposals``: ``rpn_rois[:, 1:] / im_scale`` (float32 division) by descending score."""
    out = []
    image_of_roi = rois[:, 0].to(torch.int64)
    for i, hw in enumerate(image_hw):
        sel = torch.nonzero(image_of_roi == i, as_tuple=False).flatten()
        boxes = rois[sel, 1:5] / torch.tensor(np.float32(blob.im_scales[i]), device=rois.device)
        scores = probs.reshape(-1)[sel]
        out.append(Detections(
            boxes=boxes.cpu().numpy().astype(np.float32), scores=scores.cpu().numpy().astype(np.float32),
            classes=np.zeros((len(sel),), np.int64), image_size=hw, is_proposals=True,
        ))
    return out
