"""``tools/infer_simple.py`` / ``detconvert infer``: bad input, pictures and json with a fake predictor, and the
end-to-end golden run with the real model (Detectron's detections on coffee.png)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from detconvert import cli
from detconvert.inference import vis
from detconvert.inference.results import xywh_to_xyxy
from detconvert.commands import infer as infer_command
from detconvert.data.classes import coco_table, keypoints_coco_table
from detconvert.inference.runner import infer_images
from tests._shared import REFERENCE, config_yaml_path, load_json, requires_shared

REPO = Path(__file__).resolve().parent.parent
INFER_SIMPLE = REPO / "tools" / "infer_simple.py"


def _detections(image: np.ndarray):
    """One dog (class 17) in the middle quarter of the image and one person (class 1) at the top left."""
    from detconvert.structures import Detections

    h, w = image.shape[:2]
    boxes = np.array([[w // 4, h // 4, 3 * w // 4 - 1, 3 * h // 4 - 1], [2, 12, w // 5, h // 3]], np.float32)
    masks = []
    for x1, y1, x2, y2 in boxes.astype(int):
        m = np.zeros((h, w), np.uint8)
        m[y1 + 2 : y2 - 1, x1 + 2 : x2 - 1] = 1
        masks.append(mask_util.encode(np.asfortranarray(m)))
    return Detections(boxes=boxes, scores=np.array([0.9, 0.75], np.float32), classes=np.array([17, 1]),
                      image_size=(h, w), masks=masks)


class FakePredictor:
    """The Predictor interface (class_names, spec, device, predict) returning fixed detections."""

    def __init__(self):
        self.class_names = list(coco_table().names)
        self.spec = SimpleNamespace(num_classes=81, mask_head=object(), keypoint_head=None, pipeline="e2e")
        self.device = "cpu"
        self.batches = []

    def predict(self, images):
        self.batches.append(len(images))
        return [_detections(image) for image in images]


@pytest.fixture()
def fake_model(monkeypatch):
    predictor = FakePredictor()
    seen_args = []

    def fake_load(args):
        seen_args.append(args)
        return predictor

    monkeypatch.setattr(infer_command, "load_predictor", fake_load)
    predictor.seen_args = seen_args
    return predictor


def _write_images(folder: Path, names=("a.png", "b.jpg"), size=(90, 120)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        cv2.imwrite(str(folder / name), rng.integers(80, 120, size=(*size, 3), dtype=np.uint8))
    return folder


def _run_shim(*argv, timeout=120):
    proc = subprocess.run([sys.executable, str(INFER_SIMPLE), *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


# ----------------------------------------------------------------------------------------- bad input


def test_missing_image_dir_is_one_line_exit_2(tmp_path):
    rc, _, err = _run_shim("--load_detectron", tmp_path / "w.pkl", "--image_dir", tmp_path / "nope")
    assert rc == 2
    assert err.strip() == f"detconvert infer: error: {tmp_path / 'nope'}: no such image file or folder"


def test_empty_folder_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    rc, _, err = _run_shim("--wts", tmp_path / "w.pkl", tmp_path / "empty")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'empty'}: no images (*.jpg" in err and "Traceback" not in err


def test_no_weights_and_bad_set_are_one_line_errors(tmp_path, capsys):
    folder = _write_images(tmp_path / "imgs")
    assert cli.main(["infer", str(folder)]) == 2
    assert "error: no weights given" in capsys.readouterr().err
    assert infer_command.override_pairs(["TEST.SCALE", "600"]) == [("TEST.SCALE", "600")]
    assert cli.main(["infer", str(folder), "--wts", "x.pkl", "--set", "TEST.SCALE"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "detconvert infer: error: --set: expects KEY VALUE pairs, got an odd number of words: TEST.SCALE"


def test_unreadable_image_is_skipped_with_warning(tmp_path, fake_model, capsys):
    folder = _write_images(tmp_path / "imgs")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    out_dir = tmp_path / "out"
    assert cli.main(["infer", "--image_dir", str(folder), "--output_dir", str(out_dir)]) == 0
    captured = capsys.readouterr()
    assert f"detconvert: warning: {folder / 'broken.jpg'}: not an image OpenCV can read; skipped" in captured.err
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.png.png", "b.jpg.png", "detections_coco.json",
                                                         "detections_coco.run.json"]  # + run metadata (precision)
    assert "2 images, 1 skipped: 2 pictures" in captured.out


def test_only_unreadable_images_is_fatal(tmp_path, fake_model, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"garbage")
    assert cli.main(["infer", str(folder), "--output_dir", str(tmp_path / "out")]) == 2
    assert "none of the 1 image(s) could be read" in capsys.readouterr().err
    assert not (tmp_path / "out" / "detections_coco.json").exists()


def test_unknown_class_and_dataset_mismatch(tmp_path, fake_model, capsys):
    folder = _write_images(tmp_path / "imgs")
    assert cli.main(["infer", str(folder), "--classes", "unicorn"]) == 2
    assert "--classes: unknown class 'unicorn'" in capsys.readouterr().err
    assert cli.main(["infer", str(folder), "--dataset", "keypoints_coco_2017_val"]) == 2
    err = capsys.readouterr().err
    assert "keypoints_coco_2017_val: dataset has 1 classes + background, the model 80 + background" in err


# ------------------------------------------------------------------------------ pictures and json


def test_pictures_and_json(tmp_path, fake_model, capsys):
    folder = _write_images(tmp_path / "imgs", names=("000000000139.png", "000000000785.png"))
    out_dir, json_path = tmp_path / "out", tmp_path / "res" / "all.json"
    argv = ["infer", str(folder), "--output_dir", str(out_dir), "--json", str(json_path), "--verbose",
            "--batch-size", "2", "--thresh", "0.8"]
    assert cli.main(argv) == 0
    assert fake_model.batches == [2]
    out = capsys.readouterr().out
    assert "000000000139.png: 2 detections (person: 1, dog: 1), scores 0.750-0.900; 1 at >= 0.8" in out
    records = json.loads(json_path.read_text())
    assert {r["image_id"] for r in records} == {139, 785}  # COCO file names give their ids
    assert sorted({r["category_id"] for r in records}) == [1, 18]  # dataset ids: person 1, dog 18
    dog = next(r for r in records if r["category_id"] == 18)
    np.testing.assert_allclose(xywh_to_xyxy(dog["bbox"])[0], [30, 22, 89, 66])
    assert mask_util.decode({**dog["segmentation"], "counts": dog["segmentation"]["counts"].encode()}).sum() > 0

    # The picture: same size as the input, changed inside the drawn (score >= 0.8) dog box and its label,
    # unchanged elsewhere, in particular inside the person box (0.75 < thresh).
    image = cv2.imread(str(folder / "000000000139.png"))
    picture = cv2.imread(str(out_dir / "000000000139.png.png"))
    assert picture.shape == image.shape
    changed = np.any(picture != image, axis=2)
    drawn = np.zeros_like(changed)
    drawn[22 - 2 - 12 : 66 + 3, 30 - 2 : 89 + 3] = True  # dog box + 2 px, and the label strip above it
    assert changed[drawn].sum() > 0.5 * (89 - 30) * (66 - 22)
    assert changed[~drawn].sum() == 0


def test_always_out_ext_and_class_filter(tmp_path, fake_model):
    folder = _write_images(tmp_path / "imgs", names=("a.png",))
    out_dir = tmp_path / "out"
    # Nothing reaches 0.95: Detectron writes no picture unless --always-out.
    assert cli.main(["infer", str(folder), "--output_dir", str(out_dir), "--thresh", "0.95"]) == 0
    assert not (out_dir / "a.png.png").exists()
    assert cli.main(["infer", str(folder), "--output_dir", str(out_dir), "--thresh", "0.95", "--always-out",
                     "--output-ext", "pdf", "--classes", "person"]) == 0
    assert (out_dir / "a.png.pdf").read_bytes().startswith(b"%PDF")
    records = json.loads((out_dir / "detections_coco.json").read_text())
    assert [r["category_id"] for r in records] == [1]


def test_library_call_and_progress_flag(tmp_path):
    folder = _write_images(tmp_path / "imgs", names=("a.png", "b.png", "c.png"))
    predictor = FakePredictor()
    summary = infer_images(predictor, [folder], tmp_path / "out", ext="jpg", thresh=0.5, batch_size=2,
                           progress=False, log=lambda m: None)
    assert predictor.batches == [2, 1]
    assert [p.name for p in summary.pictures] == ["a.png.jpg", "b.png.jpg", "c.png.jpg"]
    assert summary.image_ids == [1, 2, 3] and summary.num_detections == 6 and not summary.skipped
    assert not list((tmp_path / "out").glob(".*part"))  # atomic writes leave no temp files


# ------------------------------------------------------------------------ end to end, real model

MASK_ID = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"
KEYPOINT_ID = "12_2017_baselines__e2e_keypoint_rcnn_R-50-FPN_1x"
HAVE_MODEL = importlib.util.find_spec("detconvert.inference.predictor") is not None
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="detconvert.inference.predictor (load_model) is not in this tree yet")


def _box_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    inter = ix * iy
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _assert_matches_golden(records, golden, table):
    """The reference README's rules: same count per class, greedy IoU matching, boxes within 0.01 px,
    scores within 1e-4, mask IoU >= 0.999, keypoints x/y within 0.01 px."""
    for j in range(1, len(golden["cls_boxes"])):
        gold = golden["cls_boxes"][j]
        mine = [r for r in records if table.index_of_category(r["category_id"]) == j]
        assert len(mine) == len(gold), f"class {j}: {len(mine)} detections, golden {len(gold)}"
        mine_boxes = [list(xywh_to_xyxy(r["bbox"])[0]) for r in mine]
        free = set(range(len(mine)))
        for g in sorted(range(len(gold)), key=lambda k: -gold[k][4]):
            best = max(free, key=lambda m: _box_iou(mine_boxes[m], gold[g][:4]))
            free.remove(best)
            np.testing.assert_allclose(mine_boxes[best], gold[g][:4], atol=0.01)
            assert abs(mine[best]["score"] - gold[g][4]) <= 1e-4
            if golden.get("cls_segms"):
                a = mask_util.decode({**mine[best]["segmentation"],
                                      "counts": mine[best]["segmentation"]["counts"].encode()})
                gs = golden["cls_segms"][j][g]
                b = mask_util.decode({"size": gs["size"], "counts": gs["counts"].encode()})
                union = np.logical_or(a, b).sum()
                assert union == 0 or np.logical_and(a, b).sum() / union >= 0.999  # both empty: identical
            if golden.get("cls_keyps"):
                xy = np.array(mine[best]["keypoints"], np.float64).reshape(-1, 3)[:, :2].T
                np.testing.assert_allclose(xy, np.array(golden["cls_keyps"][j][g])[:2], atol=0.01)


@requires_shared
@needs_model
@pytest.mark.slow
@pytest.mark.parametrize("config_id", [MASK_ID, KEYPOINT_ID])
@pytest.mark.parametrize("with_cfg", [False, True], ids=["embedded-cfg", "cfg"])
def test_golden_end_to_end(config_id, with_cfg, weights_factory, tmp_path):
    weights = weights_factory(config_id)
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    shutil.copy(REFERENCE / "images" / "coffee.png", image_dir / "coffee.png")
    out_dir = tmp_path / "out"
    thresh = 0.35 if config_id == MASK_ID else 0.7  # mask golden scores are 0.264-0.407
    dataset = "coco" if config_id == MASK_ID else "keypoints_coco"  # as Detectron.pytorch users pass it
    argv = ["--load_detectron", weights, "--image_dir", image_dir, "--output_dir", out_dir, "--device", "cpu",
            "--thresh", thresh, "--dataset", dataset]
    if with_cfg:
        argv += ["--cfg", config_yaml_path(config_id)]
    rc, out, err = _run_shim(*argv, timeout=600)
    assert rc == 0, err
    golden = load_json(REFERENCE / "outputs" / config_id / "detections.json")
    table = coco_table() if config_id == MASK_ID else keypoints_coco_table()
    records = json.loads((out_dir / "detections_coco.json").read_text())
    _assert_matches_golden(records, golden, table)

    image = cv2.imread(str(image_dir / "coffee.png"))
    picture = cv2.imread(str(out_dir / "coffee.png.png"))
    assert picture.shape == image.shape
    changed = np.any(picture != image, axis=2)
    drawn = np.zeros_like(changed)
    for r in records:
        if r["score"] >= thresh:
            x1, y1, x2, y2 = xywh_to_xyxy(r["bbox"])[0]
            # box (+2 px anti-aliasing), its label strip above, keypoint dots reaching 4 px outside
            drawn[max(int(y1) - 18, 0) : int(y2) + 5, max(int(x1) - 5, 0) : int(x2) + 5] = True
            # the label strip starts at x1 and is as wide as its text, often wider than the box
            label = vis.class_label(table.index_of_category(r["category_id"]), r["score"], table.names)
            (text_w, _), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, vis.LABEL_FONT_SCALE, 1)
            drawn[max(int(y1) - 18, 0) : int(y1) + 1, max(int(x1) - 1, 0) : int(x1) + text_w + 2] = True
    assert changed[drawn].sum() > 0
    assert changed[~drawn].sum() == 0, f"{changed[~drawn].sum()} pixels changed outside the detections"


@requires_shared
@needs_model
@pytest.mark.slow
def test_weights_config_mismatch_is_one_line(weights_factory, tmp_path):
    weights = weights_factory(KEYPOINT_ID)
    rc, _, err = _run_shim("--load_detectron", weights, "--cfg", config_yaml_path(MASK_ID),
                           REFERENCE / "images" / "coffee.png", "--output_dir", tmp_path, "--device", "cpu")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@requires_shared
@needs_model
@pytest.mark.cuda
@pytest.mark.skipif(not importlib.util.find_spec("torch") or not __import__("torch").cuda.is_available(),
                    reason="no CUDA device")
def test_golden_on_cuda(weights_factory, tmp_path):
    weights = weights_factory(MASK_ID)
    rc, _, err = _run_shim("--load_detectron", weights, REFERENCE / "images" / "coffee.png", "--output_dir",
                           tmp_path, "--device", "cuda", "--thresh", "0.35", timeout=600)
    assert rc == 0, err
    records = json.loads((tmp_path / "detections_coco.json").read_text())
    _assert_matches_golden(records, load_json(REFERENCE / "outputs" / MASK_ID / "detections.json"), coco_table())
