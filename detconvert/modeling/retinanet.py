"""RetinaNet head with Detectron's blob names (``retinanet_heads.add_fpn_retinanet_outputs``)."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from detconvert.modeling.layers import conv
from detconvert.spec import RetinaNetSpec


class RetinaNetHead(nn.Module):
    """Classification and box towers (``NUM_CONVS`` 3x3 conv + ReLU each) and 3x3 predictors.

    Only the lowest level's blobs exist (``retnet_cls_conv_n{i}_fpn3``, ``retnet_cls_pred_fpn3``,
    ``retnet_bbox_conv_n{i}_fpn3``, ``retnet_bbox_pred_fpn3``): every level reuses them (``ConvShared``).
    ``SHARE_CLS_BBOX_TOWER`` drops the box tower (the box predictor reads the class tower).

    Class channels: sigmoid ``A * (C - 1)``, anchor-major (``a * (C-1) + c``, no background);
    ``SOFTMAX`` ``A * C`` with background.  Box channels ``4A`` (``4A * (C - 1)`` with
    ``CLASS_SPECIFIC_BBOX``).

    Forward contract: ``retinanet_head(features: List[Tensor])`` (P3..P7) returns ``(cls_logits,
    bbox_deltas)``, lists with one tensor per level; :meth:`probabilities` turns logits into
    Detectron's ``retnet_cls_prob_fpnN``.
    """

    def __init__(self, spec: RetinaNetSpec, num_classes: int, in_channels: int, min_level: int):
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        a = spec.num_anchors
        lvl = f"fpn{min_level}"
        self.cls_pred_dim = num_classes if spec.softmax else num_classes - 1
        bbox_dim = 4 * (num_classes - 1) if spec.class_specific_bbox else 4
        self.cls_tower = nn.ModuleList(
            conv(in_channels, in_channels, 3, f"retnet_cls_conv_n{i}_{lvl}", padding=1) for i in range(spec.num_convs)
        )
        self.bbox_tower = None
        if not spec.share_cls_bbox_tower:
            self.bbox_tower = nn.ModuleList(
                conv(in_channels, in_channels, 3, f"retnet_bbox_conv_n{i}_{lvl}", padding=1)
                for i in range(spec.num_convs)
            )
        self.cls_pred = conv(in_channels, self.cls_pred_dim * a, 3, f"retnet_cls_pred_{lvl}", padding=1)
        self.bbox_pred = conv(in_channels, bbox_dim * a, 3, f"retnet_bbox_pred_{lvl}", padding=1)

    @staticmethod
    def _tower(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            x = torch.relu_(layer(x))
        return x

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        cls_out, bbox_out = [], []
        for x in features:
            cls_feat = self._tower(self.cls_tower, x)
            box_feat = cls_feat if self.bbox_tower is None else self._tower(self.bbox_tower, x)
            cls_out.append(self.cls_pred(cls_feat))
            bbox_out.append(self.bbox_pred(box_feat))
        return cls_out, bbox_out

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """``retnet_cls_prob``: sigmoid, or with ``SOFTMAX`` a softmax over each anchor's C classes.

        The softmax is Caffe2's ``GroupSpatialSoftmax(num_classes=C)`` (``add_fpn_retinanet_outputs``):
        channels ``a * C .. a * C + C - 1`` of each position form one distribution.

        Output has the logits' layout ``[N, A * K, H, W]``.
        """
        if not self.spec.softmax:
            return torch.sigmoid(logits)
        n, _, h, w = logits.shape
        grouped = logits.reshape(n, self.spec.num_anchors, self.cls_pred_dim, h, w)
        return torch.softmax(grouped, dim=2).reshape(n, -1, h, w)
