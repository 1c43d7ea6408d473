"""Detectron's test-time augmentation: ``TEST.BBOX_AUG``, ``TEST.MASK_AUG`` and ``TEST.KPS_AUG``.

``core/test.py`` is the spec (``im_detect_bbox_aug``, ``im_detect_mask_aug``, ``im_detect_keypoints_aug``
and their ``_hflip`` / ``_scale`` / ``_aspect_ratio`` helpers); the transforms are ``utils/boxes.flip_boxes``
/ ``aspect_ratio``, ``utils/image.aspect_ratio_rel`` and ``utils/keypoints.flip_heatmaps``. One image at a
time, as Detectron:

1. **Boxes.** One pass of the whole detector per transform, in Detectron's order: the horizontal flip at
   ``TEST.SCALE``; each of ``SCALES`` (longer side capped at ``MAX_SIZE``) and, with ``SCALE_H_FLIP``, its
   flip; each of ``ASPECT_RATIOS`` (at ``TEST.SCALE``) and, with ``ASPECT_RATIO_H_FLIP``, its flip; the
   unflipped ``TEST.SCALE`` pass last. Each pass gives ``im_detect_bbox``'s raw ``scores [R, C]`` and
   ``boxes [R, 4C]``; boxes are mapped back to the original image (``flip_boxes`` with ``+1`` widths,
   ``aspect_ratio(1 / r)``). End-to-end models propose with their RPN in each pass; precomputed-proposal
   models take the same proposals, transformed. ``SCORE_HEUR`` / ``COORD_HEUR`` combine the passes:
   ``ID`` (the unflipped pass), ``AVG`` (mean over passes, same rows), ``UNION`` (rows stacked); then
   ``box_results_with_nms_and_limit`` (NMS or soft-NMS, box voting) on the combination.
2. **Masks** (``MASK_AUG``): the final boxes go through the mask head once per transform (identity first,
   then flip, scales, ratios); flipped soft masks are flipped back (``[..., ::-1]``) and ``SOFT_AVG`` /
   ``SOFT_MAX`` / ``LOGIT_AVG`` combine them before ``segm_results``.
3. **Keypoints** (``KPS_AUG``): the same with heatmaps (``flip_heatmaps`` swaps the COCO left/right channels
   and flips), ``HM_AVG`` / ``HM_MAX``; with ``SCALE_SIZE_DEP`` boxes of area ``< AREA_TH`` (``+1`` widths)
   ignore the down-scaled passes and larger ones the up-scaled passes (``combine_heatmaps_size_dep``).

The unflipped ``TEST.SCALE`` maps of step 1 serve the identity transform of steps 2 and 3: Detectron
recomputes them (``im_conv_body_only``) from the same input, which gives the same maps. What the config
asks for but Detectron cannot run is refused when the spec is built
(:func:`detconvert.config.build_spec.test_augmentation`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import cv2
import numpy as np
import torch

from detconvert.inference.pipeline import (
    BodyPass,
    assemble_detections,
    body_pass,
    box_post_processing,
    box_predictions,
    keypoint_heatmaps,
    mask_probabilities,
    prepare_proposals,
)
from detconvert.inference.precision import PrecisionPolicy
from detconvert.modeling.detector import DetectronModel
from detconvert.spec import ArchSpec, AugSpec
from detconvert.structures import Detections

__all__ = [
    "Transform",
    "box_transforms",
    "head_transforms",
    "uses_augmentation",
    "flip_boxes",
    "aspect_ratio_boxes",
    "aspect_ratio_image",
    "flip_heatmaps",
    "COCO_KEYPOINT_FLIP_PAIRS",
    "combine_scores",
    "combine_boxes",
    "combine_masks",
    "combine_heatmaps",
    "run_augmented",
]

#: ``on_pass(done, total, what)``: called after each network pass of one image.
PassCallback = Callable[[int, int, str], None]

#: ``utils/keypoints.get_keypoints`` flip map as channel indices of the 17 COCO keypoints (left, right).
COCO_KEYPOINT_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


# --------------------------------------------------------------------------------- Detectron's transforms


def flip_boxes(boxes: np.ndarray, im_width: int) -> np.ndarray:
    """``utils/boxes.flip_boxes``: ``x1' = W - x2 - 1``, ``x2' = W - x1 - 1`` for every box of a tiled row."""
    flipped = boxes.copy()
    flipped[:, 0::4] = im_width - boxes[:, 2::4] - 1
    flipped[:, 2::4] = im_width - boxes[:, 0::4] - 1
    return flipped


def aspect_ratio_boxes(boxes: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """``utils/boxes.aspect_ratio``: x coordinates times ``aspect_ratio`` (y unchanged)."""
    out = boxes.copy()
    out[:, 0::4] = aspect_ratio * boxes[:, 0::4]
    out[:, 2::4] = aspect_ratio * boxes[:, 2::4]
    return out


def aspect_ratio_image(im: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """``utils/image.aspect_ratio_rel``: width ``int(round(r * W))`` (Python 3 rounding), bilinear ``cv2.resize``."""
    h, w = im.shape[:2]
    return cv2.resize(im, dsize=(int(round(aspect_ratio * w)), h))


def flip_heatmaps(heatmaps: np.ndarray) -> np.ndarray:
    """``utils/keypoints.flip_heatmaps``: swap the left/right COCO keypoint channels, then flip horizontally."""
    flipped = heatmaps.copy()
    for left, right in COCO_KEYPOINT_FLIP_PAIRS:
        flipped[:, right] = heatmaps[:, left]
        flipped[:, left] = heatmaps[:, right]
    return flipped[:, :, :, ::-1]


# -------------------------------------------------------------------------------------------- heuristics


def combine_scores(scores_ts: Sequence[np.ndarray], scores_i: np.ndarray, heur: str) -> np.ndarray:
    """``SCORE_HEUR``: ``ID`` the identity pass, ``AVG`` ``np.mean`` over passes, ``UNION`` ``np.vstack``."""
    return _combine_rows(scores_ts, scores_i, heur, "SCORE_HEUR")


def combine_boxes(boxes_ts: Sequence[np.ndarray], boxes_i: np.ndarray, heur: str) -> np.ndarray:
    """``COORD_HEUR``: as :func:`combine_scores` for the ``[R, 4C]`` boxes (original pixels)."""
    return _combine_rows(boxes_ts, boxes_i, heur, "COORD_HEUR")


def _combine_rows(values: Sequence[np.ndarray], identity: np.ndarray, heur: str, key: str) -> np.ndarray:
    if heur == "ID":
        return identity
    if heur == "AVG":
        return np.mean(values, axis=0)
    if heur == "UNION":
        return np.vstack(values)
    raise ValueError(f"TEST.BBOX_AUG.{key} {heur!r} is not one of ID, AVG, UNION")


def combine_masks(masks_ts: Sequence[np.ndarray], heur: str) -> np.ndarray:
    """``MASK_AUG.HEUR``: ``SOFT_AVG`` (mean), ``SOFT_MAX`` (max) or ``LOGIT_AVG`` (sigmoid of the mean logit)."""
    if heur == "SOFT_AVG":
        return np.mean(masks_ts, axis=0)
    if heur == "SOFT_MAX":
        return np.amax(masks_ts, axis=0)
    if heur == "LOGIT_AVG":
        logits = np.mean([-1.0 * np.log((1.0 - y) / np.maximum(y, 1e-20)) for y in masks_ts], axis=0)
        return 1.0 / (1.0 + np.exp(-logits))
    raise ValueError(f"TEST.MASK_AUG.HEUR {heur!r} is not one of SOFT_AVG, SOFT_MAX, LOGIT_AVG")


def combine_heatmaps(
    heatmaps_ts: Sequence[np.ndarray],
    heur: str,
    *,
    boxes: Optional[np.ndarray] = None,
    downscaled: Optional[Sequence[bool]] = None,
    upscaled: Optional[Sequence[bool]] = None,
    area_th: Optional[float] = None,
) -> np.ndarray:
    """``KPS_AUG.HEUR`` (``HM_AVG`` mean, ``HM_MAX`` max) over passes; size-dependent with ``area_th``.

    With ``area_th`` (``SCALE_SIZE_DEP``), ``combine_heatmaps_size_dep``: a box of area ``< area_th``
    (``+1`` widths) skips the passes tagged ``downscaled``, a larger one those tagged ``upscaled``.
    """
    if heur == "HM_AVG":
        reduce = np.mean
    elif heur == "HM_MAX":
        reduce = np.amax
    else:
        raise ValueError(f"TEST.KPS_AUG.HEUR {heur!r} is not one of HM_AVG, HM_MAX")
    if area_th is None:
        return reduce(heatmaps_ts, axis=0)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    small = areas < area_th
    large = areas >= area_th
    out = np.zeros_like(heatmaps_ts[0])
    for i in range(out.shape[0]):
        keep = [hm[i] for hm, ds, us in zip(heatmaps_ts, downscaled, upscaled)
                if not (small[i] and ds) and not (large[i] and us)]
        out[i] = reduce(keep, axis=0)
    return out


# -------------------------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class Transform:
    """One augmented pass: the image at ``scale`` (longer side ``<= max_size``), optionally stretched to
    ``aspect_ratio`` times its width and/or flipped.

    ``downscaled`` / ``upscaled``: a ``SCALES`` pass below / above ``TEST.SCALE`` (``KPS_AUG.SCALE_SIZE_DEP``).
    """

    scale: int
    max_size: int
    hflip: bool = False
    aspect_ratio: Optional[float] = None
    downscaled: bool = False
    upscaled: bool = False

    @property
    def is_identity(self) -> bool:
        return not self.hflip and self.aspect_ratio is None

    def describe(self) -> str:
        what = f"scale {self.scale}" + (f", aspect ratio {self.aspect_ratio:g}" if self.aspect_ratio else "")
        return what + (", flipped" if self.hflip else "")


def _augmented(aug: AugSpec, scale: int, max_size: int) -> List[Transform]:
    """The non-identity transforms of a block, in ``core/test.py``'s order."""
    out = [Transform(scale, max_size, hflip=True)] if aug.h_flip else []
    for s in aug.scales:
        tags = dict(downscaled=s < scale, upscaled=s > scale)
        out.append(Transform(s, aug.max_size, **tags))
        if aug.scale_h_flip:
            out.append(Transform(s, aug.max_size, hflip=True, **tags))
    for r in aug.aspect_ratios:
        out.append(Transform(scale, max_size, aspect_ratio=r))
        if aug.aspect_ratio_h_flip:
            out.append(Transform(scale, max_size, hflip=True, aspect_ratio=r))
    return out


