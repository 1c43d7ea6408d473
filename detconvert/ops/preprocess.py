"""Image preprocessing of Detectron's test path (``utils/blob.get_image_blob`` / ``prep_im_for_blob`` /
``im_list_to_blob``).

BGR ``uint8`` (``cv2.imread``) -> float32 with ``PIXEL_MEANS`` subtracted (the subtraction happens in
float64 and is rounded to float32; no std, no /255) -> ``cv2.resize(fx=s, fy=s, INTER_LINEAR)`` of the
mean-subtracted float image -> zero padding at the bottom/right to a multiple of
``FPN.COARSEST_STRIDE`` (FPN models only) -> NCHW. ``im_info`` holds the *padded* blob size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "DETECTRON_PIXEL_MEANS",
    "ImageBlob",
    "compute_im_scale",
    "prep_im_for_blob",
    "im_list_to_blob",
    "get_image_blob",
    "get_images_blob",
]

#: ``cfg.PIXEL_MEANS`` (BGR).
DETECTRON_PIXEL_MEANS = (102.9801, 115.9465, 122.7717)


@dataclass
class ImageBlob:
    """A network input built like Detectron's.

    Attributes:
        data: float32 ``[N, 3, H, W]`` (BGR channels, means subtracted, zero padding).
        im_info: float32 ``[N, 3]`` rows ``(H, W, im_scale)`` with the padded blob size (what RPN clips
            proposals to).
        im_scales: per image scale factor (float64).
        valid_hw: ``[N, 2]`` size of each resized image inside the blob (before padding).
    """

    data: np.ndarray
    im_info: np.ndarray
    im_scales: np.ndarray
    valid_hw: np.ndarray


def compute_im_scale(height: int, width: int, target_size: float, max_size: float) -> float:
    """Detectron's scale rule (``prep_im_for_blob``).

    ``s = target_size / min(H, W)``; if ``round(s * max(H, W)) > max_size`` then
    ``s = max_size / max(H, W)``.
    """
    size_min, size_max = min(height, width), max(height, width)
    scale = float(target_size) / float(size_min)
    if np.round(scale * size_max) > max_size:
        scale = float(max_size) / float(size_max)
    return scale


def _subtract_means(im: np.ndarray, pixel_means: Sequence[float]) -> np.ndarray:
    """``float32(float64(im) - means)`` per channel, exact.

    A uint8 image has 256 values per channel, so the float64 subtraction rounded to float32 is a
    per-channel lookup table -- the same numbers as Detectron's in-place float64 subtraction, without a
    float64 copy of the image.
    """
    means = np.asarray(pixel_means, dtype=np.float64)
    if im.dtype == np.uint8:
        lut = (np.arange(256, dtype=np.float64)[None, :] - means[:, None]).astype(np.float32)  # [3, 256]
        return np.stack([lut[c][im[:, :, c]] for c in range(im.shape[2])], axis=2)
    return (im.astype(np.float32).astype(np.float64) - means).astype(np.float32)


def prep_im_for_blob(
    im: np.ndarray,
    target_size: float,
    max_size: float,
    pixel_means: Sequence[float] = DETECTRON_PIXEL_MEANS,
) -> Tuple[np.ndarray, float]:
    """Mean-subtracted, resized float32 ``H x W x 3`` image and its scale (``blob.prep_im_for_blob``).

    Args:
        im: BGR ``H x W x 3`` image (``uint8`` as ``cv2.imread`` returns it).
        target_size: ``TEST.SCALE`` (shorter side).
        max_size: ``TEST.MAX_SIZE`` (longer side cap).
        pixel_means: ``PIXEL_MEANS`` (BGR).

    Returns:
        ``(image, im_scale)``; the image is ``round(H * s) x round(W * s)`` (cv2's rounding).
    """
    if im.ndim != 3 or im.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 BGR image, got shape {tuple(im.shape)}")
    scale = compute_im_scale(im.shape[0], im.shape[1], target_size, max_size)
    shifted = _subtract_means(im, pixel_means)
    resized = cv2.resize(shifted, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return resized, scale


def im_list_to_blob(ims: Sequence[np.ndarray], coarsest_stride: Optional[int] = None) -> np.ndarray:
    """Stack prepared images into a zero-padded NCHW blob (``blob.im_list_to_blob``).

    Args:
        ims: float32 ``H_i x W_i x 3`` images.
        coarsest_stride: ``FPN.COARSEST_STRIDE`` when FPN is on (the blob size is rounded up to a
            multiple of it); None for C4 models (no padding beyond the largest image).

    Returns:
        float32 ``[N, 3, H, W]``.
    """
    max_h = max(im.shape[0] for im in ims)
    max_w = max(im.shape[1] for im in ims)
    if coarsest_stride:
        max_h = int(np.ceil(max_h / float(coarsest_stride)) * coarsest_stride)
        max_w = int(np.ceil(max_w / float(coarsest_stride)) * coarsest_stride)
    blob = np.zeros((len(ims), 3, max_h, max_w), dtype=np.float32)
    for i, im in enumerate(ims):
        blob[i, :, : im.shape[0], : im.shape[1]] = im.transpose(2, 0, 1)
    return blob


def get_images_blob(
    ims: Sequence[np.ndarray],
    target_size: float,
    max_size: float,
    *,
    pixel_means: Sequence[float] = DETECTRON_PIXEL_MEANS,
    coarsest_stride: Optional[int] = None,
) -> ImageBlob:
    """Several images in one blob, each at its own scale, zero-padded to a common size.

    With one image this is exactly Detectron's ``get_image_blob``. With several, each image's content
    is identical to its single-image blob; only the padding (and hence ``im_info``'s H, W) grows to the
    batch maximum, as in Detectron's multi-image ``im_list_to_blob``.

    Args:
        ims: BGR ``uint8`` images.
        target_size: ``TEST.SCALE``.
        max_size: ``TEST.MAX_SIZE``.
        pixel_means: ``PIXEL_MEANS``.
        coarsest_stride: ``FPN.COARSEST_STRIDE`` for FPN models, None for C4.

    Returns:
        :class:`ImageBlob`.
    """
    prepared = [prep_im_for_blob(im, target_size, max_size, pixel_means) for im in ims]
    data = im_list_to_blob([p[0] for p in prepared], coarsest_stride)
    scales = np.array([p[1] for p in prepared], dtype=np.float64)
    height, width = data.shape[2], data.shape[3]
    im_info = np.array([[height, width, s] for s in scales], dtype=np.float32)
    valid = np.array([p[0].shape[:2] for p in prepared], dtype=np.int64)
    return ImageBlob(data=data, im_info=im_info, im_scales=scales, valid_hw=valid)


def get_image_blob(
    im: np.ndarray,
    target_size: float,
    max_size: float,
    *,
    pixel_means: Sequence[float] = DETECTRON_PIXEL_MEANS,
    coarsest_stride: Optional[int] = None,
) -> ImageBlob:
    """Detectron's ``utils/blob.get_image_blob`` for one BGR image (see :func:`get_images_blob`)."""
    return get_images_blob([im], target_size, max_size, pixel_means=pixel_means, coarsest_stride=coarsest_stride)
