"""Detectron-style pictures of detections, drawn with OpenCV on the BGR image.

The look follows ``detectron/utils/vis.py`` (``vis_one_image_opencv`` and its helpers) with boxes and
class labels switched on, as ``tools/infer_simple.py`` shows them:

* detections are drawn largest box first, so small objects stay visible (``vis_one_image*``);
* a mask is blended with alpha 0.4 in the next colour of Detectron's colour cycle
  (``utils/colormap.colormap``, one colour per drawn mask) and outlined in white
  (``cv2.findContours(RETR_CCOMP, CHAIN_APPROX_NONE)``, anti-aliased, 1 px) (``vis_mask``);
* boxes are 1 px green rectangles (``vis_bbox``); labels are ``"<class> .98"`` in grey on a green
  background, font ``FONT_HERSHEY_SIMPLEX`` at scale 0.35 (``vis_class`` / ``get_class_string``);
* person keypoints: the 15 links of ``kp_connections`` plus the mid-shoulder -> nose and
  mid-shoulder -> mid-hip links, each in its colour of matplotlib's ``rainbow`` map, 2 px lines and
  3 px dots, blended with alpha 0.7; a keypoint is shown when its logit is above ``kp_thresh``
  (default 2, as in ``tools/infer_simple.py``) (``vis_keypoints``).

RPN-only proposals (Detectron has no picture for them) are drawn as the same green boxes, the
:data:`PROPOSALS_DRAWN` highest-scoring ones, each labelled with its objectness score only (no class).

Pictures are written as PNG (default), JPG or PDF. The PDF is a single page holding the picture as a
lossless (Flate) RGB image, written by :func:`pdf_bytes` (no matplotlib); Detectron's vector PDF is not
reproduced.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from detconvert.data.classes import COCO_KEYPOINT_NAMES, COCO_KEYPOINT_SKELETON
from detconvert.errors import DetconvertError, PathLike
from detconvert.io.atomic import atomic_write
from detconvert.structures import Detections

# cv2 is imported inside the drawing functions: `detconvert infer --help` reads PROPOSALS_DRAWN from here
# and must not load OpenCV (see detconvert/commands/__init__.py).
PICTURE_EXTS = ("png", "jpg", "jpeg", "pdf")

# Colours Detectron uses (BGR tuples for OpenCV), from vis.py's _GREEN/_GRAY/_WHITE.
BOX_COLOR = (18, 127, 15)
LABEL_BACKGROUND = (18, 127, 15)
LABEL_TEXT_COLOR = (218, 227, 218)
CONTOUR_COLOR = (255, 255, 255)
MASK_ALPHA = 0.4
KEYPOINT_ALPHA = 0.7
LABEL_FONT_SCALE = 0.35
# An RPN keeps ~1000-2000 proposals per image; more than a few dozen boxes hide the picture.
PROPOSALS_DRAWN = 30

# Detectron's colour cycle for masks (utils/colormap.py), RGB in [0, 1], in cycle order.
DETECTRON_COLORS_RGB: Tuple[Tuple[float, float, float], ...] = (
    (0.000, 0.447, 0.741), (0.850, 0.325, 0.098), (0.929, 0.694, 0.125), (0.494, 0.184, 0.556),
    (0.466, 0.674, 0.188), (0.301, 0.745, 0.933), (0.635, 0.078, 0.184), (0.300, 0.300, 0.300),
    (0.600, 0.600, 0.600), (1.000, 0.000, 0.000), (1.000, 0.500, 0.000), (0.749, 0.749, 0.000),
    (0.000, 1.000, 0.000), (0.000, 0.000, 1.000), (0.667, 0.000, 1.000), (0.333, 0.333, 0.000),
    (0.333, 0.667, 0.000), (0.333, 1.000, 0.000), (0.667, 0.333, 0.000), (0.667, 0.667, 0.000),
    (0.667, 1.000, 0.000), (1.000, 0.333, 0.000), (1.000, 0.667, 0.000), (1.000, 1.000, 0.000),
    (0.000, 0.333, 0.500), (0.000, 0.667, 0.500), (0.000, 1.000, 0.500), (0.333, 0.000, 0.500),
    (0.333, 0.333, 0.500), (0.333, 0.667, 0.500), (0.333, 1.000, 0.500), (0.667, 0.000, 0.500),
    (0.667, 0.333, 0.500), (0.667, 0.667, 0.500), (0.667, 1.000, 0.500), (1.000, 0.000, 0.500),
    (1.000, 0.333, 0.500), (1.000, 0.667, 0.500), (1.000, 1.000, 0.500), (0.000, 0.333, 1.000),
    (0.000, 0.667, 1.000), (0.000, 1.000, 1.000), (0.333, 0.000, 1.000), (0.333, 0.333, 1.000),
    (0.333, 0.667, 1.000), (0.333, 1.000, 1.000), (0.667, 0.000, 1.000), (0.667, 0.333, 1.000),
    (0.667, 0.667, 1.000), (0.667, 1.000, 1.000), (1.000, 0.000, 1.000), (1.000, 0.333, 1.000),
    (1.000, 0.667, 1.000), (0.167, 0.000, 0.000), (0.333, 0.000, 0.000), (0.500, 0.000, 0.000),
    (0.667, 0.000, 0.000), (0.833, 0.000, 0.000), (1.000, 0.000, 0.000), (0.000, 0.167, 0.000),
    (0.000, 0.333, 0.000), (0.000, 0.500, 0.000), (0.000, 0.667, 0.000), (0.000, 0.833, 0.000),
    (0.000, 1.000, 0.000), (0.000, 0.000, 0.167), (0.000, 0.000, 0.333), (0.000, 0.000, 0.500),
    (0.000, 0.000, 0.667), (0.000, 0.000, 0.833), (0.000, 0.000, 1.000), (0.000, 0.000, 0.000),
    (0.143, 0.143, 0.143), (0.286, 0.286, 0.286), (0.429, 0.429, 0.429), (0.571, 0.571, 0.571),
    (0.714, 0.714, 0.714), (0.857, 0.857, 0.857), (1.000, 1.000, 1.000),
)


def colormap(rgb: bool = False) -> np.ndarray:
    """Detectron's colour cycle as a ``[79, 3]`` float32 array in 0..255 (BGR unless ``rgb``)."""
    colors = np.array(DETECTRON_COLORS_RGB, dtype=np.float32) * 255
    return colors if rgb else colors[:, ::-1].copy()