def box_transforms(spec: ArchSpec) -> List[Transform]:
    """``im_detect_bbox_aug``'s passes (identity last), or the identity alone without ``TEST.BBOX_AUG``."""
    t = spec.test
    identity = Transform(t.scale, t.max_size)
    return (_augmented(t.bbox_aug, t.scale, t.max_size) if t.bbox_aug.enabled else []) + [identity]


def head_transforms(spec: ArchSpec, aug: AugSpec) -> List[Transform]:
    """``im_detect_mask_aug`` / ``im_detect_keypoints_aug``'s passes (identity first)."""
    t = spec.test
    return [Transform(t.scale, t.max_size)] + _augmented(aug, t.scale, t.max_size)


def uses_augmentation(spec: ArchSpec) -> bool:
    """True when Detectron's test path for ``spec`` runs more than one pass per image."""
    if spec.pipeline not in ("e2e", "precomputed_proposals"):
        return False  # core/test_retinanet and rpn_generator never read TEST.*_AUG
    t = spec.test
    return (t.bbox_aug.enabled or (spec.mask_head is not None and t.mask_aug.enabled)
            or (spec.keypoint_head is not None and t.kps_aug.enabled))


# ------------------------------------------------------------------------------------------------ passes


def _transformed_image(image: np.ndarray, tr: Transform) -> np.ndarray:
    im = aspect_ratio_image(image, tr.aspect_ratio) if tr.aspect_ratio is not None else image
    return np.ascontiguousarray(im[:, ::-1]) if tr.hflip else im


