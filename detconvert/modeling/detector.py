"""``build_model(spec)``: a Detectron network composed explicitly from an :class:`~detconvert.spec.ArchSpec`.

No registries: each submodule is chosen by the spec's fields (``detectron/modeling/model_builder.py``
``build_generic_detection_model`` is the plan). RoI pooling and proposal generation are not part
of the model (:mod:`detconvert.ops`); the inference pipeline feeds the heads pooled features.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

from detconvert.modeling.box_heads import FastRCNNOutputs, ResNetConv5BoxHead, build_box_head
from detconvert.modeling.fpn import FPN
from detconvert.modeling.keypoint_heads import KeypointHead
from detconvert.modeling.mapping import blob_table
from detconvert.modeling.mask_heads import MaskHead
from detconvert.modeling.resnet import ResNetBody
from detconvert.modeling.retinanet import RetinaNetHead
from detconvert.modeling.rpn import RPNHead
from detconvert.spec import ArchSpec


class DetectronModel(nn.Module):
    """The parameterised parts of one Detectron network; absent parts are ``None``.

    Submodules and their forward contracts (all tensors float32, NCHW):

    * ``body`` (:class:`ResNetBody`): image blob ``[N, 3, H, W]`` (BGR minus PIXEL_MEANS) ->
      ``{"res2": C2, ..., "res{last}": C_last}``.
    * ``fpn`` (:class:`FPN` or None): body dict -> ``[P_min, ..., P_max]``.
    * ``rpn_head`` (:class:`RPNHead` or None): list of maps (``[C4]`` or the FPN levels
      ``rpn.min_level..rpn.max_level``) -> ``(logits, deltas)`` lists.
    * ``box_head``: pooled RoI features ``[R, C, res, res]`` -> ``[R, D]``; ``box_predictor``:
      ``[R, D]`` -> ``(cls_score [R, C], bbox_pred [R, 4C or 8])``.
    * ``mask_head``: pooled ``[R, C, res, res]`` -> ``mask_fcn_logits [R, C or 1, M, M]``.
    * ``keypoint_head``: pooled ``[R, C, res, res]`` -> ``kps_score [R, K, 56, 56]``.
    * ``retinanet_head``: ``[P3..P7]`` -> ``(cls_logits, bbox_deltas)`` lists.

    :meth:`features` runs body (+ FPN) and names the maps the RoI heads and RPN read.
    """

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        self.body = ResNetBody(spec.body)
        self.fpn: Optional[FPN] = FPN(spec.fpn, spec.body) if spec.fpn is not None else None
        feat_dim = spec.fpn.dim if spec.fpn is not None else spec.body.out_dim(spec.body.last_stage)
        self.rpn_head: Optional[RPNHead] = RPNHead(spec.rpn, feat_dim) if spec.rpn is not None else None
        self.box_head: Optional[nn.Module] = None
        self.box_predictor: Optional[FastRCNNOutputs] = None
        if spec.box_head is not None:
            self.box_head = build_box_head(spec.box_head, feat_dim, spec.body)
            self.box_predictor = FastRCNNOutputs(
                self.box_head.out_dim, spec.num_classes, spec.box_head.cls_agnostic_bbox_reg
            )
        self.mask_head: Optional[MaskHead] = None
        if spec.mask_head is not None:
            shared = self.box_head.res5 if isinstance(self.box_head, ResNetConv5BoxHead) else None
            self.mask_head = MaskHead(spec.mask_head, feat_dim, spec.num_classes, spec.body, shared_res5=shared)
        self.keypoint_head: Optional[KeypointHead] = (
            KeypointHead(spec.keypoint_head, feat_dim) if spec.keypoint_head is not None else None
        )
        self.retinanet_head: Optional[RetinaNetHead] = None
        if spec.retinanet is not None:
            self.retinanet_head = RetinaNetHead(spec.retinanet, spec.num_classes, feat_dim, spec.fpn.min_level)
        self.eval()

    def blob_table(self) -> Dict[str, str]:
        """PyTorch tensor name -> Detectron blob, checked one-to-one and complete."""
        return blob_table(self)

    def features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Backbone (+ FPN) maps, by Detectron blob name.

        Returns the body outputs under ``res{s}`` and, with FPN, the pyramid under Detectron's names
        (``fpn_res2_2_sum`` .. ``fpn_res5_2_sum``, ``fpn_res5_2_sum_subsampled_2x`` or ``fpn_6``,
        ``fpn_7``), in that (fine to coarse) order; :meth:`pyramid` lists just the levels.
        """
        out: Dict[str, torch.Tensor] = dict(self.body(images))
        if self.fpn is not None:
            for name, level in zip(self.fpn.feature_names, self.fpn(out)):
                out[name] = level
        return out

    def pyramid(self, feats: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """The maps the RPN / RetinaNet read: FPN levels min..max, or ``[C4]`` (``res4``) for C4."""
        if self.fpn is None:
            return [feats[f"res{self.spec.body.last_stage}"]]
        return [feats[name] for name in self.fpn.feature_names]

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Features only (RoI stages need proposals and pooling: see :mod:`detconvert.ops`)."""
        return self.features(images)


def build_model(spec: ArchSpec) -> DetectronModel:
    """Build the network described by ``spec`` (in eval mode, default-initialised; load weights next).

    Raises:
        ConfigError: a spec combination Detectron itself cannot build (e.g. v0upshare without the
            conv5 box head).
    """
    return DetectronModel(spec)