def rainbow_bgr(n: int) -> List[Tuple[float, float, float]]:
    """``n`` evenly spaced colours of matplotlib's ``rainbow`` map, as BGR 0..255 (no matplotlib needed).

    matplotlib defines ``rainbow`` by r = |2x - 0.5|, g = sin(pi x), b = cos(pi x / 2) and samples it into
    a 256-entry table; ``cmap(x)`` reads entry ``min(int(x * 256), 255)``. vis_keypoints asks for
    ``len(kp_lines) + 2`` colours at ``linspace(0, 1, n)``.
    """
    colors = []
    for x in np.linspace(0, 1, n):
        t = min(int(x * 256), 255) / 255.0
        r = min(max(abs(2 * t - 0.5), 0.0), 1.0)
        g = min(max(math.sin(math.pi * t), 0.0), 1.0)
        b = min(max(math.cos(math.pi * t / 2), 0.0), 1.0)
        colors.append((b * 255, g * 255, r * 255))
    return colors


def class_label(class_index: int, score: float, class_names: Optional[Sequence[str]]) -> str:
    """``"<name> .87"`` (``get_class_string``); ``id<k>`` when no names are known."""
    if class_names is not None and 0 <= class_index < len(class_names):
        name = class_names[class_index]
    else:
        name = f"id{class_index:d}"
    return name + " " + f"{score:0.2f}".lstrip("0")


def draw_mask(image: np.ndarray, mask: np.ndarray, color_bgr: np.ndarray, alpha: float = MASK_ALPHA) -> np.ndarray:
    """Blend ``mask`` into ``image`` with ``alpha`` and outline it in white (``vis_mask``)."""
    import cv2

    out = image.astype(np.float32)
    ys, xs = np.nonzero(mask)
    out[ys, xs, :] *= 1.0 - alpha
    out[ys, xs, :] += alpha * np.asarray(color_bgr, np.float32)
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, CONTOUR_COLOR, 1, cv2.LINE_AA)
    return out.astype(np.uint8)


def draw_box(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """1 px green rectangle from ``(int(x1), int(y1))`` to ``(int(x2), int(y2))`` (``vis_bbox``)."""
    import cv2

    x1, y1, x2, y2 = (int(v) for v in box[:4])
    cv2.rectangle(image, (x1, y1), (x2, y2), BOX_COLOR, thickness=1)
    return image


def draw_label(image: np.ndarray, x: float, y: float, text: str) -> np.ndarray:
    """Grey text on a green strip whose bottom-left corner is at ``(x, y)`` (``vis_class``)."""
    import cv2

    x0, y0 = int(x), int(y)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_w, text_h), _ = cv2.getTextSize(text, font, LABEL_FONT_SCALE, 1)
    cv2.rectangle(image, (x0, y0 - int(1.3 * text_h)), (x0 + text_w, y0), LABEL_BACKGROUND, -1)
    cv2.putText(image, text, (x0, y0 - int(0.3 * text_h)), font, LABEL_FONT_SCALE, LABEL_TEXT_COLOR,
                lineType=cv2.LINE_AA)
    return image


