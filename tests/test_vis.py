"""Detectron-style pictures: drawn where the detections are, in Detectron's colours, thresholds respected."""
from __future__ import annotations

import re
import zlib

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from detconvert.inference import vis
from detconvert.data.classes import COCO_KEYPOINT_NAMES, coco_table
from detconvert.structures import Detections

H, W = 120, 160


def _image(seed: int = 0) -> np.ndarray:
    # Mid-grey noise: every blend with a mask colour or the green box changes the pixel.
    rng = np.random.default_rng(seed)
    return rng.integers(90, 110, size=(H, W, 3), dtype=np.uint8)


def _rle(x1: int, y1: int, x2: int, y2: int) -> dict:
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[y1 : y2 + 1, x1 : x2 + 1] = 1
    return mask_util.encode(np.asfortranarray(mask))


def _mask_dets(scores=(0.9, 0.8)) -> Detections:
    boxes = np.array([[20, 40, 79, 99], [100, 30, 139, 69]], np.float32)  # big one first by area
    return Detections(
        boxes=boxes,
        scores=np.array(scores, np.float32),
        classes=np.array([1, 17], np.int64),
        image_size=(H, W),
        masks=[_rle(30, 50, 69, 89), _rle(105, 35, 134, 64)],
    )


def _drawn_region(dets: Detections, names, margin: int = 2) -> np.ndarray:
    """Boxes (+margin for anti-aliasing) and the label strips above them, as vis draws them."""
    region = np.zeros((H, W), bool)
    for box, score, cls in zip(dets.boxes, dets.scores, dets.classes):
        x1, y1, x2, y2 = (int(v) for v in box)
        region[max(y1 - margin, 0) : y2 + margin + 1, max(x1 - margin, 0) : x2 + margin + 1] = True
        text = vis.class_label(int(cls), float(score), names)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, vis.LABEL_FONT_SCALE, 1)
        ly = int(box[1] - 2)
        region[max(ly - int(1.3 * th) - margin, 0) : ly + margin + 1, max(x1 - margin, 0) : x1 + tw + margin + 1] = True
    return region