def _to_pass_boxes(boxes: np.ndarray, tr: Transform, width: int) -> np.ndarray:
    """Original-image boxes as the transformed image sees them (aspect ratio first, then the flip)."""
    if tr.aspect_ratio is not None:
        boxes = aspect_ratio_boxes(boxes, tr.aspect_ratio)
    return flip_boxes(boxes, width) if tr.hflip else boxes


@dataclass
class _Runner:
    model: DetectronModel
    policy: PrecisionPolicy
    device: torch.device
    total: int
    on_pass: Optional[PassCallback]
    done: int = 0

    def body(self, image: np.ndarray, tr: Transform) -> BodyPass:
        return body_pass(self.model, [image], policy=self.policy, device=self.device, scale=tr.scale,
                         max_size=tr.max_size)

    def tick(self, what: str) -> None:
        self.done += 1
        if self.on_pass is not None:
            self.on_pass(self.done, self.total, what)


def _box_pass(run: _Runner, image: np.ndarray, tr: Transform, proposals: Optional[np.ndarray]):
    """``im_detect_bbox`` under ``tr``, mapped back to the original image: ``(scores, boxes, body)``."""
    im = _transformed_image(image, tr)
    props = None if proposals is None else [_to_pass_boxes(proposals, tr, im.shape[1])]
    body = run.body(im, tr)
    (scores, boxes), = box_predictions(run.model, body, policy=run.policy, proposals=props)
    scores = scores.cpu().numpy()
    boxes = boxes.cpu().numpy()
    if tr.hflip:
        boxes = flip_boxes(boxes, im.shape[1])
    if tr.aspect_ratio is not None:
        boxes = aspect_ratio_boxes(boxes, 1.0 / tr.aspect_ratio)
    run.tick(f"boxes, {tr.describe()}")
    return scores, boxes, body


