"""Golden parity of the whole test path: ``load_model(model_final.pkl).predict(coffee.png)`` vs Detectron.

One forward per golden per session (:func:`golden_run`, cached), with ``keep_blobs=True`` so the
intermediate blobs of the same run are compared too. Rules and tolerances are the reference README's
("Comparing"):

* final detections: same count per class; greedy IoU matching (highest golden score first); boxes
  within 0.01 px, scores within 1e-4; masks IoU >= 0.999 after decoding; keypoints x/y within 0.01 px;
* RPN-only proposals: the same count, matched by IoU the same way;
* dense blobs (RPN / RetinaNet head outputs): ``max|ours - golden| <= 1e-4 * max|golden|``;
* RoI blobs: Detectron's ``argsort`` top-N cuts may swap near-ties, so RoI sets are compared by
  matching boxes, and per-RoI head outputs are compared on the rows whose RoI matches exactly.

Head-in-isolation parity (golden RoIs fed to each head) lives in ``test_modeling_parity.py``.
"""
from __future__ import annotations

import functools
import json
from typing import Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
import pytest

from tests._shared import REFERENCE, requires_shared

pytestmark = requires_shared

MASK_FPN = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"
MASK_C4 = "12_2017_baselines__e2e_mask_rcnn_R-50-C4_1x"
KPS_FPN = "12_2017_baselines__e2e_keypoint_rcnn_R-50-FPN_1x"
RETINA = "12_2017_baselines__retinanet_R-50-FPN_1x"
RPN_FPN = "12_2017_baselines__rpn_R-50-FPN_1x"
DETECTORS = [MASK_FPN, MASK_C4, KPS_FPN, RETINA]

REL_TOL = 1e-4  # dense blobs: max abs error <= REL_TOL * max |golden|
BOX_ATOL = 0.01  # px
SCORE_ATOL = 1e-4
MASK_MIN_IOU = 0.999
KEYPOINT_ATOL = 0.01  # px
SAME_ROI = 1e-3  # px: an RoI "matches exactly" when every coordinate is this close
MIN_SAME_ROI_FRACTION = 0.98  # RoI sets: at most 2% may differ through near-tie swaps at a top-N cut


# ------------------------------------------------------------------------------------------ helpers


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU with Detectron's +1 widths between ``[N, 4]`` and ``[M, 4]`` boxes (float64)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def greedy_match(golden_boxes: np.ndarray, golden_scores: np.ndarray, ours: np.ndarray) -> List[Tuple[int, int]]:
    """README matching: golden boxes by descending score each take the free box of ours with the highest IoU."""
    iou = box_iou_matrix(golden_boxes, ours)
    free = np.ones(len(ours), dtype=bool)
    pairs = []
    for g in np.argsort(-np.asarray(golden_scores), kind="stable"):
        candidates = np.where(free, iou[g], -1.0)
        m = int(np.argmax(candidates))
        assert free[m], "ran out of boxes to match"
        free[m] = False
        pairs.append((int(g), m))
    return pairs


