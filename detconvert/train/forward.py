"""The training-mode forward pass of an end-to-end (FPN or C4) R-CNN, returning Detectron's losses.

Order as in Detectron's training net (``model_builder.build_generic_detection_model`` with
``train=True``):

1. body (+ FPN) on the image blob;
2. RPN head; RPN targets (``roi_data/rpn.add_rpn_blobs``) and losses (``FPN.add_fpn_rpn_losses`` /
   ``rpn_heads.add_single_scale_rpn_losses``);
3. proposals (``GenerateProposals`` per level with ``TRAIN.RPN_*`` settings, FPN collect of the best
   ``TRAIN.RPN_POST_NMS_TOP_N``) computed under ``torch.no_grad`` from detached outputs: Detectron's
   proposal ops have no gradient, and a proposal tensor that kept a graph would hold every
   iteration's RPN graph alive (lessons L5/L6);
4. RoI sampling and targets (``GenerateProposalLabels`` / ``CollectAndDistributeFpnRpnProposals``),
   RoIAlign on the (multi-level) features, box head + ``fast_rcnn_heads.add_fast_rcnn_losses``;
5. mask head on ``mask_rois`` + ``mask_rcnn_heads.add_mask_rcnn_losses``; keypoint head on
   ``keypoint_rois`` + ``keypoint_rcnn_heads.add_keypoint_losses``.

Everything random is drawn from the given :class:`~detconvert.train.sampling.RandomSource`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from detconvert.inference.precision import PrecisionPolicy, resolve_precision
from detconvert.modeling.detector import DetectronModel
from detconvert.modeling.layers import FixedBilinearUpsample
from detconvert.ops import fpn_rpn_cell_anchors, generate_anchors, generate_proposals, map_rois_to_fpn_levels
from detconvert.ops import multilevel_roi_align, roi_align
from detconvert.spec import ArchSpec, RoIXformSpec
from detconvert.train.config import TrainConfig
from detconvert.train.losses import box_head_losses, keypoint_loss, mask_loss, retinanet_losses, rpn_losses
from detconvert.train.retinanet_targets import add_retinanet_blobs
from detconvert.train.roi_sampling import collect_training_proposals, proposal_targets
from detconvert.train.rpn_targets import add_rpn_blobs
from detconvert.train.sampling import RandomSource

__all__ = ["TrainProposalSettings", "TrainBatch", "training_losses", "retinanet_training_losses", "init_for_training"]


@dataclass(frozen=True)
class TrainProposalSettings:
    """``TRAIN.RPN_*`` proposal settings (Detectron's defaults, ``core/config.py``)."""

    pre_nms_top_n: int = 12000  # TRAIN.RPN_PRE_NMS_TOP_N (per level with FPN)
    post_nms_top_n: int = 2000  # TRAIN.RPN_POST_NMS_TOP_N (per level, then over the batch with FPN)
    nms_thresh: float = 0.7  # TRAIN.RPN_NMS_THRESH
    min_size: float = 0.0  # TRAIN.RPN_MIN_SIZE

    @classmethod
    def from_detectron(cls, cfg: Mapping[str, Any]) -> "TrainProposalSettings":
        """Read ``TRAIN.RPN_PRE_NMS_TOP_N``, ``..._POST_NMS_TOP_N``, ``..._NMS_THRESH``, ``..._MIN_SIZE``."""
        t = cfg.get("TRAIN", {})
        return cls(
            pre_nms_top_n=int(t.get("RPN_PRE_NMS_TOP_N", cls.pre_nms_top_n)),
            post_nms_top_n=int(t.get("RPN_POST_NMS_TOP_N", cls.post_nms_top_n)),
            nms_thresh=float(t.get("RPN_NMS_THRESH", cls.nms_thresh)),
            min_size=float(t.get("RPN_MIN_SIZE", cls.min_size)),
        )


@dataclass
class TrainBatch:
    """One minibatch as the data loader delivers it.

    Attributes:
        images: float32 ``[N, 3, H, W]`` blob (BGR minus PIXEL_MEANS, zero-padded).
        im_scales: scale factor of each image.
        roidb: the roidb entries (already flipped where ``flipped``), image scale.
    """

    images: Tensor
    im_scales: List[float]
    roidb: List[Dict[str, Any]]


def retinanet_class_bias_init(head) -> Tensor:
    """``retinanet_heads.get_retinanet_bias_init``: every anchor starts as background with probability
    ``1 - PRIOR_PROB``. Sigmoid: ``-log((1 - p) / p)`` for every class; softmax (per anchor ``K`` channels,
    background first): ``log((K - 1) (1 - p) / p)`` on the background channel, 0 on the others."""
    prior = head.spec.prior_prob
    num_anchors = head.spec.num_anchors
    if not head.spec.softmax:
        return torch.full((num_anchors * head.cls_pred_dim,), -float(np.log((1.0 - prior) / prior)))
    bias = torch.zeros(num_anchors, head.cls_pred_dim)
    bias[:, 0] = float(np.log((head.cls_pred_dim - 1) * (1.0 - prior) / prior))
    return bias.reshape(-1)


def init_for_training(model: DetectronModel, seed: int = 0) -> None:
    """Detectron's initialisers for the layers a detector trains from scratch.

    ``rpn_heads`` / ``FPN.add_fpn_rpn_outputs``: ``conv_rpn``, ``rpn_cls_logits``, ``rpn_bbox_pred``
    GaussianFill(std 0.01); ``fast_rcnn_heads.add_fast_rcnn_outputs``: ``cls_score`` std 0.01,
    ``bbox_pred`` std 0.001; ``mask_rcnn_heads.add_mask_rcnn_outputs``: ``mask_fcn_logits`` std 0.001;
    ``FPN`` and mask convs: XavierFill / MSRAFill (here Kaiming normal, fan-out), ``fc6``/``fc7``
    XavierFill. Biases 0. Body convs get MSRAFill (Kaiming normal), GroupNorm affine (1, 0).
    ``retinanet_heads.add_fpn_retinanet_outputs``: tower and prediction convs GaussianFill(std 0.01),
    the class logits' bias from :func:`retinanet_class_bias_init` so that every anchor starts as background
    and the focal loss does not explode on the first iterations. The fixed bilinear up-samplers
    (``kps_score``, ``mask_fcn_logits_up``) keep their kernel.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal_(t: Tensor, std: float) -> None:
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=gen) * std)

    def kaiming_(t: Tensor) -> None:
        fan_out = t.shape[0] * (t[0][0].numel() if t.dim() > 2 else 1)
        normal_(t, (2.0 / fan_out) ** 0.5)

    def xavier_(t: Tensor) -> None:
        fan_in = t[0].numel()
        bound = (3.0 / fan_in) ** 0.5
        with torch.no_grad():
            t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) * bound)

    small = {"rpn_head": 0.01, "box_predictor.cls_score": 0.01, "box_predictor.bbox_pred": 0.001,
             "mask_head.mask_fcn_logits": 0.001, "retinanet_head": 0.01}
    for name, module in model.named_modules():
        if isinstance(module, nn.GroupNorm):
            with torch.no_grad():
                module.weight.fill_(1.0)
                module.bias.zero_()
            continue
        if not isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            continue
        if isinstance(module, FixedBilinearUpsample):
            # Detectron's BilinearInterpolation: a GivenTensorFill kernel in do_not_update_params; ours is
            # frozen too, so noise written here would stay for the whole run
            continue
        std = next((v for k, v in small.items() if name.startswith(k)), None)
        if std is not None:
            normal_(module.weight, std)
        elif isinstance(module, nn.Linear):
            xavier_(module.weight)
        else:
            kaiming_(module.weight)
        if module.bias is not None:
            with torch.no_grad():
                module.bias.zero_()
    head = model.retinanet_head
    if head is not None:
        with torch.no_grad():
            head.cls_pred.bias.copy_(retinanet_class_bias_init(head))


def _rpn_level_maps(model: DetectronModel, spec: ArchSpec, feats: Dict[str, Tensor]) -> Tuple[List[Tensor], List[str], List[int]]:
    """The maps the RPN reads, the loss suffix of each (``_fpn<l>`` or ``""``) and the FPN level."""
    pyramid = model.pyramid(feats)
    rpn = spec.rpn
    if rpn.kind == "fpn":
        first = rpn.min_level - spec.fpn.min_level
        levels = list(range(rpn.min_level, rpn.max_level + 1))
        return pyramid[first:first + len(levels)], [f"_fpn{lvl}" for lvl in levels], levels
    return [pyramid[-1]], [""], [0]


@torch.no_grad()
def _training_proposals(
    spec: ArchSpec, logits: Sequence[Tensor], deltas: Sequence[Tensor], levels: Sequence[int], im_info: Tensor,
    settings: TrainProposalSettings, bbox_xform_clip: float,
) -> np.ndarray:
    """``GenerateProposals`` with ``TRAIN.RPN_*`` (+ FPN collect), on detached outputs: ``[R, 5]`` numpy."""
    rpn = spec.rpn
    common = dict(pre_nms_top_n=settings.pre_nms_top_n, post_nms_top_n=settings.post_nms_top_n,
                  nms_thresh=settings.nms_thresh, min_size=settings.min_size, bbox_xform_clip=bbox_xform_clip)
    rois_l, probs_l = [], []
    for lvl, lg, dl in zip(levels, logits, deltas):
        probs = torch.sigmoid(lg.detach())
        if rpn.kind == "fpn":
            cell = fpn_rpn_cell_anchors(lvl, min_level=rpn.min_level, start_size=rpn.anchor_sizes[0],
                                        aspect_ratios=rpn.aspect_ratios)
            stride = 2.0 ** lvl
        else:
            cell = generate_anchors(stride=rpn.anchor_stride, sizes=rpn.anchor_sizes, aspect_ratios=rpn.aspect_ratios)
            stride = float(rpn.anchor_stride)
        r, p = generate_proposals(probs, dl.detach(), im_info, cell, stride, **common)
        rois_l.append(r.cpu().numpy())
        probs_l.append(p.cpu().numpy())
    if rpn.kind == "fpn":
        # CollectAndDistributeFpnRpnProposalsOp (train): best RPN_POST_NMS_TOP_N over the whole batch.
        return collect_training_proposals(rois_l, probs_l, settings.post_nms_top_n)
    return rois_l[0]


def _pool(model: DetectronModel, spec: ArchSpec, feats: Dict[str, Tensor], rois: Tensor, xform: RoIXformSpec) -> Tensor:
    """``RoIFeatureTransform``: multi-level RoIAlign (FPN) or RoIAlign on the last body stage (C4)."""
    if spec.fpn is not None and spec.fpn.multilevel_rois:
        fpn = spec.fpn
        levels = map_rois_to_fpn_levels(rois[:, 1:5], fpn.roi_min_level, fpn.roi_max_level,
                                        canonical_scale=fpn.roi_canonical_scale, canonical_level=fpn.roi_canonical_level)
        pyramid = model.pyramid(feats)
        first = fpn.roi_min_level - fpn.min_level
        maps = pyramid[first:first + fpn.roi_max_level - fpn.roi_min_level + 1]
        scales = [2.0 ** -lvl for lvl in range(fpn.roi_min_level, fpn.roi_max_level + 1)]
        return multilevel_roi_align(maps, rois, levels, fpn.roi_min_level, xform.resolution, scales, xform.sampling_ratio)
    stage = spec.body.last_stage
    return roi_align(feats[f"res{stage}"], rois, xform.resolution, 2.0 ** -stage, xform.sampling_ratio)


def training_losses(
    model: DetectronModel,
    batch: TrainBatch,
    cfg: TrainConfig,
    rng: RandomSource,
    settings: TrainProposalSettings = TrainProposalSettings(),
    info: Optional[Dict[str, Any]] = None,
    precision: Optional[PrecisionPolicy] = None,
) -> Dict[str, Tensor]:
    """Detectron's training losses of one minibatch (e2e Faster / Mask / Keypoint R-CNN).

    Args:
        model: the network in train mode.
        batch: images, scales and roidb entries.
        cfg: the training config (``TrainConfig.from_detectron`` of the same cfg as the model's spec).
        rng: random source of the RPN and RoI sampling.
        settings: ``TRAIN.RPN_*`` proposal settings.
        info: if given, receives ``rois`` (the RoI tensor fed to RoIAlign), ``num_fg`` and ``num_rois``.
        precision: exact (default) or fast: in fast the network modules run under autocast and return
            float32, so the targets, proposals, RoIAlign and every loss are computed in float32.

    Returns:
        ``{loss name: scalar}`` with Detectron's names (``loss_rpn_cls_fpn2`` ..., ``loss_cls``,
        ``loss_bbox``, ``loss_mask``, ``loss_kps``); the total is their sum.
    """
    spec: ArchSpec = model.spec
    policy = precision if precision is not None else resolve_precision("exact", batch.images.device)
    if spec.meta_arch == "retinanet":
        return retinanet_training_losses(model, batch, cfg, policy)
    if spec.rpn is None or spec.box_head is None:
        raise ValueError("training_losses trains end-to-end R-CNN models (RPN + box head)")
    device = batch.images.device
    feats = policy.run(model.features, policy.prepare_input(batch.images))
    maps, suffixes, levels = _rpn_level_maps(model, spec, feats)
    logits, deltas = policy.run(model.rpn_head, maps)

    rpn_blobs = add_rpn_blobs(batch.roidb, batch.im_scales, cfg, rng)
    losses = rpn_losses(dict(zip(suffixes, logits)), dict(zip(suffixes, deltas)), rpn_blobs, cfg)

    im_info = rpn_blobs["im_info"]
    proposals = _training_proposals(spec, logits, deltas, levels, torch.from_numpy(im_info).to(device), settings,
                                    spec.test.bbox_xform_clip)
    blobs = proposal_targets(proposals, batch.roidb, im_info, cfg, rng)

    # The RoIs come from NumPy: they carry no graph by construction.
    rois = torch.from_numpy(blobs["rois"]).to(device)
    pooled = _pool(model, spec, feats, rois, spec.box_head.roi_xform)
    cls_score, bbox_pred = policy.run(lambda x: model.box_predictor(model.box_head(x)), policy.prepare_input(pooled))
    losses.update(box_head_losses(cls_score, bbox_pred, blobs))
    if info is not None:
        info.update(rois=rois, num_rois=int(rois.shape[0]), num_fg=int((blobs["labels_int32"] > 0).sum()))

    if spec.mask_head is not None and cfg.mask_on:
        mask_rois = torch.from_numpy(blobs["mask_rois"]).to(device)
        pooled = _pool(model, spec, feats, mask_rois, spec.mask_head.roi_xform)
        mask_logits = policy.run(model.mask_head, policy.prepare_input(pooled))
        losses["loss_mask"] = mask_loss(mask_logits, blobs, cfg)
        if info is not None:
            info["mask_rois"] = mask_rois
    if spec.keypoint_head is not None and cfg.keypoints_on:
        kp_rois = torch.from_numpy(blobs["keypoint_rois"]).to(device)
        pooled = _pool(model, spec, feats, kp_rois, spec.keypoint_head.roi_xform)
        kps = policy.run(model.keypoint_head, policy.prepare_input(pooled))
        loss = keypoint_loss(kps, blobs, cfg)
        # A minibatch with too few visible keypoints is skipped by Detectron's loader
        # (keypoint_rcnn.finalize_keypoint_minibatch): its keypoint loss contributes nothing.
        valid = bool(np.asarray(blobs.get("valid", True)))
        losses["loss_kps"] = loss if valid else loss * 0.0
    return losses


def retinanet_training_losses(model: DetectronModel, batch: TrainBatch, cfg: TrainConfig,
                              precision: Optional[PrecisionPolicy] = None) -> Dict[str, Tensor]:
    """RetinaNet's losses of one minibatch (``retinanet_heads.add_fpn_retinanet_losses``).

    The head runs on P3..P7; the anchor targets (``roi_data/retinanet.add_retinanet_blobs``) are laid
    out for the padded blob's size. Returns ``fl_fpn<l>`` and ``retnet_loss_bbox_fpn<l>`` per level.
    """
    spec: ArchSpec = model.spec
    policy = precision if precision is not None else resolve_precision("exact", batch.images.device)
    feats = policy.run(model.features, policy.prepare_input(batch.images))
    cls_logits, bbox_preds = policy.run(model.retinanet_head, model.pyramid(feats))
    levels = range(spec.fpn.min_level, spec.fpn.max_level + 1)
    height, width = batch.images.shape[-2:]
    blobs = add_retinanet_blobs(batch.roidb, batch.im_scales, int(width), int(height), cfg)
    return retinanet_losses(dict(zip(levels, cls_logits)), dict(zip(levels, bbox_preds)), blobs, cfg)
