"""Test-time augmentation pieces against Detectron's formulas (``core/test.py``, ``utils/boxes.py``,
``utils/image.py``, ``utils/keypoints.py``) on small arrays, the transform order, the pass counts, and the
config refusals. The end-to-end golden (``TEST.BBOX_AUG`` + ``MASK_AUG`` on coffee) is in
``test_tta_golden.py``.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detconvert.config import build_spec, translate_config
from detconvert.config.build_spec import augmentation_passes, explain
from detconvert.errors import ConfigError
from detconvert.inference.tta import (
    aspect_ratio_boxes,
    aspect_ratio_image,
    box_transforms,
    combine_boxes,
    combine_heatmaps,
    combine_masks,
    combine_scores,
    flip_boxes,
    flip_heatmaps,
    head_transforms,
    uses_augmentation,
)
from detconvert.ops import heatmaps_to_keypoints, segm_results
from detconvert.spec import ArchSpec

ROOT = Path(__file__).resolve().parent.parent
MASK_TTA_YAML = ROOT / "configs_detectron" / "test_time_aug" / "e2e_mask_rcnn_R-50-FPN_2x.yaml"
KPS_TTA_YAML = ROOT / "configs_detectron" / "test_time_aug" / "keypoint_rcnn_R-50-FPN_1x.yaml"
SCALES = (400, 500, 600, 700, 900, 1000, 1100, 1200)


def spec_of(yaml: Path, *overrides) -> ArchSpec:
    return build_spec(translate_config(yaml, overrides=list(overrides)).cfg)


# ----------------------------------------------------------------------------------------- box transforms


def test_flip_boxes_is_detectrons_formula_with_plus_one_widths():
    boxes = np.array([[0, 2, 9, 5, 3.5, 1, 7.25, 8]], np.float32)  # two classes' boxes tiled in one row
    flipped = flip_boxes(boxes, 20)
    # utils/boxes.flip_boxes: x1' = W - x2 - 1, x2' = W - x1 - 1; y unchanged.
    np.testing.assert_array_equal(flipped, [[10, 2, 19, 5, 11.75, 1, 15.5, 8]])
    assert flipped.dtype == np.float32
    widths = lambda b: b[:, 2::4] - b[:, 0::4] + 1  # noqa: E731
    np.testing.assert_array_equal(widths(flipped), widths(boxes))
    np.testing.assert_array_equal(flip_boxes(flipped, 20), boxes)  # round trip
    np.testing.assert_array_equal(boxes, [[0, 2, 9, 5, 3.5, 1, 7.25, 8]])  # input untouched


def test_aspect_ratio_boxes_and_image_follow_detectron():
    boxes = np.array([[2, 3, 10, 7]], np.float32)
    np.testing.assert_array_equal(aspect_ratio_boxes(boxes, 0.5), [[1, 3, 5, 7]])
    np.testing.assert_array_equal(aspect_ratio_boxes(aspect_ratio_boxes(boxes, 2.0), 0.5), boxes)
    assert aspect_ratio_boxes(boxes, 1.5).dtype == np.float32
    im = np.zeros((6, 5, 3), np.uint8)
    # aspect_ratio_rel: width int(round(r * W)), height unchanged; Python 3 rounds 2.5 to 2 and 7.5 to 8.
    assert aspect_ratio_image(im, 0.5).shape == (6, 2, 3)
    assert aspect_ratio_image(im, 1.5).shape == (6, 8, 3)


def test_flipped_mask_pasted_on_the_flipped_box_is_the_mirrored_mask():
    # im_detect_mask_hflip: the mask of the flipped box is flipped back with [..., ::-1]. Pasted with
    # segm_results (expand_boxes, int truncation, cv2.resize), mask and box flips mirror each other when the
    # expanded box is whole pixels (width 28 -> 30 with M = 28).
    rng = np.random.default_rng(0)
    m = 28
    probs = (rng.random((1, m, m)) > 0.5).astype(np.float32)
    probs[0, :, : m // 2] = 0.0  # asymmetric: the right half only
    width = 100
    box = np.array([[10, 20, 38, 48]], np.float32)
    ours = segm_results(probs, box, 60, width, thresh=0.5)[0]
    mirrored = segm_results(probs[:, :, ::-1], flip_boxes(box, width), 60, width, thresh=0.5)[0]
    import pycocotools.mask as mask_util

    a, b = mask_util.decode(ours), mask_util.decode(mirrored)
    assert a.sum() > 100
    np.testing.assert_array_equal(b, a[:, ::-1])


def test_flip_heatmaps_swaps_left_right_then_mirrors_and_keypoints_follow():
    rng = np.random.default_rng(1)
    heat = rng.standard_normal((1, 17, 8, 8)).astype(np.float32)
    flipped = flip_heatmaps(heat)
    # utils/keypoints.flip_heatmaps: left_eye (1) <-> right_eye (2), ..., nose (0) stays; then [..., ::-1].
    np.testing.assert_array_equal(flipped[:, 0], heat[:, 0, :, ::-1])
    np.testing.assert_array_equal(flipped[:, 2], heat[:, 1, :, ::-1])
    np.testing.assert_array_equal(flipped[:, 15], heat[:, 16, :, ::-1])
    np.testing.assert_array_equal(flip_heatmaps(flipped), heat)  # round trip
    # A peaked heatmap decoded on the flipped box lands at the mirrored x (W - 1 - x) on the swapped keypoint.
    peaks = np.full((1, 17, 8, 8), -5.0, np.float32)
    for k in range(17):
        peaks[0, k, k % 8, (3 * k) % 8] = 5.0
    box = np.array([[10, 4, 18, 12]], np.float32)  # width 8 = heatmap size: no resize, so no argmax ties
    width = 64
    kps = heatmaps_to_keypoints(peaks, box)
    kps_flipped = heatmaps_to_keypoints(flip_heatmaps(peaks), flip_boxes(box, width))
    swap = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    np.testing.assert_allclose(kps_flipped[0, 0, swap], width - 1 - kps[0, 0], atol=1e-4)
    np.testing.assert_allclose(kps_flipped[0, 1, swap], kps[0, 1], atol=1e-4)


# --------------------------------------------------------------------------------------------- heuristics


def test_score_and_coordinate_heuristics():
    a = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)
    b = np.array([[0.4, 0.6], [0.2, 0.8]], np.float32)
    identity = np.array([[0.3, 0.7], [0.5, 0.5]], np.float32)
    passes = [a, b, identity]  # core/test.py appends the identity pass last
    np.testing.assert_array_equal(combine_scores(passes, identity, "ID"), identity)
    np.testing.assert_allclose(combine_scores(passes, identity, "AVG"), [[0.3, 0.7], [13 / 30, 17 / 30]], rtol=1e-6)
    assert combine_scores(passes, identity, "AVG").dtype == np.float32  # np.mean keeps float32
    np.testing.assert_array_equal(combine_scores(passes, identity, "UNION"), np.vstack([a, b, identity]))
    boxes = [np.array([[0, 0, 10, 10]], np.float32), np.array([[2, 2, 12, 14]], np.float32)]
    np.testing.assert_array_equal(combine_boxes(boxes, boxes[1], "ID"), boxes[1])
    np.testing.assert_array_equal(combine_boxes(boxes, boxes[1], "AVG"), [[1, 1, 11, 12]])
    np.testing.assert_array_equal(combine_boxes(boxes, boxes[1], "UNION"), [[0, 0, 10, 10], [2, 2, 12, 14]])
    with pytest.raises(ValueError, match="SCORE_HEUR"):
        combine_scores(passes, identity, "MEDIAN")


def test_mask_heuristics():
    p = [np.array([[[0.2, 0.9]]], np.float32), np.array([[[0.8, 0.5]]], np.float32)]
    np.testing.assert_allclose(combine_masks(p, "SOFT_AVG"), [[[0.5, 0.7]]], rtol=1e-6)
    np.testing.assert_array_equal(combine_masks(p, "SOFT_MAX"), np.array([[[0.8, 0.9]]], np.float32))
    # LOGIT_AVG: sigmoid(mean(logit)); logit(0.2) = -logit(0.8), so the first pixel is 0.5.
    logit = lambda y: np.log(y / (1 - y))  # noqa: E731
    expected = 1 / (1 + np.exp(-(logit(0.9) + logit(0.5)) / 2))
    np.testing.assert_allclose(combine_masks(p, "LOGIT_AVG"), [[[0.5, expected]]], rtol=1e-5)
    # A probability of exactly 0 is clamped at 1e-20 before the log (no -inf / nan).
    assert np.isfinite(combine_masks([np.zeros((1, 1, 1), np.float32)] * 2, "LOGIT_AVG")).all()
    with pytest.raises(ValueError, match="MASK_AUG"):
        combine_masks(p, "HARD_AVG")


def test_combining_own_class_maps_equals_detectrons_full_combination():
    # tta combines each detection's own-class map only; per-pixel heuristics make that Detectron's result.
    rng = np.random.default_rng(2)
    full = [rng.random((3, 5, 4, 4)).astype(np.float32) for _ in range(4)]
    classes = np.array([1, 4, 2])
    rows = np.arange(3)
    for heur in ("SOFT_AVG", "SOFT_MAX", "LOGIT_AVG"):
        whole = combine_masks(full, heur)[rows, classes]
        own = combine_masks([f[rows, classes] for f in full], heur)
        np.testing.assert_array_equal(own, whole)


def test_heatmap_heuristics_and_size_dependent_combination():
    h = [np.full((2, 1, 2, 2), v, np.float32) for v in (1.0, 4.0, 10.0)]
    np.testing.assert_array_equal(combine_heatmaps(h, "HM_AVG"), np.full((2, 1, 2, 2), 5.0))
    np.testing.assert_array_equal(combine_heatmaps(h, "HM_MAX"), np.full((2, 1, 2, 2), 10.0))
    # combine_heatmaps_size_dep: +1 areas; < AREA_TH drops down-scaled passes, >= AREA_TH up-scaled ones.
    boxes = np.array([[0, 0, 148, 149], [0, 0, 149, 149]], np.float32)  # areas 149*150 and 150*150
    kw = dict(boxes=boxes, downscaled=[False, True, False], upscaled=[False, False, True], area_th=150.0**2)
    avg = combine_heatmaps(h, "HM_AVG", **kw)
    np.testing.assert_array_equal(avg[0], np.full((1, 2, 2), 5.5))  # small: passes 0 and 2
    np.testing.assert_array_equal(avg[1], np.full((1, 2, 2), 2.5))  # large: passes 0 and 1
    mx = combine_heatmaps(h, "HM_MAX", **kw)
    np.testing.assert_array_equal(mx[:, 0, 0, 0], [10.0, 4.0])
    with pytest.raises(ValueError, match="KPS_AUG"):
        combine_heatmaps(h, "HM_MEDIAN")


# ----------------------------------------------------------------------------- transforms and pass counts


def test_transform_order_and_pass_counts_of_the_mask_config():
    spec = spec_of(MASK_TTA_YAML)
    assert spec.test.bbox_aug.enabled and spec.test.bbox_aug.scales == SCALES and spec.test.bbox_aug.max_size == 2000
    assert spec.test.mask_aug.heur == "SOFT_AVG" and spec.test.bbox_vote and spec.test.bbox_vote_thresh == 0.9
    boxes = box_transforms(spec)
    # im_detect_bbox_aug: flip at TEST.SCALE, each scale then its flip, the identity last.
    assert [(t.scale, t.max_size, t.hflip) for t in boxes] == (
        [(800, 1333, True)] + [(s, 2000, f) for s in SCALES for f in (False, True)] + [(800, 1333, False)])
    heads = head_transforms(spec, spec.test.mask_aug)
    assert heads[0].is_identity and heads[1].hflip and len(heads) == 18  # identity first for masks
    assert augmentation_passes(spec) == (18, 18, 0)
    assert uses_augmentation(spec)
    assert "test-time augmentation: 35 passes per image (18 for boxes, 17 more for masks)" in explain(spec)
    off = spec_of(MASK_TTA_YAML, ("TEST.BBOX_AUG.ENABLED", "False"), ("TEST.MASK_AUG.ENABLED", "False"))
    assert not uses_augmentation(off) and augmentation_passes(off) == (1, 0, 0)
    assert "test-time augmentation: off, 1 pass" in explain(off)


def test_keypoint_config_tags_down_and_up_scaled_passes():
    spec = spec_of(KPS_TTA_YAML)
    kps = spec.test.kps_aug
    assert kps.enabled and kps.scale_size_dep and kps.area_th == 22500 and kps.heur == "HM_AVG"
    heads = head_transforms(spec, kps)
    scaled = [t for t in heads if t.scale != 800]
    assert all(t.downscaled == (t.scale < 800) and t.upscaled == (t.scale > 800) for t in scaled)
    assert not any(t.downscaled or t.upscaled for t in heads if t.scale == 800)
    # fast_rcnn (precomputed proposals) may average: the proposals are the same in every pass.
    assert spec.pipeline == "precomputed_proposals" and spec.test.bbox_aug.score_heur == "AVG"
    assert augmentation_passes(spec) == (18, 0, 18)


def test_retinanet_and_rpn_only_never_augment():
    retina = ROOT / "configs_detectron" / "12_2017_baselines" / "retinanet_R-50-FPN_1x.yaml"
    spec = spec_of(retina, ("TEST.BBOX_AUG.ENABLED", "True"), ("TEST.BBOX_AUG.H_FLIP", "True"))
    assert not uses_augmentation(spec) and augmentation_passes(spec) == (1, 0, 0)
    assert "never reads it" in explain(spec)


@pytest.mark.parametrize("overrides, key", [
    ([("TEST.BBOX_AUG.SCORE_HEUR", "AVG"), ("TEST.BBOX_AUG.COORD_HEUR", "AVG")], "TEST.BBOX_AUG.SCORE_HEUR"),
    ([("TEST.BBOX_AUG.COORD_HEUR", "AVG")], "TEST.BBOX_AUG.SCORE_HEUR / COORD_HEUR"),
    ([("TEST.BBOX_AUG.SCORE_HEUR", "MEDIAN")], "TEST.BBOX_AUG.SCORE_HEUR"),
    ([("TEST.BBOX_AUG.SCALE_SIZE_DEP", "True")], "TEST.BBOX_AUG.SCALE_SIZE_DEP"),
    ([("TEST.MASK_AUG.SCALE_SIZE_DEP", "True")], "TEST.MASK_AUG.SCALE_SIZE_DEP"),
    ([("TEST.MASK_AUG.HEUR", "HARD_AVG")], "TEST.MASK_AUG.HEUR"),
])
def test_what_detectron_cannot_run_is_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"key[s]? {key}"):
        spec_of(MASK_TTA_YAML, *overrides)


def test_refusals_only_apply_to_blocks_that_run():
    # Detectron reads a block only when it is enabled: switched off, its settings do not matter.
    spec = spec_of(MASK_TTA_YAML, ("TEST.BBOX_AUG.ENABLED", "False"), ("TEST.BBOX_AUG.SCALE_SIZE_DEP", "True"))
    assert augmentation_passes(spec) == (1, 18, 0)
    with pytest.raises(ConfigError, match="key TEST.KPS_AUG.HEUR"):
        spec_of(KPS_TTA_YAML, ("TEST.KPS_AUG.HEUR", "HM_MEDIAN"))
    # A keypoint model without the 17 COCO keypoints cannot flip heatmaps (flip_heatmaps' channel pairs).
    with pytest.raises(ConfigError, match="key TEST.KPS_AUG.H_FLIP"):
        spec_of(KPS_TTA_YAML, ("KRCNN.NUM_KEYPOINTS", "5"))


def test_specs_of_older_checkpoints_read_back():
    spec = spec_of(MASK_TTA_YAML)
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    legacy = spec.to_dict()
    legacy["test"] = {**legacy["test"], "bbox_aug": True, "mask_aug": False, "kps_aug": False}
    old = ArchSpec.from_dict(legacy)
    assert old.test.bbox_aug.enabled and not old.test.bbox_aug.scales and not old.test.mask_aug.enabled


def test_cli_refuses_an_unimplemented_option_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "detconvert", "config", str(MASK_TTA_YAML), "--explain",
         "--set", "TEST.MASK_AUG.SCALE_SIZE_DEP", "True"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "TEST.MASK_AUG.SCALE_SIZE_DEP" in lines[0] and "Traceback" not in proc.stderr