def _head_passes(
    run: _Runner, image: np.ndarray, boxes: np.ndarray, transforms: Sequence[Transform], identity: BodyPass,
    head: Callable[[BodyPass, torch.Tensor], np.ndarray], invert_flip: Callable[[np.ndarray], np.ndarray], name: str,
) -> List[np.ndarray]:
    """``head`` outputs for ``boxes`` under each transform (the first, the identity, reuses the box stage's maps)."""
    outputs = []
    for k, tr in enumerate(transforms):
        body = identity if k == 0 else run.body(_transformed_image(image, tr), tr)
        width = int(round(tr.aspect_ratio * image.shape[1])) if tr.aspect_ratio is not None else image.shape[1]
        pass_boxes = _to_pass_boxes(boxes, tr, width)
        out = head(body, torch.from_numpy(np.ascontiguousarray(pass_boxes)).to(run.device))
        outputs.append(invert_flip(out) if tr.hflip else out)
        if body is not identity:
            run.tick(f"{name}, {tr.describe()}")
    return outputs


def run_augmented(
    model: DetectronModel,
    image: np.ndarray,
    *,
    policy: PrecisionPolicy,
    device: torch.device,
    proposals: Optional[np.ndarray] = None,
    on_pass: Optional[PassCallback] = None,
) -> Detections:
    """Detectron's ``im_detect_all`` with ``TEST.BBOX_AUG`` / ``MASK_AUG`` / ``KPS_AUG`` on one BGR image.

    Args:
        model: a two-stage :class:`DetectronModel` (eval mode) whose spec asks for augmentation.
        image: ``H x W x 3`` BGR ``uint8``.
        policy: the precision policy (exact by default in :class:`~detconvert.inference.predictor.Predictor`).
        device: where to run.
        proposals: precomputed-proposal models: ``[R, 4]`` boxes in original pixels, best first.
        on_pass: progress callback ``(done, total, what)`` after each network pass.

    Returns:
        The image's :class:`Detections` (original pixels, class by class).
    """
    from detconvert.config.build_spec import augmentation_passes

    spec = model.spec
    t = spec.test
    h, w = int(image.shape[0]), int(image.shape[1])
    if spec.pipeline == "precomputed_proposals":
        if proposals is None:
            raise ValueError("this model reads precomputed proposals: pass one [R, 4] box array")
        proposals = prepare_proposals(proposals, h, w, proposal_limit=t.proposal_limit)
    box_count, mask_count, kps_count = augmentation_passes(spec)
    # The identity transform of the mask / keypoint stages reuses the box stage's last pass.
    run = _Runner(model, policy, device, box_count + max(mask_count - 1, 0) + max(kps_count - 1, 0), on_pass)

    with torch.inference_mode(), policy.numerics():
        scores_ts, boxes_ts = [], []
        identity: Optional[BodyPass] = None
        for tr in box_transforms(spec):
            identity = None
            # Only the last pass's maps (the identity's) stay alive: the mask / keypoint identity pass reads them.
            scores, boxes, identity = _box_pass(run, image, tr, proposals)
            scores_ts.append(scores)
            boxes_ts.append(boxes)
        if t.bbox_aug.enabled:
            scores_c = combine_scores(scores_ts, scores_ts[-1], t.bbox_aug.score_heur)
            boxes_c = combine_boxes(boxes_ts, boxes_ts[-1], t.bbox_aug.coord_heur)
        else:
            scores_c, boxes_c = scores_ts[-1], boxes_ts[-1]
        del scores_ts, boxes_ts
        result = box_post_processing(spec, torch.from_numpy(np.ascontiguousarray(scores_c)),
                                     torch.from_numpy(np.ascontiguousarray(boxes_c)))
        det_boxes = result.boxes.cpu().numpy().astype(np.float32)
        classes = result.classes.cpu().numpy()
        masks = heatmaps = None
        if len(result) and spec.mask_head is not None:
            masks = [_combined_masks(run, image, det_boxes, classes, identity)]
        if len(result) and spec.keypoint_head is not None:
            heatmaps = [_combined_heatmaps(run, image, det_boxes, identity)]
    return assemble_detections(spec, [result], [(h, w)], masks, heatmaps)[0]


