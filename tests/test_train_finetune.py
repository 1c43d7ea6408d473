"""CLI fine-tuning from a Detectron ``model_final.pkl``: class surgery, checkpoints, the loadable result.

The source model is the shapes Mask R-CNN shipped with ``detconvert demo`` (a Detectron-format pickle
with a narrow body that only its blob shapes describe), fine-tuned on the images it was trained on
(:mod:`tools.train_demo_model`: 4 images, dataset seed 0) with the squares removed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import detconvert
from detconvert import demo
from detconvert.train.shapes import SHAPE_CLASSES, TINY_SHAPES_CFG, write_shapes_dataset

REPO = Path(__file__).resolve().parents[1]


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The demo's training images, annotations without squares, the tiny cfg, the source class list."""
    if not demo.SHAPES_MODEL.exists():
        pytest.fail("the shapes demo model is missing; run tools/train_demo_model.py")
    root = tmp_path_factory.mktemp("finetune")
    ann, _ = write_shapes_dataset(root / "shapes", num_images=4, seed=0)
    data = json.loads(ann.read_text())
    square = SHAPE_CLASSES.index("square") + 1
    data["categories"] = [c for c in data["categories"] if c["id"] != square]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != square]
    assert {a["category_id"] for a in data["annotations"]} == {1, 3}
    (root / "shapes" / "no_squares.json").write_text(json.dumps(data))
    (root / "tiny.yaml").write_text(TINY_SHAPES_CFG)
    (root / "shapes.txt").write_text("\n".join(SHAPE_CLASSES) + "\n")
    return root


def _train(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    cmd = [sys.executable, str(REPO / "tools" / "train_net_step.py"), "--cfg", "tiny.yaml",
           "--dataset", "shapes/no_squares.json", "--load_detectron", str(demo.SHAPES_MODEL),
           "--source-classes", "shapes.txt", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_keep_classes_finetune_writes_a_loadable_detector(workdir):
    """``--keep-classes triangle,circle``: rows re-ordered to the dataset's classes, 2 steps, checkpoints.

    The kept rows are the trained ones, so the fine-tuned model still finds every circle and triangle
    of the training image (box IoU >= 0.5, score >= 0.5); squares are no longer a class.
    """
    proc = _train(workdir, "--keep-classes", "triangle,circle", "--max-iter", "2", "--output_dir", "keep",
                  "--set", "SOLVER.BASE_LR", "0.002")
    assert proc.returncode == 0, proc.stderr
    surgery = [line for line in proc.stdout.splitlines() if line.startswith("surgery")]
    assert surgery[0] == "surgery  classes: __background__, circle, triangle (3 with background)"
    assert "surgery    box_predictor.cls_score.weight: [4, 64] -> [3, 64]" in surgery
    assert "surgery    mask_head.mask_fcn_logits.weight: [4, 32, 1, 1] -> [3, 32, 1, 1]" in surgery

    ckpt = workdir / "keep" / "ckpt" / "model_step2.pth"
    payload = torch.load(ckpt, weights_only=True)
    assert payload["step"] == 2
    final = workdir / "keep" / "model_final.pth"
    assert f"saved    {Path('keep') / 'model_final.pth'}" in proc.stdout

    predictor = detconvert.load_model(final, device="cpu")
    assert predictor.class_names == ["__background__", "circle", "triangle"]
    assert predictor.spec.body.block_counts == (1, 1, 1, 1)
    # The checkpoint's weights are the ones load_model serves (same tensors by name).
    state = predictor.model.state_dict()
    for name, value in payload["model"].items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)

    data = json.loads((workdir / "shapes" / "no_squares.json").read_text())
    image = next(i for i in data["images"] if any(a["image_id"] == i["id"] for a in data["annotations"]))
    dets = predictor.predict(str(workdir / "shapes" / "images" / image["file_name"]))[0]
    names = {1: "circle", 3: "triangle"}
    for ann in (a for a in data["annotations"] if a["image_id"] == image["id"]):
        x, y, w, h = ann["bbox"]
        truth = (x, y, x + w - 1, y + h - 1)
        ious = [_box_iou(truth, box) for box, c, s in zip(dets.boxes, dets.classes, dets.scores)
                if s >= 0.5 and predictor.class_names[c] == names[ann["category_id"]]]
        assert ious and max(ious) >= 0.5, f"{names[ann['category_id']]}: best IoU {max(ious, default=0):.2f}"


def test_num_classes_resets_the_class_layers(workdir):
    """``--num-classes 3``: class-dependent tensors re-initialised, the dataset's names, body kept."""
    proc = _train(workdir, "--num-classes", "3", "--max-iter", "1", "--no_save", "--set", "SOLVER.BASE_LR", "0.002")
    assert proc.returncode == 0, proc.stderr
    assert "surgery  classes: __background__, circle, triangle (3 with background)" in proc.stdout
    assert "surgery    box_predictor.bbox_pred.weight: [16, 64] -> [12, 64]" in proc.stdout
    assert "trained  1 iterations from step 0" in proc.stdout
    assert "saved" not in proc.stdout
    assert np.isfinite(float(proc.stdout.rsplit("last total_loss", 1)[1].split()[0]))


@pytest.mark.parametrize(
    "args, message",
    [
        (("--keep-classes", "triangle,hexagon"), "--keep-classes: unknown class 'hexagon'"),
        (("--keep-classes", "circle,circle"), "--keep-classes: class 'circle' given twice"),
        (("--keep-classes", "circle", "--num-classes", "2"), "--keep-classes: give either --keep-classes or --num-classes, not both"),
        (("--source-classes", "missing.txt"), "--source-classes: "),
    ],
)
def test_bad_finetune_flags_exit_2_with_one_line(workdir, args, message):
    proc = _train(workdir, *args, "--max-iter", "1", "--no_save")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"detconvert train: error: {message}"), proc.stderr
