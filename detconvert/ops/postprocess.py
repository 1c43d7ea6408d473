"""Box post-processing of Detectron's test path (``core/test.im_detect_bbox`` tail and
``core/test.box_results_with_nms_and_limit``).

Boxes are inclusive ``[x1, y1, x2, y2]`` in original-image pixels. The default path (hard NMS) runs on
torch tensors on their device; the optional soft-NMS and box-voting extras run on NumPy like Detectron.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from detconvert.ops.boxes import BBOX_XFORM_CLIP, bbox_overlaps, bbox_transform, clip_tiled_boxes
from detconvert.ops.nms import batched_nms, soft_nms

__all__ = [
    "BoxResults",
    "decode_box_predictions",
    "box_results_with_nms_and_limit",
    "box_voting",
    "to_cls_boxes",
]

ArrayLike = Union[np.ndarray, Tensor]


@dataclass
class BoxResults:
    """Final detections of one image, in Detectron's order (class by class, each class in RoI order).

    Attributes:
        boxes: ``[D, 4]`` float32 boxes in original-image pixels.
        scores: ``[D]`` float32 scores.
        classes: ``[D]`` int64 class ids (1..num_classes-1; 0 is background).
    """

    boxes: Tensor
    scores: Tensor
    classes: Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def cls_boxes(self, num_classes: int) -> List[np.ndarray]:
        """Detectron's ``cls_boxes`` list (see :func:`to_cls_boxes`)."""
        return to_cls_boxes(self.boxes, self.scores, self.classes, num_classes)


def decode_box_predictions(
    rois: Tensor,
    bbox_pred: Tensor,
    im_scale: float,
    im_hw: Tuple[int, int],
    num_classes: int,
    *,
    weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
    bbox_xform_clip: float = BBOX_XFORM_CLIP,
    cls_agnostic_bbox_reg: bool = False,
) -> Tensor:
    """Class-specific boxes in original-image pixels (the box part of ``core/test.im_detect_bbox``).

    The RoIs are divided by ``im_scale`` first (in float64, then rounded to float32 as Detectron's
    ``bbox_transform`` does) and decoded there: with the ``+1`` convention decoding is not
    scale-invariant, so it must happen in the same space as Detectron's. The result is clipped to the
    original image.

    Args:
        rois: ``[R, 5]`` (``[batch, x1, y1, x2, y2]``) or ``[R, 4]`` RoIs in network-input pixels.
        bbox_pred: ``[R, 4 * num_classes]`` deltas (``[R, 8]`` when class-agnostic: the last 4 are used).
        im_scale: the image's scale factor.
        im_hw: original image ``(height, width)``.
        num_classes: classes including background.
        weights: ``MODEL.BBOX_REG_WEIGHTS``.
        bbox_xform_clip: ``cfg.BBOX_XFORM_CLIP``.
        cls_agnostic_bbox_reg: ``MODEL.CLS_AGNOSTIC_BBOX_REG``.

    Returns:
        ``[R, 4 * num_classes]`` float32 boxes.
    """
    boxes = rois[:, -4:]
    boxes = (boxes.to(torch.float64) / float(im_scale)).to(bbox_pred.dtype)
    deltas = bbox_pred[:, -4:] if cls_agnostic_bbox_reg else bbox_pred
    pred = bbox_transform(boxes, deltas, weights, bbox_xform_clip)
    pred = clip_tiled_boxes(pred, float(im_hw[0]), float(im_hw[1]))
    if cls_agnostic_bbox_reg:
        pred = pred.repeat(1, num_classes)
    return pred


