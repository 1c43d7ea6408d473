"""Detectron's anchors: quantized, ratio-major cell anchors and their shifts over a feature grid.

Coordinates are Detectron's inclusive ``[x1, y1, x2, y2]`` (width = x2 - x1 + 1) in network-input
pixels. Cell anchors are computed in float64 exactly as Detectron does (NumPy); the shifted grid is
returned as a float32 tensor because Detectron's ``bbox_transform`` casts the anchors to the dtype of
the float32 deltas before decoding.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "generate_anchors",
    "fpn_rpn_cell_anchors",
    "retinanet_cell_anchors",
    "grid_anchors",
]


def generate_anchors(
    stride: float = 16,
    sizes: Sequence[float] = (32, 64, 128, 256, 512),
    aspect_ratios: Sequence[float] = (0.5, 1, 2),
) -> np.ndarray:
    """Cell anchors centred on one feature-map cell (``modeling/generate_anchors.generate_anchors``).

    The base box is ``[0, 0, stride - 1, stride - 1]``. For each aspect ratio ``r`` the base area is
    re-shaped to ``ws = round(sqrt(area / r))``, ``hs = round(ws * r)`` (Detectron's *quantization*:
    the P2 ratio-0.5 anchor is 48x24, not 45.25x22.6), then every size scales it by ``size / stride``.

    Args:
        stride: feature stride in input pixels (the base box size).
        sizes: anchor sizes (approximate sqrt areas) in input pixels.
        aspect_ratios: height / width ratios.

    Returns:
        float64 array ``[len(aspect_ratios) * len(sizes), 4]``, **ratio-major**: anchor
        ``a = ratio_index * len(sizes) + size_index`` (Detectron's ``_ratio_enum`` then ``_scale_enum``).
    """
    scales = np.asarray(sizes, dtype=np.float64) / stride
    ratios = np.asarray(aspect_ratios, dtype=np.float64)
    base = np.array([0.0, 0.0, stride - 1.0, stride - 1.0])
    w, h, cx, cy = _width_height_centre(base)
    # _ratio_enum: same area, quantized widths/heights.
    ratio_ws = np.round(np.sqrt(w * h / ratios))
    ratio_hs = np.round(ratio_ws * ratios)
    # _scale_enum on each ratio anchor (all share the base centre): ratio-major outer loop.
    ws = (ratio_ws[:, None] * scales[None, :]).reshape(-1)
    hs = (ratio_hs[:, None] * scales[None, :]).reshape(-1)
    return _boxes_around(ws, hs, cx, cy)


def _width_height_centre(box: np.ndarray) -> Tuple[float, float, float, float]:
    """Detectron's ``_whctrs``: inclusive width/height and the centre ``x1 + 0.5 (w - 1)``."""
    w = box[2] - box[0] + 1
    h = box[3] - box[1] + 1
    return w, h, box[0] + 0.5 * (w - 1), box[1] + 0.5 * (h - 1)


def _boxes_around(ws: np.ndarray, hs: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Detectron's ``_mkanchors``: boxes of widths ``ws`` / heights ``hs`` around ``(cx, cy)``."""
    return np.stack(
        [cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)], axis=1
    )


def fpn_rpn_cell_anchors(
    level: int,
    *,
    min_level: int = 2,
    start_size: float = 32,
    aspect_ratios: Sequence[float] = (0.5, 1, 2),
) -> np.ndarray:
    """Cell anchors of FPN RPN level ``level`` (``FPN.add_fpn_rpn_outputs``).

    Stride ``2**level``, one size ``FPN.RPN_ANCHOR_START_SIZE * 2**(level - RPN_MIN_LEVEL)``.

    Returns:
        float64 ``[len(aspect_ratios), 4]``.
    """
    return generate_anchors(
        stride=2.0**level, sizes=(start_size * 2.0 ** (level - min_level),), aspect_ratios=aspect_ratios
    )


def retinanet_cell_anchors(
    level: int,
    *,
    scales_per_octave: int = 3,
    aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5),
    anchor_scale: float = 4.0,
) -> np.ndarray:
    """Cell anchors of RetinaNet level ``level`` (``core/test_retinanet._create_cell_anchors``).

    Octave-major, then the aspect ratios in config order: anchor
    ``a = octave * len(aspect_ratios) + ratio_index`` has size ``2**level * 2**(octave/S) * anchor_scale``
    (not integral, so these anchors are not integers).

    Returns:
        float64 ``[scales_per_octave * len(aspect_ratios), 4]``.
    """
    stride = 2.0**level
    rows = []
    for octave in range(scales_per_octave):
        octave_scale = 2 ** (octave / float(scales_per_octave))
        for aspect in aspect_ratios:
            rows.append(
                generate_anchors(stride=stride, sizes=(stride * octave_scale * anchor_scale,), aspect_ratios=(aspect,))
            )
    return np.concatenate(rows, axis=0)


_GRID_CACHE: Dict[tuple, torch.Tensor] = {}
_GRID_CACHE_MAX = 64


def grid_anchors(
    cell_anchors: Union[np.ndarray, torch.Tensor],
    height: int,
    width: int,
    stride: float,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """All anchors of a ``height x width`` feature map (``ops/generate_proposals.GenerateProposalsOp``).

    Cell anchor ``a`` shifted by ``(x * stride, y * stride)``, laid out in ``(H, W, A)`` row-major order
    (the order of the transposed RPN outputs). The sum is formed in float64, as Detectron does, and then
    rounded to float32 (what ``bbox_transform`` decodes with). Results are cached per shape and device.

    Args:
        cell_anchors: ``[A, 4]`` cell anchors (float64 from :func:`generate_anchors`).
        height: feature map height.
        width: feature map width.
        stride: feature stride in input pixels (``1 / spatial_scale``).
        device: where the returned tensor lives.

    Returns:
        float32 tensor ``[height * width * A, 4]``.
    """
    cell = np.asarray(cell_anchors.detach().cpu() if isinstance(cell_anchors, torch.Tensor) else cell_anchors,
                      dtype=np.float64)
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (cell.tobytes(), cell.shape, int(height), int(width), float(stride), str(device))
    cached = _GRID_CACHE.get(key)
    if cached is not None:
        return cached
    shift_x = np.arange(width, dtype=np.float64) * stride
    shift_y = np.arange(height, dtype=np.float64) * stride
    sx, sy = np.meshgrid(shift_x, shift_y)
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    anchors = (cell[None, :, :] + shifts[:, None, :]).reshape(-1, 4).astype(np.float32)
    result = torch.from_numpy(anchors).to(device)
    if len(_GRID_CACHE) >= _GRID_CACHE_MAX:
        _GRID_CACHE.clear()
    _GRID_CACHE[key] = result
    return result
