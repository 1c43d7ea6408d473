"""Loss values equal Detectron's (losses.json / unit_losses) within 1e-4 relative."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests._shared import requires_shared

pytestmark = requires_shared
RTOL = 1e-4  # the reference README's tolerance for loss values


def _unit():
    from tests._train_golden import train_dir

    with np.load(train_dir() / "unit_losses.npz") as z:
        arrays = {k: torch.from_numpy(z[k]) for k in z.files}
    with open(train_dir() / "unit_losses.json") as f:
        cases = json.load(f)["cases"]
    return arrays, cases


def _inputs(arrays, case, n):
    return [arrays[f"{case}/in{i}"] for i in range(n)]


def test_unit_loss_kernels():
    from detconvert.train import losses as L

    z, cases = _unit()
    got = {
        "sigmoid_xent": L.sigmoid_cross_entropy_loss(*_inputs(z, "sigmoid_xent", 2), scale=cases["sigmoid_xent"]["args"]["scale"]),
        "smooth_l1": L.smooth_l1_loss(*_inputs(z, "smooth_l1", 4), beta=cases["smooth_l1"]["args"]["beta"]),
        "softmax_with_loss": L.softmax_with_loss(*_inputs(z, "softmax_with_loss", 2)),
        "softmax_with_loss_keypoints": L.softmax_with_loss(*_inputs(z, "softmax_with_loss_keypoints", 3)),
        "sigmoid_focal": L.sigmoid_focal_loss(*_inputs(z, "sigmoid_focal", 3), **cases["sigmoid_focal"]["args"]),
        "softmax_focal": L.softmax_focal_loss(*_inputs(z, "softmax_focal", 3), **cases["softmax_focal"]["args"]),
        "select_smooth_l1": L.select_smooth_l1_loss(*_inputs(z, "select_smooth_l1", 4), beta=cases["select_smooth_l1"]["args"]["beta"]),
    }
    assert set(got) == set(cases)
    for name, value in got.items():
        scalar = [o for o in cases[name]["outputs"] if o["shape"] == []][0]
        np.testing.assert_allclose(float(value), scalar["value"], rtol=RTOL, err_msg=name)


def _losses_json(config_id):
    from tests._train_golden import train_dir

    with open(train_dir() / config_id / "losses.json") as f:
        return json.load(f)


@pytest.mark.parametrize("key", ["keypoint_fpn", "mask_c4"])
def test_config_losses_from_recorded_inputs(key):
    """Every loss of the iteration-0 forward from the recorded predictions and targets."""
    from detconvert.train import losses as L
    from tests._train_golden import TRAIN_CONFIGS, npz, run_json
    from detconvert.train.config import TrainConfig

    config_id = TRAIN_CONFIGS[key][0]
    cfg = TrainConfig.from_detectron(run_json(config_id)["cfg"])
    pred = {k: torch.from_numpy(v) for k, v in npz(config_id, "predictions.npz").items()}
    blobs = {**npz(config_id, "minibatch.npz"), **npz(config_id, "targets.npz")}
    suffixes = [f"_fpn{l}" for l in range(cfg.rpn_min_level, cfg.rpn_max_level + 1)] if cfg.fpn_on else [""]
    ours = L.rpn_losses(
        {s: pred["rpn_cls_logits" + s] for s in suffixes}, {s: pred["rpn_bbox_pred" + s] for s in suffixes}, blobs, cfg
    )
    ours.update(L.box_head_losses(pred["cls_score"], pred["bbox_pred"], blobs))
    if cfg.mask_on:
        ours["loss_mask"] = L.mask_loss(pred["mask_fcn_logits"], blobs, cfg)
    if cfg.keypoints_on:
        s = cfg.heatmap_size
        ours["loss_kps"] = L.keypoint_loss(pred["kps_score_reshaped"].reshape(-1, cfg.num_keypoints, s, s), blobs, cfg)
    ref = _losses_json(config_id)
    expected = {entry["loss"]: entry["value"] for entry in ref["losses"]}
    assert set(ours) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(float(ours[name]), value, rtol=RTOL, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(sum(float(v) for v in ours.values()), ref["total_loss"], rtol=RTOL)
