"""Mask pasting and COCO RLE as Detectron does it (``core/test.segm_results``).

Per detection: the ``M x M`` probability map of its class is zero-padded by one pixel, its box is
expanded by ``(M + 2) / M`` (:func:`detconvert.ops.boxes.expand_boxes`, half-sizes without ``+1``),
truncated to int32 (toward zero), the padded map is resized with ``cv2.resize`` (bilinear) to the
box's inclusive ``w x h``, thresholded with ``>``, and pasted into ``[x1, x2] x [y1, y2]`` clipped to
the image. Masks are encoded with pycocotools from a Fortran-ordered ``[H, W, R]`` array in one call.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

from detconvert.ops.boxes import expand_boxes

__all__ = ["paste_masks", "segm_results"]


def _own_class_masks(masks: np.ndarray, classes: Optional[np.ndarray]) -> np.ndarray:
    """``[R, M, M]`` maps: the class's channel of ``[R, K, M, M]`` (or channel 0 of ``[R, 1, M, M]``)."""
    masks = np.asarray(masks)
    if masks.ndim == 3:
        return masks
    if masks.shape[1] == 1:  # MRCNN.CLS_SPECIFIC_MASK off: one class-agnostic channel
        return masks[:, 0]
    if classes is None:
        raise ValueError("classes are needed to pick the class-specific channel of [R, K, M, M] masks")
    return masks[np.arange(masks.shape[0]), np.asarray(classes, dtype=np.int64)]


def _pasted_crops(
    masks: np.ndarray,
    boxes: np.ndarray,
    im_h: int,
    im_w: int,
    classes: Optional[np.ndarray],
    thresh: float,
) -> Iterator[Tuple[int, int, int, np.ndarray]]:
    """Yield ``(i, x0, y0, crop)``: detection ``i``'s binary mask inside the image at ``[y0:, x0:]``.

    The crop is what Detectron writes into ``im_mask[y_0:y_1, x_0:x_1]``; detections whose expanded
    box lies outside the image yield nothing (an empty mask).
    """
    own = _own_class_masks(masks, classes).astype(np.float32, copy=False)
    num, m = own.shape[0], own.shape[-1]
    if num == 0:
        return
    # Detectron pads by one zero pixel so cv2.resize does not smear the border values ("top hat").
    padded = np.zeros((num, m + 2, m + 2), dtype=np.float32)
    padded[:, 1:-1, 1:-1] = own
    ref = expand_boxes(np.asarray(boxes, dtype=np.float32), (m + 2.0) / m).astype(np.int32)
    widths = np.maximum(ref[:, 2] - ref[:, 0] + 1, 1)
    heights = np.maximum(ref[:, 3] - ref[:, 1] + 1, 1)
    x0s = np.maximum(ref[:, 0], 0)
    x1s = np.minimum(ref[:, 2] + 1, im_w)
    y0s = np.maximum(ref[:, 1], 0)
    y1s = np.minimum(ref[:, 3] + 1, im_h)
    for i in range(num):
        x0, x1, y0, y1 = int(x0s[i]), int(x1s[i]), int(y0s[i]), int(y1s[i])
        if x1 <= x0 or y1 <= y0:
            continue
        resized = cv2.resize(padded[i], (int(widths[i]), int(heights[i])))  # INTER_LINEAR, as Detectron
        bx, by = int(ref[i, 0]), int(ref[i, 1])
        yield i, x0, y0, resized[y0 - by:y1 - by, x0 - bx:x1 - bx] > thresh


