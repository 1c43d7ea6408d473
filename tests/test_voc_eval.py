"""PASCAL VOC evaluation (Detectron's ``voc_eval`` rules) on hand-computed cases, random curves, bad XML,
and a VOC-format devkit of shapes images run end to end through ``detconvert eval --voc``."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from detconvert import cli
from detconvert.errors import DetconvertError
from detconvert.evaluation.voc import (
    MAX_XML_BYTES,
    ClassDetections,
    VocDataset,
    VocObject,
    comp4_lines,
    evaluate_class,
    evaluate_class_detections,
    evaluate_voc_results,
    find_comp4_files,
    map_classes,
    parse_annotation,
    parse_comp4_lines,
    read_classes_map,
    voc_ap,
    write_annotation,
)

# ---------------------------------------------------------------------------------------------------------
# Hand-computed cases. Boxes are VOC's 1-based inclusive pixels; IoU uses Detectron's +1 widths.

A = (1, 1, 20, 20)
B = (41, 1, 60, 20)
C = (1, 41, 20, 60)


def _dets(*rows):
    """``(image, score, box)`` rows -> ClassDetections."""
    if not rows:
        return ClassDetections.empty()
    return ClassDetections([r[0] for r in rows], np.array([r[1] for r in rows], np.float64),
                           np.array([r[2] for r in rows], np.float64))


def _evaluate(objects, dets, use_07, class_name="dog"):
    return evaluate_class(objects, list(objects), class_name, dets, use_07)


def _far(box):
    """A box that overlaps nothing."""
    return (box[0] + 200, box[1] + 200, box[2] + 200, box[3] + 200)


@pytest.mark.parametrize("num_gt, ap_07, ap_area", [
    # TP, FP, TP with 2 objects: rec .5 .5 1, prec 1 .5 2/3.
    # 11-point: recall >= 0..0.5 (6 points) -> 1, 0.6..1 (5 points) -> 2/3;  area: .5 * 1 + .5 * 2/3.
    (2, Fraction(6 + 5 * Fraction(2, 3), 11), Fraction(1, 2) + Fraction(1, 2) * Fraction(2, 3)),
    # The same detections with a third, missed object: rec 1/3 1/3 2/3.
    # 11-point: 0..0.3 (4 points) -> 1, 0.4..0.6 (3 points) -> 2/3, 0.7..1 -> 0;  area: 1/3 + 1/3 * 2/3.
    # 11-point goes down from 0.8485 to 0.5455 and the area from 0.8333 to 0.5556: not in the same order.
    (3, Fraction(4 + 3 * Fraction(2, 3), 11), Fraction(1, 3) + Fraction(1, 3) * Fraction(2, 3)),
])
def test_11_point_and_area_on_the_same_pr_curve(num_gt, ap_07, ap_area):
    objects = {"im1": [VocObject("dog", A, False), VocObject("dog", B, False)],
               "im2": [VocObject("dog", C, False)] if num_gt == 3 else []}
    dets = _dets(("im1", 0.9, A), ("im1", 0.8, _far(A)), ("im1", 0.7, B))
    r07, area = _evaluate(objects, dets, True), _evaluate(objects, dets, False)
    assert r07.ap == pytest.approx(float(ap_07), abs=1e-12)
    assert area.ap == pytest.approx(float(ap_area), abs=1e-12)
    assert (r07.num_positives, r07.true_positives, r07.num_detections) == (num_gt, 2, 3)
    np.testing.assert_allclose(area.precision, [1, 0.5, 2 / 3])


def test_recall_of_exactly_0_3_misses_numpys_0_30000000000000004_threshold():
    # 3 of 10 objects found, all at precision 1: np.arange(0., 1.1, 0.1)[3] is 0.30000000000000004 > 0.3,
    # so only 3 of the 11 points see precision 1 (a clean i / 10 threshold would give 4 / 11).
    objects = {f"im{i}": [VocObject("dog", A, False)] for i in range(10)}
    dets = _dets(*[(f"im{i}", 0.9 - i / 100, A) for i in range(3)])
    result = _evaluate(objects, dets, True)
    assert result.recall[-1] == 0.3
    assert result.ap == pytest.approx(3 / 11, abs=1e-12)


def test_difficult_objects_are_neither_counted_nor_penalised():
    # im1: a difficult dog (A) and a normal one (B). The best-scored detection hits the difficult dog: not a TP,
    # not an FP (so precision stays 1 at the next detection) and the difficult dog is not a positive.
    objects = {"im1": [VocObject("dog", A, True), VocObject("dog", B, False)]}
    dets = _dets(("im1", 0.9, A), ("im1", 0.8, B), ("im1", 0.7, A))  # the 3rd hits the difficult dog again
    for use_07 in (True, False):
        result = _evaluate(objects, dets, use_07)
        assert (result.num_positives, result.num_difficult, result.true_positives) == (1, 1, 1)
        assert result.ap == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_array_equal(result.precision, [0, 1, 1])  # tp / max(tp + fp, eps): 0 / eps first
    # The same boxes without the difficult flag: two positives, both found, still AP 1; flagged difficult
    # but counted as an FP instead (another tool's rule) would give precision 1/2 at the second detection.
    plain = {"im1": [VocObject("dog", A, False), VocObject("dog", B, False)]}
    assert _evaluate(plain, dets, False).num_positives == 2


def test_a_difficult_best_match_hides_a_normal_object_behind_it():
    # Greedy matching takes the highest-IoU object only: when that one is difficult the detection is ignored
    # even though it also overlaps a normal object by more than 0.5 (Detectron's rule).
    normal = (1, 1, 20, 22)  # IoU 400/440 with A
    objects = {"im1": [VocObject("dog", A, True), VocObject("dog", normal, False)]}
    result = _evaluate(objects, _dets(("im1", 0.9, A)), False)
    assert (result.true_positives, result.num_positives, result.ap) == (0, 1, 0.0)


def test_duplicate_detections_are_false_positives():
    # A, its duplicate, B: TP, FP, TP — the first case's numbers; the duplicate does not count twice.
    objects = {"im1": [VocObject("dog", A, False), VocObject("dog", B, False)]}
    shifted = (A[0] + 1, A[1], A[2] + 1, A[3])  # IoU 19*20 / (21*20) with A
    dets = _dets(("im1", 0.9, A), ("im1", 0.8, shifted), ("im1", 0.7, B))
    result = _evaluate(objects, dets, False)
    assert result.true_positives == 2
    assert result.ap == pytest.approx(5 / 6, abs=1e-12)
    assert _evaluate(objects, dets, True).ap == pytest.approx(28 / 33, abs=1e-12)


def test_iou_uses_plus_one_widths_and_must_exceed_one_half():
    objects = {"im1": [VocObject("dog", (0, 0, 3, 3), False)]}
    # [0,0,2,2] in [0,0,3,3]: 9/16 with +1 widths (a TP); 4/9 without them.
    assert _evaluate(objects, _dets(("im1", 0.9, (0, 0, 2, 2))), False).true_positives == 1
    objects = {"im1": [VocObject("dog", (1, 1, 10, 10), False)]}
    # exactly 0.5 (50 / 100) is not > 0.5
    assert _evaluate(objects, _dets(("im1", 0.9, (1, 1, 10, 5))), False).true_positives == 0
    assert _evaluate(objects, _dets(("im1", 0.9, (1, 1, 10, 6))), False).true_positives == 1


def test_a_class_without_ground_truth_and_a_class_without_detections():
    objects = {"im1": [VocObject("dog", A, False)], "im2": []}
    dets = _dets(("im1", 0.9, B))
    # Detectron's values: rec = 0 / 0 (NaN) -> 11-point 0, area NaN; no detections at all -> 0.
    assert _evaluate(objects, dets, True, "cat").ap == 0.0
    assert np.isnan(_evaluate(objects, dets, False, "cat").ap)
    assert _evaluate(objects, _dets(), False, "cat").ap == 0.0
    assert _evaluate(objects, _dets(), True, "dog").ap == 0.0
    # In a report the class without ground truth is shown, said, and left out of the mean.
    dataset = VocDataset(Path("VOC2012"), "val", 2012, ["im1", "im2"], objects)
    mapping = map_classes(["__background__", "dog", "cat"], ["dog"], {"dog": "dog", "cat": "cat"})
    warnings = []
    report = evaluate_class_detections(dataset, {"dog": _dets(("im1", 0.9, A)), "cat": dets}, mapping, "area",
                                       warn=warnings.append)
    assert [c.name for c in report.classes] == ["dog", "cat"]
    assert report.mean_ap == 1.0 and len(report.scored) == 1
    assert any("no ground truth" in w and "cat" in w for w in warnings)
    assert "n/a" in report.format_table().splitlines()[2]


def _ap_07_independent(rec, prec):
    points = []
    for t in np.arange(0.0, 1.1, 0.1):  # the thresholds are NumPy's (see the 0.3 test)
        reached = prec[rec >= t]
        points.append(reached.max() if reached.size else 0.0)
    return sum(points) / 11.0


def _ap_area_independent(rec, prec):
    # Interpolated precision p(r) = max precision at recall >= r; integrate it over recall, step by step.
    ap, last_recall = 0.0, 0.0
    for k in range(len(rec)):
        if rec[k] > last_recall:
            ap += (rec[k] - last_recall) * prec[k:].max()
            last_recall = rec[k]
    return ap


def test_voc_ap_agrees_with_an_independent_formulation_on_random_curves():
    rng = np.random.default_rng(7)
    for trial in range(300):
        nd = int(rng.integers(1, 40))
        hits = rng.random(nd) < rng.random()
        npos = int(hits.sum() + rng.integers(0, 5)) or 1
        tp, fp = np.cumsum(hits), np.cumsum(~hits)
        rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        assert voc_ap(rec, prec, True) == pytest.approx(_ap_07_independent(rec, prec), abs=1e-12), trial
        assert voc_ap(rec, prec, False) == pytest.approx(_ap_area_independent(rec, prec), abs=1e-12), trial


def _iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_matching_agrees_with_a_plain_loop_on_random_scenes():
    rng = np.random.default_rng(11)
    for trial in range(40):
        objects = {}
        for i in range(4):
            objs = []
            for _ in range(int(rng.integers(0, 4))):
                x, y = rng.integers(1, 60, size=2)
                box = (int(x), int(y), int(x + rng.integers(5, 30)), int(y + rng.integers(5, 30)))
                objs.append(VocObject("dog", box, bool(rng.random() < 0.2)))
            objects[f"im{i}"] = objs
        rows = []
        for _ in range(int(rng.integers(1, 15))):
            image = f"im{int(rng.integers(0, 4))}"
            x, y = rng.integers(1, 60, size=2)
            # distinct scores: the order is the rule under test, not a tie
            rows.append((image, float(rng.random()), (float(x), float(y), float(x + rng.integers(5, 30)),
                                                      float(y + rng.integers(5, 30)))))
        result = _evaluate(objects, _dets(*rows), False)
        taken, tp = set(), []
        for image, _, box in sorted(rows, key=lambda r: -r[1]):
            gts = objects[image]
            if not gts:
                tp.append(0)
                continue
            j = max(range(len(gts)), key=lambda k: (_iou(box, gts[k].bbox), -k))
            if _iou(box, gts[j].bbox) > 0.5 and not gts[j].difficult and (image, j) not in taken:
                taken.add((image, j))
                tp.append(1)
            elif _iou(box, gts[j].bbox) > 0.5 and gts[j].difficult:
                tp.append(None)
            else:
                tp.append(0)
        assert result.true_positives == sum(t == 1 for t in tp), trial
        assert int(round(result.precision[-1] * max(sum(t is not None for t in tp), 1))) == sum(t == 1 for t in tp)


# ---------------------------------------------------------------------------------------------------------
# comp4 files, class maps


def test_comp4_lines_are_detectrons_format():
    boxes = np.array([[0, 0, 9.5, 19.25], [10.04, 2, 30, 40]], np.float32)
    lines = comp4_lines("000001", boxes, np.array([0.98765, 0.5], np.float32))
    # score to 3 decimals, boxes + 1 (the devkit's 1-based pixels) to 1 decimal
    assert lines == ["000001 0.988 1.0 1.0 10.5 20.2\n", "000001 0.500 11.0 3.0 31.0 41.0\n"]
    back = parse_comp4_lines(lines, "x")
    assert back.image_names == ["000001", "000001"]
    np.testing.assert_array_equal(back.boxes[1], [11.0, 3.0, 31.0, 41.0])


def test_comp4_reader_errors_and_salted_names(tmp_path):
    with pytest.raises(DetconvertError, match=r"f\.txt: line 2: expected"):
        parse_comp4_lines(["a 0.5 1 1 2 2", "b 0.5 1 1 2"], tmp_path / "f.txt")
    with pytest.raises(DetconvertError, match="line 1: score and box must be numbers"):
        parse_comp4_lines(["a high 1 1 2 2"], "f.txt")
    # Detectron's output_dir keeps salted names: comp4_<uuid>_det_<split>_<class>.txt
    (tmp_path / "comp4_5e0c2a1b_det_test_dining_table.txt").write_text("")
    (tmp_path / "comp4_det_val_dog.txt").write_text("")
    assert list(find_comp4_files(tmp_path, "test")) == ["dining_table"]
    with pytest.raises(DetconvertError, match="no comp4_det_train_<class>.txt result files"):
        find_comp4_files(tmp_path, "train")
    (tmp_path / "comp4_det_test_dining_table.txt").write_text("")
    with pytest.raises(DetconvertError, match="two result files for class 'dining_table'"):
        find_comp4_files(tmp_path, "test")


def test_class_mapping_by_name_by_coco_spelling_and_by_file(tmp_path):
    voc = ["aeroplane", "tvmonitor", "dog", "cow"]
    mapping = map_classes(["__background__", "airplane", "tv", "dog", "truck"], voc)
    assert mapping.to_dataset == {"airplane": "aeroplane", "tv": "tvmonitor", "dog": "dog"}
    assert mapping.missing == ["cow"] and mapping.unused == ["truck"]
    assert mapping.evaluated == ["aeroplane", "tvmonitor", "dog"]
    path = tmp_path / "map.txt"
    path.write_text("# shapes -> VOC\ncircle = dog\n\nsquare= cow\n")
    assert read_classes_map(path) == {"circle": "dog", "square": "cow"}
    mapping = map_classes(["__background__", "circle", "square", "triangle"], voc, read_classes_map(path))
    assert (mapping.evaluated, mapping.unused) == (["dog", "cow"], ["triangle"])
    with pytest.raises(DetconvertError, match="'star' not among the model's classes"):
        map_classes(["circle"], voc, {"star": "dog"})
    for text, message in (("circle dog\n", "line 1: expected 'model class = VOC class'"),
                          ("circle = dog\nsquare = dog\n", "line 2: VOC class 'dog' is mapped from two"),
                          ("# nothing\n", "classes map is empty")):
        path.write_text(text)
        with pytest.raises(DetconvertError, match=message):
            read_classes_map(path)


# ---------------------------------------------------------------------------------------------------------
# Annotation files: untrusted input, one-line errors with exit code 2


def _devkit(root: Path, annotations, split="test", year="VOC2007") -> Path:
    """A VOC year folder: {name: xml text or [VocObject]}."""
    folder = root / year
    (folder / "Annotations").mkdir(parents=True)
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    for name, content in annotations.items():
        if isinstance(content, (str, bytes)):
            data = content.encode() if isinstance(content, str) else content
            (folder / "Annotations" / f"{name}.xml").write_bytes(data)
        else:
            write_annotation(folder / "Annotations" / f"{name}.xml", f"{name}.jpg", 100, 100, content)
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in annotations))
    return folder


def test_annotation_writer_round_trip(tmp_path):
    objects = [VocObject("dog", (1, 2, 30, 40), False), VocObject("cat", (5, 6, 7, 8), True)]
    write_annotation(tmp_path / "a.xml", "a.jpg", 100, 120, objects)
    assert parse_annotation(tmp_path / "a.xml") == objects


BILLION_LAUGHS = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l "lol"><!ENTITY l2 "&l;&l;&l;&l;&l;&l;&l;&l;">'
                  '<!ENTITY l3 "&l2;&l2;&l2;&l2;&l2;&l2;&l2;&l2;">]><annotation><object><name>&l3;</name>'
                  '<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>')
EXTERNAL_ENTITY = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                   '<annotation><filename>&x;</filename></annotation>')
OBJECT = "<object><name>dog</name><bndbox><xmin>{}</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>{}</object>"


@pytest.mark.parametrize("content, message", [
    ("<annotation><object>", "not valid XML"),
    ("not xml at all", "not valid XML"),
    (BILLION_LAUGHS, "DTD"),
    (EXTERNAL_ENTITY, "DTD"),
    ("<annotation>" + OBJECT.format("1.5", "") + "</annotation>", r"object 1 \(dog\): <xmin> is '1.5'"),
    ("<annotation>" + OBJECT.format("1", "<difficult>yes</difficult>") + "</annotation>", "<difficult> is 'yes'"),
    ("<annotation><object><name>dog</name></object></annotation>", r"object 1 \(dog\) has no <bndbox>"),
    ("<annotation><object><bndbox/></object></annotation>", "object 1 has no <name>"),
    ("<annotation>" + " " * MAX_XML_BYTES + "</annotation>", "larger than"),
], ids=["truncated", "not-xml", "entity-expansion", "external-entity", "float-box", "bad-difficult", "no-box",
        "no-name", "oversized"])
def test_bad_annotation_is_one_line_exit_2(tmp_path, capsys, content, message):
    folder = _devkit(tmp_path, {"000001": [VocObject("dog", A, False)], "000002": content})
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "comp4_det_test_dog.txt").write_text("000001 0.9 1 1 20 20\n")
    assert cli.main(["eval", "--voc", str(folder), "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(folder / "Annotations" / "000002.xml") in err
    assert __import__("re").search(message, err), err


@pytest.mark.parametrize("setup, message", [
    (lambda folder: (folder / "ImageSets" / "Main" / "test.txt").unlink(), r"test\.txt: split file not found"),
    (lambda folder: (folder / "Annotations" / "000001.xml").unlink(), r"000001\.xml: annotation file not found"),
    (lambda folder: (folder / "ImageSets" / "Main" / "test.txt").write_text("000001\n000001\n"), "listed twice"),
])
def test_bad_devkit_is_one_line_exit_2(tmp_path, capsys, setup, message):
    folder = _devkit(tmp_path, {"000001": [VocObject("dog", A, False)]})
    setup(folder)
    (tmp_path / "res").mkdir()
    assert cli.main(["eval", "--voc", str(folder), "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and __import__("re").search(message, err), err
    # the devkit root is not a year folder: the error names the year folders inside
    assert cli.main(["eval", "--voc", str(tmp_path), "--results", str(tmp_path / "res")]) == 2
    assert "it holds VOC2007: pass one of them" in capsys.readouterr().err


def test_results_folder_json_and_class_reports(tmp_path, capsys):
    objects = {"000001": [VocObject("dog", A, False), VocObject("cow", B, False)],
               "000002": [VocObject("dog", C, True)], "000003": []}
    folder = _devkit(tmp_path, objects, split="val", year="VOC2012")
    res = tmp_path / "res"
    res.mkdir()
    (res / "comp4_det_val_dog.txt").write_text("000001 0.9 1 1 20 20\n000002 0.8 1 41 20 60\n000009 0.7 1 1 9 9\n")
    (res / "comp4_det_val_cat.txt").write_text("000003 0.9 1 1 20 20\n")
    assert cli.main(["eval", "--voc", str(folder), "--split", "val", "--results", str(res)]) == 0
    captured = capsys.readouterr()
    # 2012 -> the area metric; dog: 1 TP + a difficult hit; cow: the model has no such class; cat: no objects
    assert "area under the PR curve" in captured.out and "mAP = 1.0000 over 1 classes" in captured.out
    assert "1 detections on 1 images outside split 'val' ignored" in captured.err
    assert "the model has no class for cow (1)" in captured.err
    assert "no ground truth in split 'val' for cat" in captured.err
    # 07 metric on demand, and a json: category ids of the VOC table (dog = 12), image ids = numeric names
    json_path = tmp_path / "dets.json"
    json_path.write_text(json.dumps([{"image_id": 1, "category_id": 12, "bbox": [0, 0, 20, 20], "score": 0.9}]))
    report = evaluate_voc_results(folder, "val", json_path, metric="07", log=None, warn=lambda m: None)
    # VOC's table names all 20 classes: cow is the model's too, and it found none -> AP 0 in the mean
    assert report.metric == "07" and [c.name for c in report.scored] == ["cow", "dog"]
    assert [c.ap for c in report.scored] == pytest.approx([0.0, 1.0], abs=1e-12)  # 11 x 1/11
    assert report.mean_ap == pytest.approx(0.5, abs=1e-12) and report.missing == {}
    json_path.write_text(json.dumps([{"image_id": 1, "category_id": 99, "bbox": [0, 0, 20, 20], "score": 0.9}]))
    assert cli.main(["eval", "--voc", str(folder), "--split", "val", "--results", str(json_path)]) == 2
    assert "category ids not in the voc class table: 99 (1)" in capsys.readouterr().err
    # --classes-map renames the results' classes (a shapes model scored as VOC's dog)
    (res / "comp4_det_val_circle.txt").write_text("000001 0.9 1 1 20 20\n")
    (tmp_path / "map.txt").write_text("circle = dog\n")
    assert cli.main(["eval", "--voc", str(folder), "--split", "val", "--results", str(res),
                     "--classes-map", str(tmp_path / "map.txt")]) == 0
    captured = capsys.readouterr()
    assert "mAP = 1.0000 over 1 classes" in captured.out
    assert "2 model classes map to no class of the dataset" in captured.err
    # flags of the other dataset kind are refused, one line
    for argv, flag in ((["--voc", str(folder), "--ann", "x.json"], "--annotations"),
                       (["--ann", "x.json", "--split", "val"], "--split"),
                       (["--ann", "x.json", "--classes-map", "m.txt"], "--classes-map"), ([], "--voc DIR")):
        assert cli.main(["eval", *argv, "--results", str(res)]) == 2
        assert flag in capsys.readouterr().err
    # a folder name without a year: the metric must be said
    plain = tmp_path / "plain"
    folder.rename(plain)
    assert cli.main(["eval", "--voc", str(plain), "--split", "val", "--results", str(res)]) == 2
    assert "pass --voc-metric 07 or --voc-metric area" in capsys.readouterr().err
    assert cli.main(["eval", "--voc", str(plain), "--split", "val", "--results", str(res), "--voc-metric", "07"]) == 0


# ---------------------------------------------------------------------------------------------------------
# End to end: a VOC-format devkit of shapes images, the shipped shapes model loaded by path, the CLI


def _table(stdout: str):
    """The per-class rows and the mAP line of a printed report."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("class "))
    end = next(i for i, line in enumerate(lines) if line.startswith("mAP = "))
    return lines[start:end + 1]


