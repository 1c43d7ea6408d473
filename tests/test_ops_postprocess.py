"""Box post-processing, mask paste + RLE and keypoint decoding vs Detectron's unit goldens.

Discrete outputs (kept detections, RLE strings, decoded masks, keypoint x/y) are compared exactly;
scores/boxes of the box results exactly (they are selected, not computed); keypoint logits and
probabilities within 1e-6 relative.
"""
from __future__ import annotations

import codecs
import pickle

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detconvert.ops import (
    box_results_with_nms_and_limit,
    decode_box_predictions,
    heatmaps_to_keypoints,
    keypoint_results,
    paste_masks,
    segm_results,
)
from detconvert.ops.boxes import bbox_transform
from tests._shared import REFERENCE, requires_shared


class _GoldenUnpickler(pickle.Unpickler):
    """Reads the reference pickles (NumPy arrays, bytes) and refuses every other global."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        if name == "bytes":
            return bytes
        return super().find_class(module, name)


def _golden_pickle(name):
    with open(REFERENCE / "unit" / name, "rb") as f:
        return _GoldenUnpickler(f).load()


@requires_shared
def test_box_results_match_detectron():
    g = np.load(REFERENCE / "unit" / "box_results.npz")
    res = box_results_with_nms_and_limit(g["scores_in"], g["boxes_in"], score_thresh=0.05, nms_thresh=0.5,
                                         detections_per_im=100)
    np.testing.assert_array_equal(res.scores.numpy(), g["scores_out"])
    np.testing.assert_array_equal(res.boxes.numpy(), g["boxes_out"])
    cls_boxes = res.cls_boxes(81)
    for j in (3, 17, 44):
        np.testing.assert_array_equal(cls_boxes[j], g[f"cls_boxes_{j}"])
    assert sum(len(b) for b in cls_boxes[1:]) == 100


def test_score_threshold_is_strict_and_cap_keeps_ties():
    num = 120
    scores = np.zeros((num, 3), dtype=np.float32)
    scores[:, 1] = 0.5  # 120 tied detections of class 1, far apart
    scores[0, 2] = 0.05  # exactly the threshold: dropped (strict >)
    scores[1, 2] = 0.9
    xy = np.arange(num, dtype=np.float32)[:, None] * 20
    boxes = np.tile(np.hstack([xy, xy, xy + 10, xy + 10]), (1, 3))
    res = box_results_with_nms_and_limit(scores, boxes, score_thresh=0.05, nms_thresh=0.5, detections_per_im=100)
    assert len(res) == 121  # the 100th best score is 0.5: every tie at the cut survives
    assert res.classes.tolist().count(2) == 1


def test_soft_nms_path_rescores_instead_of_dropping():
    scores = np.array([[0.1, 0.9], [0.1, 0.8]], dtype=np.float32)
    boxes = np.array([[0, 0, 0, 0, 0, 0, 9, 9], [0, 0, 0, 0, 0, 0, 9, 7]], dtype=np.float32)  # IoU 0.8
    hard = box_results_with_nms_and_limit(scores, boxes, nms_thresh=0.5)
    soft = box_results_with_nms_and_limit(scores, boxes, nms_thresh=0.5, soft_nms_method="linear")
    assert len(hard) == 1 and len(soft) == 2
    np.testing.assert_allclose(soft.scores.numpy(), [0.9, 0.8 * (1 - 0.8)], rtol=1e-6)


def test_decode_box_predictions_in_original_image_space():
    rng = np.random.default_rng(0)
    rois = np.hstack([np.zeros((20, 1)), rng.random((20, 2)) * 500, 500 + rng.random((20, 2)) * 500])
    rois = rois.astype(np.float32)
    deltas = rng.standard_normal((20, 12)).astype(np.float32)
    scale = 1.6
    out = decode_box_predictions(torch.from_numpy(rois), torch.from_numpy(deltas), scale, (400, 600), 3).numpy()
    # Detectron: rois[:, 1:5] / im_scale in float64, then bbox_transform in float32, then clip.
    boxes = torch.from_numpy((rois[:, 1:5].astype(np.float64) / scale).astype(np.float32))
    ref = bbox_transform(boxes, torch.from_numpy(deltas), (10, 10, 5, 5)).numpy()
    ref[:, 0::2] = np.clip(ref[:, 0::2], 0, 599)
    ref[:, 1::2] = np.clip(ref[:, 1::2], 0, 399)
    np.testing.assert_array_equal(out, ref)
    agnostic = decode_box_predictions(torch.from_numpy(rois), torch.from_numpy(deltas[:, :8]), scale, (400, 600), 3,
                                      cls_agnostic_bbox_reg=True).numpy()
    # Class-agnostic: bbox_pred[:, -4:] decoded once and tiled across the classes (ref col 4:8 = deltas 4:8).
    np.testing.assert_array_equal(agnostic, np.tile(ref[:, 4:8], (1, 3)))


@requires_shared
def test_segm_results_match_detectron_rle():
    g = np.load(REFERENCE / "unit" / "segm_results.npz")
    ref = _golden_pickle("segm_results.pkl")
    classes = np.concatenate([[j] * len(b) for j, b in enumerate(ref["cls_boxes"]) if j > 0 and len(b)])
    ref_rles = [rle for segms in ref["cls_segms"][1:] for rle in segms]
    im_h, im_w = (int(v) for v in g["im_hw"])
    rles = segm_results(g["masks"], g["ref_boxes"], im_h, im_w, classes=classes, thresh=0.5)
    assert [r["counts"] for r in rles] == [r["counts"] for r in ref_rles]
    assert all(r["size"] == [im_h, im_w] for r in rles)
    np.testing.assert_array_equal(mask_util.decode(rles).transpose(2, 0, 1), g["decoded_masks"])
    pasted = paste_masks(g["masks"], g["ref_boxes"], im_h, im_w, classes=classes)
    np.testing.assert_array_equal(pasted.transpose(2, 0, 1), g["decoded_masks"])


@pytest.mark.parametrize("im_hw", [(60, 80), (1, 1), (37, 23)])
def test_crop_rle_equals_pycocotools_encode(im_hw):
    rng = np.random.default_rng(im_hw[0])
    masks = rng.random((30, 14, 14), dtype=np.float32)
    masks[:4] = 1.0  # solid masks covering whole columns: runs continue across columns
    xy = rng.random((30, 2)) * 100 - 20
    boxes = np.hstack([xy, xy + rng.random((30, 2)) * 90]).astype(np.float32)
    boxes[0] = [-10, -10, 200, 200]
    boxes[1] = [500, 500, 600, 600]  # outside the image: empty mask
    rles = segm_results(masks, boxes, *im_hw)
    expected = mask_util.encode(paste_masks(masks, boxes, *im_hw))
    assert [r["counts"] for r in rles] == [r["counts"] for r in expected]


@requires_shared
def test_keypoints_match_detectron():
    g = np.load(REFERENCE / "unit" / "keypoints.npz")
    out = heatmaps_to_keypoints(g["heatmaps"], g["rois"])
    ref = g["heatmaps_to_keypoints"]
    np.testing.assert_array_equal(out[:, :2], ref[:, :2])
    np.testing.assert_allclose(out[:, 2:], ref[:, 2:], rtol=1e-6, atol=0)
    cls_keyps = keypoint_results(g["heatmaps"], g["rois"], 2)
    assert cls_keyps[0] == [] and len(cls_keyps[1]) == len(g["rois"])
    np.testing.assert_allclose(np.stack(cls_keyps[1]), g["keypoint_results"], rtol=1e-6, atol=0)


def test_keypoint_offsets_use_ceil_width_and_half_pixel_centres():
    heat = np.full((1, 1, 8, 8), -5.0, dtype=np.float32)
    heat[0, 0, 0, 0] = 10.0  # corner peak stays the argmax after bicubic resizing
    roi = np.array([[10.0, 20.0, 13.5, 27.0]], dtype=np.float32)  # w = 3.5 -> map width ceil = 4
    out = heatmaps_to_keypoints(heat, roi)
    assert out[0, 0, 0] == pytest.approx(10.0 + 0.5 * 3.5 / 4)
    assert out[0, 1, 0] == pytest.approx(20.0 + 0.5 * 7 / 7)