def draw_keypoints(
    image: np.ndarray,
    keypoints: np.ndarray,
    kp_thresh: float = 2.0,
    alpha: float = KEYPOINT_ALPHA,
    keypoint_names: Sequence[str] = COCO_KEYPOINT_NAMES,
) -> np.ndarray:
    """One person's skeleton (``vis_keypoints``).

    Args:
        image: BGR uint8 picture.
        keypoints: ``[4, K]`` rows x, y, logit, prob (Detectron's ``cls_keyps`` entry).
        kp_thresh: a keypoint is drawn when its logit (row 2) is above this.
        alpha: blend weight of the drawn skeleton.
        keypoint_names: names of the K keypoints; the skeleton needs COCO's names, otherwise only the
            points are drawn.
    """
    import cv2

    kps = np.asarray(keypoints, dtype=np.float64)
    names = list(keypoint_names)
    have_skeleton = len(names) == kps.shape[1] and all(a in names and b in names for a, b in COCO_KEYPOINT_SKELETON)
    links = [(names.index(a), names.index(b)) for a, b in COCO_KEYPOINT_SKELETON] if have_skeleton else []
    colors = rainbow_bgr(len(COCO_KEYPOINT_SKELETON) + 2)
    overlay = image.copy()

    def point(idx_or_xy) -> Tuple[int, int]:
        x, y = idx_or_xy
        return int(round(x)), int(round(y))

    if have_skeleton:
        # The derived links are drawn first so the real ones stay on top (as vis_keypoints does).
        rs, ls = names.index("right_shoulder"), names.index("left_shoulder")
        rh, lh = names.index("right_hip"), names.index("left_hip")
        nose = names.index("nose")
        mid_shoulder = (kps[:2, rs] + kps[:2, ls]) / 2.0
        mid_shoulder_score = min(kps[2, rs], kps[2, ls])
        mid_hip = (kps[:2, rh] + kps[:2, lh]) / 2.0
        mid_hip_score = min(kps[2, rh], kps[2, lh])
        if mid_shoulder_score > kp_thresh and kps[2, nose] > kp_thresh:
            cv2.line(overlay, point(mid_shoulder), point(kps[:2, nose]), colors[len(links)], 2, cv2.LINE_AA)
        if mid_shoulder_score > kp_thresh and mid_hip_score > kp_thresh:
            cv2.line(overlay, point(mid_shoulder), point(mid_hip), colors[len(links) + 1], 2, cv2.LINE_AA)
        for n, (i1, i2) in enumerate(links):
            p1, p2 = point(kps[:2, i1]), point(kps[:2, i2])
            if kps[2, i1] > kp_thresh and kps[2, i2] > kp_thresh:
                cv2.line(overlay, p1, p2, colors[n], 2, cv2.LINE_AA)
            if kps[2, i1] > kp_thresh:
                cv2.circle(overlay, p1, 3, colors[n], -1, cv2.LINE_AA)
            if kps[2, i2] > kp_thresh:
                cv2.circle(overlay, p2, 3, colors[n], -1, cv2.LINE_AA)
    else:
        for k in range(kps.shape[1]):
            if kps[2, k] > kp_thresh:
                cv2.circle(overlay, point(kps[:2, k]), 3, colors[k % len(colors)], -1, cv2.LINE_AA)
    return cv2.addWeighted(image, 1.0 - alpha, overlay, alpha, 0)


def has_visible(dets: Detections, thresh: float) -> bool:
    """True when at least one detection reaches ``thresh`` (Detectron draws nothing otherwise).
    Proposals are drawn by rank, not by threshold: any proposal makes a picture."""
    if dets.is_proposals:
        return len(dets) > 0
    return len(dets) > 0 and float(np.max(dets.scores)) >= thresh


def proposal_label(score: float) -> str:
    """``".87"``: a proposal's objectness, written like a class label's score."""
    return f"{score:0.2f}".lstrip("0")


def draw_proposals(image: np.ndarray, dets: Detections, max_proposals: int = PROPOSALS_DRAWN) -> np.ndarray:
    """The ``max_proposals`` highest-scoring proposals as green boxes with their score; a new array."""
    out = np.array(image, copy=True)
    if len(dets) == 0 or max_proposals <= 0:
        return out
    top = np.argsort(-np.asarray(dets.scores), kind="stable")[:max_proposals]
    boxes = np.asarray(dets.boxes, dtype=np.float64)
    # Largest first, as for detections, so small boxes and their labels stay on top.
    areas = (boxes[top, 2] - boxes[top, 0]) * (boxes[top, 3] - boxes[top, 1])
    for i in top[np.argsort(-areas, kind="stable")]:
        out = draw_box(out, boxes[i])
        out = draw_label(out, boxes[i, 0], boxes[i, 1] - 2, proposal_label(float(dets.scores[i])))
    return out


