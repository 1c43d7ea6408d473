"""FPN RoI level assignment (``modeling/FPN.map_rois_to_fpn_levels`` / ``add_multilevel_roi_blobs``)."""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

__all__ = ["map_rois_to_fpn_levels", "distribute_rois_to_levels"]


def map_rois_to_fpn_levels(
    boxes: Tensor,
    min_level: int,
    max_level: int,
    *,
    canonical_scale: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """Pyramid level of each RoI (``FPN.map_rois_to_fpn_levels``).

    ``floor(canonical_level + log2(sqrt((x2-x1+1) (y2-y1+1)) / canonical_scale + 1e-6))`` clipped to
    ``[min_level, max_level]``, in float32 as Detectron computes it on its float32 RoI blobs.

    Args:
        boxes: ``[R, 4]`` boxes in network-input (scaled) coordinates; columns ``x1, y1, x2, y2``
            (pass ``rois[:, 1:5]`` for ``[R, 5]`` RoI blobs).
        min_level: ``FPN.ROI_MIN_LEVEL`` (2).
        max_level: ``FPN.ROI_MAX_LEVEL`` (5).
        canonical_scale: ``FPN.ROI_CANONICAL_SCALE`` (224).
        canonical_level: ``FPN.ROI_CANONICAL_LEVEL`` (4).

    Returns:
        int64 ``[R]`` levels.
    """
    b = boxes.to(torch.float32)
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    scale = torch.sqrt(area)
    levels = torch.floor(canonical_level + torch.log2(scale / canonical_scale + 1e-6))
    return levels.clamp(min_level, max_level).to(torch.int64)


def distribute_rois_to_levels(
    rois: Tensor, levels: Tensor, min_level: int, max_level: int
) -> Tuple[List[Tensor], Tensor]:
    """Split RoIs by level (``FPN.add_multilevel_roi_blobs`` / the ``distribute`` step).

    Within a level RoIs keep their original order (``np.where``); ``idx_restore`` is Detectron's
    ``rois_idx_restore_int32``: ``torch.cat(per_level)[idx_restore]`` gives back ``rois``.

    Args:
        rois: ``[R, C]`` RoIs (any columns, typically ``[batch, x1, y1, x2, y2]``).
        levels: ``[R]`` levels from :func:`map_rois_to_fpn_levels`.
        min_level: lowest level (2).
        max_level: highest level (5).

    Returns:
        ``(per_level, idx_restore)``: a list of ``max_level - min_level + 1`` tensors and an int64
        ``[R]`` permutation (cast to int32 for a Detectron blob).
    """
    per_level_idx = [torch.nonzero(levels == lvl, as_tuple=False).flatten() for lvl in range(min_level, max_level + 1)]
    order = torch.cat(per_level_idx) if per_level_idx else levels.new_zeros((0,))
    idx_restore = torch.empty_like(order)
    idx_restore[order] = torch.arange(order.numel(), device=order.device)
    return [rois[idx] for idx in per_level_idx], idx_restore
