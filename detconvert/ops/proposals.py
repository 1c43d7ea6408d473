"""RPN proposal generation and the FPN collect/distribute step, as Detectron's Python ops do them.

* :func:`generate_proposals` = ``ops/generate_proposals.GenerateProposalsOp`` (inference settings),
  applied per image (and, with FPN, per level).
* :func:`collect_fpn_proposals` / :func:`distribute_fpn_proposals` =
  ``ops/collect_and_distribute_fpn_rpn_proposals.collect`` / ``distribute`` (inference path).

Boxes are inclusive ``[x1, y1, x2, y2]`` in network-input pixels; RoI blobs are ``[R, 5]`` with the
batch index in column 0 (float32, as Detectron's blobs). All work stays on the input's device.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from detconvert.ops.anchors import grid_anchors
from detconvert.ops.boxes import BBOX_XFORM_CLIP, bbox_transform, clip_tiled_boxes
from detconvert.ops.fpn_levels import distribute_rois_to_levels, map_rois_to_fpn_levels
from detconvert.ops.nms import nms

__all__ = [
    "stable_topk_desc",
    "proposals_for_one_image",
    "generate_proposals",
    "collect_fpn_proposals",
    "distribute_fpn_proposals",
]


def stable_topk_desc(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores by descending score, equal scores by ascending index.

    This is ``np.argsort(-scores, kind='stable')[:k]``, the deterministic reading of Detectron's
    ``argsort(-scores)`` top-N cuts (``GenerateProposalsOp``, ``collect``). It avoids sorting the whole
    array: a ``topk`` finds the k-th value, then only the candidates at or above it are sorted.

    Args:
        scores: ``[N]`` scores.
        k: how many to keep; ``k <= 0`` or ``k >= N`` sorts everything.

    Returns:
        int64 ``[min(k, N)]`` indices.
    """
    n = scores.numel()
    if k <= 0 or k >= n:
        return torch.sort(scores, descending=True, stable=True).indices
    kth = torch.topk(scores, k, sorted=False).values.min()
    candidates = torch.nonzero(scores >= kth, as_tuple=False).flatten()  # ascending index
    order = torch.sort(scores[candidates], descending=True, stable=True).indices
    return candidates[order[:k]]


def proposals_for_one_image(
    scores: Tensor,
    bbox_deltas: Tensor,
    anchors: Tensor,
    im_info: Tensor,
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float = 0.0,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    bbox_xform_clip: float = BBOX_XFORM_CLIP,
) -> Tuple[Tensor, Tensor]:
    """Proposals of one image at one level (``GenerateProposalsOp.proposals_for_one_image``).

    1. reorder the ``(A, H, W)`` probabilities and ``(4A, H, W)`` deltas to ``(H, W, A)`` rows;
    2. keep the ``pre_nms_top_n`` best (descending; equal scores by ascending position);
    3. decode with ``weights`` (1, 1, 1, 1) in network-input pixels;
    4. clip to ``im_info``'s height/width (the padded blob size);
    5. drop boxes with ``(x2 - x1) / im_scale + 1 < max(min_size, 1)`` (either side) or whose centre
       ``x1 + w / 2`` / ``y1 + h / 2`` is not inside the blob (``_filter_boxes``);
    6. NMS at ``nms_thresh`` (``>=``, +1 widths, Detectron tie-break), then the first ``post_nms_top_n``.

    Args:
        scores: ``[A, H, W]`` objectness probabilities (sigmoid of the logits).
        bbox_deltas: ``[4A, H, W]`` deltas, channel ``4a + k``.
        anchors: ``[H * W * A, 4]`` anchors from :func:`detconvert.ops.anchors.grid_anchors`.
        im_info: ``[3]`` = ``(blob height, blob width, im_scale)``.
        pre_nms_top_n: ``TEST.RPN_PRE_NMS_TOP_N`` (``<= 0``: all).
        post_nms_top_n: ``TEST.RPN_POST_NMS_TOP_N`` (``<= 0``: all).
        nms_thresh: ``TEST.RPN_NMS_THRESH`` (0.7); ``<= 0`` skips NMS as Detectron does.
        min_size: ``TEST.RPN_MIN_SIZE`` in original-image pixels.
        weights: decode weights.
        bbox_xform_clip: ``cfg.BBOX_XFORM_CLIP``.

    Returns:
        ``(boxes [R, 4], probs [R])`` float32, by descending probability.
    """
    flat_scores = scores.permute(1, 2, 0).reshape(-1)
    flat_deltas = bbox_deltas.permute(1, 2, 0).reshape(-1, 4)
    order = stable_topk_desc(flat_scores, pre_nms_top_n)
    flat_scores = flat_scores[order]
    proposals = bbox_transform(anchors[order], flat_deltas[order], weights, bbox_xform_clip)
    im_h, im_w, im_scale = (im_info[0], im_info[1], im_info[2])
    proposals = clip_tiled_boxes(proposals, float(im_h), float(im_w))

    # _filter_boxes: sizes measured in original-image pixels, centre in blob pixels.
    min_size = max(float(min_size), 1.0)
    x1, y1, x2, y2 = proposals.unbind(1)
    ws_orig = (x2 - x1) / im_scale + 1
    hs_orig = (y2 - y1) / im_scale + 1
    ws = x2 - x1 + 1
    hs = y2 - y1 + 1
    x_ctr = x1 + ws / 2.0
    y_ctr = y1 + hs / 2.0
    keep = (ws_orig >= min_size) & (hs_orig >= min_size) & (x_ctr < im_w) & (y_ctr < im_h)
    proposals = proposals[keep]
    flat_scores = flat_scores[keep]

    if nms_thresh > 0:
        kept = nms(proposals, flat_scores, nms_thresh)
        if post_nms_top_n > 0:
            kept = kept[:post_nms_top_n]
        proposals = proposals[kept]
        flat_scores = flat_scores[kept]
    return proposals, flat_scores


