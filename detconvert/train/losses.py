"""Detectron's training losses (Caffe2 / Detectron loss operators) in PyTorch.

Each function reproduces one operator's forward value and normalisation; the heads add them as
Detectron's ``*_heads.add_*_losses`` do:

* RPN objectness: ``SigmoidCrossEntropyLoss`` over anchors labelled 0/1 (-1 ignored). Single-level
  RPN: ``normalize=1`` (divide by #labelled); FPN: ``normalize=0, scale=1/(RPN_BATCH_SIZE_PER_IM *
  IMS_PER_BATCH)`` per level (``FPN.add_fpn_rpn_losses``).
* Box regression: ``SmoothL1Loss`` = ``sum(outside * huber_beta(inside * (pred - target))) / N``
  (N = first dim), beta 1/9 for RPN and 1 for the box head.
* Classification: ``SoftmaxWithLoss`` mean over RoIs; keypoints: the same op with per-keypoint weights,
  divided by the sum of weights (#visible keypoints), times ``keypoint_loss_normalizer`` unless
  ``NORMALIZE_BY_VISIBLE_KEYPOINTS``.
* Masks: ``SigmoidCrossEntropyLoss`` with ``normalize=1``: mean over non-ignored (!= -1) pixels.
* RetinaNet: ``SigmoidFocalLoss`` / ``SoftmaxFocalLoss`` summed and divided by ``retnet_fg_num``,
  ``SelectSmoothL1Loss`` at the fg locations divided by ``retnet_fg_num``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sigmoid_cross_entropy_loss",
    "smooth_l1_loss",
    "softmax_with_loss",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "select_smooth_l1_loss",
    "spatial_narrow_as",
]


def spatial_narrow_as(wide: Tensor, like: Tensor) -> Tensor:
    """Top-left crop of a wide target blob to ``like``'s H, W (Caffe2 ``SpatialNarrowAs``)."""
    return wide[..., : like.shape[-2], : like.shape[-1]]


def sigmoid_cross_entropy_loss(logits: Tensor, labels: Tensor, *, normalize: bool = True, scale: float = 1.0) -> Tensor:
    """Detectron's ``SigmoidCrossEntropyLoss``.

    Per element ``max(x, 0) - x t + log(1 + exp(-|x|))`` where the label ``t`` is 0/1; ``-1`` is ignored.

    Args:
        logits: any shape.
        labels: same shape, int (0, 1, -1).
        normalize: divide by the number of non-ignored elements (at least 1e-5), else not at all.
        scale: multiplier applied last.

    Returns:
        Scalar loss.
    """
    valid = labels != -1
    t = labels.clamp(min=0).to(logits.dtype)
    per = F.binary_cross_entropy_with_logits(logits, t, reduction="none") * valid.to(logits.dtype)
    total = per.sum()
    if normalize:
        total = total / valid.sum().to(logits.dtype).clamp(min=1e-5)
    return total * scale


def smooth_l1_loss(pred: Tensor, target: Tensor, inside_weights: Tensor, outside_weights: Tensor, *, beta: float = 1.0, scale: float = 1.0) -> Tensor:
    """Detectron's ``SmoothL1Loss``: ``scale / N * sum(outside * huber(inside * (pred - target)))``.

    ``huber(x) = 0.5 x^2 / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta``; N = ``pred.shape[0]``.
    """
    x = inside_weights * (pred - target)
    ax = x.abs()
    huber = torch.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)
    return (outside_weights * huber).sum() * (scale / pred.shape[0])


def softmax_with_loss(logits: Tensor, labels: Tensor, weights: Optional[Tensor] = None, *, scale: float = 1.0) -> Tensor:
    """Caffe2 ``SoftmaxWithLoss`` (``spatial=0``): ``-log softmax`` at the label, averaged.

    Args:
        logits: ``[N, C]``.
        labels: ``[N]`` or ``[N, 1]`` ints.
        weights: optional ``[N]`` / ``[N, 1]``: the average becomes ``sum(w * nll) / sum(w)``.
        scale: multiplier.
    """
    labels = labels.reshape(-1).long()
    nll = -F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    if weights is None:
        return nll.mean() * scale
    w = weights.reshape(-1).to(logits.dtype)
    return (nll * w).sum() / w.sum().clamp(min=1e-20) * scale


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, normalizer: Tensor, *, num_classes: int, alpha: float = 0.25, gamma: float = 2.0, scale: float = 1.0) -> Tensor:
    """Detectron's ``SigmoidFocalLoss`` (RetinaNet, ``retinanet_heads.add_fpn_retinanet_losses``).

    Args:
        logits: ``[N, A * C, H, W]`` (C = ``num_classes`` foreground classes, no background channel).
        labels: ``[N, A, H, W]``: 0 background, ``c >= 1`` class c, -1 ignore.
        normalizer: ``retnet_fg_num`` (``#fg + 1`` summed over images).
        num_classes: C.
        alpha: ``RETINANET.LOSS_ALPHA``.
        gamma: ``RETINANET.LOSS_GAMMA``.
        scale: multiplier.
    """
    n, ac, h, w = logits.shape
    a = ac // num_classes
    x = logits.reshape(n, a, num_classes, h, w)
    t = labels.reshape(n, a, 1, h, w)
    cls_ids = torch.arange(1, num_classes + 1, device=logits.device).reshape(1, 1, num_classes, 1, 1)
    pos = (t == cls_ids).to(x.dtype)
    neg = ((t != -1) & (t != cls_ids)).to(x.dtype)
    p = torch.sigmoid(x)
    log_p = F.logsigmoid(x)
    log_1mp = F.logsigmoid(-x)
    loss = -pos * alpha * (1 - p).pow(gamma) * log_p - neg * (1 - alpha) * p.pow(gamma) * log_1mp
    return loss.sum() / normalizer.reshape(()).to(x.dtype) * scale