def test_shapes_devkit_end_to_end_with_the_shipped_model(tmp_path, capsys):
    from detconvert.demo import SHAPES_MODEL
    from detconvert.train.shapes import SHAPE_CLASSES, write_shapes_voc

    # The model's training images (4 images, seed 0) as VOC2007: JPEG images, XML, ImageSets/Main/test.txt.
    root = write_shapes_voc(tmp_path / "VOCdevkit", num_images=4, seed=0)
    # One object made difficult, and a class the model does not have, to see both through the CLI.
    first = root / "Annotations" / "000001.xml"
    objects = parse_annotation(first)
    objects = [VocObject(objects[0].name, objects[0].bbox, True), *objects[1:],
               VocObject("star", (3, 3, 9, 9), False)]
    write_annotation(first, "000001.jpg", 128, 128, objects)

    out = tmp_path / "out"
    assert cli.main(["eval", "--voc", str(root), "--split", "test", "--load_detectron", str(SHAPES_MODEL),
                     "--output-dir", str(out), "--device", "cpu", "--no-progress"]) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "voc_eval.json").read_text())
    # Measured 1.0 (11-point and area, AVX-512 and AVX2): true positives at IoU >= 0.84 and score >= 0.994, the
    # false positives at IoU <= 0.34 and score <= 0.45.
    assert summary["metric"] == "07" and summary["mAP"] >= 0.9
    assert f"mAP = {summary['mAP']:.4f} over 3 classes (VOC07 11-point, VOC2007 test, 4 images" in captured.out
    assert f"summary: VOC2007 test mAP {summary['mAP'] * 100:.1f} over 3 classes" in captured.out
    assert "the model has no class for star (1)" in captured.err
    assert sum(c["num_difficult"] for c in summary["classes"].values()) == 1
    assert sorted(summary["classes"]) == sorted(SHAPE_CLASSES)
    for name, entry in summary["classes"].items():
        lines = (out / f"comp4_det_test_{name}.txt").read_text().splitlines()
        assert len(lines) == entry["num_detections"] > 0
        assert entry["num_positives"] > 0 and entry["true_positives"] <= entry["num_positives"]
    assert not list(out.glob(".*.part"))  # atomic writes leave no temp file behind

    # The files it wrote score the same: the comp4 folder, and the json with the model's category ids.
    table = _table(captured.out)
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("".join(f"{n}\n" for n in SHAPE_CLASSES))
    for results, extra in ((out, []), (out / "detections_coco.json", ["--dataset", str(classes_file)])):
        assert cli.main(["eval", "--voc", str(root), "--results", str(results), *extra]) == 0
        assert _table(capsys.readouterr().out) == table
    # --voc-metric area overrides the year's 11-point metric
    area = evaluate_voc_results(root, "test", out, metric="area", log=None, warn=lambda m: None)
    assert area.metric == "area" and area.mean_ap >= 0.9


