"""Helpers for the training-path goldens in ../shared/reference/train (see its README)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from tests._shared import REFERENCE

TRAIN_CONFIGS = {
    "mask_fpn": ("12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x", "instances_synth.json"),
    "keypoint_fpn": ("12_2017_baselines__e2e_keypoint_rcnn_R-50-FPN_1x", "person_keypoints_synth.json"),
    "mask_c4": ("12_2017_baselines__e2e_mask_rcnn_R-50-C4_1x", "instances_synth.json"),
    "retinanet": ("12_2017_baselines__retinanet_R-50-FPN_1x", "instances_synth.json"),
}


def train_dir() -> Path:
    return REFERENCE / "train"


@lru_cache(maxsize=None)
def run_json(config_id: str) -> Dict[str, Any]:
    with open(train_dir() / config_id / "run.json") as f:
        return json.load(f)


def npz(config_id: str, name: str) -> Dict[str, np.ndarray]:
    with np.load(train_dir() / config_id / name) as z:
        return {k: z[k] for k in z.files}


def config_and_minibatch_roidb(key: str):
    """(config_id, TrainConfig, full training roidb, minibatch entries) of a golden config."""
    from detconvert.train.config import TrainConfig
    from detconvert.train.roidb import combined_roidb_for_training

    config_id, dataset_json = TRAIN_CONFIGS[key]
    run = run_json(config_id)
    cfg = TrainConfig.from_detectron(run["cfg"])
    roidb, _ = combined_roidb_for_training(
        str(train_dir() / "dataset" / dataset_json), str(REFERENCE / "images"), cfg
    )
    minibatch = [roidb[i] for i in run["minibatch"]["roidb_indices"]]
    return config_id, cfg, roidb, minibatch


def assert_blobs_equal(ours: Dict[str, np.ndarray], ref: Dict[str, np.ndarray], names: List[str], rtol_float: float = 0.0) -> None:
    """Exact equality (shape, dtype, values) of every named blob; float blobs within ``rtol_float`` if set."""
    for name in names:
        a, b = ours[name], ref[name]
        assert a.shape == b.shape, f"{name}: shape {a.shape} != Detectron {b.shape}"
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != Detectron {b.dtype}"
        if rtol_float and a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=rtol_float, atol=rtol_float * max(1.0, float(np.abs(b).max(initial=0))), err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
