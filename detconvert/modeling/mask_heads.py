"""Mask R-CNN heads and outputs with Detectron's blob names (``mask_rcnn_heads.py``)."""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from detconvert.errors import ConfigError
from detconvert.modeling.layers import ConvNorm, FixedBilinearUpsample, conv, conv_transpose, linear
from detconvert.modeling.mapping import declare_blob
from detconvert.modeling.resnet import ResStage
from detconvert.spec import MaskHeadSpec, ResNetSpec

#: Convs before the up-sampling deconvolution, per head (``mask_rcnn_fcn_head_v1up4convs`` -> 4,
#: ``..._v1up`` -> 2); the ``Xconvs`` heads take ``MaskHeadSpec.num_convs``.
FIXED_NUM_CONVS = {
    "mask_rcnn_fcn_head_v1up4convs": 4,
    "mask_rcnn_fcn_head_v1up4convs_gn": 4,
    "mask_rcnn_fcn_head_v1up": 2,
}
V0UP_RES5_INNER_DIM = 512  # add_ResNet_roi_conv5_head_for_masks hard-codes res5's inner dim
V0UP_RES5_BLOCKS = 3


class MaskHead(nn.Module):
    """Mask head + ``add_mask_rcnn_outputs``; forward gives ``mask_fcn_logits`` (or ``_up``).

    Heads (``MRCNN.ROI_MASK_HEAD``):

    * ``v1up4convs`` / ``v1up`` / ``v1upXconvs``: ``_[mask]_fcn{i}`` 3x3 convs + ReLU. Detectron pads
      them by ``MRCNN.DILATION`` but passes no dilation to the conv; reproduced as is.
    * ``..._gn``: ``_mask_fcn{i}`` (no brackets, no bias) + ``_mask_fcn{i}_gn``.
    * ``v0upshare``: re-runs the box head's ``res5`` module on the mask RoIs (Detectron names those
      parameters ``_[mask]_res5_*`` at test time and reads them from ``res5_*`` by the ``]_`` rule).
      The shared stage is held outside this module's parameter tree, so every tensor is owned once.
    * ``v0up``: its own ``_[mask]_res5`` stage (inner dim 512), in the file under those names.

    All then ``conv5_mask`` (ConvTranspose 2x2/2) + ReLU, and ``mask_fcn_logits`` (1x1 conv, C
    channels with background when class-specific, else 1; an FC with ``USE_FC_OUTPUT``), then the
    fixed bilinear ``mask_fcn_logits_up`` when ``UPSAMPLE_RATIO > 1``.

    Forward contract: ``mask_head(pooled [R, C_in, res, res])`` returns logits
    ``[R, num_masks, M, M]``; ``mask_fcn_probs = sigmoid(logits)``.
    """

    def __init__(
        self,
        spec: MaskHeadSpec,
        in_channels: int,
        num_classes: int,
        body: ResNetSpec,
        shared_res5: Optional[ResStage] = None,
    ):
        super().__init__()
        self.spec = spec
        kind = spec.kind
        self.convs = nn.ModuleList()
        self.res5: Optional[ResStage] = None
        self._shared_res5 = ()  # tuple, so nn.Module does not register the box head's stage twice
        self.convs_have_relu = False
        dim = in_channels
        stride_init = spec.roi_xform.resolution // 7
        if kind == "mask_rcnn_fcn_head_v0upshare":
            if shared_res5 is None:
                raise ConfigError("MRCNN.ROI_MASK_HEAD: v0upshare needs the box head's res5 stage (ResNet_roi_conv5_head)")
            if shared_res5.dilation != spec.dilation or _first_stride(shared_res5) != _expected_stride(spec):
                raise ConfigError("MRCNN.ROI_MASK_HEAD: v0upshare: MRCNN and FAST_RCNN res5 settings differ; the stage cannot be shared")
            self._shared_res5 = (shared_res5,)
            dim = shared_res5.dim_out
        elif kind == "mask_rcnn_fcn_head_v0up":
            self.res5 = ResStage(
                "_[mask]_res5", V0UP_RES5_BLOCKS, in_channels, 2048, V0UP_RES5_INNER_DIM,
                dilation=spec.dilation, stride_init=stride_init, groups=body.num_groups,
                stride_1x1=body.stride_1x1, norm=body.norm,
            )
            dim = 2048
        else:
            num_convs = FIXED_NUM_CONVS.get(kind, spec.num_convs)
            use_gn = kind.endswith("_gn")
            gn = replace(body.norm, kind="gn")
            for i in range(1, num_convs + 1):
                if use_gn:
                    layer = ConvNorm(dim, spec.dim_reduced, 3, name=f"_mask_fcn{i}", norm=gn, padding=spec.dilation)
                else:
                    layer = conv(dim, spec.dim_reduced, 3, f"_[mask]_fcn{i}", padding=spec.dilation)
                self.convs.append(layer)
                dim = spec.dim_reduced
            self.convs_have_relu = use_gn
        self.conv5_mask = conv_transpose(dim, spec.dim_reduced, 2, "conv5_mask", stride=2)
        self.num_masks = num_classes if spec.cls_specific_mask else 1
        if spec.use_fc_output:
            # Detectron declares the FC as (num_masks * M * M, DIM_REDUCED): Caffe2's FC flattens its
            # input, so this only runs on 1x1 features, as in Detectron (no config uses it).
            self.mask_fcn_logits = linear(spec.dim_reduced, self.num_masks * spec.resolution ** 2, "mask_fcn_logits")
        else:
            self.mask_fcn_logits = conv(spec.dim_reduced, self.num_masks, 1, "mask_fcn_logits")
        self.upsample = None
        if spec.upsample_ratio > 1 and not spec.use_fc_output:
            self.upsample = declare_blob(
                FixedBilinearUpsample(self.num_masks, spec.upsample_ratio), "mask_fcn_logits_up"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stage = self.res5 if self.res5 is not None else (self._shared_res5[0] if self._shared_res5 else None)
        if stage is not None:
            x = stage(x)
        for layer in self.convs:
            x = layer(x) if self.convs_have_relu else torch.relu_(layer(x))
        x = torch.relu_(self.conv5_mask(x))
        if self.spec.use_fc_output:
            m = self.spec.resolution
            return self.mask_fcn_logits(x.flatten(1)).view(-1, self.num_masks, m, m)
        x = self.mask_fcn_logits(x)
        return self.upsample(x) if self.upsample is not None else x


def _first_stride(stage: ResStage) -> int:
    return stage.stride


def _expected_stride(spec: MaskHeadSpec) -> int:
    return spec.roi_xform.resolution // 7 if spec.dilation == 1 else 1
