"""Training targets equal Detectron's on ../shared/reference/train (exactly, sampling seeded or replayed)."""
from __future__ import annotations

import numpy as np
import pytest

from tests._shared import requires_shared

pytestmark = requires_shared


def _roidb_reference(config_id):
    from detconvert.io.unpickle import restricted_load
    from tests._train_golden import train_dir

    with open(train_dir() / config_id / "roidb.pkl", "rb") as f:
        return restricted_load(f, source=str(train_dir() / config_id / "roidb.pkl"))


@pytest.mark.parametrize("key", ["mask_fpn", "keypoint_fpn"])
def test_training_roidb_equals_detectron(key):
    """json -> gt entries + flipped copies + filtering + box targets, every array and dtype identical."""
    from tests._train_golden import config_and_minibatch_roidb

    config_id, _, roidb, _ = config_and_minibatch_roidb(key)
    ref = _roidb_reference(config_id)
    assert len(roidb) == len(ref)
    for ours, theirs in zip(roidb, ref):
        assert ours["flipped"] == theirs["flipped"] and ours["id"] == theirs["id"]
        for k, v in theirs.items():
            if isinstance(v, np.ndarray):
                assert ours[k].dtype == v.dtype, k
                np.testing.assert_array_equal(ours[k], v, err_msg=k)
        # Polygons (flipped ones included) and the crowd RLE, short pieces dropped.
        assert str(ours["segms"]) == str(theirs["segms"])


def _assert_equal_up_to_tie_order(got: np.ndarray, want: np.ndarray, scores: np.ndarray, candidates: np.ndarray) -> None:
    """Rows equal, except that rows of exactly equal score may come in either order.

    Detectron collects with ``np.argsort(-scores)`` (quicksort, not stable): the order of equal
    scores is numpy's and differs between numpy builds and CPUs (SIMD sorts), not a Detectron rule.
    """
    assert got.shape == want.shape

    def score_of(rows: np.ndarray) -> np.ndarray:
        index = {tuple(row): k for k, row in enumerate(candidates)}
        return scores[[index[tuple(row)] for row in rows]]

    got_scores, want_scores = score_of(got), score_of(want)
    np.testing.assert_array_equal(got_scores, want_scores)
    for value in np.unique(want_scores):
        run = want_scores == value
        np.testing.assert_array_equal(
            got[run][np.lexsort(got[run].T[::-1])], want[run][np.lexsort(want[run].T[::-1])]
        )


@pytest.mark.parametrize("key", ["mask_fpn", "keypoint_fpn", "mask_c4"])
def test_rpn_targets_with_detectron_seed(key):
    """Seeding our RandomState like Detectron seeded np.random reproduces its RPN blobs exactly."""
    from detconvert.train.rpn_targets import add_rpn_blobs
    from detconvert.train.sampling import SeededSampling
    from tests._train_golden import assert_blobs_equal, config_and_minibatch_roidb, npz, run_json

    config_id, cfg, _, minibatch = config_and_minibatch_roidb(key)
    run = run_json(config_id)
    rng = SeededSampling(run["seeds"]["minibatch"])
    rng.randint(len(cfg.scales), len(minibatch))  # get_minibatch draws the scale indices first
    ours = add_rpn_blobs(minibatch, run["minibatch"]["im_scales"], cfg, rng)
    ref = npz(config_id, "minibatch.npz")
    assert_blobs_equal(ours, ref, [k for k in ref if k != "data"])


def test_rpn_targets_with_replayed_choices():
    """The same blobs from the recorded draws (the injection path), all draws consumed."""
    from detconvert.train.rpn_targets import add_rpn_blobs
    from detconvert.train.sampling import ReplaySampling
    from tests._train_golden import assert_blobs_equal, config_and_minibatch_roidb, npz, run_json

    config_id, cfg, _, minibatch = config_and_minibatch_roidb("mask_c4")
    run = run_json(config_id)
    events = [e for e in run["rng_events"]["minibatch"] if e["module"] == "rpn"]
    rng = ReplaySampling(events)
    traces = []
    ours = add_rpn_blobs(minibatch, run["minibatch"]["im_scales"], cfg, rng, traces)
    assert rng.exhausted
    ref = npz(config_id, "minibatch.npz")
    assert_blobs_equal(ours, ref, [k for k in ref if k != "data"])
    sampling = npz(config_id, "rpn_sampling.npz")
    np.testing.assert_array_equal(traces[0]["inds_inside"], sampling["im0_inds_inside"])
    np.testing.assert_array_equal(np.sort(traces[0]["fg_final"]), np.sort(sampling["im0_fg_final"]))
    np.testing.assert_array_equal(np.sort(traces[0]["bg_final"]), np.sort(sampling["im0_bg_final"]))


def test_replay_refuses_divergent_control_flow():
    from detconvert.train.sampling import ReplaySampling

    rng = ReplaySampling([{"fn": "choice", "args": [[1, 2, 3]], "kwargs": {"size": 2, "replace": False}, "result": [3, 1]}])
    with pytest.raises(AssertionError):
        rng.randint(5, 2)


