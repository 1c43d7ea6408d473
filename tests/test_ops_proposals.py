"""GenerateProposals and CollectAndDistributeFpnRpnProposals vs Detectron's unit goldens.

Probabilities and kept-row order are compared exactly; decoded boxes within 1e-6 x max|golden|
(float32 ``exp`` rounding); the collect/distribute outputs exactly.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detconvert.ops import collect_fpn_proposals, distribute_fpn_proposals, generate_proposals, stable_topk_desc
from tests._shared import REFERENCE, requires_shared


@requires_shared
@pytest.mark.parametrize(
    "case, stride, pre_nms, post_nms",
    [("c4", 16, 6000, 1000), ("fpn_P3", 8, 1000, 1000)],  # TEST settings of R-50-C4 / R-50-FPN
)
def test_generate_proposals_matches_detectron(case, stride, pre_nms, post_nms):
    g = np.load(REFERENCE / "unit" / "generate_proposals.npz")
    rois, probs = generate_proposals(
        torch.from_numpy(g[f"{case}_scores"]), torch.from_numpy(g[f"{case}_bbox_deltas"]),
        torch.from_numpy(g[f"{case}_im_info"]), g[f"{case}_anchors"], stride,
        pre_nms_top_n=pre_nms, post_nms_top_n=post_nms, nms_thresh=0.7, min_size=0,
    )
    ref_rois, ref_probs = g[f"{case}_rpn_rois"], g[f"{case}_rpn_roi_probs"]
    assert rois.shape == ref_rois.shape
    np.testing.assert_array_equal(probs.numpy(), ref_probs)
    assert np.abs(rois.numpy() - ref_rois).max() <= 1e-6 * np.abs(ref_rois).max()


def test_proposals_clip_to_padded_blob_and_drop_sub_pixel_boxes():
    cell = np.array([[-4.0, -4.0, 11.0, 11.0]])  # 16x16 anchor, stride 16, 2x2 grid
    scores = torch.tensor([[[[0.9, 0.8], [0.7, 0.6]]]])
    deltas = torch.zeros(1, 4, 2, 2)
    deltas[0, 0, 0, 0] = -10.0  # far left: clipped to x1 = x2 = 0, width 1 px (= 0.5 px at scale 2)
    deltas[0, 2, 0, 1] = -5.0  # 16 * exp(-5) = 0.11 px wide: (x2 - x1) / s + 1 < 1 -> dropped
    im_info = torch.tensor([[40.0, 48.0, 2.0]])
    rois, probs = generate_proposals(scores, deltas, im_info, cell, 16, pre_nms_top_n=10, post_nms_top_n=10,
                                     nms_thresh=0.7, min_size=0)
    np.testing.assert_allclose(probs.flatten().numpy(), [0.9, 0.7, 0.6])
    np.testing.assert_allclose(rois[0].numpy(), [0, 0, 0, 0, 11])  # Detectron keeps the clipped sliver
    np.testing.assert_allclose(rois[2].numpy(), [0, 12, 12, 27, 27])


def test_stable_topk_desc_equals_stable_argsort():
    rng = np.random.default_rng(0)
    scores = (rng.integers(0, 50, size=5000) / 50).astype(np.float32)  # many ties
    for k in (0, 1, 37, 1000, 4999, 5000, 6000):
        expected = np.argsort(-scores, kind="stable")[: k if 0 < k else None]
        np.testing.assert_array_equal(stable_topk_desc(torch.from_numpy(scores), k).numpy(), expected)


@requires_shared
def test_collect_and_distribute_matches_detectron():
    g = np.load(REFERENCE / "unit" / "collect_distribute.npz")
    rois, probs = collect_fpn_proposals(
        [torch.from_numpy(g[f"rpn_rois_fpn{lvl}"]) for lvl in range(2, 7)],
        [torch.from_numpy(g[f"rpn_roi_probs_fpn{lvl}"]) for lvl in range(2, 7)],
        1000,
    )
    np.testing.assert_array_equal(rois.numpy(), g["out_rois"])
    assert torch.all(probs[:-1] >= probs[1:])
    per_level, restore = distribute_fpn_proposals(rois, 2, 5)
    for lvl, r in zip(range(2, 6), per_level):
        np.testing.assert_array_equal(r.numpy(), g[f"out_rois_fpn{lvl}"])
    np.testing.assert_array_equal(restore.numpy(), g["out_rois_idx_restore_int32"])


def test_collect_keeps_top_n_per_image():
    # lessons.md L12: image 1 has uniformly higher scores; a batch-wide cut would starve image 0.
    rois = torch.cat([torch.zeros(50, 1), torch.rand(50, 4)], 1)
    rois = torch.cat([rois, torch.cat([torch.ones(50, 1), torch.rand(50, 4)], 1)])
    probs = torch.cat([torch.rand(50) * 0.1, 0.9 + torch.rand(50) * 0.1])
    out, out_probs = collect_fpn_proposals([rois], [probs], 10)
    assert out[:, 0].tolist() == [0.0] * 10 + [1.0] * 10
    batch_wide, _ = collect_fpn_proposals([rois], [probs], 10, per_image=False)
    assert batch_wide[:, 0].tolist() == [1.0] * 10
