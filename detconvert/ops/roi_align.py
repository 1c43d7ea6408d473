"""Caffe2's legacy RoIAlign (``detector.RoIFeatureTransform``) via ``torchvision.ops.roi_align``.

Caffe2's ``RoIAlign`` op is ``aligned=False``: RoI corners are multiplied by ``spatial_scale`` with no
half-pixel shift, the RoI width/height is forced to at least 1, and ``sampling_ratio = 0`` means an
adaptive ``ceil(roi_size / pooled_size)`` grid per bin. ``torchvision.ops.roi_align(aligned=False)``
implements exactly these rules; this module adds Detectron's multi-level FPN pooling.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import torch
import torchvision
from torch import Tensor

__all__ = ["roi_align", "multilevel_roi_align", "roi_align_level_blobs"]


def roi_align(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int
) -> Tensor:
    """Caffe2 ``RoIAlign`` (legacy, not aligned) of ``rois`` on one feature map.

    Args:
        features: ``[N, C, H, W]``.
        rois: ``[R, 5]`` = ``[batch index, x1, y1, x2, y2]`` in network-input pixels.
        output_size: ``ROI_XFORM_RESOLUTION``.
        spatial_scale: ``1 / stride`` of ``features``.
        sampling_ratio: ``ROI_XFORM_SAMPLING_RATIO`` (0 = adaptive).

    Returns:
        ``[R, C, output_size, output_size]``.
    """
    rois = rois.to(dtype=features.dtype, device=features.device)
    chunks = _cpu_chunks(features, rois)
    if chunks > 1:
        # torchvision's CPU kernel runs on one core; RoIs are independent, so shards of them run on
        # the other cores (the kernel releases the GIL). Bitwise the same result.
        features = features.contiguous()  # once, not once per shard
        parts = list(_thread_pool().map(
            lambda part: _torchvision_roi_align(features, part, output_size, spatial_scale, sampling_ratio),
            rois.chunk(chunks),
        ))
        return torch.cat(parts)
    return _torchvision_roi_align(features, rois, output_size, spatial_scale, sampling_ratio)


# Below this many RoIs per thread, splitting costs more than it saves.
_MIN_ROIS_PER_THREAD = 32
_POOL: Optional[ThreadPoolExecutor] = None


def _torchvision_roi_align(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
                           sampling_ratio: int) -> Tensor:
    return torchvision.ops.roi_align(
        features, rois, (output_size, output_size), spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio, aligned=False,
    )


def _cpu_chunks(features: Tensor, rois: Tensor) -> int:
    """How many threads to pool ``rois`` with: 1 off the CPU, while autograd records, or for few RoIs."""
    if features.device.type != "cpu":
        return 1
    if torch.is_grad_enabled() and (features.requires_grad or rois.requires_grad):
        return 1  # worker threads do not share this thread's autograd state
    return max(1, min(torch.get_num_threads(), rois.shape[0] // _MIN_ROIS_PER_THREAD))


def _thread_pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()),
                                   thread_name_prefix="detconvert-roi-align")
    return _POOL


def multilevel_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    min_level: int,
    output_size: int,
    spatial_scales: Sequence[float],
    sampling_ratio: int,
) -> Tensor:
    """FPN RoI pooling in the original RoI order (``RoIFeatureTransform`` with multi-level RoIs).

    Equivalent to Detectron's per-level ``RoIAlign`` + ``Concat`` + ``BatchPermutation`` with
    ``rois_idx_restore_int32``, without the concatenate-then-permute copy: each level's pooled
    features are written straight to their rows.

    Args:
        features: feature maps of levels ``min_level, min_level + 1, ...`` (``[N, C, H_l, W_l]``).
        rois: ``[R, 5]`` RoIs.
        levels: ``[R]`` levels (:func:`detconvert.ops.fpn_levels.map_rois_to_fpn_levels`).
        min_level: level of ``features[0]`` (2).
        output_size: pooled resolution.
        spatial_scales: ``1 / stride`` per level, parallel to ``features``.
        sampling_ratio: samples per bin axis (0 = adaptive).

    Returns:
        ``[R, C, output_size, output_size]``, row ``r`` pooled from level ``levels[r]``.
    """
    first = features[0]
    out = first.new_zeros((rois.shape[0], first.shape[1], output_size, output_size))
    for offset, (feat, scale) in enumerate(zip(features, spatial_scales)):
        idx = torch.nonzero(levels == min_level + offset, as_tuple=False).flatten()
        if idx.numel() == 0:
            continue
        out[idx] = roi_align(feat, rois[idx], output_size, scale, sampling_ratio)
    return out


def roi_align_level_blobs(
    features: Sequence[Tensor],
    rois_per_level: Sequence[Tensor],
    idx_restore: Tensor,
    output_size: int,
    spatial_scales: Sequence[float],
    sampling_ratio: int,
) -> Tensor:
    """Detectron-blob form of :func:`multilevel_roi_align`: pool ``rois_fpn<l>`` then restore order.

    Useful to feed Detectron's own ``rois_fpn2..5`` + ``rois_idx_restore_int32`` blobs.

    Args:
        features: one feature map per level, parallel to ``rois_per_level``.
        rois_per_level: ``[R_l, 5]`` RoIs per level.
        idx_restore: ``[R]`` restore permutation.
        output_size, spatial_scales, sampling_ratio: as in :func:`multilevel_roi_align`.

    Returns:
        ``[R, C, output_size, output_size]`` in the order of the un-split ``rois``.
    """
    pooled = [
        roi_align(feat, r, output_size, scale, sampling_ratio)
        for feat, r, scale in zip(features, rois_per_level, spatial_scales)
    ]
    return torch.cat(pooled)[idx_restore.to(torch.int64)]
