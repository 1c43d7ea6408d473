"""ResNet / ResNeXt bodies and stages with Detectron's blob names (``detectron/modeling/ResNet.py``)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detconvert.modeling.layers import ConvNorm
from detconvert.spec import NormSpec, ResNetSpec


class Bottleneck(nn.Module):
    """``bottleneck_transformation`` / ``bottleneck_gn_transformation`` + shortcut, sum, ReLU.

    Blob names ``<prefix>_branch2{a,b,c}`` and, when ``in != out``, ``<prefix>_branch1``
    (``basic_bn_shortcut`` / ``basic_gn_shortcut``). ``stride_1x1`` puts the stride on branch2a (MSRA
    ResNets) instead of branch2b (ResNeXt, GN); the names do not tell which, the config does.
    """

    def __init__(
        self,
        prefix: str,
        dim_in: int,
        dim_out: int,
        dim_inner: int,
        *,
        stride: int,
        dilation: int,
        groups: int,
        stride_1x1: bool,
        norm: NormSpec,
    ):
        super().__init__()
        s1, s3 = (stride, 1) if stride_1x1 else (1, stride)
        self.branch2a = ConvNorm(dim_in, dim_inner, 1, name=f"{prefix}_branch2a", norm=norm, stride=s1)
        self.branch2b = ConvNorm(
            dim_inner, dim_inner, 3, name=f"{prefix}_branch2b", norm=norm,
            stride=s3, padding=dilation, dilation=dilation, groups=groups,
        )
        self.branch2c = ConvNorm(dim_inner, dim_out, 1, name=f"{prefix}_branch2c", norm=norm, relu=False)
        self.branch1 = (
            ConvNorm(dim_in, dim_out, 1, name=f"{prefix}_branch1", norm=norm, stride=stride, relu=False)
            if dim_in != dim_out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.branch1 is None else self.branch1(x)
        out = self.branch2c(self.branch2b(self.branch2a(x)))
        out += shortcut
        return torch.relu_(out)


class ResStage(nn.Sequential):
    """``ResNet.add_stage``: ``num_blocks`` bottlenecks named ``<prefix>_0`` .. ``<prefix>_{n-1}``.

    The first block strides by ``stride_init`` only when it changes the width and is not dilated
    (``add_residual_block``); res2 (input: the already max-pooled stem) is built with ``stride_init=1``.
    """

    def __init__(
        self,
        prefix: str,
        num_blocks: int,
        dim_in: int,
        dim_out: int,
        dim_inner: int,
        *,
        dilation: int = 1,
        stride_init: int = 2,
        groups: int = 1,
        stride_1x1: bool = True,
        norm: NormSpec,
    ):
        blocks = []
        for i in range(num_blocks):
            # Detectron (add_residual_block) skips the stride when dim_in == 64, i.e. for res2 after the
            # stem; make_stage passes stride_init=1 for res2 instead, so narrow (tiny) bodies work too.
            stride = stride_init if (dim_in != dim_out and dilation == 1) else 1
            blocks.append(
                Bottleneck(
                    f"{prefix}_{i}", dim_in, dim_out, dim_inner, stride=stride, dilation=dilation,
                    groups=groups, stride_1x1=stride_1x1, norm=norm,
                )
            )
            dim_in = dim_out
        super().__init__(*blocks)
        self.prefix = prefix
        self.stride = blocks[0].branch2b.conv.stride[0] * blocks[0].branch2a.conv.stride[0]
        self.dilation = dilation
        self.dim_out = dim_out


def make_stage(spec: ResNetSpec, stage: int, *, prefix: str = "", dim_in: int = 0, dim_inner: int = 0,
               dilation: int = 1, stride_init: int = 2) -> ResStage:
    """Stage ``res{stage}`` of the body described by ``spec`` (also used by the RoI heads' res5)."""
    return ResStage(
        prefix or f"res{stage}",
        spec.block_counts[stage - 2],
        dim_in or (spec.stem_out if stage == 2 else spec.out_dim(stage - 1)),
        spec.out_dim(stage),
        dim_inner or spec.inner_dim(stage),
        dilation=dilation,
        # res2 never strides (Detectron: its input is the 64-wide, already max-pooled stem; ResStage
        # recognises it by that width, which a narrower stem would defeat).
        stride_init=1 if stage == 2 and not prefix else stride_init,
        groups=spec.num_groups,
        stride_1x1=spec.stride_1x1,
        norm=spec.norm,
    )


class Stem(nn.Module):
    """``basic_bn_stem`` / ``basic_gn_stem``: conv1 7x7/2 (no bias), norm, ReLU, max-pool 3x3/2 pad 1.

    The AffineChannel is named ``res_conv1_bn`` (``pickle_caffe_blobs`` renamed MSRA ``bn_conv1``);
    the GN variant is ``conv1_gn``.
    """

    def __init__(self, norm: NormSpec, out_channels: int = 64):
        super().__init__()
        self.conv1 = ConvNorm(
            3, out_channels, 7, name="conv1", norm=norm, stride=2, padding=3,
            norm_name="conv1_gn" if norm.kind == "gn" else "res_conv1_bn",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class ResNetBody(nn.Module):
    """The convolutional body: stem and ``res2`` .. ``res{last_stage}`` (``add_ResNet_convX_body``).

    Forward contract: ``body(images [N, 3, H, W] float32, BGR, mean-subtracted)`` returns an ordered
    dict ``{"res2": C2, ..., "res{last}": C_last}`` of each stage's output (Detectron's
    ``res{s}_{last block}_sum`` after its ReLU); strides 4, 8, 16, 32.

    ``TRAIN.FREEZE_AT`` = k stops gradients to conv1 and res2..res{k}; their parameters get
    ``requires_grad=False`` here (AffineChannel has none in any case).
    """

    def __init__(self, spec: ResNetSpec):
        super().__init__()
        self.spec = spec
        self.stem = Stem(spec.norm, spec.stem_out)
        self.stage_names: List[str] = []
        for stage in range(2, spec.last_stage + 1):
            dilation, stride_init = 1, 2
            if stage == 5 and spec.res5_dilation > 1:  # add_ResNet_convX_body: dilated res5 keeps stride 1
                dilation, stride_init = spec.res5_dilation, 1
            self.add_module(f"res{stage}", make_stage(spec, stage, dilation=dilation, stride_init=stride_init))
            self.stage_names.append(f"res{stage}")
        self._freeze(spec.freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        if freeze_at <= 0:
            return
        frozen = [self.stem] + [getattr(self, f"res{s}") for s in range(2, min(freeze_at, self.spec.last_stage) + 1)]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    @property
    def out_channels(self) -> Dict[str, int]:
        return {name: getattr(self, name).dim_out for name in self.stage_names}

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return out
