"""CPU overfitting: a TINY Detectron-architecture Mask R-CNN learns a few synthetic shapes images.

Seeded and deterministic on a given CPU. The model is Detectron's R-50-FPN Mask R-CNN layout (GN body, FPN, RPN on
P2-P6, 2-MLP box head, v1up mask head) with 1 block per stage and narrow widths
(:data:`~detconvert.train.shapes.TINY_BODY`, FPN.DIM 32), trained at 128 px on 4 images of 1-3
shapes with circumradius 16-30 px, the mask head at Detectron's 28x28 resolution (RoIAlign 14x14).

Why not smaller shapes or 14x14 masks: Detectron's mask targets are computed in the proposal box
without its ``+1`` width while the test-time paste uses the ``+1`` box (a ~1 px scale mismatch kept
for exact numerics), and a 14x14 mask spans ~3 px per cell; both cost mask IoU at the image edge of
small shapes, and AP@[.5:.95] needs IoU above 0.95 for its last threshold (measured with radius
10-26 px and 14x14 masks: mask IoUs 0.90-0.95, mask AP exactly 0.90).

A float32 training trajectory is not the same on every CPU (each kernel family sums in its own order, and
350 SGD steps amplify that), so the test does not bet on where one trajectory is at step 350: it trains
until what it is about holds, within a bounded budget (350 iterations, then up to two rounds of 100 more at
the schedule's last LR, resumed from the checkpoint): every training shape found (AP50 1.0 for boxes and
masks) and COCO AP@[.5:.95] >= 0.85 for both. Measured AP@[.5:.95] (box / mask) at 350 iterations: 0.969 /
0.923 when this test was written (an AMD CPU); box 0.877 with AVX2 kernels forced on an Intel CPU with
AVX-512 + AMX (issue 12); on an AMD EPYC with AVX-512, 0.956 / 0.941 natively and 0.925 / 0.923 with AVX2
kernels forced (``ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2``), then 0.925 / 0.898 at 450 and
0.925 / 0.933 at 550 (a round at the last LR moves mask AP by +-0.03, box AP not at all). AP50 and AP75
were 1.0 in every run; total loss 2.67 -> 0.097 (x27) with AVX2.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detconvert.evaluation.coco import evaluate_results, load_annotations
from detconvert.inference.results import detections_to_coco
from detconvert.data.classes import table_from_names
from detconvert.inference.predictor import Predictor
from detconvert.train.shapes import TINY_BODY, TINY_SHAPES_CFG, write_shapes_dataset
from detconvert.train.trainer import TrainOptions, train

NUM_IMAGES = 4
MIN_RADIUS, MAX_RADIUS = 16.0, 30.0
MAX_ITER = 350
#: Training schedule of the test: BASE_LR 0.02 (x0.1 at 250, x0.01 at 320), warm-up 30 its, gradient
#: norm clipped at 5; 28x28 mask targets.
OVERRIDES = [("SOLVER.BASE_LR", "0.02"), ("SOLVER.STEPS", "[0, 250, 320]"), ("TRAIN.USE_FLIPPED", "False"),
             ("MRCNN.RESOLUTION", "28"), ("MRCNN.ROI_XFORM_RESOLUTION", "14")]
TARGET_AP = 0.85  # COCO AP@[.5:.95] of boxes and of masks on the training images (measured 0.877-0.969)
EXTRA_ROUND = 100  # iterations per extra round while the target is not reached yet
EXTRA_ROUNDS = 2  # budget: MAX_ITER + EXTRA_ROUNDS * EXTRA_ROUND iterations


def _box_and_mask_ap(result, ann, image_dir):
    """``(box AP, mask AP, box AP50, mask AP50)`` on the training images, through the test pipeline (``Predictor``)."""
    predictor = Predictor(result.model, result.class_names, torch.device("cpu"))
    coco_gt = load_annotations(ann)
    table = table_from_names(result.class_names, "shapes")
    records = []
    for image in coco_gt.dataset["images"]:
        dets = predictor.predict(str(image_dir / image["file_name"]))[0]
        records += detections_to_coco(dets, image["id"], table)
    report = evaluate_results(coco_gt, records, ["bbox", "segm"], log=None, warn=lambda m: None)
    box, mask = report.stats["bbox"], report.stats["segm"]
    return box["AP"], mask["AP"], box["AP50"], mask["AP50"]


def _reached(box_ap, mask_ap, box_ap50, mask_ap50) -> bool:
    return min(box_ap, mask_ap) >= TARGET_AP and min(box_ap50, mask_ap50) >= 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(first run's result, [(iterations, box AP, mask AP, box AP50, mask AP50) after each round])``."""
    root = tmp_path_factory.mktemp("overfit")
    ann, image_dir = write_shapes_dataset(root / "shapes", num_images=NUM_IMAGES, seed=0, min_radius=MIN_RADIUS,
                                          max_radius=MAX_RADIUS)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        common = dict(cfg=TINY_SHAPES_CFG, annotations=ann, body_override=TINY_BODY, output_dir=root / "out",
                      overrides=OVERRIDES, clip_grad_norm=5.0, seed=3, log_period=0)
        first = result = train(TrainOptions(max_iter=MAX_ITER, **common))
        rounds = [(MAX_ITER, *_box_and_mask_ap(result, ann, image_dir))]
        while not _reached(*rounds[-1][1:]) and len(rounds) <= EXTRA_ROUNDS:
            result = train(TrainOptions(max_iter=rounds[-1][0] + EXTRA_ROUND, load_ckpt=result.checkpoint,
                                        resume=True, **common))
            rounds.append((rounds[-1][0] + EXTRA_ROUND, *_box_and_mask_ap(result, ann, image_dir)))
    finally:
        torch.set_num_threads(threads)
    return first, rounds