def generate_proposals(
    scores: Tensor,
    bbox_deltas: Tensor,
    im_info: Tensor,
    cell_anchors: Union[np.ndarray, Tensor],
    stride: float,
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_thresh: float,
    min_size: float = 0.0,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    bbox_xform_clip: float = BBOX_XFORM_CLIP,
) -> Tuple[Tensor, Tensor]:
    """Detectron's ``GenerateProposals`` op on a batch (one RPN level).

    Args:
        scores: ``[N, A, H, W]`` objectness probabilities.
        bbox_deltas: ``[N, 4A, H, W]`` deltas.
        im_info: ``[N, 3]`` rows ``(blob height, blob width, im_scale)``.
        cell_anchors: ``[A, 4]`` cell anchors of this level (float64, from :mod:`detconvert.ops.anchors`).
        stride: the level's stride (``1 / spatial_scale``).
        pre_nms_top_n, post_nms_top_n, nms_thresh, min_size, weights, bbox_xform_clip: see
            :func:`proposals_for_one_image` (applied per image).

    Returns:
        ``(rpn_rois [R, 5], rpn_roi_probs [R, 1])`` float32; column 0 of the rois is the image index.
    """
    n, _, height, width = scores.shape
    anchors = grid_anchors(cell_anchors, height, width, stride, device=scores.device)
    rois, probs = [], []
    for i in range(n):
        boxes, p = proposals_for_one_image(
            scores[i], bbox_deltas[i], anchors, im_info[i],
            pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n, nms_thresh=nms_thresh,
            min_size=min_size, weights=weights, bbox_xform_clip=bbox_xform_clip,
        )
        rois.append(torch.cat([boxes.new_full((boxes.shape[0], 1), float(i)), boxes], dim=1))
        probs.append(p[:, None])
    return torch.cat(rois), torch.cat(probs)


def collect_fpn_proposals(
    rois_per_level: Sequence[Tensor],
    probs_per_level: Sequence[Tensor],
    post_nms_top_n: int,
    *,
    per_image: bool = True,
) -> Tuple[Tensor, Tensor]:
    """Merge the RPN levels and keep the best ``post_nms_top_n`` (``collect_and_distribute...collect``).

    Detectron concatenates the levels (in level order) and keeps ``argsort(-scores)[:post_nms_top_n]``
    (here: equal scores by ascending position). Detectron applies the cut to the whole batch at once;
    with ``per_image=True`` (the default) each image keeps its own top-N, which is identical for one
    image and is what a batch of independent images needs (Detectron issue #459).

    Args:
        rois_per_level: ``[R_l, 5]`` rois of each level (``rpn_rois_fpn2..6``).
        probs_per_level: ``[R_l, 1]`` or ``[R_l]`` probabilities (``rpn_roi_probs_fpn2..6``).
        post_nms_top_n: ``TEST.RPN_POST_NMS_TOP_N``.
        per_image: cut per image (True) or over the whole batch (Detectron's literal behaviour).

    Returns:
        ``(rois [R, 5], probs [R])`` by descending score (images in ascending index when per image).
    """
    rois = torch.cat(list(rois_per_level))
    probs = torch.cat([p.reshape(-1) for p in probs_per_level])
    if not per_image or rois.shape[0] == 0:
        keep = stable_topk_desc(probs, post_nms_top_n)
        return rois[keep], probs[keep]
    image_ids = rois[:, 0].to(torch.int64)
    out_rois, out_probs = [], []
    for image in torch.unique(image_ids).tolist():
        idx = torch.nonzero(image_ids == image, as_tuple=False).flatten()
        keep = idx[stable_topk_desc(probs[idx], post_nms_top_n)]
        out_rois.append(rois[keep])
        out_probs.append(probs[keep])
    return torch.cat(out_rois), torch.cat(out_probs)


def distribute_fpn_proposals(
    rois: Tensor,
    min_level: int = 2,
    max_level: int = 5,
    *,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> Tuple[List[Tensor], Tensor]:
    """Assign RoIs to FPN levels (``collect_and_distribute...distribute``, inference).

    Args:
        rois: ``[R, 5]`` rois (``[batch, x1, y1, x2, y2]``, network-input pixels).
        min_level, max_level: ``FPN.ROI_MIN_LEVEL`` / ``ROI_MAX_LEVEL``.
        canonical_scale, canonical_level: ``FPN.ROI_CANONICAL_SCALE`` / ``ROI_CANONICAL_LEVEL``.

    Returns:
        ``(rois_per_level, idx_restore)`` = ``rois_fpn<min>..<max>`` and ``rois_idx_restore_int32``
        (as int64): ``torch.cat(rois_per_level)[idx_restore] == rois``.
    """
    levels = map_rois_to_fpn_levels(
        rois[:, 1:5], min_level, max_level, canonical_scale=canonical_scale, canonical_level=canonical_level
    )
    return distribute_rois_to_levels(rois, levels, min_level, max_level)