def test_picture_changes_only_where_detections_are():
    image = _image()
    dets = _mask_dets()
    names = coco_table().names
    out = vis.draw_detections(image, dets, names, thresh=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = np.any(out != image, axis=2)
    region = _drawn_region(dets, names)
    inside, outside = int(changed[region].sum()), int(changed[~region].sum())
    assert outside == 0, f"{outside} pixels changed outside the detections"
    # Every mask pixel is blended (40x40 + 30x30 masks) and every box outline is drawn.
    assert inside >= 40 * 40 + 30 * 30
    for x1, y1, x2, y2 in dets.boxes.astype(int):
        assert changed[y1, x1:x2 + 1].all() and changed[y1:y2 + 1, x2].all()


def test_mask_blend_uses_detectron_alpha_and_colour_cycle():
    image = _image(1)
    dets = _mask_dets()
    out = vis.draw_detections(image, dets, None, thresh=0.5, show_box=False, show_class=False)
    colors = vis.colormap()  # BGR
    # Largest box is drawn first and takes colour 0; the next takes colour 1. Interior pixels, away
    # from the white contour: 0.6 * pixel + 0.4 * colour, truncated to uint8 (vis_mask's astype).
    for (y, x), color in (((70, 50), colors[0]), ((50, 120), colors[1])):
        expected = (image[y, x].astype(np.float32) * np.float32(0.6) + np.float32(0.4) * color).astype(np.uint8)
        np.testing.assert_array_equal(out[y, x], expected)
    # The contour is white-ish (anti-aliased white line on the mask boundary).
    assert out[50, 50].min() > 200


def test_colour_cycle_and_label_format():
    colors = vis.colormap(rgb=True)
    assert colors.shape == (79, 3)
    np.testing.assert_allclose(colors[0], [0.0, 0.447 * 255, 0.741 * 255], rtol=1e-6)
    np.testing.assert_allclose(vis.colormap()[0], colors[0][::-1])
    assert vis.class_label(1, 0.987, coco_table().names) == "person .99"
    assert vis.class_label(5, 0.5, None) == "id5 .50"


def test_thresh_hides_low_scores():
    image = _image(2)
    dets = _mask_dets(scores=(0.3, 0.2))
    np.testing.assert_array_equal(vis.draw_detections(image, dets, None, thresh=0.7), image)
    # Only the 0.3 detection passes 0.25: nothing changes inside the second box.
    out = vis.draw_detections(image, dets, None, thresh=0.25)
    changed = np.any(out != image, axis=2)
    assert changed[40:100, 20:80].any()
    assert not changed[28:72, 98:142].any()


def _person(logits: dict, default: float = 0.0) -> np.ndarray:
    kps = np.zeros((4, 17), np.float32)
    positions = {
        "nose": (50, 10), "left_shoulder": (60, 20), "right_shoulder": (40, 20),
        "left_hip": (60, 80), "right_hip": (40, 80), "left_knee": (60, 100), "right_knee": (40, 100),
    }
    for k, name in enumerate(COCO_KEYPOINT_NAMES):
        x, y = positions.get(name, (5 + k, 115))
        kps[0, k], kps[1, k] = x, y
        kps[2, k] = logits.get(name, default)
    return kps


def _kp_dets(kps: np.ndarray) -> Detections:
    return Detections(
        boxes=np.array([[30, 5, 70, 110]], np.float32), scores=np.array([0.95], np.float32),
        classes=np.array([1], np.int64), image_size=(H, W), keypoints=kps[None],
    )


def test_keypoint_skeleton_with_mid_shoulder_mid_hip_link():
    image = _image(3)
    strong = {n: 5.0 for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")}
    out = vis.draw_detections(image, _kp_dets(_person(strong)), None, thresh=0.5, kp_thresh=2.0,
                              show_box=False, show_class=False)
    changed = np.any(out != image, axis=2)
    assert changed[50, 50], "Detectron's extra mid-shoulder -> mid-hip link is missing"
    assert changed[20, 50] and changed[80, 50]  # shoulder-shoulder and hip-hip links
    assert not changed[100, 40:61].any()  # knees are below kp_thresh: no knee links or dots
    assert not changed[15, 50], "mid-shoulder -> nose drawn although the nose is below kp_thresh"

    # Below kp_thresh everywhere: nothing is drawn.
    weak = vis.draw_detections(image, _kp_dets(_person({}, default=1.0)), None, thresh=0.5, kp_thresh=2.0,
                               show_box=False, show_class=False)
    np.testing.assert_array_equal(weak, image)
    # The threshold is the logit row: lowering kp_thresh below 1 draws every keypoint.
    low = vis.draw_detections(image, _kp_dets(_person({}, default=1.0)), None, thresh=0.5, kp_thresh=0.5,
                              show_box=False, show_class=False)
    assert np.any(low != image, axis=2)[100, 40]


def test_rainbow_matches_matplotlib_definition():
    colors = vis.rainbow_bgr(17)
    assert colors[0] == (255.0, 0.0, 127.5)  # x=0: r=|2x-0.5|=0.5, g=sin(0)=0, b=cos(0)=1 (BGR)
    b, g, r = colors[-1]  # x=1 reads LUT entry 255 = 1.0: r=1, g~0, b~0
    assert r == 255.0 and g < 1e-9 * 255 + 1e-6 and b < 1e-6


def test_pdf_is_a_valid_single_image_pdf():
    image = _image(4)
    data = vis.encode_picture(image, "pdf")
    assert data.startswith(b"%PDF-1.4") and data.rstrip().endswith(b"%%EOF")
    xref_at = int(re.search(rb"startxref\n(\d+)\n", data).group(1))
    assert data[xref_at:].startswith(b"xref\n0 6\n")
    entries = data[xref_at:].split(b"\n")[3:8]
    for number, entry in enumerate(entries, 1):
        assert len(entry) + 1 == 20
        offset = int(entry[:10])
        assert data[offset:].startswith(f"{number} 0 obj".encode())
    length = int(re.search(rb"/Length (\d+) >>\nstream\n", data).group(1))
    start = data.index(b"stream\n") + len(b"stream\n")
    pixels = np.frombuffer(zlib.decompress(data[start : start + length]), np.uint8).reshape(H, W, 3)
    np.testing.assert_array_equal(pixels, image[:, :, ::-1])


@pytest.mark.parametrize("ext", ["png", "jpg", "pdf"])
def test_write_picture_atomic_and_decodable(tmp_path, ext):
    image = _image(5)
    path = vis.write_picture(image, tmp_path / f"x.png.{ext}")
    assert path.exists() and [p.name for p in tmp_path.iterdir()] == [path.name]
    if ext != "pdf":
        decoded = cv2.imread(str(path))
        assert decoded.shape == image.shape
        if ext == "png":
            np.testing.assert_array_equal(decoded, image)


def test_unknown_picture_format_is_a_user_error():
    from detconvert.errors import DetconvertError

    with pytest.raises(DetconvertError, match="unsupported picture format 'gif'"):
        vis.encode_picture(_image(), "gif")