def draw_detections(
    image: np.ndarray,
    dets: Detections,
    class_names: Optional[Sequence[str]] = None,
    *,
    thresh: float = 0.7,
    kp_thresh: float = 2.0,
    show_box: bool = True,
    show_class: bool = True,
    mask_alpha: float = MASK_ALPHA,
    keypoint_names: Sequence[str] = COCO_KEYPOINT_NAMES,
    max_proposals: int = PROPOSALS_DRAWN,
) -> np.ndarray:
    """Draw one image's detections in Detectron's look; returns a new BGR uint8 array.

    Args:
        image: the original BGR uint8 image (``cv2.imread``), ``[H, W, 3]``.
        dets: its detections (original-image pixels).
        class_names: names by contiguous index (index 0 background); None gives ``id<k>`` labels.
        thresh: detections with a score below this are not drawn.
        kp_thresh: keypoint logit threshold.
        show_box: draw boxes.
        show_class: draw ``"<name> <score>"`` labels.
        mask_alpha: mask blend weight.
        keypoint_names: names of the keypoint channels (COCO person by default).
        max_proposals: RPN-only proposals: how many of the highest-scoring are drawn (see
            :func:`draw_proposals`; ``thresh`` and ``show_class`` do not apply).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    if dets.is_proposals:
        return draw_proposals(image, dets, max_proposals)
    out = np.array(image, copy=True)
    if not has_visible(dets, thresh):
        return out
    boxes = np.asarray(dets.boxes, dtype=np.float64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-areas, kind="stable")  # largest first, to reduce occlusion
    colors = colormap()
    mask_color_index = 0
    for i in order:
        score = float(dets.scores[i])
        if score < thresh:
            continue
        if show_box:
            out = draw_box(out, boxes[i])
        if show_class:
            out = draw_label(out, boxes[i, 0], boxes[i, 1] - 2, class_label(int(dets.classes[i]), score, class_names))
        if dets.masks is not None:
            mask = _decode_mask(dets.masks[i])
            out = draw_mask(out, mask, colors[mask_color_index % len(colors)], mask_alpha)
            mask_color_index += 1
        if dets.keypoints is not None:
            out = draw_keypoints(out, dets.keypoints[i], kp_thresh, keypoint_names=keypoint_names)
    return out


def _decode_mask(rle) -> np.ndarray:
    from pycocotools import mask as mask_util

    counts = rle["counts"]
    rle = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_util.decode(rle)


def pdf_bytes(image_bgr: np.ndarray) -> bytes:
    """A one-page PDF showing ``image_bgr`` at 1 pixel = 1 point (lossless Flate-compressed RGB)."""
    height, width = image_bgr.shape[:2]
    pixels = zlib.compress(np.ascontiguousarray(image_bgr[:, :, ::-1]).tobytes(), 6)
    drawing = f"q {width} 0 0 {height} 0 0 cm /Im0 Do Q".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] "
        f"/Resources << /XObject << /Im0 4 0 R >> >> /Contents 5 0 R >>".encode("ascii"),
        f"<< /Type /XObject /Subtype /Image /Width {width} /Height {height} /ColorSpace /DeviceRGB "
        f"/BitsPerComponent 8 /Filter /FlateDecode /Length {len(pixels)} >>\nstream\n".encode("ascii")
        + pixels + b"\nendstream",
        f"<< /Length {len(drawing)} >>\nstream\n".encode("ascii") + drawing + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode("ascii") + body + b"\nendobj\n"
    xref_at = len(out)
    out += f"xref\n0 {len(objects) + 1}\n".encode("ascii") + b"0000000000 65535 f \n"
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode("ascii")  # every xref entry is exactly 20 bytes
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n".encode("ascii")
    return bytes(out)


def encode_picture(image_bgr: np.ndarray, ext: str) -> bytes:
    """Encode a BGR picture as ``png``, ``jpg``/``jpeg`` or ``pdf`` bytes."""
    import cv2

    ext = ext.lower().lstrip(".")
    if ext == "pdf":
        return pdf_bytes(image_bgr)
    if ext not in PICTURE_EXTS:
        raise DetconvertError(f"unsupported picture format '{ext}' (choose png, jpg or pdf)", "--output-ext")
    ok, buffer = cv2.imencode(f".{ext}", image_bgr)
    if not ok:
        raise DetconvertError(f"OpenCV could not encode the picture as {ext}")
    return buffer.tobytes()


def write_picture(image_bgr: np.ndarray, path: PathLike) -> Path:
    """Write a picture atomically; the format comes from the file suffix."""
    path = Path(path)
    data = encode_picture(image_bgr, path.suffix)
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return path
