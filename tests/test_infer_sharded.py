"""`detconvert infer --num-processes 2` (gloo, CPU) gives exactly the single-process results, in the same order."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util
from safetensors.torch import save_file

from detconvert.cli import main
from detconvert.export.checkpoint import portable_state_dict
from detconvert.inference.predictor import CHECKPOINT_FORMAT


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory):
    """The shipped tiny shapes Mask R-CNN as a converted checkpoint (spec in its metadata), plus 5 images."""
    from detconvert.demo import load_shapes_model
    from detconvert.train.shapes import make_shapes_image

    predictor = load_shapes_model()
    root = tmp_path_factory.mktemp("sharded")
    path = root / "shapes.safetensors"
    save_file(portable_state_dict(predictor.model), str(path), metadata={
        "format": CHECKPOINT_FORMAT, "kind": "detector",
        "spec": json.dumps(predictor.spec.to_dict()), "class_names": json.dumps(predictor.class_names),
    })
    images = root / "images"
    images.mkdir()
    for i in range(5):  # different sizes and aspect ratios: shards see different blob sizes
        image = make_shapes_image(np.random.RandomState(100 + i), size=96 + 16 * i)[0]
        cv2.imwrite(str(images / f"{i + 1}.png"), image)
    return path, images


def _run(weights, images, out, *extra):
    rc = main(["infer", "--load_ckpt", str(weights), "--image_dir", str(images), "--output_dir", str(out),
               "--device", "cpu", "--thresh", "0.3", "--always-out", *extra])
    assert rc == 0
    return json.loads((out / "detections_coco.json").read_text())


def test_two_cpu_processes_equal_one(shapes_checkpoint, tmp_path):
    weights, images = shapes_checkpoint
    single = _run(weights, images, tmp_path / "one")
    sharded = _run(weights, images, tmp_path / "two", "--num-processes", "2")
    assert len(single) > 0
    assert [r["image_id"] for r in sharded] == [r["image_id"] for r in single]
    for a, b in zip(single, sharded):
        assert a["category_id"] == b["category_id"]
        # Workers run with fewer intra-op threads, so float32 sums may differ in the last bits: same
        # detections, boxes within 1e-3 px, scores within 1e-5, masks IoU >= 0.99.
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)
        assert abs(a["score"] - b["score"]) <= 1e-5
        ma, mb = (mask_util.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()})
                  for r in (a, b))
        assert np.logical_and(ma, mb).sum() >= 0.99 * max(np.logical_or(ma, mb).sum(), 1)
    assert sorted(p.name for p in (tmp_path / "two").glob("*.png")) == sorted(
        p.name for p in (tmp_path / "one").glob("*.png"))


def test_num_gpus_without_cuda_is_one_line_error(shapes_checkpoint, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: asking for GPUs is valid here")
    weights, images = shapes_checkpoint
    rc = main(["infer", "--load_ckpt", str(weights), "--image_dir", str(images), "--output_dir",
               str(tmp_path), "--num-gpus", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--num-gpus" in err[0]


def test_eval_two_cpu_processes_equal_one(shapes_checkpoint, tmp_path, capsys):
    """`detconvert eval --num-processes 2` writes the same results and the same AP as one process."""
    from detconvert.train.shapes import write_shapes_dataset

    weights, _ = shapes_checkpoint
    ann, image_dir = write_shapes_dataset(tmp_path / "data", num_images=4, seed=3)
    outputs = {}
    for name, extra in (("one", []), ("two", ["--num-processes", "2"])):
        rc = main(["eval", "--load_ckpt", str(weights), "--ann", str(ann), "--image_dir", str(image_dir),
                   "--output_dir", str(tmp_path / name), "--device", "cpu", *extra])
        assert rc == 0
        summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("summary:")]
        outputs[name] = (json.loads((tmp_path / name / "detections_coco.json").read_text()), summary)
    (one, one_summary), (two, two_summary) = outputs["one"], outputs["two"]
    assert len(one) > 0 and len(one) == len(two)
    assert [(r["image_id"], r["category_id"]) for r in one] == [(r["image_id"], r["category_id"]) for r in two]
    assert one_summary[0].split("(")[0] == two_summary[0].split("(")[0]
