"""Golden parity of the whole test path: ``load_model(model_final.pkl).predict(image)`` vs Detectron.

One forward per golden per session (:func:`golden_run`, cached), with ``keep_blobs=True`` so the
intermediate blobs of the same run are compared too. Rules are the reference README's ("Comparing"),
with exact mode's bounds for the CPU kernel family in effect (``tests/_parity.py``; AVX-512 | AVX2):

* final detections: same count per class; greedy IoU matching (highest golden score first); boxes
  within 1e-3 | 5e-3 px, scores within 1e-5 | 5e-5; masks IoU >= 0.9999 | 0.999 after decoding;
  keypoints x/y within the box bound;
* dense blobs (RPN / RetinaNet head outputs): ``max|ours - golden| <= 1e-5 | 5e-5 * max|golden|``;
* RoI sets after top-N cuts (RPN levels, the FPN collect step, RPN-only proposals): tie-aware, never a
  share: a golden RoI may be missing only when its score is within the score bound of a cut's score
  (and then each RoI that replaces it must be too); per-RoI head outputs are compared on the RoIs both
  runs share (bound ``own_roi_head_rel``: those RoIs carry float noise of their own).

The GroupNorm Mask R-CNN golden runs on chelsea.png (``outputs_chelsea``). Head-in-isolation parity
(golden RoIs fed to each head) lives in ``test_modeling_parity.py``.
"""
from __future__ import annotations

import functools
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import pytest

from detconvert.ops.boxes import expand_boxes
from tests import _parity
from tests._parity import box_iou_matrix
from tests._shared import REFERENCE, requires_shared

pytestmark = [requires_shared, pytest.mark.golden_parity]

MASK_FPN = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"
MASK_C4 = "12_2017_baselines__e2e_mask_rcnn_R-50-C4_1x"
KPS_FPN = "12_2017_baselines__e2e_keypoint_rcnn_R-50-FPN_1x"
RETINA = "12_2017_baselines__retinanet_R-50-FPN_1x"
RPN_FPN = "12_2017_baselines__rpn_R-50-FPN_1x"
MASK_GN = "04_2018_gn_baselines__e2e_mask_rcnn_R-50-FPN_2x_gn"  # on chelsea.png (reference README: GroupNorm golden)
DETECTORS = [MASK_FPN, MASK_C4, KPS_FPN, RETINA, MASK_GN]


# ------------------------------------------------------------------------------------------ helpers


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


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0  # both empty: identical


def _paste_grid_tie_shift(ours: np.ndarray, gold: np.ndarray, resolution: int, tol) -> Optional[Tuple[int, int]]:
    """The (dx, dy) by which the mask paste's integer grid of ``ours`` lies beside the golden one when that comes
    only from a truncation tie, else None.

    Detectron pastes a mask into ``expand_boxes(box, (M + 2) / M).astype(int32)``. A golden coordinate sitting on
    an integer (a box clipped to the image edge at 399.0, say) truncates to 398 for a box 1e-5 px lower, which is
    well inside the box bound yet moves the whole mask by a pixel: for a one-pixel-high mask that is IoU 0. Only a
    pure translation whose every moved coordinate is within the box bound of an integer counts as such a tie.
    """
    scale = (resolution + 2.0) / resolution
    expanded = expand_boxes(np.stack([ours, gold]).astype(np.float32), scale)
    ref = expanded.astype(np.int32)
    delta = ref[1] - ref[0]
    if not delta.any() or delta[0] != delta[2] or delta[1] != delta[3]:
        return None
    moved = np.flatnonzero(delta)
    near_integer = np.abs(expanded[1, moved] - np.round(expanded[1, moved])) <= tol.box_px * scale
    return (int(delta[0]), int(delta[1])) if near_integer.all() else None


def _translated(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0),
                                                                     max(-dx, 0):w - max(dx, 0)]
    return out