def softmax_focal_loss(logits: Tensor, labels: Tensor, normalizer: Tensor, *, num_classes: int, alpha: float = 0.25, gamma: float = 2.0, scale: float = 1.0) -> Tensor:
    """Detectron's ``SoftmaxFocalLoss`` (``RETINANET.SOFTMAX``): C includes background.

    Per anchor with label ``t >= 0``: ``-w_t (1 - p_t)^gamma log p_t``, ``w_t = alpha`` for ``t > 0``
    and ``1 - alpha`` for background; summed and divided by ``normalizer``.
    """
    n, ac, h, w = logits.shape
    a = ac // num_classes
    x = logits.reshape(n, a, num_classes, h, w)
    log_p = F.log_softmax(x, dim=2)
    t = labels.reshape(n, a, h, w).long()
    valid = t >= 0
    log_pt = log_p.gather(2, t.clamp(min=0).unsqueeze(2)).squeeze(2)
    weight = torch.where(t > 0, torch.full_like(log_pt, alpha), torch.full_like(log_pt, 1 - alpha))
    loss = -weight * (1 - log_pt.exp()).pow(gamma) * log_pt * valid.to(x.dtype)
    return loss.sum() / normalizer.reshape(()).to(x.dtype) * scale


def select_smooth_l1_loss(pred: Tensor, targets: Tensor, locations: Tensor, normalizer: Tensor, *, beta: float = 0.11, scale: float = 1.0) -> Tensor:
    """Detectron's ``SelectSmoothL1Loss``: smooth-L1 on the 4 channels at each fg location.

    Args:
        pred: ``[N, A * 4, H, W]`` box deltas.
        targets: ``[M, 4]``.
        locations: ``[M, 4]`` rows ``(image, first channel, y, x)`` (``retnet_roi_fg_bbox_locs``).
        normalizer: ``retnet_fg_num``.
        beta: ``RETINANET.BBOX_REG_BETA``.
        scale: multiplier (``RETINANET.BBOX_REG_WEIGHT``).
    """
    if locations.numel() == 0:
        return pred.sum() * 0.0
    loc = locations.long()
    channels = loc[:, 1:2] + torch.arange(4, device=pred.device)[None, :]
    picked = pred[loc[:, 0:1], channels, loc[:, 2:3], loc[:, 3:4]]
    x = picked - targets
    ax = x.abs()
    huber = torch.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)
    return huber.sum() / normalizer.reshape(()).to(pred.dtype) * scale


def _t(blob, like: Tensor) -> Tensor:
    """A numpy/tensor target blob on ``like``'s device."""
    return torch.as_tensor(blob, device=like.device)