def test_total_loss_drops_tenfold(trained):
    result, _ = trained
    first = result.history[0]["total_loss"]
    last = float(np.mean([h["total_loss"] for h in result.history[-10:]]))
    assert first / last >= 10.0, f"total loss {first:.3f} -> {last:.3f} (x{first / last:.1f})"


def test_trained_model_detects_its_training_shapes(trained):
    """Every training shape found (AP50 1.0) and AP@[.5:.95] >= 0.85, boxes and masks, within the budget."""
    _, rounds = trained
    print(f"(iterations, box AP, mask AP, box AP50, mask AP50) per round: {rounds}")  # shown by pytest -rP
    assert _reached(*rounds[-1][1:]), (
        f"(iterations, box AP, mask AP, box AP50, mask AP50) after each round: {rounds}; target AP50 1.0 and "
        f"AP {TARGET_AP} within {MAX_ITER + EXTRA_ROUNDS * EXTRA_ROUND} iterations"
    )


def _polygon_mask(polygon, size):
    import pycocotools.mask as mask_util

    return mask_util.decode(mask_util.frPyObjects([list(polygon)], size, size))[:, :, 0].astype(bool)


def test_shipped_demo_model_masks_overlap_the_drawn_shapes(tmp_path):
    """``detconvert demo``'s shapes model: every drawn shape gets a confident mask of its class (IoU >= 0.7)."""
    import pycocotools.mask as mask_util

    from detconvert import demo

    if not demo.SHAPES_MODEL.exists():
        pytest.fail("the shapes demo model is missing; run tools/train_demo_model.py")
    assert demo.SHAPES_MODEL.stat().st_size < 3 * 1024 * 1024
    result = demo.run_shapes_demo(tmp_path)
    assert result.picture_path.exists() and result.picture_path.stat().st_size > 0
    dets = result.detections
    confident = dets.scores >= demo.SHAPES_THRESH
    masks = [mask_util.decode(m).astype(bool) for m in dets.masks]
    assert result.drawn
    for shape in result.drawn:
        truth = _polygon_mask(shape.polygon, 128)
        ious = [(truth & m).sum() / float((truth | m).sum())
                for m, c, ok in zip(masks, dets.classes, confident) if ok and result.class_names[c] == shape.name]
        assert ious and max(ious) >= 0.7, f"{shape.name}: best mask IoU {max(ious, default=0):.2f}"
    assert int(confident.sum()) == len(result.drawn)