def decode_rle(rle: Dict) -> np.ndarray:
    counts = rle["counts"]
    return mask_util.decode({"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts})


def assert_detections_match(dets, golden: Dict, label: str = "") -> None:
    """Assert one image's :class:`Detections` equal Detectron's ``detections.json`` by the README's rules."""
    cls_boxes = golden["cls_boxes"]
    counts = {j: len(b) for j, b in enumerate(cls_boxes) if len(b)}
    ours_counts = {int(c): int(n) for c, n in zip(*np.unique(dets.classes, return_counts=True))}
    assert ours_counts == counts, f"{label}: detections per class {ours_counts}, golden {counts}"
    for j, gold in enumerate(cls_boxes):
        if not gold:
            continue
        gold = np.asarray(gold, np.float64)
        sel = np.flatnonzero(dets.classes == j)
        for g, m in greedy_match(gold[:, :4], gold[:, 4], dets.boxes[sel]):
            i = sel[m]
            np.testing.assert_allclose(dets.boxes[i], gold[g, :4], atol=BOX_ATOL, rtol=0,
                                       err_msg=f"{label}: class {j} box {g}")
            assert abs(float(dets.scores[i]) - gold[g, 4]) <= SCORE_ATOL, f"{label}: class {j} score {g}"
            if golden.get("cls_segms"):
                a = decode_rle(dets.masks[i])
                b = decode_rle(golden["cls_segms"][j][g])
                union = np.logical_or(a, b).sum()
                iou = np.logical_and(a, b).sum() / union if union else 1.0  # both empty: identical
                assert iou >= MASK_MIN_IOU, f"{label}: class {j} mask {g} IoU {iou:.5f}"
            if golden.get("cls_keyps"):
                xy = np.asarray(golden["cls_keyps"][j][g], np.float64)[:2]
                np.testing.assert_allclose(dets.keypoints[i][:2], xy, atol=KEYPOINT_ATOL, rtol=0,
                                           err_msg=f"{label}: class {j} keypoints {g}")


def assert_close(name: str, ours: np.ndarray, golden: np.ndarray) -> None:
    assert ours.shape == golden.shape, f"{name}: shape {ours.shape} vs golden {golden.shape}"
    scale = float(np.abs(golden).max()) if golden.size else 0.0
    err = float(np.abs(ours.astype(np.float64) - golden.astype(np.float64)).max()) if golden.size else 0.0
    assert err <= REL_TOL * scale, f"{name}: max abs error {err:.3g} > {REL_TOL} * {scale:.3g}"


def exact_roi_pairs(ours: np.ndarray, golden: np.ndarray) -> List[Tuple[int, int]]:
    """``(golden row, our row)`` for golden RoIs that have an identical RoI (every coordinate within SAME_ROI)."""
    if len(ours) == 0 or len(golden) == 0:
        return []
    pairs = []
    iou = box_iou_matrix(golden[:, 1:5], ours[:, 1:5])
    best = iou.argmax(axis=1)
    for g, m in enumerate(best):
        if np.abs(ours[m, 1:5].astype(np.float64) - golden[g, 1:5]).max() <= SAME_ROI and ours[m, 0] == golden[g, 0]:
            pairs.append((g, int(m)))
    return pairs


def assert_same_roi_set(name: str, ours: np.ndarray, golden: np.ndarray) -> List[Tuple[int, int]]:
    """Same size, and all but a near-tie fraction of the golden RoIs present in ours (see module doc)."""
    assert ours.shape == golden.shape, f"{name}: {ours.shape} vs golden {golden.shape}"
    pairs = exact_roi_pairs(ours, golden)
    if len(golden):
        frac = len(pairs) / len(golden)
        assert frac >= MIN_SAME_ROI_FRACTION, f"{name}: only {frac:.3%} of the golden RoIs found"
    return pairs


# ------------------------------------------------------------------------------- one run per golden


@functools.lru_cache(maxsize=None)
def weights_path(config_id: str):
    from tests.conftest import make_weights

    return make_weights(config_id)


@functools.lru_cache(maxsize=None)
def golden_predictor(config_id: str):
    from detconvert.inference.predictor import load_model

    return load_model(weights_path(config_id), device="cpu")


@functools.lru_cache(maxsize=None)
def golden_run(config_id: str):
    """``(Detections of coffee.png with extras = kept blobs, golden detections.json, golden blobs.npz)``."""
    import cv2

    image = cv2.imread(str(REFERENCE / "images" / "coffee.png"))
    dets = golden_predictor(config_id).predict([image], keep_blobs=True)[0]
    out = REFERENCE / "outputs" / config_id
    golden = json.loads((out / "detections.json").read_text())
    return dets, golden, dict(np.load(out / "blobs.npz"))


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("config_id", DETECTORS)
def test_final_detections_match_detectron(config_id):
    dets, golden, _ = golden_run(config_id)
    assert dets.image_size == (400, 600)
    assert_detections_match(dets, golden, config_id)
    if config_id in (MASK_FPN, MASK_C4):
        assert len(dets.masks) == len(dets) and dets.keypoints is None
    if config_id == KPS_FPN:
        assert dets.keypoints.shape == (len(dets), 4, 17) and dets.masks is None


def test_rpn_only_proposals_match_detectron():
    dets, golden, blobs = golden_run(RPN_FPN)
    gold_boxes = np.asarray(golden["boxes"], np.float64)
    gold_scores = np.asarray(golden["scores"], np.float64)
    assert dets.is_proposals and len(dets) == len(gold_boxes) == 1770
    assert np.all(np.diff(dets.scores) <= 0), "proposals are returned by descending score"
    close = 0
    for g, m in greedy_match(gold_boxes, gold_scores, dets.boxes):
        if np.abs(dets.boxes[m] - gold_boxes[g]).max() <= BOX_ATOL and abs(dets.scores[m] - gold_scores[g]) <= SCORE_ATOL:
            close += 1
    # Every proposal passes the RPN's per-level cuts; only near-ties at a cut may differ.
    assert close / len(gold_boxes) >= MIN_SAME_ROI_FRACTION, f"{close} of {len(gold_boxes)} proposals match"
    for lvl in range(2, 7):
        assert_close(f"rpn_cls_probs_fpn{lvl}", dets.extras[f"rpn_cls_probs_fpn{lvl}"], blobs[f"rpn_cls_probs_fpn{lvl}"])
        assert_same_roi_set(f"rpn_rois_fpn{lvl}", dets.extras[f"rpn_rois_fpn{lvl}"], blobs[f"rpn_rois_fpn{lvl}"])


@pytest.mark.parametrize("config_id", [MASK_FPN, KPS_FPN])
def test_fpn_rpn_levels_and_rois(config_id):
    dets, _, blobs = golden_run(config_id)
    ours = dets.extras
    np.testing.assert_array_equal(ours["im_info"], blobs["im_info"])
    for lvl in range(2, 7):
        for name in (f"rpn_cls_logits_fpn{lvl}", f"rpn_cls_probs_fpn{lvl}", f"rpn_bbox_pred_fpn{lvl}"):
            if name in blobs:
                assert_close(name, ours[name], blobs[name])
        assert_same_roi_set(f"rpn_rois_fpn{lvl}", ours[f"rpn_rois_fpn{lvl}"], blobs[f"rpn_rois_fpn{lvl}"])
    pairs = assert_same_roi_set("rois", ours["rois"], blobs["rois"])
    # Level assignment of the same RoI is the same (rois_fpn<l>), and the restore index rebuilds rois.
    rebuilt = np.concatenate([ours[f"rois_fpn{lvl}"] for lvl in range(2, 6)])[ours["rois_idx_restore_int32"]]
    np.testing.assert_array_equal(rebuilt, ours["rois"])
    for lvl in range(2, 6):
        n_ours, n_gold = len(ours[f"rois_fpn{lvl}"]), len(blobs[f"rois_fpn{lvl}"])
        assert abs(n_ours - n_gold) <= (1 - MIN_SAME_ROI_FRACTION) * len(blobs["rois"]), f"rois_fpn{lvl}"
    # Box head outputs on the RoIs both runs share, row by row.
    g_rows, o_rows = (np.array(x) for x in zip(*pairs))
    for name in ("cls_score", "cls_prob", "bbox_pred"):
        assert_close(name, ours[name][o_rows], blobs[name][g_rows])


def test_c4_rpn_rois_and_box_head():
    dets, _, blobs = golden_run(MASK_C4)
    ours = dets.extras
    for name in ("rpn_cls_logits", "rpn_cls_probs", "rpn_bbox_pred"):
        if name in blobs:
            assert_close(name, ours[name], blobs[name])
    assert "rois_fpn2" not in ours  # C4: rois are rpn_rois, one level
    pairs = assert_same_roi_set("rpn_rois", ours["rpn_rois"], blobs["rpn_rois"])
    np.testing.assert_array_equal(ours["rois"], ours["rpn_rois"])
    g_rows, o_rows = (np.array(x) for x in zip(*pairs[:48]))  # res5 head outputs: a subset keeps this fast
    for name in ("cls_prob", "bbox_pred"):
        assert_close(name, ours[name][o_rows], blobs[name][g_rows])


@pytest.mark.parametrize("config_id", [MASK_FPN, MASK_C4])
def test_mask_rois_and_probabilities(config_id):
    dets, _, blobs = golden_run(config_id)
    ours = dets.extras
    # mask_rois = final boxes x im_scale, in class order (the order of cls_boxes[1:]).
    assert_close("mask_rois", ours["mask_rois"], blobs["mask_rois"])
    own = ours["mask_fcn_probs"][np.arange(len(dets)), dets.classes]
    assert_close("mask_fcn_probs_own", own, blobs["mask_fcn_probs_own"])
    np.testing.assert_array_equal(dets.classes, blobs["mask_class_index"])
    if config_id == MASK_FPN:
        np.testing.assert_array_equal(ours["mask_rois_idx_restore_int32"], blobs["mask_rois_idx_restore_int32"])


def test_keypoint_rois_and_heatmaps():
    dets, _, blobs = golden_run(KPS_FPN)
    ours = dets.extras
    assert_close("keypoint_rois", ours["keypoint_rois"], blobs["keypoint_rois"])
    assert_close("kps_score_lowres_first25", ours["kps_score_lowres"][:25], blobs["kps_score_lowres_first25"])
    assert_close("kps_score_first25", ours["kps_score"][:25], blobs["kps_score_first25"])


def test_retinanet_level_outputs():
    dets, _, blobs = golden_run(RETINA)
    ours = dets.extras
    np.testing.assert_array_equal(ours["im_info"], blobs["im_info"])  # 896 x 1280: padded to stride 128
    assert_close("retnet_cls_prob_fpn3_stride2", ours["retnet_cls_prob_fpn3"][:, :, ::2, ::2],
                 blobs["retnet_cls_prob_fpn3_stride2"])
    for lvl in range(3, 8):
        if lvl > 3:
            assert_close(f"retnet_cls_prob_fpn{lvl}", ours[f"retnet_cls_prob_fpn{lvl}"], blobs[f"retnet_cls_prob_fpn{lvl}"])
        assert_close(f"retnet_bbox_pred_fpn{lvl}", ours[f"retnet_bbox_pred_fpn{lvl}"], blobs[f"retnet_bbox_pred_fpn{lvl}"])


def test_matcher_rejects_a_perturbed_result():
    """The comparison itself can fail: one moved box, one changed score, one dropped detection."""
    import copy

    dets, golden, _ = golden_run(MASK_FPN)
    moved = copy.deepcopy(dets)
    moved.boxes[0, 0] += 0.05
    with pytest.raises(AssertionError):
        assert_detections_match(moved, golden)
    rescored = copy.deepcopy(dets)
    rescored.scores[3] += 1e-3
    with pytest.raises(AssertionError):
        assert_detections_match(rescored, golden)
    dropped = copy.deepcopy(dets)
    dropped.classes = dropped.classes.copy()
    dropped.classes[-1] = 1
    with pytest.raises(AssertionError):
        assert_detections_match(dropped, golden)
