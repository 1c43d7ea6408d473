"""The shipped shapes Mask R-CNN is a model like any other: every command loads it by path.

Its tiny body (one block per stage, 16-wide stem, 32-wide res2) is beyond Detectron's config keys, so the
pickle carries detconvert's spec and class names in a ``'detconvert'`` container entry beside its cfg
(:mod:`detconvert.io.weights`); Detectron's own reader ignores that key.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detconvert
from detconvert import cli, demo
from detconvert.errors import WeightFileError
from detconvert.inference.predictor import BODY_FIELDS_BEYOND_CFG, spec_from_cfg
from detconvert.io.atomic import atomic_write
from detconvert.io.py2_pickle_writer import Py2PickleWriter
from detconvert.io.weights import SPEC_KEY, load_weights
from detconvert.train.shapes import SHAPE_CLASSES, make_shapes_image, write_shapes_dataset
from detconvert.train.trainer import export_detectron_pickle

MODEL = demo.SHAPES_MODEL
NAMES = ["__background__", *SHAPE_CLASSES]


@pytest.fixture(scope="module")
def predictor():
    if not MODEL.exists():
        pytest.fail("the shapes demo model is missing; run tools/train_demo_model.py")
    return detconvert.load_model(MODEL, device="cpu")


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _finds_every_shape(dets, class_names, drawn) -> None:
    for shape in drawn:
        x, y, w, h = shape.box_xywh()
        truth = (x, y, x + w - 1, y + h - 1)
        ious = [_box_iou(truth, box) for box, c, s in zip(dets.boxes, dets.classes, dets.scores)
                if s >= 0.7 and class_names[c] == shape.name]
        assert ious and max(ious) >= 0.7, f"{shape.name}: best IoU {max(ious, default=0):.2f}"


def test_the_entry_only_adds_what_the_cfg_cannot_say(predictor):
    """Stored spec == the embedded cfg's spec with the narrow-body fields replaced; Detectron's keys intact."""
    wf = load_weights(MODEL)
    assert wf.stored_spec is not None and wf.stored_spec["class_names"] == NAMES
    assert SPEC_KEY not in wf.metadata
    with open(MODEL, "rb") as handle:  # what Detectron's load_object sees: 'blobs' and 'cfg' as before
        raw = pickle.load(handle, encoding="latin1")
    assert set(raw) == {"blobs", "cfg", SPEC_KEY} and isinstance(raw[SPEC_KEY], str)
    from_cfg = spec_from_cfg(wf.cfg, weights=wf)
    body = {name: getattr(predictor.spec.body, name) for name in BODY_FIELDS_BEYOND_CFG}
    assert from_cfg.body.block_counts != predictor.spec.body.block_counts  # the cfg alone builds R-50
    rebuilt = dataclasses.replace(from_cfg, body=dataclasses.replace(from_cfg.body, **body))
    # The network is the same; test-time settings compared by their Detectron values (the test-time
    # augmentation records of a spec stored before TTA existed read back with empty heuristics).
    assert dataclasses.replace(rebuilt, test=None) == dataclasses.replace(predictor.spec, test=None)
    for name in ("scale", "max_size", "nms", "score_thresh", "detections_per_im"):
        assert getattr(rebuilt.test, name) == getattr(predictor.spec.test, name), name
    assert MODEL.stat().st_size < 3 * 1024 * 1024


def test_load_model_by_path_detects_the_shapes(predictor):
    assert predictor.class_names == NAMES
    assert predictor.spec.body.block_counts == (1, 1, 1, 1)
    image, drawn = demo.shapes_demo_image()
    _finds_every_shape(predictor.predict(image)[0], predictor.class_names, drawn)


def test_set_overrides_keep_the_stored_body():
    """``--set`` re-translates the embedded cfg; the body widths still come from the entry."""
    pred = detconvert.load_model(MODEL, device="cpu", overrides=[("TEST.SCALE", "160"), ("TEST.MAX_SIZE", "160")])
    assert pred.spec.test.scale == 160 and pred.spec.body.stem_out_dim == 16
    assert pred.class_names == NAMES


def test_infer_eval_export_and_demo_where_by_path(tmp_path, capsys, predictor):
    ann, images = write_shapes_dataset(tmp_path / "shapes", num_images=2, seed=0)
    assert cli.main(["demo", "--where"]) == 0
    where = capsys.readouterr().out.strip()
    assert Path(where) == MODEL

    assert cli.main(["infer", "--load_detectron", where, "--image_dir", str(images),
                     "--output_dir", str(tmp_path / "out"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "out" / "detections_coco.json").read_text())
    gt = json.loads(ann.read_text())
    assert {r["category_id"] for r in results if r["score"] >= 0.7} == {a["category_id"] for a in gt["annotations"]}
    capsys.readouterr()

    assert cli.main(["eval", "--load_detectron", where, "--annotations", str(ann), "--image_dir", str(images),
                     "--output_dir", str(tmp_path / "ev"), "--no-progress"]) == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("summary:")]
    bbox_ap = float(summary[0].split("bbox AP ")[1].split(",")[0])
    assert bbox_ap >= 70.0, summary  # its own training images (measured 85.0 on the first two)

    out = tmp_path / "shapes.safetensors"
    assert cli.main(["export", where, "--to", "safetensors", "-o", str(out)]) == 0
    converted = detconvert.load_model(out, device="cpu")
    assert converted.class_names == NAMES
    image, _ = demo.shapes_demo_image()
    a, b = predictor.predict(image)[0], converted.predict(image)[0]
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_train_load_detectron_by_path_without_cfg(tmp_path, capsys):
    """``train --load_detectron PKL`` needs no --cfg (the embedded one) nor --source-classes (the entry's)."""
    ann, _ = write_shapes_dataset(tmp_path / "shapes", num_images=1, seed=0)
    assert cli.main(["train", "--dataset", str(ann), "--load_detectron", str(MODEL), "--max-iter", "1",
                     "--no_save", "--set", "SOLVER.BASE_LR", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "trained  1 iterations from step 0" in out
    assert np.isfinite(float(out.rsplit("last total_loss", 1)[1].split()[0]))
    assert cli.main(["train", "--dataset", str(ann)]) == 2  # neither --cfg nor --load_detectron
    assert "--cfg" in capsys.readouterr().err


def test_export_detectron_pickle_writes_the_entry(tmp_path, predictor):
    cfg_text = load_weights(MODEL).cfg_text
    path = export_detectron_pickle(predictor.model, cfg_text, tmp_path / "again.pkl", class_names=NAMES,
                                   training={"note": "test"})
    again = detconvert.load_model(path, device="cpu")
    assert again.spec == predictor.spec and again.class_names == NAMES
    assert load_weights(path).stored_spec["training"] == {"note": "test"}
    for name, value in predictor.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[name], value, rtol=0, atol=0)
    plain = export_detectron_pickle(predictor.model, cfg_text, tmp_path / "plain.pkl")  # Detectron's two keys
    assert load_weights(plain).stored_spec is None


@pytest.mark.parametrize("entry, why", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "something-else"}), "not a detconvert-spec record"),
    (json.dumps({"format": "detconvert-spec", "version": 9, "spec": {}, "class_names": ["a"]}), "version 9"),
    (json.dumps({"format": "detconvert-spec", "version": 1, "class_names": ["a"]}), "lacks a 'spec' object"),
])
def test_a_malformed_entry_is_a_one_line_error(tmp_path, capsys, entry, why):
    wf = load_weights(MODEL)
    bad = tmp_path / "bad.pkl"
    with atomic_write(bad, "wb") as handle:
        Py2PickleWriter(handle).dump({"blobs": dict(wf.blobs), "cfg": wf.cfg_text, SPEC_KEY: entry})
    with pytest.raises(WeightFileError, match=why):
        load_weights(bad)
    image = tmp_path / "im.png"
    cv2.imwrite(str(image), make_shapes_image(np.random.RandomState(0), size=64)[0])
    assert cli.main(["infer", "--load_detectron", str(bad), str(image), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and why in err[0]
