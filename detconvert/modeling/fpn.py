"""Feature pyramid networks with Detectron's blob names (``detectron/modeling/FPN.py`` ``add_fpn``)."""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detconvert.modeling.layers import conv, conv_or_gn
from detconvert.spec import FPNSpec, ResNetSpec

HIGHEST_BACKBONE_LEVEL = 5  # FPN.py: res5 is the coarsest backbone level


def stage_sum_name(body: ResNetSpec, stage: int) -> str:
    """Detectron's name of a stage's output blob: ``res{s}_{last block}_sum`` (e.g. ``res4_5_sum``)."""
    return f"res{stage}_{body.block_counts[stage - 2] - 1}_sum"


class FPN(nn.Module):
    """Top-down pyramid over C{min}..C5 plus the extra coarse levels.

    * R-CNN (levels 2-6): lateral 1x1 convs, nearest x2 top-down sums, 3x3 output convs; P6 is a
      max-pool (k1, s2) of P5 (``fpn_res5_2_sum_subsampled_2x``).
    * RetinaNet (levels 3-7, ``EXTRA_CONV_LEVELS``): no res2 lateral; ``fpn_6`` is a 3x3/2 conv on
      **C5** (2048 channels) and ``fpn_7`` a 3x3/2 conv on ``ReLU(fpn_6)``.
    * ``FPN.USE_GN``: inner, lateral and output convs become ConvGN (no bias); ``fpn_6/7`` never do.

    Blob names: ``fpn_inner_<C5 sum>``, ``fpn_inner_<Ck sum>_lateral``, ``fpn_<Ck sum>``, ``fpn_6``,
    ``fpn_7``.

    Forward contract: ``fpn(body_outputs)`` with the dict returned by
    :class:`~detconvert.modeling.resnet.ResNetBody` returns the list ``[P_min, ..., P_max]``
    (``max_level - min_level + 1`` maps of ``spec.dim`` channels, strides ``2**level``). The input must be
    padded to a multiple of ``2**5`` (Detectron pads to ``FPN.COARSEST_STRIDE``) so that every
    top-down sum matches in size.
    """

    def __init__(self, spec: FPNSpec, body: ResNetSpec):
        super().__init__()
        self.spec = spec
        dim = spec.dim
        use_gn = spec.use_gn
        norm = body.norm if body.norm.kind == "gn" else _gn_default(body)
        # Backbone levels used, coarse to fine: 5, 4, ... min_level (add_fpn: num_backbone_stages).
        self.backbone_levels = list(range(HIGHEST_BACKBONE_LEVEL, spec.min_level - 1, -1))
        names = {lvl: stage_sum_name(body, lvl) for lvl in self.backbone_levels}
        self.inner = nn.ModuleList()
        self.output = nn.ModuleList()
        for i, lvl in enumerate(self.backbone_levels):
            blob = f"fpn_inner_{names[lvl]}" if i == 0 else f"fpn_inner_{names[lvl]}_lateral"
            self.inner.append(conv_or_gn(body.out_dim(lvl), dim, 1, blob, use_gn, norm))
            self.output.append(conv_or_gn(dim, dim, 3, f"fpn_{names[lvl]}", use_gn, norm, padding=1))
        self.extra = nn.ModuleList()
        if spec.extra_conv_levels and spec.max_level > HIGHEST_BACKBONE_LEVEL:
            dim_in = body.out_dim(HIGHEST_BACKBONE_LEVEL)  # fpn_6 reads C5, not P5
            for lvl in range(HIGHEST_BACKBONE_LEVEL + 1, spec.max_level + 1):
                self.extra.append(conv(dim_in, dim, 3, f"fpn_{lvl}", stride=2, padding=1))
                dim_in = dim
        self.num_maxpool_levels = 0
        if not spec.extra_conv_levels and spec.max_level == HIGHEST_BACKBONE_LEVEL + 1:
            self.num_maxpool_levels = 1
        self.feature_names = self._feature_names(names)

    def _feature_names(self, names: Dict[int, str]) -> List[str]:
        """Detectron's blob name of each output level, finest first (``fpn_res2_2_sum``, ...)."""
        out = [f"fpn_{names[lvl]}" for lvl in reversed(self.backbone_levels)]
        if self.num_maxpool_levels:
            out.append(f"fpn_{names[HIGHEST_BACKBONE_LEVEL]}_subsampled_2x")
        out += [f"fpn_{lvl}" for lvl in range(HIGHEST_BACKBONE_LEVEL + 1, HIGHEST_BACKBONE_LEVEL + 1 + len(self.extra))]
        return out

    def forward(self, feats: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        c5 = feats["res5"]
        inner = self.inner[0](c5)
        outputs = [self.output[0](inner)]
        for i, lvl in enumerate(self.backbone_levels[1:], start=1):
            lateral = self.inner[i](feats[f"res{lvl}"])
            # UpsampleNearest(scale=2) then Sum (add_topdown_lateral_module).
            lateral += F.interpolate(inner, scale_factor=2.0, mode="nearest")
            inner = lateral
            outputs.insert(0, self.output[i](inner))
        if self.num_maxpool_levels:
            outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        x = c5
        for i, extra in enumerate(self.extra):
            x = extra(x if i == 0 else F.relu(x))  # fpn_7 reads ReLU(fpn_6); fpn_6 itself stays raw
            outputs.append(x)
        return outputs


def _gn_default(body: ResNetSpec):
    # FPN.USE_GN with an AffineChannel body (no config does this): GN settings still come from
    # GROUP_NORM.*, which the spec keeps in body.norm's gn_* fields.
    from dataclasses import replace

    return replace(body.norm, kind="gn")
