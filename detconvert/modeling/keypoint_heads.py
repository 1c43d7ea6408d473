"""Keypoint R-CNN head and outputs with Detectron's blob names (``keypoint_rcnn_heads.py``)."""
from __future__ import annotations

from typing import Tuple, Union

import torch
from torch import nn

from detconvert.modeling.layers import FixedBilinearUpsample, conv, conv_transpose
from detconvert.modeling.mapping import declare_blob
from detconvert.spec import KeypointHeadSpec


class KeypointHead(nn.Module):
    """``roi_pose_head_v1convX`` + ``add_keypoint_outputs``.

    ``conv_fcn1..N`` (``CONV_HEAD_KERNEL`` convs of ``CONV_HEAD_DIM``, ReLU; no ``_[pose]_`` prefix),
    optional ``kps_deconv`` (``USE_DECONV``, + ReLU), then the predictor: a ConvTranspose
    (k = ``DECONV_KERNEL``, stride 2, pad k/2 - 1) with ``USE_DECONV_OUTPUT`` or a 1x1 conv, named
    ``kps_score_lowres`` when ``UP_SCALE > 1`` and ``kps_score`` otherwise; with ``UP_SCALE > 1`` the
    fixed bilinear ConvTranspose ``kps_score`` (k = 2s, stride s) follows. The deconvolution is
    reproduced, not ``F.interpolate``: the two differ at the borders.

    Forward contract: ``keypoint_head(pooled [R, C_in, res, res])`` returns the heatmap logits
    ``kps_score [R, K, 56, 56]``; with ``return_lowres=True`` the pair ``(kps_score_lowres, kps_score)``
    (``lowres`` is ``None`` without up-scaling).
    """

    def __init__(self, spec: KeypointHeadSpec, in_channels: int):
        super().__init__()
        self.spec = spec
        k = spec.conv_head_kernel
        dim = in_channels
        convs = []
        for i in range(1, spec.num_stacked_convs + 1):
            convs.append(conv(dim, spec.conv_head_dim, k, f"conv_fcn{i}", padding=k // 2))
            dim = spec.conv_head_dim
        self.convs = nn.ModuleList(convs)
        deconv_pad = spec.deconv_kernel // 2 - 1
        self.deconv = None
        if spec.use_deconv:
            self.deconv = conv_transpose(dim, spec.deconv_dim, spec.deconv_kernel, "kps_deconv", stride=2, padding=deconv_pad)
            dim = spec.deconv_dim
        upsample = spec.up_scale > 1
        name = "kps_score_lowres" if upsample else "kps_score"
        if spec.use_deconv_output:
            self.predictor = conv_transpose(
                dim, spec.num_keypoints, spec.deconv_kernel, name, stride=2, padding=deconv_pad
            )
        else:
            self.predictor = conv(dim, spec.num_keypoints, 1, name)
        self.upsample = (
            declare_blob(FixedBilinearUpsample(spec.num_keypoints, spec.up_scale), "kps_score") if upsample else None
        )

    def forward(
        self, x: torch.Tensor, return_lowres: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        for layer in self.convs:
            x = torch.relu_(layer(x))
        if self.deconv is not None:
            x = torch.relu_(self.deconv(x))
        lowres = self.predictor(x)
        if self.upsample is None:
            return (None, lowres) if return_lowres else lowres
        heatmaps = self.upsample(lowres)
        return (lowres, heatmaps) if return_lowres else heatmaps