def _roi_inputs(key):
    from detconvert.train.roi_sampling import collect_training_proposals
    from tests._train_golden import config_and_minibatch_roidb, npz

    config_id, cfg, _, minibatch = config_and_minibatch_roidb(key)
    proposals = npz(config_id, "proposals.npz")
    if cfg.fpn_on:
        levels = range(cfg.rpn_min_level, cfg.rpn_max_level + 1)
        scores = [proposals[f"rpn_roi_probs_fpn{l}"] for l in levels]
        rois = collect_training_proposals(
            [proposals[f"rpn_rois_fpn{l}"] for l in levels], scores, cfg.rpn_post_nms_top_n
        )
        _assert_equal_up_to_tie_order(rois, proposals["collected_rois"], np.concatenate(scores).reshape(-1),
                                      np.concatenate([proposals[f"rpn_rois_fpn{l}"] for l in levels]))
        # Downstream sampling replays Detectron's choices by position, so it reads the golden order.
        rois = proposals["collected_rois"]
    else:
        rois = proposals["rpn_rois"]
    return config_id, cfg, minibatch, rois, npz(config_id, "minibatch.npz")["im_info"]


@pytest.mark.parametrize("key", ["mask_fpn", "keypoint_fpn", "mask_c4"])
def test_roi_head_targets_with_detectron_seed(key):
    """Collected proposals -> sampled RoIs, labels, class-specific (10,10,5,5) box targets, mask /
    keypoint targets and per-level RoIs, all bit-identical to Detectron's op outputs."""
    from detconvert.train.roi_sampling import proposal_targets
    from detconvert.train.sampling import SeededSampling
    from tests._train_golden import assert_blobs_equal, npz, run_json

    config_id, cfg, minibatch, rois, im_info = _roi_inputs(key)
    ours = proposal_targets(rois, minibatch, im_info, cfg, SeededSampling(run_json(config_id)["seeds"]["forward"]))
    ref = npz(config_id, "targets.npz")
    assert_blobs_equal(ours, ref, list(ref))


@pytest.mark.parametrize("key", ["mask_fpn", "keypoint_fpn", "mask_c4"])
def test_roi_head_targets_foreground_heavy(key):
    """Jittered-gt proposals (many fg RoIs, fg subsampling, 256 mask/keypoint targets) with the
    recorded draws injected."""
    from detconvert.train.roi_sampling import collect_training_proposals, proposal_targets
    from detconvert.train.sampling import ReplaySampling
    from tests._train_golden import assert_blobs_equal, npz, run_json

    config_id, cfg, minibatch, _, im_info = _roi_inputs(key)
    jit = npz(config_id, "jittered_targets.npz")
    rois = jit["in_proposals"]
    if cfg.fpn_on:
        rois = collect_training_proposals([rois], [jit["in_scores"]], cfg.rpn_post_nms_top_n)
        np.testing.assert_array_equal(rois, jit["trace_collected_rois"])
    rng = ReplaySampling(run_json(config_id)["jittered_targets"]["rng_events"])
    traces = []
    ours = proposal_targets(rois, minibatch, im_info, cfg, rng, traces)
    assert rng.exhausted
    ref = {k[len("out_"):]: v for k, v in jit.items() if k.startswith("out_")}
    assert_blobs_equal(ours, ref, list(ref))
    # The merged roidb entry (gt + proposals) matches Detectron's too. IoUs of the fractional jittered
    # boxes may differ in the last float32 ulp (the reference's overlap kernel rounds its union
    # differently); no threshold decision depends on it, as the exact outputs above show.
    entry = traces[0]["entry"]
    for name in ("boxes", "max_classes", "box_to_gt_ind_map", "bbox_targets"):
        np.testing.assert_array_equal(entry[name], jit[f"trace_im0_roidb_{name}"], err_msg=name)
    for name in ("max_overlaps", "gt_overlaps"):
        np.testing.assert_allclose(entry[name], jit[f"trace_im0_roidb_{name}"], rtol=3e-7, atol=0, err_msg=name)
    if cfg.mask_on or cfg.keypoints_on:
        assert ours["labels_int32"].astype(bool).sum() > 100  # really foreground-heavy


def test_retinanet_targets_equal_detectron():
    from detconvert.train.retinanet_targets import add_retinanet_blobs
    from tests._train_golden import assert_blobs_equal, config_and_minibatch_roidb, npz, run_json

    config_id, cfg, _, minibatch = config_and_minibatch_roidb("retinanet")
    run = run_json(config_id)
    _, _, height, width = run["minibatch"]["shapes"]["data"][0]
    ours = add_retinanet_blobs(minibatch, run["minibatch"]["im_scales"], width, height, cfg)
    ref = npz(config_id, "minibatch.npz")
    assert_blobs_equal(ours, ref, [k for k in ref if k != "data"])
    assert ours["retnet_fg_num"][0] == run["anchors"]["im0_counts"]["num_fg"] + run["anchors"]["im1_counts"]["num_fg"] + 2
