"""RetinaNet and Keypoint R-CNN training paths end to end: tiny configs, a few seeded CPU iterations.

The targets and losses of both match Detectron's goldens (test_train_targets / test_train_losses);
here the loop runs them: every loss term Detectron names is present and the loss falls.
"""
from __future__ import annotations

import numpy as np
import torch

from detconvert.train.shapes import (
    TINY_BODY,
    TINY_KEYPOINT_CFG,
    TINY_RETINANET_CFG,
    write_keypoint_shapes_dataset,
    write_shapes_dataset,
)
from detconvert.train.trainer import TrainOptions, train

ITERS = 30


def _train(cfg, ann):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return train(TrainOptions(cfg=cfg, annotations=ann, body_override=TINY_BODY, no_save=True, max_iter=ITERS,
                                  overrides=[("TRAIN.USE_FLIPPED", "False")], clip_grad_norm=5.0, seed=3, log_period=0))
    finally:
        torch.set_num_threads(threads)


def _mean(history, key, rows):
    return float(np.mean([h[key] for h in history[rows]]))


def test_retinanet_trains_end_to_end(tmp_path):
    """Focal + box loss on P3-P7; the total (mean of the last 5 iterations) at most 60% of the first 3.

    Measured: mean 1.77 over the first 3 iterations, 0.45 over the last 5 (the prior-probability
    bias keeps the focal loss near 1 per foreground anchor at the start).
    """
    ann, _ = write_shapes_dataset(tmp_path / "shapes", num_images=2, seed=0)
    result = _train(TINY_RETINANET_CFG, ann)
    history = result.history
    assert len(history) == ITERS
    expected = {f"{k}_fpn{lvl}" for k in ("fl", "retnet_loss_bbox") for lvl in range(3, 8)}
    assert expected <= set(history[0]) and not any(k.startswith("loss_rpn") for k in history[0])
    assert history[0]["fl_fpn3"] > 0.1 and history[0]["retnet_loss_bbox_fpn3"] > 0
    first, last = _mean(history, "total_loss", slice(0, 3)), _mean(history, "total_loss", slice(-5, None))
    assert np.isfinite(last) and last <= 0.6 * first, f"total loss {first:.3f} -> {last:.3f}"
    assert result.model.retinanet_head is not None and not result.model.training


def test_keypoint_rcnn_trains_end_to_end(tmp_path):
    """RPN + box + keypoint heatmap losses; both the keypoint loss and the total fall to <= 60%.

    Measured (first 3 -> last 5 iterations): heatmap loss 12.5 -> 4.9 (log(784) = 6.66 is chance
    over the 28x28 cells), total 13.8 -> 5.4.
    """
    ann, _ = write_keypoint_shapes_dataset(tmp_path / "kps", num_images=2, seed=0)
    result = _train(TINY_KEYPOINT_CFG, ann)
    history = result.history
    assert {"loss_cls", "loss_bbox", "loss_kps", "loss_rpn_cls_fpn2"} <= set(history[0])
    assert np.isfinite(history[0]["loss_kps"]) and history[0]["loss_kps"] > 1.0
    kps_first, kps_last = _mean(history, "loss_kps", slice(0, 3)), _mean(history, "loss_kps", slice(-5, None))
    assert kps_last <= 0.6 * kps_first, f"loss_kps {kps_first:.3f} -> {kps_last:.3f}"
    first, last = _mean(history, "total_loss", slice(0, 3)), _mean(history, "total_loss", slice(-5, None))
    assert last <= 0.6 * first, f"total loss {first:.3f} -> {last:.3f}"
    assert result.model.keypoint_head is not None