def assert_detections_match(dets, golden: Dict, label: str = "", tol: Optional[_parity.Tolerances] = None,
                            mask_resolution: int = 28) -> None:
    """Assert one image's :class:`Detections` equal Detectron's ``detections.json`` (README rules, exact-mode bounds).

    Masks: IoU of the decoded masks; where the paste grid moved by a truncation tie (``_paste_grid_tie_shift``;
    ``mask_resolution`` is MRCNN.RESOLUTION), the IoU after undoing that one-pixel translation.
    """
    tol = tol or _parity.tolerances()
    worst = {"box": 0.0, "score": 0.0, "mask_iou": 1.0}
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
            box_err = float(np.abs(dets.boxes[i].astype(np.float64) - gold[g, :4]).max())
            score_err = abs(float(dets.scores[i]) - gold[g, 4])
            worst["box"], worst["score"] = max(worst["box"], box_err), max(worst["score"], score_err)
            assert box_err <= tol.box_px, f"{label}: class {j} box {g} {box_err:.3g} px off (> {tol.box_px:g}, {tol.family})"
            assert score_err <= tol.score, f"{label}: class {j} score {g} {score_err:.3g} off (> {tol.score:g}, {tol.family})"
            if golden.get("cls_segms"):
                a = decode_rle(dets.masks[i])
                b = decode_rle(golden["cls_segms"][j][g])
                iou = _mask_iou(a, b)
                if iou < tol.mask_iou:
                    shift = _paste_grid_tie_shift(dets.boxes[i], gold[g, :4], mask_resolution, tol)
                    if shift is not None:
                        iou = _mask_iou(_translated(a, *shift), b)
                worst["mask_iou"] = min(worst["mask_iou"], iou)
                assert iou >= tol.mask_iou, f"{label}: class {j} mask {g} IoU {iou:.5f} (< {tol.mask_iou}, {tol.family})"
            if golden.get("cls_keyps"):
                xy = np.asarray(golden["cls_keyps"][j][g], np.float64)[:2]
                kp_err = float(np.abs(dets.keypoints[i][:2].astype(np.float64) - xy).max())
                worst["keypoint"] = max(worst.get("keypoint", 0.0), kp_err)
                assert kp_err <= tol.box_px, f"{label}: class {j} keypoints {g} {kp_err:.3g} px off ({tol.family})"
    _parity.record("detections box px", worst["box"], tol.box_px)
    _parity.record("detections score", worst["score"], tol.score)
    _parity.record("detections mask IoU deficit", 1 - worst["mask_iou"], 1 - tol.mask_iou)
    if "keypoint" in worst:
        _parity.record("detections keypoint px", worst["keypoint"], tol.box_px)


def assert_dense(name: str, ours: np.ndarray, golden: np.ndarray) -> None:
    """Image-level blobs (RPN / RetinaNet outputs)."""
    _parity.assert_close(name, ours, golden, _parity.tolerances().dense_rel)


def assert_own_roi_head(name: str, ours: np.ndarray, golden: np.ndarray) -> None:
    """Per-RoI head outputs on the pipeline's own RoIs (equal to the golden ones up to float noise)."""
    _parity.assert_close(name, ours, golden, _parity.tolerances().own_roi_head_rel)


def assert_scaled_boxes(name: str, ours: np.ndarray, golden: np.ndarray, im_scale: float) -> None:
    """``mask_rois`` / ``keypoint_rois``: the final boxes times im_scale, so the box bound times im_scale."""
    bound = _parity.tolerances().box_px * im_scale
    err, _ = _parity.max_rel_error(ours[:, 1:], golden[:, 1:])
    _parity.record(name, err, bound)
    np.testing.assert_array_equal(ours[:, 0], golden[:, 0])
    assert err <= bound, f"{name}: {err:.3g} px off (> {bound:.3g}, {_parity.kernel_family()} bounds)"


def level_cuts(spec, blobs: Dict[str, np.ndarray], levels: Sequence[Optional[int]]) -> Dict[Optional[int], List[float]]:
    """Scores at the top-N cuts of each RPN level (``None``: C4's single level), from the golden blobs.

    ``GenerateProposals`` keeps the best ``pre_nms_top_n`` anchors (the cut score is the n-th best golden
    probability), runs NMS, then keeps the best ``post_nms_top_n`` (a cut only when the set is that full).
    """
    cuts = {}
    for lvl in levels:
        sfx = "" if lvl is None else f"_fpn{lvl}"
        level = [_parity.top_n_cut(blobs[f"rpn_cls_probs{sfx}"], spec.rpn.pre_nms_top_n)]
        if len(blobs[f"rpn_rois{sfx}"]) == spec.rpn.post_nms_top_n:
            level.append(float(blobs[f"rpn_roi_probs{sfx}"].min()))
        cuts[lvl] = [c for c in level if c is not None]
    return cuts


def assert_rpn_level_sets(ours: Dict, blobs: Dict, cuts: Dict) -> None:
    """Per-level ``rpn_rois_fpn<l>`` with their ``rpn_roi_probs``: the same sets up to near-ties at the level's cuts.

    (A near-tie swap at the pre-NMS cut cannot cascade: the RoI that came in has the lowest score, so NMS
    reaches it last and it suppresses nothing.)
    """
    for lvl, level_cuts_ in cuts.items():
        _parity.assert_same_roi_set_up_to_ties(
            f"rpn_rois_fpn{lvl}", ours[f"rpn_rois_fpn{lvl}"], ours[f"rpn_roi_probs_fpn{lvl}"],
            blobs[f"rpn_rois_fpn{lvl}"], blobs[f"rpn_roi_probs_fpn{lvl}"], level_cuts_, _parity.tolerances(),
        )


def collected_scores(rois: np.ndarray, blobs: Dict, levels: Sequence[int]) -> np.ndarray:
    return _parity.scores_by_roi(rois, [(blobs[f"rpn_rois_fpn{lvl}"], blobs[f"rpn_roi_probs_fpn{lvl}"]) for lvl in levels])


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
    """``(Detections of the golden's image with extras = kept blobs, golden detections.json, golden blobs.npz)``."""
    import cv2

    chelsea = config_id == MASK_GN
    image = cv2.imread(str(REFERENCE / "images" / ("chelsea.png" if chelsea else "coffee.png")))
    dets = golden_predictor(config_id).predict([image], keep_blobs=True)[0]
    out = REFERENCE / ("outputs_chelsea" if chelsea else "outputs") / config_id
    golden = json.loads((out / "detections.json").read_text())
    return dets, golden, dict(np.load(out / "blobs.npz"))


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("config_id", DETECTORS)
def test_final_detections_match_detectron(config_id):
    dets, golden, _ = golden_run(config_id)
    assert dets.image_size == ((300, 451) if config_id == MASK_GN else (400, 600))
    assert_detections_match(dets, golden, config_id, mask_resolution=14 if config_id == MASK_C4 else 28)
    if config_id in (MASK_FPN, MASK_C4, MASK_GN):
        assert len(dets.masks) == len(dets) and dets.keypoints is None
    if config_id == KPS_FPN:
        assert dets.keypoints.shape == (len(dets), 4, 17) and dets.masks is None


def test_rpn_only_proposals_match_detectron():
    dets, golden, blobs = golden_run(RPN_FPN)
    spec = golden_predictor(RPN_FPN).spec
    assert dets.is_proposals and len(dets) == len(golden["boxes"]) == 1770
    assert np.all(np.diff(dets.scores) <= 0), "proposals are returned by descending score"
    for lvl in range(2, 7):
        assert_dense(f"rpn_cls_probs_fpn{lvl}", dets.extras[f"rpn_cls_probs_fpn{lvl}"], blobs[f"rpn_cls_probs_fpn{lvl}"])
    cuts = level_cuts(spec, blobs, range(2, 7))
    assert_rpn_level_sets(dets.extras, blobs, cuts)
    # The proposals (original-image pixels) are the levels collected: the same tie rule over all level cuts.
    as_rois = lambda boxes: np.hstack([np.zeros((len(boxes), 1)), np.asarray(boxes, np.float64)])  # noqa: E731
    all_cuts = [c for level in cuts.values() for c in level]
    if len(golden["boxes"]) == spec.rpn.post_nms_top_n:
        all_cuts.append(float(np.min(golden["scores"])))
    _parity.assert_same_roi_set_up_to_ties(
        "proposals", as_rois(dets.boxes), dets.scores, as_rois(golden["boxes"]), np.asarray(golden["scores"]),
        all_cuts, _parity.tolerances(),
    )


@pytest.mark.parametrize("config_id", [MASK_FPN, KPS_FPN, MASK_GN])
def test_fpn_rpn_levels_and_rois(config_id):
    dets, _, blobs = golden_run(config_id)
    spec = golden_predictor(config_id).spec
    ours = dets.extras
    np.testing.assert_array_equal(ours["im_info"], blobs["im_info"])
    levels = range(spec.rpn.min_level, spec.rpn.max_level + 1)
    for lvl in levels:
        for name in (f"rpn_cls_logits_fpn{lvl}", f"rpn_cls_probs_fpn{lvl}", f"rpn_bbox_pred_fpn{lvl}"):
            if name in blobs:
                assert_dense(name, ours[name], blobs[name])
    cuts = level_cuts(spec, blobs, levels)
    assert_rpn_level_sets(ours, blobs, cuts)
    # rois: the collect step's top-N of all levels; a RoI may differ at that cut or at the cut of its level.
    collect_cuts = [c for level in cuts.values() for c in level]
    if len(blobs["rois"]) == spec.rpn.post_nms_top_n:
        collect_cuts.append(float(collected_scores(blobs["rois"], blobs, levels).min()))
    pairs, missing, extra = _parity.assert_same_roi_set_up_to_ties(
        "rois", ours["rois"], collected_scores(ours["rois"], ours, levels),
        blobs["rois"], collected_scores(blobs["rois"], blobs, levels), collect_cuts, _parity.tolerances(),
    )
    # Level assignment of the same RoI is the same (rois_fpn<l>), and the restore index rebuilds rois.
    rebuilt = np.concatenate([ours[f"rois_fpn{lvl}"] for lvl in range(2, 6)])[ours["rois_idx_restore_int32"]]
    np.testing.assert_array_equal(rebuilt, ours["rois"])
    for lvl in range(2, 6):
        n_ours, n_gold = len(ours[f"rois_fpn{lvl}"]), len(blobs[f"rois_fpn{lvl}"])
        assert abs(n_ours - n_gold) <= len(missing) + len(extra), f"rois_fpn{lvl}: {n_ours} RoIs, golden {n_gold}"
    # Box head outputs on the RoIs both runs share, row by row.
    g_rows, o_rows = (np.array(x) for x in zip(*pairs))
    for name in ("cls_score", "cls_prob", "bbox_pred"):
        assert_own_roi_head(name, ours[name][o_rows], blobs[name][g_rows])


def test_c4_rpn_rois_and_box_head():
    dets, _, blobs = golden_run(MASK_C4)
    spec = golden_predictor(MASK_C4).spec
    ours = dets.extras
    for name in ("rpn_cls_logits", "rpn_cls_probs", "rpn_bbox_pred"):
        if name in blobs:
            assert_dense(name, ours[name], blobs[name])
    assert "rois_fpn2" not in ours  # C4: rois are rpn_rois, one level
    cuts = level_cuts(spec, blobs, [None])
    pairs, _, _ = _parity.assert_same_roi_set_up_to_ties(
        "rpn_rois", ours["rpn_rois"], ours["rpn_roi_probs"], blobs["rpn_rois"], blobs["rpn_roi_probs"],
        cuts[None], _parity.tolerances(),
    )
    np.testing.assert_array_equal(ours["rois"], ours["rpn_rois"])
    g_rows, o_rows = (np.array(x) for x in zip(*pairs[:48]))  # res5 head outputs: a subset keeps this fast
    for name in ("cls_prob", "bbox_pred"):
        assert_own_roi_head(name, ours[name][o_rows], blobs[name][g_rows])


@pytest.mark.parametrize("config_id", [MASK_FPN, MASK_C4, MASK_GN])
def test_mask_rois_and_probabilities(config_id):
    dets, _, blobs = golden_run(config_id)
    ours = dets.extras
    # mask_rois = final boxes x im_scale, in class order (the order of cls_boxes[1:]).
    assert_scaled_boxes("mask_rois", ours["mask_rois"], blobs["mask_rois"], float(blobs["im_info"][0, 2]))
    own = ours["mask_fcn_probs"][np.arange(len(dets)), dets.classes]
    assert_own_roi_head("mask_fcn_probs_own", own, blobs["mask_fcn_probs_own"])
    np.testing.assert_array_equal(dets.classes, blobs["mask_class_index"])
    if config_id != MASK_C4:
        np.testing.assert_array_equal(ours["mask_rois_idx_restore_int32"], blobs["mask_rois_idx_restore_int32"])


def test_keypoint_rois_and_heatmaps():
    dets, _, blobs = golden_run(KPS_FPN)
    ours = dets.extras
    assert_scaled_boxes("keypoint_rois", ours["keypoint_rois"], blobs["keypoint_rois"], float(blobs["im_info"][0, 2]))
    assert_own_roi_head("kps_score_lowres_first25", ours["kps_score_lowres"][:25], blobs["kps_score_lowres_first25"])
    assert_own_roi_head("kps_score_first25", ours["kps_score"][:25], blobs["kps_score_first25"])


def test_retinanet_level_outputs():
    dets, _, blobs = golden_run(RETINA)
    ours = dets.extras
    np.testing.assert_array_equal(ours["im_info"], blobs["im_info"])  # 896 x 1280: padded to stride 128
    assert_dense("retnet_cls_prob_fpn3_stride2", ours["retnet_cls_prob_fpn3"][:, :, ::2, ::2],
                 blobs["retnet_cls_prob_fpn3_stride2"])
    for lvl in range(3, 8):
        if lvl > 3:
            assert_dense(f"retnet_cls_prob_fpn{lvl}", ours[f"retnet_cls_prob_fpn{lvl}"], blobs[f"retnet_cls_prob_fpn{lvl}"])
        assert_dense(f"retnet_bbox_pred_fpn{lvl}", ours[f"retnet_bbox_pred_fpn{lvl}"], blobs[f"retnet_bbox_pred_fpn{lvl}"])


def test_matcher_rejects_a_perturbed_result():
    """The comparison itself can fail: one box moved / one score changed by twice the bound, one dropped detection."""
    import copy

    dets, golden, _ = golden_run(MASK_FPN)
    tol = _parity.tolerances()
    assert_detections_match(dets, golden)
    moved = copy.deepcopy(dets)
    moved.boxes[0, 0] += 2 * tol.box_px
    with pytest.raises(AssertionError):
        assert_detections_match(moved, golden)
    rescored = copy.deepcopy(dets)
    rescored.scores[3] += 2 * tol.score
    with pytest.raises(AssertionError):
        assert_detections_match(rescored, golden)
    dropped = copy.deepcopy(dets)
    dropped.classes = dropped.classes.copy()
    dropped.classes[-1] = 1
    with pytest.raises(AssertionError):
        assert_detections_match(dropped, golden)
