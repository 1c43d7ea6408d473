"""Fast R-CNN box heads and outputs with Detectron's blob names (``fast_rcnn_heads.py``, ``ResNet.py``)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detconvert.errors import ConfigError
from detconvert.modeling.layers import ConvNorm, conv, linear
from detconvert.modeling.resnet import ResStage, make_stage
from detconvert.spec import BoxHeadSpec, ResNetSpec

C4_HEAD_RES5_BLOCKS = 3  # add_ResNet_roi_conv5_head builds res5 with 3 blocks whatever the depth


class MLPBoxHead(nn.Module):
    """``roi_2mlp_head``: ``fc6`` and ``fc7`` (``MLP_HEAD_DIM``), each followed by ReLU.

    ``fc6`` reads the pooled ``[R, C, res, res]`` features flattened in C*H*W order (Caffe2 FC).
    """

    def __init__(self, spec: BoxHeadSpec, in_channels: int):
        super().__init__()
        res = spec.roi_xform.resolution
        self.fc6 = linear(in_channels * res * res, spec.mlp_dim, "fc6")
        self.fc7 = linear(spec.mlp_dim, spec.mlp_dim, "fc7")
        self.out_dim = spec.mlp_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu_(self.fc6(x.flatten(1)))
        return torch.relu_(self.fc7(x))


class ConvFCBoxHead(nn.Module):
    """``roi_Xconv1fc_head`` / ``roi_Xconv1fc_gn_head``: ``NUM_STACKED_CONVS`` 3x3 convs + ReLU, then ``fc6`` + ReLU.

    Convs are ``head_conv{i}`` (with bias) or, GN variant, ``head_conv{i}`` without bias plus
    ``head_conv{i}_gn``.
    """

    def __init__(self, spec: BoxHeadSpec, in_channels: int, body: ResNetSpec, use_gn: bool):
        super().__init__()
        convs = []
        dim_in = in_channels
        for i in range(1, spec.num_convs + 1):
            if use_gn:
                convs.append(ConvNorm(dim_in, spec.conv_dim, 3, name=f"head_conv{i}", norm=_gn(body), padding=1))
            else:
                convs.append(conv(dim_in, spec.conv_dim, 3, f"head_conv{i}", padding=1))
            dim_in = spec.conv_dim
        self.convs = nn.ModuleList(convs)
        self.use_gn = use_gn
        res = spec.roi_xform.resolution
        self.fc6 = linear(dim_in * res * res, spec.mlp_dim, "fc6")
        self.out_dim = spec.mlp_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.convs:
            x = layer(x) if self.use_gn else torch.relu_(layer(x))  # ConvNorm applies its own ReLU
        return torch.relu_(self.fc6(x.flatten(1)))


class ResNetConv5BoxHead(nn.Module):
    """``ResNet_roi_conv5_head`` (C4): the whole ``res5`` stage on the pooled RoIs, then AveragePool 7.

    The first block strides by ``ROI_XFORM_RESOLUTION // 7`` (2 for the 14x14 pooling); blobs
    ``res5_{0,1,2}_*`` as in the body. ``res5`` is exposed so that the ``v0upshare`` mask head can
    re-run the same module (Detectron's ``_[mask]_res5_*`` -> ``res5_*`` fallback at test time).
    """

    def __init__(self, spec: BoxHeadSpec, in_channels: int, body: ResNetSpec):
        super().__init__()
        from dataclasses import replace

        stride_init = spec.roi_xform.resolution // 7
        body3 = replace(body, block_counts=body.block_counts[:3] + (C4_HEAD_RES5_BLOCKS,))
        self.res5: ResStage = make_stage(body3, 5, dim_in=in_channels, stride_init=stride_init)
        self.out_dim = self.res5.dim_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res5(x)
        return F.avg_pool2d(x, kernel_size=7, stride=1).flatten(1)  # res5_pool: 7x7 -> 1x1


class FastRCNNOutputs(nn.Module):
    """``add_fast_rcnn_outputs``: ``cls_score`` (C logits, background = 0) and ``bbox_pred``.

    ``bbox_pred`` is ``4C`` wide, class ``j`` at ``4j:4j+4``, or 8 wide (background + one agnostic
    foreground box) with ``MODEL.CLS_AGNOSTIC_BBOX_REG``.

    Forward contract: ``box_predictor(box_features [R, D])`` returns ``(cls_score [R, C],
    bbox_pred [R, 4C or 8])``; ``cls_prob`` is ``softmax(cls_score, dim=1)`` (Detectron's test net).
    """

    def __init__(self, in_features: int, num_classes: int, cls_agnostic_bbox_reg: bool):
        super().__init__()
        self.cls_score = linear(in_features, num_classes, "cls_score")
        self.bbox_pred = linear(in_features, 8 if cls_agnostic_bbox_reg else 4 * num_classes, "bbox_pred")

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


def build_box_head(spec: BoxHeadSpec, in_channels: int, body: ResNetSpec) -> nn.Module:
    """The box head named by ``FAST_RCNN.ROI_BOX_HEAD`` (explicit dispatch, no registry)."""
    if spec.kind == "roi_2mlp_head":
        return MLPBoxHead(spec, in_channels)
    if spec.kind == "roi_Xconv1fc_head":
        return ConvFCBoxHead(spec, in_channels, body, use_gn=False)
    if spec.kind == "roi_Xconv1fc_gn_head":
        return ConvFCBoxHead(spec, in_channels, body, use_gn=True)
    if spec.kind == "ResNet_roi_conv5_head":
        return ResNetConv5BoxHead(spec, in_channels, body)
    raise ConfigError(f"FAST_RCNN.ROI_BOX_HEAD: unknown box head {spec.kind!r}")


def _gn(body: ResNetSpec):
    """GroupNorm settings (``GROUP_NORM.*``) whatever the body's own norm is."""
    from dataclasses import replace

    return replace(body.norm, kind="gn")
