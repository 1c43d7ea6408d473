"""What inference returns for one image: Detectron's ``cls_boxes`` / ``cls_segms`` / ``cls_keyps`` as flat arrays.

Detectron returns per-class lists (``cls_boxes[j]`` for class ``j``, index 0 = background, always empty).
:class:`Detections` holds the same content flattened in Detectron's class order (all of class 1, then class 2,
...), which is also the order of ``mask_rois`` / ``keypoint_rois``, and converts back with
:meth:`Detections.to_detectron`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np


@dataclass
class Detections:
    """Final detections of one image, in original-image pixels.

    Attributes:
        boxes: ``[N, 4]`` float32 ``[x1, y1, x2, y2]``, Detectron's inclusive convention (width = x2 - x1 + 1).
        scores: ``[N]`` float32.
        classes: ``[N]`` int64 contiguous class indices, 1..num_classes-1 (0 is background and never appears).
        masks: N COCO RLEs (``{"size": [h, w], "counts": bytes}``) or None when the model has no mask head.
        keypoints: ``[N, 4, K]`` float32 rows ``x, y, logit, prob`` (Detectron's ``cls_keyps`` layout) or None.
        image_size: ``(height, width)`` of the original image.
        is_proposals: True for RPN-only models: ``boxes`` are proposals, ``scores`` their objectness, classes 0.
        extras: intermediate blobs kept for debugging (name -> array) when asked for.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    image_size: tuple
    masks: Optional[List[Dict[str, Any]]] = None
    keypoints: Optional[np.ndarray] = None
    is_proposals: bool = False
    extras: Dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to_detectron(self, num_classes: int):
        """Detectron's ``(cls_boxes, cls_segms, cls_keyps)``: per-class lists, ``[x1, y1, x2, y2, score]`` rows."""
        cls_boxes: List[Any] = [[] for _ in range(num_classes)]
        cls_segms = [[] for _ in range(num_classes)] if self.masks is not None else None
        cls_keyps = [[] for _ in range(num_classes)] if self.keypoints is not None else None
        for j in range(1, num_classes):
            sel = np.flatnonzero(self.classes == j)
            cls_boxes[j] = np.hstack([self.boxes[sel], self.scores[sel, None]]).astype(np.float32)
            if cls_segms is not None:
                cls_segms[j] = [self.masks[i] for i in sel]
            if cls_keyps is not None:
                cls_keyps[j] = [self.keypoints[i] for i in sel]
        cls_boxes[0] = np.zeros((0, 5), np.float32)
        return cls_boxes, cls_segms, cls_keyps