def paste_masks(
    masks: np.ndarray,
    boxes: np.ndarray,
    im_h: int,
    im_w: int,
    *,
    classes: Optional[np.ndarray] = None,
    thresh: float = 0.5,
) -> np.ndarray:
    """Binary image masks of the detections (the paste of ``core/test.segm_results``).

    Args:
        masks: ``[R, M, M]`` probabilities of each detection's own class, or ``[R, K, M, M]`` with
            ``classes`` (class-specific channel), or ``[R, 1, M, M]`` (class-agnostic).
        boxes: ``[R, 4]`` detection boxes in original-image pixels (inclusive convention).
        im_h: original image height.
        im_w: original image width.
        classes: ``[R]`` class ids, for ``[R, K, M, M]`` masks.
        thresh: ``MRCNN.THRESH_BINARIZE`` (strict ``>``).

    Returns:
        uint8 ``[im_h, im_w, R]`` in Fortran order (what ``pycocotools.mask.encode`` takes; mask ``i`` is
        ``out[:, :, i]``).
    """
    num = np.asarray(boxes).shape[0]
    out = np.zeros((im_h, im_w, num), dtype=np.uint8, order="F")
    for i, x0, y0, crop in _pasted_crops(masks, boxes, im_h, im_w, classes, thresh):
        out[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1], i] = crop
    return out


def _crop_rle_counts(crop: np.ndarray, x0: int, y0: int, im_h: int, im_w: int) -> List[int]:
    """Uncompressed COCO RLE counts of an ``im_h x im_w`` image that is zero outside ``crop``.

    COCO RLE runs over the column-major (Fortran) pixel order and starts with a run of zeros. Only the
    crop is scanned: runs of ones start/end where a crop column changes value, at absolute positions
    ``(x0 + c) * im_h + y0 + r``; runs that continue into the next column are merged.
    """
    # One row per image column (contiguous), framed by zeros above and below the crop.
    framed = np.zeros((crop.shape[1], crop.shape[0] + 2), dtype=bool)
    framed[:, 1:-1] = crop.T
    cols, rows = np.nonzero(framed[:, 1:] != framed[:, :-1])  # starts and ends alternate per column
    if cols.size == 0:
        return [im_h * im_w]
    edges = (x0 + cols).astype(np.int64) * im_h + y0 + rows
    starts, ends = edges[0::2], edges[1::2]
    # Merge a run ending at the bottom of one column with one starting at the top of the next.
    joined = np.nonzero(starts[1:] == ends[:-1])[0]
    if joined.size:
        starts = np.delete(starts, joined + 1)
        ends = np.delete(ends, joined)
    bounds = np.empty(2 * starts.size + 2, dtype=np.int64)
    bounds[0] = 0
    bounds[1:-1:2] = starts
    bounds[2:-1:2] = ends
    bounds[-1] = im_h * im_w
    counts = np.diff(bounds)
    if counts[-1] == 0:
        counts = counts[:-1]
    return counts.tolist()


def segm_results(
    masks: np.ndarray,
    boxes: np.ndarray,
    im_h: int,
    im_w: int,
    *,
    classes: Optional[np.ndarray] = None,
    thresh: float = 0.5,
) -> List[Dict[str, object]]:
    """COCO RLEs of the detections' masks (``core/test.segm_results``), in the order of ``boxes``.

    Detectron groups the result per class (``cls_segms[j]``); detections are already in class order,
    so ``cls_segms[j]`` is the slice of this list belonging to class ``j``. The RLEs are byte-identical
    to ``pycocotools.mask.encode`` of the pasted masks but are computed from each mask's crop, so the
    cost does not grow with the image size.

    Args:
        masks, boxes, im_h, im_w, classes, thresh: see :func:`paste_masks`.

    Returns:
        One pycocotools RLE per detection: ``{'size': [im_h, im_w], 'counts': bytes}``.
    """
    num = np.asarray(boxes).shape[0]
    counts: List[List[int]] = [[im_h * im_w] for _ in range(num)]
    for i, x0, y0, crop in _pasted_crops(masks, boxes, im_h, im_w, classes, thresh):
        counts[i] = _crop_rle_counts(crop, x0, y0, im_h, im_w)
    if num == 0:
        return []
    return mask_util.frPyObjects([{"size": [im_h, im_w], "counts": c} for c in counts], im_h, im_w)