def test_voc2012_names_through_infer_json_and_eval(tmp_path, capsys):
    """Names like ``2008_000123`` are not numbers: infer's ids are positions in its run, so its json is matched to
    the split by each record's ``file_name``; eval's own json carries them too. Both score as the model run."""
    from detconvert.demo import SHAPES_MODEL
    from detconvert.train.shapes import SHAPE_CLASSES, write_shapes_voc

    root = write_shapes_voc(tmp_path / "VOCdevkit", num_images=4, seed=0)
    split = root / "ImageSets" / "Main" / "test.txt"
    numeric = split.read_text().split()
    # reversed, so that a position in infer's (sorted) run is not a position in the split
    renamed = {n: f"2008_{int(n) * 7:06d}" for n in numeric}
    for old, new in renamed.items():
        (root / "Annotations" / f"{old}.xml").rename(root / "Annotations" / f"{new}.xml")
        (root / "JPEGImages" / f"{old}.jpg").rename(root / "JPEGImages" / f"{new}.jpg")
    split.write_text("".join(f"{renamed[n]}\n" for n in reversed(numeric)))

    out = tmp_path / "out"
    assert cli.main(["eval", "--voc", str(root), "--split", "test", "--load_detectron", str(SHAPES_MODEL),
                     "--output-dir", str(out), "--device", "cpu", "--no-progress"]) == 0
    table = _table(capsys.readouterr().out)
    assert float(table[-1].split()[2]) >= 0.9  # "mAP = 1.0000 over ..." (measured 1.0, as with numeric names)
    written = json.loads((out / "detections_coco.json").read_text())
    assert {r["file_name"] for r in written} <= {f"{n}.jpg" for n in renamed.values()} and written

    infer_out = tmp_path / "infer"
    assert cli.main(["infer", "--load_detectron", str(SHAPES_MODEL), "--image_dir", str(root / "JPEGImages"),
                     "--output_dir", str(infer_out), "--device", "cpu", "--no-progress", "--thresh", "2"]) == 0
    capsys.readouterr()
    infer_json = infer_out / "detections_coco.json"
    ids = {r["image_id"] for r in json.loads(infer_json.read_text())}
    assert ids <= {1, 2, 3, 4}  # positions in the run: by id alone nothing would match the split
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("".join(f"{n}\n" for n in SHAPE_CLASSES))
    for results in (infer_json, out / "detections_coco.json"):
        assert cli.main(["eval", "--voc", str(root), "--results", str(results), "--dataset", str(classes_file)]) == 0
        captured = capsys.readouterr()
        assert _table(captured.out) == table, captured.err
        assert "outside split" not in captured.err