def box_results_with_nms_and_limit(
    scores: ArrayLike,
    boxes: ArrayLike,
    *,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_im: int = 100,
    soft_nms_method: Optional[str] = None,
    soft_nms_sigma: float = 0.5,
    bbox_vote_thresh: Optional[float] = None,
    bbox_vote_method: str = "ID",
    bbox_vote_beta: float = 1.0,
) -> BoxResults:
    """Per-class thresholding, NMS and the per-image cap (``core/test.box_results_with_nms_and_limit``).

    For each class ``j >= 1``: keep ``score > score_thresh`` (strict), NMS at ``nms_thresh`` (``>=``
    suppresses, +1 widths, equal scores: higher RoI index first), or soft-NMS when ``soft_nms_method``
    is given (score floor 0.0001, as Detectron), then optional box voting. Then, if more than
    ``detections_per_im`` remain, keep those ``>= `` the ``detections_per_im``-th best score -- ties at
    the cut are all kept, so the result can exceed the cap, exactly as in Detectron.

    Args:
        scores: ``[R, C]`` class probabilities (column 0 background).
        boxes: ``[R, 4 * C]`` class-specific boxes (:func:`decode_box_predictions`).
        score_thresh: ``TEST.SCORE_THRESH``.
        nms_thresh: ``TEST.NMS``.
        detections_per_im: ``TEST.DETECTIONS_PER_IM`` (``<= 0``: no cap).
        soft_nms_method: ``TEST.SOFT_NMS.METHOD`` when ``TEST.SOFT_NMS.ENABLED``, else None.
        soft_nms_sigma: ``TEST.SOFT_NMS.SIGMA``.
        bbox_vote_thresh: ``TEST.BBOX_VOTE.VOTE_TH`` when ``TEST.BBOX_VOTE.ENABLED``, else None.
        bbox_vote_method: ``TEST.BBOX_VOTE.SCORING_METHOD``.
        bbox_vote_beta: beta of the voting score heuristics (Detectron's caller never passes it: 1.0).

    Returns:
        :class:`BoxResults` (torch tensors on the device of the inputs).
    """
    scores_t = torch.as_tensor(scores)
    boxes_t = torch.as_tensor(boxes).to(device=scores_t.device)
    num_rois, num_classes = scores_t.shape
    boxes_t = boxes_t.reshape(num_rois, num_classes, 4)

    # Candidates class-major (all of class 1 by ascending RoI, then class 2, ...), as Detectron's loop.
    cls_idx, roi_idx = torch.nonzero(scores_t[:, 1:].t() > score_thresh, as_tuple=True)
    cls_idx = cls_idx + 1
    cand_scores = scores_t[roi_idx, cls_idx].to(torch.float32)
    cand_boxes = boxes_t[roi_idx, cls_idx].to(torch.float32)

    if soft_nms_method is None and bbox_vote_thresh is None:
        keep = batched_nms(cand_boxes, cand_scores, cls_idx, nms_thresh)
        det_boxes, det_scores, det_classes = cand_boxes[keep], cand_scores[keep], cls_idx[keep]
    else:
        det_boxes, det_scores, det_classes = _extras_per_class(
            cand_boxes, cand_scores, cls_idx, nms_thresh, soft_nms_method, soft_nms_sigma,
            bbox_vote_thresh, bbox_vote_method, bbox_vote_beta,
        )

    if detections_per_im > 0 and det_scores.numel() > detections_per_im:
        image_thresh = torch.sort(det_scores).values[-detections_per_im]
        kept = det_scores >= image_thresh
        det_boxes, det_scores, det_classes = det_boxes[kept], det_scores[kept], det_classes[kept]
    return BoxResults(boxes=det_boxes, scores=det_scores, classes=det_classes.to(torch.int64))