def rpn_losses(cls_logits: dict, bbox_preds: dict, blobs: dict, cfg) -> dict:
    """RPN losses keyed like Detectron's (``loss_rpn_cls[_fpnN]``, ``loss_rpn_bbox[_fpnN]``).

    Args:
        cls_logits: level suffix (``""`` or ``"_fpn2"``...) -> ``[N, A, H, W]`` logits.
        bbox_preds: level suffix -> ``[N, 4A, H, W]`` deltas.
        blobs: the minibatch's wide RPN blobs (:func:`~detconvert.train.rpn_targets.add_rpn_blobs`).
        cfg: a TrainConfig.
    """
    out = {}
    for suffix, logits in cls_logits.items():
        labels = spatial_narrow_as(_t(blobs["rpn_labels_int32_wide" + suffix], logits), logits)
        if cfg.fpn_on:
            # FPN.add_fpn_rpn_losses: normalize=0, scale 1/(RPN_BATCH_SIZE_PER_IM * IMS_PER_BATCH).
            loss_cls = sigmoid_cross_entropy_loss(
                logits, labels, normalize=False, scale=1.0 / (cfg.rpn_batch_size_per_im * cfg.ims_per_batch)
            )
        else:
            loss_cls = sigmoid_cross_entropy_loss(logits, labels)
        pred = bbox_preds[suffix]
        narrow = lambda k: spatial_narrow_as(_t(blobs[k + suffix], pred), pred)  # noqa: E731
        loss_bbox = smooth_l1_loss(
            pred,
            narrow("rpn_bbox_targets_wide"),
            narrow("rpn_bbox_inside_weights_wide"),
            narrow("rpn_bbox_outside_weights_wide"),
            beta=1.0 / 9.0,
        )
        out["loss_rpn_cls" + suffix] = loss_cls
        out["loss_rpn_bbox" + suffix] = loss_bbox
    return out


def box_head_losses(cls_score: Tensor, bbox_pred: Tensor, blobs: dict) -> dict:
    """``fast_rcnn_heads.add_fast_rcnn_losses``: ``loss_cls`` (mean CE) and ``loss_bbox`` (smooth-L1, beta 1)."""
    return {
        "loss_cls": softmax_with_loss(cls_score, _t(blobs["labels_int32"], cls_score)),
        "loss_bbox": smooth_l1_loss(
            bbox_pred,
            _t(blobs["bbox_targets"], bbox_pred),
            _t(blobs["bbox_inside_weights"], bbox_pred),
            _t(blobs["bbox_outside_weights"], bbox_pred),
        ),
    }


def mask_loss(mask_logits: Tensor, blobs: dict, cfg) -> Tensor:
    """``mask_rcnn_heads.add_mask_rcnn_losses``: sigmoid CE over non-ignored pixels, ``WEIGHT_LOSS_MASK``."""
    targets = _t(blobs["masks_int32"], mask_logits).reshape(mask_logits.shape)
    return sigmoid_cross_entropy_loss(mask_logits, targets, scale=cfg.weight_loss_mask)


def keypoint_loss(kps_logits: Tensor, blobs: dict, cfg) -> Tensor:
    """``keypoint_rcnn_heads.add_keypoint_losses``: spatial softmax over the ``S x S`` heatmap.

    Args:
        kps_logits: ``[R, K, S, S]`` (reshaped to ``[R * K, S * S]`` as ``kps_score_reshaped``).
        blobs: needs ``keypoint_locations_int32``, ``keypoint_weights``, ``keypoint_loss_normalizer``.
        cfg: a TrainConfig.
    """
    r, k, s1, s2 = kps_logits.shape
    flat = kps_logits.reshape(r * k, s1 * s2)
    loss = softmax_with_loss(
        flat,
        _t(blobs["keypoint_locations_int32"], flat),
        _t(blobs["keypoint_weights"], flat),
        scale=cfg.keypoint_loss_weight,
    )
    if not cfg.normalize_by_visible_keypoints:
        loss = loss * _t(blobs["keypoint_loss_normalizer"], flat).to(flat.dtype)
    return loss


def retinanet_losses(cls_logits: dict, bbox_preds: dict, blobs: dict, cfg) -> dict:
    """``retinanet_heads.add_fpn_retinanet_losses``: per level ``fl_fpnN`` and ``retnet_loss_bbox_fpnN``."""
    out = {}
    for lvl, logits in cls_logits.items():
        fg_num = _t(blobs["retnet_fg_num"], logits)
        labels = _t(blobs[f"retnet_cls_labels_fpn{lvl}"], logits)
        if cfg.retinanet_softmax:
            fl = softmax_focal_loss(logits, labels, fg_num, num_classes=cfg.num_classes, alpha=cfg.retinanet_loss_alpha, gamma=cfg.retinanet_loss_gamma)
        else:
            fl = sigmoid_focal_loss(logits, labels, fg_num, num_classes=cfg.num_classes - 1, alpha=cfg.retinanet_loss_alpha, gamma=cfg.retinanet_loss_gamma)
        pred = bbox_preds[lvl]
        out[f"retnet_loss_bbox_fpn{lvl}"] = select_smooth_l1_loss(
            pred,
            _t(blobs[f"retnet_roi_bbox_targets_fpn{lvl}"], pred),
            _t(blobs[f"retnet_roi_fg_bbox_locs_fpn{lvl}"], pred),
            fg_num,
            beta=cfg.retinanet_bbox_reg_beta,
            scale=cfg.retinanet_bbox_reg_weight,
        )
        out[f"fl_fpn{lvl}"] = fl
    return out