def _own_class(probs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Each detection's own-class ``M x M`` map (the heuristics act per pixel, so combining only these
    gives what Detectron's full ``[R, K, M, M]`` combination gives for the channels ``segm_results`` reads)."""
    if probs.shape[1] == 1:
        return probs[:, 0]
    return probs[np.arange(len(classes)), classes]


def _combined_masks(run: _Runner, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
                    identity: BodyPass) -> np.ndarray:
    spec = run.model.spec
    aug = spec.test.mask_aug

    def head(body: BodyPass, pass_boxes: torch.Tensor) -> np.ndarray:
        probs = mask_probabilities(run.model, body, [pass_boxes], policy=run.policy).cpu().numpy()
        return _own_class(probs, classes)

    if not aug.enabled:
        return head(identity, torch.from_numpy(boxes).to(run.device))
    masks_ts = _head_passes(run, image, boxes, head_transforms(spec, aug), identity, head,
                            lambda m: m[:, :, ::-1], "masks")
    return combine_masks(masks_ts, aug.heur)


def _combined_heatmaps(run: _Runner, image: np.ndarray, boxes: np.ndarray, identity: BodyPass) -> np.ndarray:
    spec = run.model.spec
    aug = spec.test.kps_aug

    def head(body: BodyPass, pass_boxes: torch.Tensor) -> np.ndarray:
        return keypoint_heatmaps(run.model, body, [pass_boxes], policy=run.policy).cpu().numpy()

    if not aug.enabled:
        return head(identity, torch.from_numpy(boxes).to(run.device))
    transforms = head_transforms(spec, aug)
    heatmaps_ts = _head_passes(run, image, boxes, transforms, identity, head, flip_heatmaps, "keypoints")
    if aug.scale_size_dep:
        return combine_heatmaps(heatmaps_ts, aug.heur, boxes=boxes, downscaled=[tr.downscaled for tr in transforms],
                                upscaled=[tr.upscaled for tr in transforms], area_th=aug.area_th)
    return combine_heatmaps(heatmaps_ts, aug.heur)
