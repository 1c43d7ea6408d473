"""RPN heads with Detectron's blob names (``rpn_heads.py``, ``FPN.add_fpn_rpn_outputs``)."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from detconvert.modeling.layers import conv
from detconvert.spec import RPNSpec


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness logits (A channels) and 1x1 deltas (4A, ``4a + k``).

    * ``single_scale`` (C4, ``add_single_scale_rpn_outputs``): blobs ``conv_rpn``, ``rpn_cls_logits``,
      ``rpn_bbox_pred``; A = len(sizes) * len(ratios) (15 in the C4 configs, ratio-major).
    * ``fpn`` (``add_fpn_rpn_outputs``): one set of blobs suffixed ``_fpn{min_level}``
      (``conv_rpn_fpn2``, ...) shared by every level (Detectron's ``ConvShared``).

    Detectron's RPN is always sigmoid; probabilities are ``sigmoid(logits)`` (computed by the caller).

    Forward contract: ``rpn_head(features: List[Tensor])`` (one map for C4, P_min..P_max for FPN)
    returns ``(logits, deltas)``, two lists with one ``[N, A, H, W]`` / ``[N, 4A, H, W]`` tensor per
    input map.
    """

    def __init__(self, spec: RPNSpec, in_channels: int):
        super().__init__()
        self.spec = spec
        suffix = f"_fpn{spec.min_level}" if spec.kind == "fpn" else ""
        a = spec.num_anchors
        self.conv = conv(in_channels, spec.conv_dim, 3, f"conv_rpn{suffix}", padding=1)
        self.cls_logits = conv(spec.conv_dim, a, 1, f"rpn_cls_logits{suffix}")
        self.bbox_pred = conv(spec.conv_dim, 4 * a, 1, f"rpn_bbox_pred{suffix}")

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = torch.relu_(self.conv(x))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas
