"""The comparison rules of the golden parity tests (``tests/_parity.py``) on synthetic data: they pass what
they should and fail what they should, whatever the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import _parity

TOL = _parity.TOLERANCES["avx512"]


def _roi_set(n: int = 50, seed: int = 0):
    """``n`` distinct RoIs (image 0) with distinct scores in descending order, the last one at the cut."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 500, (n, 2))
    wh = rng.uniform(10, 200, (n, 2))
    rois = np.hstack([np.zeros((n, 1)), xy, xy + wh]).astype(np.float32)
    scores = np.linspace(0.99, 0.5, n).astype(np.float32)
    return rois, scores


def test_identical_sets_pass_and_pair_every_roi():
    rois, scores = _roi_set()
    pairs, missing, extra = _parity.assert_same_roi_set_up_to_ties("s", rois, scores, rois, scores, [0.5], TOL)
    assert pairs == [(i, i) for i in range(len(rois))] and not len(missing) and not len(extra)


def test_float_noise_on_coordinates_and_scores_is_the_same_roi():
    rois, scores = _roi_set()
    noisy = rois.copy()
    noisy[:, 1:] += TOL.roi_px / 2
    pairs, _, _ = _parity.assert_same_roi_set_up_to_ties("s", noisy, scores + TOL.score / 2, rois, scores, [], TOL)
    assert len(pairs) == len(rois)


def test_a_swap_at_the_cut_passes():
    rois, scores = _roi_set()
    ours, ours_scores = rois.copy(), scores.copy()
    ours[-1, 1:] = [600, 600, 700, 700]  # another RoI took the last place
    ours_scores[-1] = scores[-1] + TOL.score / 2  # with a score equal up to float noise
    _, missing, extra = _parity.assert_same_roi_set_up_to_ties("s", ours, ours_scores, rois, scores, [float(scores[-1])], TOL)
    assert missing.tolist() == [len(rois) - 1] and extra.tolist() == [len(rois) - 1]


def test_a_missing_roi_away_from_the_cut_fails():
    rois, scores = _roi_set()
    ours = rois.copy()
    ours[10, 1:] += 5.0
    with pytest.raises(AssertionError, match="away from a top-N cut"):
        _parity.assert_same_roi_set_up_to_ties("s", ours, scores, rois, scores, [float(scores[-1])], TOL)


def test_a_replacement_far_from_the_cut_fails():
    rois, scores = _roi_set()
    ours, ours_scores = rois.copy(), scores.copy()
    ours[-1, 1:] = [600, 600, 700, 700]
    ours_scores[-1] = 0.9  # the golden RoI at the cut is gone, but what replaced it is no near-tie
    with pytest.raises(AssertionError, match="away from a top-N cut"):
        _parity.assert_same_roi_set_up_to_ties("s", ours, ours_scores, rois, scores, [float(scores[-1])], TOL)


def test_no_cut_means_no_difference_allowed():
    rois, scores = _roi_set()
    with pytest.raises(AssertionError):
        _parity.assert_same_roi_set_up_to_ties("s", rois[:-1], scores[:-1], rois, scores, [None], TOL)


def test_a_score_off_by_more_than_the_bound_is_another_roi():
    rois, scores = _roi_set()
    with pytest.raises(AssertionError):
        _parity.assert_same_roi_set_up_to_ties("s", rois, scores + 3 * TOL.score, rois, scores, [], TOL)


def test_top_n_cut_is_the_nth_best_score():
    scores = np.array([[0.1, 0.9], [0.5, 0.7]], np.float32)
    assert _parity.top_n_cut(scores, 2) == pytest.approx(0.7)
    assert _parity.top_n_cut(scores, 4) is None  # nothing is cut


def test_collected_rois_find_their_level_scores():
    rois, scores = _roi_set(6)
    pools = [(rois[:3], scores[:3, None]), (rois[3:], scores[3:, None])]
    np.testing.assert_array_equal(_parity.scores_by_roi(rois[[4, 0]], pools), scores[[4, 0]])
    with pytest.raises(AssertionError):
        _parity.scores_by_roi(rois[:1] + 1, pools)


@pytest.mark.parametrize("aten, env, family", [
    ("AVX512", {}, "avx512"),
    ("AVX512", {"DNNL_MAX_CPU_ISA": "AVX512_CORE_AMX"}, "avx512"),
    ("AVX512", {"DNNL_MAX_CPU_ISA": "AVX2"}, "avx2"),  # oneDNN's convolutions capped below AVX-512
    ("AVX512", {"ONEDNN_MAX_CPU_ISA": "avx2_vnni"}, "avx2"),
    ("AVX2", {}, "avx2"),
    ("DEFAULT", {}, "avx2"),
])
def test_kernel_family_reads_aten_and_onednn(monkeypatch, aten, env, family):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: aten)
    for name in ("DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _parity.kernel_family() == family
    assert _parity.tolerances().family == family


def test_avx2_bounds_are_the_looser_ones():
    strict, loose = _parity.TOLERANCES["avx512"], _parity.TOLERANCES["avx2"]
    for name in ("dense_rel", "head_rel", "own_roi_head_rel", "score", "box_px", "roi_rel", "roi_px"):
        assert getattr(strict, name) <= getattr(loose, name), name
    assert strict.mask_iou >= loose.mask_iou


# ----------------------------------------------------------------------- masks: paste-grid truncation ties


def _one_detection(box, mask):
    from pycocotools import mask as mask_util

    from detconvert.structures import Detections

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return Detections(boxes=np.array([box], np.float32), scores=np.array([0.37], np.float32),
                      classes=np.array([54], np.int64), image_size=mask.shape, masks=[rle])


def _golden_of(box, mask):
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    cls_boxes = [[] for _ in range(81)]
    cls_segms = [[] for _ in range(81)]
    cls_boxes[54] = [list(map(float, box)) + [0.37]]
    cls_segms[54] = [{"size": rle["size"], "counts": rle["counts"].decode()}]
    return {"cls_boxes": cls_boxes, "cls_segms": cls_segms}


def _row_mask(row: int, x0: int = 41, x1: int = 130) -> np.ndarray:
    mask = np.zeros((400, 600), bool)
    mask[row, x0:x1] = True
    return mask


def test_a_mask_moved_by_a_truncation_tie_of_the_paste_grid_passes():
    """The TTA golden's degenerate box clipped at y = 399.0: a box 3e-5 px lower truncates to row 398, the
    one-row mask moves by a pixel (IoU 0) although the box is within the bound."""
    from tests.test_pipeline_golden import assert_detections_match

    gold_box = [44.34, 399.0, 143.72, 399.0]
    ours_box = [44.34, 398.99997, 143.72, 398.99997]
    golden = _golden_of(gold_box, _row_mask(399))
    assert_detections_match(_one_detection(ours_box, _row_mask(398)), golden, "tie",
                            tol=_parity.TOLERANCES["avx512"])


def test_a_moved_mask_without_a_tie_fails():
    from tests.test_pipeline_golden import assert_detections_match

    box = [44.34, 398.0, 143.72, 399.0]
    golden = _golden_of(box, _row_mask(399))
    with pytest.raises(AssertionError, match="IoU"):  # same box, same grid: a moved mask is a real difference
        assert_detections_match(_one_detection(box, _row_mask(398)), golden, "no tie",
                                tol=_parity.TOLERANCES["avx512"])
    with pytest.raises(AssertionError, match="IoU"):  # a tie that explains one row cannot explain two
        assert_detections_match(_one_detection([44.34, 398.99997, 143.72, 398.99997], _row_mask(397)),
                                _golden_of([44.34, 399.0, 143.72, 399.0], _row_mask(399)), "two rows",
                                tol=_parity.TOLERANCES["avx512"])