def _extras_per_class(
    boxes: Tensor, scores: Tensor, classes: Tensor, nms_thresh: float, soft_method: Optional[str],
    sigma: float, vote_thresh: Optional[float], vote_method: str, vote_beta: float,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The soft-NMS / box-voting branch of ``box_results_with_nms_and_limit`` (NumPy, per class)."""
    device = boxes.device
    dets_all = torch.cat([boxes, scores[:, None]], dim=1).cpu().numpy().astype(np.float32)
    cls_np = classes.cpu().numpy()
    out_dets, out_cls = [], []
    for j in np.unique(cls_np):
        dets_j = dets_all[cls_np == j]
        if soft_method is not None:
            nms_dets, _ = soft_nms(dets_j, sigma=sigma, overlap_thresh=nms_thresh, score_thresh=0.0001,
                                   method=soft_method)
        else:
            keep = batched_nms(torch.from_numpy(dets_j[:, :4]), torch.from_numpy(dets_j[:, 4]),
                               torch.zeros(len(dets_j), dtype=torch.int64), nms_thresh).numpy()
            nms_dets = dets_j[keep]
        if vote_thresh is not None:
            nms_dets = box_voting(nms_dets, dets_j, vote_thresh, vote_method, vote_beta)
        out_dets.append(nms_dets)
        out_cls.append(np.full(len(nms_dets), j, dtype=np.int64))
    if not out_dets:
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,)), classes.new_zeros((0,))
    dets = torch.from_numpy(np.concatenate(out_dets)).to(device)
    return dets[:, :4], dets[:, 4], torch.from_numpy(np.concatenate(out_cls)).to(device)


def box_voting(
    top_dets: np.ndarray, all_dets: np.ndarray, thresh: float, scoring_method: str = "ID", beta: float = 1.0
) -> np.ndarray:
    """Refine ``top_dets`` by score-weighted averaging with ``all_dets`` (``utils/boxes.box_voting``).

    Each kept box becomes the score-weighted mean of all boxes overlapping it by ``>= thresh`` (+1
    IoU); its score follows ``scoring_method`` (``ID``, ``TEMP_AVG``, ``AVG``, ``IOU_AVG``,
    ``GENERALIZED_AVG``, ``QUASI_SUM``).

    Args:
        top_dets: ``[N, 5]`` post-NMS detections.
        all_dets: ``[M, 5]`` pre-NMS detections of the same class.
        thresh: ``TEST.BBOX_VOTE.VOTE_TH``.
        scoring_method: score heuristic.
        beta: temperature / exponent of the heuristics.

    Returns:
        ``[N, 5]`` refined detections (dtype of ``top_dets``).
    """
    out = top_dets.copy()
    all_boxes = all_dets[:, :4]
    all_scores = all_dets[:, 4]
    overlaps = bbox_overlaps(torch.from_numpy(np.ascontiguousarray(top_dets[:, :4], dtype=np.float32)),
                             torch.from_numpy(np.ascontiguousarray(all_boxes, dtype=np.float32))).numpy()
    for k in range(out.shape[0]):
        inds = np.where(overlaps[k] >= thresh)[0]
        ws = all_scores[inds]
        out[k, :4] = np.average(all_boxes[inds], axis=0, weights=ws)
        if scoring_method == "ID":
            pass
        elif scoring_method == "TEMP_AVG":
            p = np.vstack((ws, 1.0 - ws))
            x = np.log(p / np.max(p, axis=0))
            x_exp = np.exp(x / beta)
            out[k, 4] = (x_exp / np.sum(x_exp, axis=0))[0].mean()
        elif scoring_method == "AVG":
            out[k, 4] = ws.mean()
        elif scoring_method == "IOU_AVG":
            out[k, 4] = np.average(ws, weights=overlaps[k, inds])
        elif scoring_method == "GENERALIZED_AVG":
            out[k, 4] = np.mean(ws**beta) ** (1.0 / beta)
        elif scoring_method == "QUASI_SUM":
            out[k, 4] = ws.sum() / float(len(ws)) ** beta
        else:
            raise ValueError(f"unknown box-voting scoring method {scoring_method!r}")
    return out


def to_cls_boxes(boxes: ArrayLike, scores: ArrayLike, classes: ArrayLike, num_classes: int) -> List[np.ndarray]:
    """Detectron's ``cls_boxes``: entry ``j`` is a float32 ``[n_j, 5]`` array ``[x1, y1, x2, y2, score]``.

    Entry 0 (background) is an empty list, as in Detectron.
    """
    b = np.asarray(boxes.detach().cpu() if isinstance(boxes, Tensor) else boxes, dtype=np.float32)
    s = np.asarray(scores.detach().cpu() if isinstance(scores, Tensor) else scores, dtype=np.float32)
    c = np.asarray(classes.detach().cpu() if isinstance(classes, Tensor) else classes)
    out: List = [[]]
    for j in range(1, num_classes):
        sel = c == j
        out.append(np.hstack([b[sel], s[sel, None]]).astype(np.float32))
    return out
