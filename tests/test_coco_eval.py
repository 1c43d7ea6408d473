"""COCO results json and pycocotools evaluation on a small COCO-format fixture written by the test."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from detconvert import cli
from detconvert.evaluation.coco import evaluate_results, load_annotations
from detconvert.inference.results import detections_to_coco, read_results, xywh_to_xyxy, xyxy_to_xywh
from detconvert.data.classes import (
    COCO_KEYPOINT_NAMES,
    coco_table,
    get_class_table,
    keypoints_coco_table,
    read_class_file,
)
from detconvert.errors import ConfigError, DetconvertError
from detconvert.evaluation.evaluate import category_table, evaluate_dataset
from detconvert.structures import Detections

REPO = Path(__file__).resolve().parent.parent
H, W = 80, 100
PERSON, DOG = 1, 18  # COCO category ids


def _rect_mask(x1, y1, x2, y2):
    mask = np.zeros((H, W), np.uint8)
    mask[y1 : y2 + 1, x1 : x2 + 1] = 1
    return mask


def _rle_json(mask):
    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _keypoints(x1, y1):
    """17 keypoints spread inside the box, all visible."""
    return [(x1 + 2 + k, y1 + 3 + 2 * k) for k in range(17)]


# Ground truth: image 1 holds a person and a dog, image 2 a person. Boxes are xyxy inclusive.
GT = [
    {"image_id": 1, "category_id": PERSON, "box": (10, 5, 39, 54)},
    {"image_id": 1, "category_id": DOG, "box": (50, 20, 89, 59)},
    {"image_id": 2, "category_id": PERSON, "box": (30, 10, 69, 69)},
]


def _write_fixture(root: Path) -> tuple:
    """Images + instances-and-keypoints annotation json, as COCO lays them out."""
    image_dir = root / "images"
    image_dir.mkdir()
    annotations = []
    for n, gt in enumerate(GT, 1):
        x1, y1, x2, y2 = gt["box"]
        mask = _rect_mask(x1, y1, x2, y2)
        ann = {
            "id": n, "image_id": gt["image_id"], "category_id": gt["category_id"], "iscrowd": 0,
            "bbox": [float(v) for v in xyxy_to_xywh(np.array(gt["box"]))[0]],
            "area": float(mask.sum()), "segmentation": _rle_json(mask),
        }
        if gt["category_id"] == PERSON:
            ann["keypoints"] = [v for x, y in _keypoints(x1, y1) for v in (x, y, 2)]
            ann["num_keypoints"] = 17
        annotations.append(ann)
    images = []
    for image_id in (1, 2):
        name = f"{image_id:012d}.png"
        cv2.imwrite(str(image_dir / name), np.full((H, W, 3), 100, np.uint8))
        images.append({"id": image_id, "file_name": name, "height": H, "width": W})
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": PERSON, "name": "person", "supercategory": "person",
             "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": []},
            {"id": DOG, "name": "dog", "supercategory": "animal"},
        ],
    }
    ann_path = root / "annotations.json"
    ann_path.write_text(json.dumps(data))
    return image_dir, ann_path


@pytest.fixture()
def fixture_dataset(tmp_path):
    return _write_fixture(tmp_path)


def _perfect_detections(image_id: int) -> Detections:
    """What a perfect COCO model (contiguous classes: person 1, dog 17) returns for an image."""
    gts = [g for g in GT if g["image_id"] == image_id]
    table = coco_table()
    kps = []
    for g in gts:
        pts = np.array(_keypoints(*g["box"][:2]), np.float32).T
        kps.append(np.vstack([pts, np.full((2, 17), 5.0, np.float32)]))
    return Detections(
        boxes=np.array([g["box"] for g in gts], np.float32),
        scores=np.linspace(0.9, 0.8, len(gts)).astype(np.float32),
        classes=np.array([table.index_of_category(g["category_id"]) for g in gts], np.int64),
        image_size=(H, W),
        masks=[mask_util.encode(np.asfortranarray(_rect_mask(*g["box"]))) for g in gts],
        keypoints=np.stack(kps),
    )


class FakePredictor:
    """Stands in for detconvert.inference.predictor.Predictor: fixed detections per image, looked up by pixel content."""

    def __init__(self, by_call):
        self.class_names = list(coco_table().names)
        self.spec = SimpleNamespace(num_classes=81, mask_head=object(), keypoint_head=None, pipeline="e2e")
        self.device = "cpu"
        self._by_call = list(by_call)
        self.calls = 0

    def predict(self, images):
        out = []
        for image in images:
            assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (H, W, 3)
            out.append(self._by_call[self.calls])
            self.calls += 1
        return out


def test_results_records_follow_detectron_json_dataset_evaluator():
    dets = _perfect_detections(1)
    records = detections_to_coco(dets, 1, coco_table())
    assert [r["category_id"] for r in records] == [PERSON, DOG]  # dataset ids, not contiguous 1 / 17
    assert records[0]["bbox"] == [10.0, 5.0, 30.0, 50.0]  # w = x2 - x1 + 1
    assert isinstance(records[0]["segmentation"]["counts"], str)
    assert records[0]["keypoints"][:6] == [12.0, 8.0, 1, 13.0, 10.0, 1]  # x, y, visibility 1
    assert records[0]["score"] == pytest.approx(0.9)  # KEYPOINT_CONFIDENCE bbox: box score
    prob = detections_to_coco(dets, 1, coco_table(), keypoint_confidence="prob")
    assert prob[0]["score"] == 5.0
    json.dumps(records)  # JSON-serialisable as is
    np.testing.assert_allclose(xywh_to_xyxy(xyxy_to_xywh(dets.boxes)), dets.boxes)
    assert coco_table().category_id(80) == 90 and coco_table().index_of_category(90) == 80


def test_perfect_detections_give_ap_one_for_bbox_segm_keypoints(fixture_dataset, capsys):
    _, ann_path = fixture_dataset
    coco_gt = load_annotations(ann_path)
    results = [r for i in (1, 2) for r in detections_to_coco(_perfect_detections(i), i, coco_table())]
    report = evaluate_results(coco_gt, results)
    assert set(report.stats) == {"bbox", "segm", "keypoints"}
    for kind in ("bbox", "segm", "keypoints"):
        assert report.stats[kind]["AP"] == pytest.approx(1.0), kind
    assert not report.warnings
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in printed
    assert "Evaluate annotation type *keypoints*" in printed


def test_hand_computed_ap(fixture_dataset):
    """Image 1 only, class person: GT boxes A (image 1 person) and B (image 2 person); detections TP .9,
    FP .8, TP .7 -> precision/recall (1, .5) (.5, .5) (.67, 1). COCO's 101-point interpolated precision is
    1 for the 51 recall thresholds 0..0.50 and 2/3 for the 50 above: AP = (51 + 50 * 2/3) / 101 = 253/303,
    the same at every IoU threshold because the true positives are exact."""
    _, ann_path = fixture_dataset
    coco_gt = load_annotations(ann_path)
    person_gt = [g for g in GT if g["category_id"] == PERSON]
    results = [
        {"image_id": person_gt[0]["image_id"], "category_id": PERSON, "score": 0.9,
         "bbox": [float(v) for v in xyxy_to_xywh(np.array(person_gt[0]["box"]))[0]]},
        {"image_id": 2, "category_id": PERSON, "score": 0.8, "bbox": [0.0, 70.0, 9.0, 9.0]},  # no overlap
        {"image_id": person_gt[1]["image_id"], "category_id": PERSON, "score": 0.7,
         "bbox": [float(v) for v in xyxy_to_xywh(np.array(person_gt[1]["box"]))[0]]},
    ]
    report = evaluate_results(coco_gt, results, ["bbox"], log=None)
    # The dog class has GT but no detections: AP 0 for it, and COCO averages over categories.
    stats = report.stats["bbox"]
    assert stats["AP"] == pytest.approx((253 / 303 + 0.0) / 2, abs=1e-12)
    assert stats["AP50"] == pytest.approx((253 / 303) / 2, abs=1e-12)
    assert stats["AR100"] == pytest.approx((1.0 + 0.0) / 2, abs=1e-12)


def test_absent_category_ids_warn(fixture_dataset):
    _, ann_path = fixture_dataset
    coco_gt = load_annotations(ann_path)
    results = detections_to_coco(_perfect_detections(1), 1, coco_table())
    results[1]["category_id"] = 17  # the contiguous index of dog leaked into the json
    seen = []
    report = evaluate_results(coco_gt, results, ["bbox"], log=None, warn=seen.append)
    assert len(seen) == 1 and "category ids absent from the annotations: 17 (1)" in seen[0]
    assert report.warnings == seen


def test_results_for_unknown_images_are_an_error(fixture_dataset):
    _, ann_path = fixture_dataset
    results = detections_to_coco(_perfect_detections(1), 7, coco_table())
    with pytest.raises(DetconvertError, match=r"image ids the annotations do not have: \[7\]"):
        evaluate_results(load_annotations(ann_path), results, log=None)


def test_evaluate_dataset_runs_the_predictor_and_writes_json(fixture_dataset, tmp_path):
    image_dir, ann_path = fixture_dataset
    predictor = FakePredictor([_perfect_detections(1), _perfect_detections(2)])
    lines = []
    report = evaluate_dataset(predictor, image_dir, ann_path, tmp_path / "out", log=lines.append)
    assert predictor.calls == 2
    assert report.results_path == tmp_path / "out" / "detections_coco.json"
    written = read_results(report.results_path)
    assert len(written) == 3 and {r["image_id"] for r in written} == {1, 2}
    assert report.stats["bbox"]["AP"] == pytest.approx(1.0)
    assert report.stats["segm"]["AP"] == pytest.approx(1.0)
    assert "keypoints" in report.stats and report.stats["keypoints"]["AP"] == pytest.approx(1.0)


def test_category_table_maps_by_name_then_by_position(fixture_dataset):
    _, ann_path = fixture_dataset
    coco_gt = load_annotations(ann_path)
    table, notes = category_table(coco_table(), coco_gt)
    assert table.category_id(1) == PERSON and table.category_id(17) == DOG
    assert table.category_id(80) == 90 and "by name" in notes[0]
    unnamed = read_class_file_text(ann_path.parent, "thing_a\nthing_b\n")
    table, notes = category_table(unnamed, coco_gt)
    assert table.category_ids == (0, PERSON, DOG) and "k-th category" in notes[0]


def read_class_file_text(folder: Path, text: str):
    path = folder / "classes.txt"
    path.write_text(text)
    return read_class_file(path)


def test_class_tables(tmp_path):
    assert get_class_table("coco_2017_val").num_classes == 81
    assert get_class_table("keypoints_coco_2017_val").names == ("__background__", "person")
    assert get_class_table("voc_2007_test").names[15] == "person"
    table = read_class_file_text(tmp_path, "# my classes\n__background__\n5 red car\nbike\n")
    assert table.names == ("__background__", "red car", "bike") and table.category_ids == (0, 5, 2)
    with pytest.raises(ConfigError, match="unknown dataset"):
        get_class_table("imagenet")
    with pytest.raises(ConfigError, match="listed twice"):
        read_class_file_text(tmp_path, "a\na\n")
    assert keypoints_coco_table().keypoint_names == COCO_KEYPOINT_NAMES


def test_eval_cli_results_file(fixture_dataset, tmp_path, capsys):
    _, ann_path = fixture_dataset
    results = [r for i in (1, 2) for r in detections_to_coco(_perfect_detections(i), i, coco_table())]
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(results))
    assert cli.main(["eval", "--results", str(res_path), "--ann", str(ann_path)]) == 0
    out = capsys.readouterr().out
    assert "summary: bbox AP 100.0, segm AP 100.0, keypoints AP 100.0" in out
    assert [line for line in out.splitlines() if line.startswith("Evaluate annotation type")] == [
        "Evaluate annotation type *bbox*", "Evaluate annotation type *segm*", "Evaluate annotation type *keypoints*"]


def test_test_net_shim_bad_results_file_is_one_line(fixture_dataset, tmp_path):
    _, ann_path = fixture_dataset
    bad = tmp_path / "res.json"
    bad.write_text("{not json")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "test_net.py"), "--results", str(bad), "--ann", str(ann_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"detconvert eval: error: {bad}: not valid JSON"), proc.stderr
    missing = subprocess.run(
        [sys.executable, str(REPO / "tools" / "test_net.py"), "--results", str(bad), "--ann", str(tmp_path / "nope.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2 and "nope.json: annotation file not found" in missing.stderr
