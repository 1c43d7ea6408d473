"""Issue #7, CLI side: ``--proposals`` / ``--rpn-weights`` for precomputed-proposal models, RPN-only and
RetinaNet weight files through ``tools/infer_simple.py``, and the "inputs:" lines of inspect / config --explain.

The precomputed-proposal model is ``fast_rcnn_R-50-FPN_1x.yaml`` over the Mask R-CNN golden weight file
(same body and box head blob names; its RPN and mask blobs go unread): there is no fast_rcnn recipe.
Images are a 300 x 200 copy of coffee.png run at ``TEST.SCALE 320`` so each forward stays short.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from detconvert import cli
from detconvert.inference import vis
from detconvert.inference.results import xywh_to_xyxy
from detconvert.errors import DetconvertError
from detconvert.inference.proposals import file_proposal_source, proposal_file_id
from detconvert.inference.proposals import read_proposals, write_proposals
from detconvert.structures import Detections
from tests._shared import REFERENCE, config_yaml_path, requires_shared

REPO = Path(__file__).resolve().parent.parent
INFER_SIMPLE = REPO / "tools" / "infer_simple.py"
MASK_FPN = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"
RETINA = "12_2017_baselines__retinanet_R-50-FPN_1x"
RPN_FPN = "12_2017_baselines__rpn_R-50-FPN_1x"
FAST_RCNN = "12_2017_baselines__fast_rcnn_R-50-FPN_1x"
SMALL = ["--device", "cpu", "--set", "TEST.SCALE", "320", "TEST.MAX_SIZE", "512"]
BOX_ATOL = 0.01  # px, between two runs of the same model on the same proposals
SCORE_ATOL = 1e-4


def _run_shim(*argv, timeout=300):
    proc = subprocess.run([sys.executable, str(INFER_SIMPLE), *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _changed_outside(picture: np.ndarray, image: np.ndarray, boxes: np.ndarray) -> int:
    """Pixels changed outside the given boxes (+2 px anti-aliasing, and a label strip above each)."""
    changed = np.any(picture != image, axis=2)
    drawn = np.zeros_like(changed)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64):
        drawn[max(int(y1) - 18, 0): int(y2) + 3, max(int(x1) - 2, 0): int(x2) + 40] = True
    return int(changed[~drawn].sum())


# ------------------------------------------------------------------------- library pieces, no model


def test_proposal_file_matches_images_by_stem(tmp_path):
    boxes = [np.array([[1, 2, 30, 40]], np.float32), np.array([[5, 5, 9, 9], [0, 0, 3, 3]], np.float32)]
    path = write_proposals(tmp_path / "props.pkl", [397133, "dog"], boxes, [np.ones(1), np.ones(2)])
    images = [tmp_path / "dog.jpg", tmp_path / "000000397133.png"]
    source = file_proposal_source(path, images)
    got = source(images, [None, None])
    np.testing.assert_array_equal(got[0], boxes[1])  # "dog" by name, in the images' order, not the file's
    np.testing.assert_array_equal(got[1], boxes[0])  # COCO file name -> id 397133
    assert [proposal_file_id(p) for p in images] == ["dog", 397133]

    with pytest.raises(DetconvertError) as info:
        file_proposal_source(path, [tmp_path / "cat.png"])
    message = str(info.value)
    assert message.startswith(f"{path}: no proposals for image cat.png") and "\n" not in message
    twice = write_proposals(tmp_path / "twice.json", [7, "007"], boxes, [np.ones(1), np.ones(2)])
    with pytest.raises(DetconvertError, match="two entries for image id"):
        file_proposal_source(twice, [tmp_path / "7.png"])


def test_proposal_pictures_show_only_the_top_n_with_scores():
    image = np.full((120, 160, 3), 100, np.uint8)
    boxes = np.array([[10, 60, 40, 100], [100, 10, 150, 50], [60, 70, 90, 110]], np.float32)
    dets = Detections(boxes=boxes, scores=np.array([0.9, 0.2, 0.6], np.float32), classes=np.zeros(3, np.int64),
                      image_size=(120, 160), is_proposals=True)
    assert vis.has_visible(dets, thresh=0.99)  # proposals are drawn by rank, not by --thresh
    picture = vis.draw_detections(image, dets, ["__background__", "x"], thresh=0.99, max_proposals=2)
    assert _changed_outside(picture, image, boxes[[0, 2]]) == 0  # the 0.2 proposal is not drawn
    assert np.any(picture[60:100, 10:40] != image[60:100, 10:40])
    assert vis.proposal_label(0.9) == ".90"  # objectness only, no class name
    assert np.array_equal(vis.draw_detections(image, dets, max_proposals=0), image)


# ------------------------------------------------------------------------------- real weight files


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    if REFERENCE is None:
        pytest.skip("../shared/reference (Detectron ground truth) is not beside this checkout")
    folder = tmp_path_factory.mktemp("images")
    coffee = cv2.imread(str(REFERENCE / "images" / "coffee.png"))
    cv2.imwrite(str(folder / "coffee.png"), cv2.resize(coffee, (300, 200), interpolation=cv2.INTER_AREA))
    return folder


@pytest.fixture(scope="module")
def rpn_run(small_images, tmp_path_factory):
    """infer_simple on the RPN-only golden weight file: ``(output dir, stdout)``."""
    from tests.conftest import make_weights

    out = tmp_path_factory.mktemp("rpn_out")
    rc, stdout, err = _run_shim("--wts", make_weights(RPN_FPN), small_images, "--output_dir", out, *SMALL)
    assert rc == 0, err
    return out, stdout


@requires_shared
def test_infer_simple_rpn_only_draws_proposals_and_writes_a_proposal_file(rpn_run, small_images):
    out, stdout = rpn_run
    ids, boxes, scores = read_proposals(out / "proposals.pkl")
    assert ids == ["coffee"] and boxes[0].ndim == 2 and boxes[0].shape[1] == 4 and len(boxes[0]) > 100
    assert np.isfinite(boxes[0]).all() and np.all(np.diff(scores[0]) <= 0), "best first"
    # Original-image pixels: Detectron clips proposals to the 480 x 320 network input (scale 320/200 =
    # 1.6, already a multiple of 32), so they may reach (480 - 1) / 1.6 = 299.375 on a 300 px wide image.
    assert boxes[0].min() >= 0 and boxes[0][:, 2].max() <= 479 / 1.6 + 1e-3 and boxes[0][:, 3].max() <= 319 / 1.6 + 1e-3
    assert f"{len(boxes[0])} proposals in {out / 'proposals.pkl'}" in stdout
    assert json.loads((out / "detections_coco.json").read_text()) == []  # proposals are not COCO results

    image = cv2.imread(str(small_images / "coffee.png"))
    picture = cv2.imread(str(out / "coffee.png.png"))
    assert picture.shape == image.shape and np.any(picture != image)
    top = boxes[0][: vis.PROPOSALS_DRAWN]
    assert _changed_outside(picture, image, top) == 0, "only the top proposals are drawn"


@requires_shared
def test_infer_simple_on_retinanet_weights(small_images, weights_factory, tmp_path):
    rc, _, err = _run_shim("--wts", weights_factory(RETINA), small_images, "--output_dir", tmp_path, "--thresh",
                           "0.5", *SMALL)
    assert rc == 0, err
    records = json.loads((tmp_path / "detections_coco.json").read_text())
    assert 0 < len(records) <= 100 and all(np.isfinite(r["bbox"]).all() and len(r["bbox"]) == 4 for r in records)
    image = cv2.imread(str(small_images / "coffee.png"))
    picture = cv2.imread(str(tmp_path / "coffee.png.png"))
    assert picture.shape == image.shape and np.any(picture != image)


def _fast_rcnn_model(weights_factory) -> list:
    """CLI arguments of the precomputed-proposal model (fast_rcnn config over the mask FPN golden weights)."""
    return ["--wts", str(weights_factory(MASK_FPN)), "--cfg", str(config_yaml_path(FAST_RCNN)), *SMALL]


def _assert_same_detections(got: list, want: list) -> None:
    """Same classes, boxes within BOX_ATOL px and scores within SCORE_ATOL, record by record (sorted)."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a["category_id"] == b["category_id"] and a["image_id"] == b["image_id"]
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=BOX_ATOL, rtol=0)
        assert abs(a["score"] - b["score"]) <= SCORE_ATOL


def _records(path: Path):
    records = json.loads(path.read_text())
    records.sort(key=lambda r: (r["category_id"], -r["score"], r["bbox"]))
    return records


@requires_shared
def test_precomputed_proposals_from_file_and_from_rpn_weights_agree(rpn_run, small_images, weights_factory,
                                                                    tmp_path, capsys):
    model = _fast_rcnn_model(weights_factory)
    proposals = rpn_run[0] / "proposals.pkl"
    assert cli.main(["infer", str(small_images), "--output_dir", str(tmp_path / "file"), "--proposals",
                     str(proposals), "--thresh", "0.3", *model]) == 0
    assert cli.main(["infer", str(small_images), "--output_dir", str(tmp_path / "rpn"), "--rpn-weights",
                     str(weights_factory(RPN_FPN)), "--thresh", "0.3", *model]) == 0
    capsys.readouterr()
    from_file = _records(tmp_path / "file" / "detections_coco.json")
    from_rpn = _records(tmp_path / "rpn" / "detections_coco.json")
    assert 0 < len(from_file) <= 100
    _assert_same_detections(from_file, from_rpn)
    for a in from_file:
        assert a["image_id"] == 1 and len(a["bbox"]) == 4 and np.isfinite(a["bbox"]).all() and "segmentation" not in a
    boxes = np.concatenate([xywh_to_xyxy(r["bbox"]) for r in from_file])
    assert boxes[:, 2].max() <= 299 and boxes[:, 3].max() <= 199 and boxes.min() >= 0
    assert (tmp_path / "file" / "coffee.png.png").exists()


@requires_shared
def test_proposal_errors_are_one_line_exit_2(rpn_run, small_images, weights_factory, tmp_path, capsys):
    fast_rcnn = _fast_rcnn_model(weights_factory)
    out = ["--output_dir", str(tmp_path / "out")]

    # A file without this image: named with the file, before any weights load.
    other = tmp_path / "other"
    other.mkdir()
    (other / "tea.png").write_bytes((small_images / "coffee.png").read_bytes())
    proposals = rpn_run[0] / "proposals.pkl"
    assert cli.main(["infer", str(other), "--proposals", str(proposals), *out, *fast_rcnn]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith(f"detconvert infer: error: {proposals}: no proposals for image tea.png")

    assert cli.main(["infer", str(small_images), *out, *fast_rcnn]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "reads precomputed proposals" in line and "--proposals FILE or --rpn-weights RPN.pkl" in line

    assert cli.main(["infer", str(small_images), "--proposals", str(proposals), "--num-processes", "2", *out,
                     *fast_rcnn]) == 2
    assert "one process" in _one_line_error(capsys.readouterr().err)

    # An RPN-only model makes its own proposals: giving it some is refused.
    assert cli.main(["infer", str(small_images), "--wts", str(weights_factory(RPN_FPN)), "--proposals",
                     str(proposals), *out, *SMALL]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "precomputed-proposal (fast_rcnn) models" in line and "RPN-only" in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ inspect / --explain


@requires_shared
@pytest.mark.parametrize("config_id, inputs, outputs", [
    (MASK_FPN, "inputs: image", "outputs: detections"),
    (RETINA, "inputs: image", "outputs: detections"),
    (FAST_RCNN, "inputs: image + proposals (--proposals FILE or --rpn-weights RPN.pkl)", "outputs: detections"),
    (RPN_FPN, "inputs: image", "outputs: proposals"),
])
def test_config_explain_and_inspect_say_the_inputs(config_id, inputs, outputs, capsys):
    from detconvert.io.cfg_yaml import load_detectron_cfg_text
    from detconvert.io.weights import WeightFile
    from detconvert.inspect import inspect_weights
    from tests.test_inspect import blobs_from_tsv

    assert cli.main(["config", str(config_yaml_path(config_id)), "--explain"]) == 0
    explained = capsys.readouterr().out
    assert f"\nI{inputs[1:]}.\n" in explained and f"\nO{outputs[1:]}" in explained

    # inspect reads the architecture from the blobs alone (a fast_rcnn file has no RPN blobs).
    cfg_text = (REFERENCE / "cfg_dumps" / f"{config_id}.yaml").read_text()
    wf = WeightFile(path=Path(f"{config_id}.pkl"), flavour="detectron_detector", blobs=blobs_from_tsv(config_id),
                    momentum={}, cfg_text=cfg_text, cfg=load_detectron_cfg_text(cfg_text), size=0)
    text = inspect_weights(wf).format_text()
    lines = {line.split(":", 1)[0]: " ".join(line.split()) for line in text.splitlines()}
    assert lines["inputs"] == inputs and lines["outputs"].startswith(outputs)


@requires_shared
def test_inspect_cli_on_the_rpn_weight_file(weights_factory, capsys):
    assert cli.main(["inspect", "--no-hash", str(weights_factory(RPN_FPN))]) == 0
    out = capsys.readouterr().out
    assert "\ninputs:      image\n" in out and "\noutputs:     proposals" in out
    assert cli.main(["inspect", "--no-hash", "--json", str(weights_factory(RPN_FPN))]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pipeline"] == "rpn_only" and data["inputs"] == "image"


def test_proposals_out_needs_an_rpn_only_model(tmp_path, monkeypatch, capsys):
    from detconvert.commands import infer as infer_command
    from tests.test_infer_cli import FakePredictor, _write_images

    monkeypatch.setattr(infer_command, "load_predictor", lambda args: FakePredictor())  # an e2e model
    folder = _write_images(tmp_path / "imgs", names=("a.png",))
    argv = ["infer", str(folder), "--output_dir", str(tmp_path / "out"), "--proposals-out", str(tmp_path / "p.pkl")]
    assert cli.main(argv) == 2
    assert _one_line_error(capsys.readouterr().err) == (
        "detconvert infer: error: --proposals-out: only an RPN-only model writes proposals; "
        "this model outputs detections")
    assert not (tmp_path / "p.pkl").exists()


@requires_shared
def test_eval_runs_a_precomputed_proposal_model_on_a_proposal_file(rpn_run, small_images, weights_factory,
                                                                   tmp_path, capsys):
    """``detconvert eval --proposals``: the same detections as ``infer --proposals``; without them, exit 2."""
    from detconvert.data.classes import COCO_CATEGORY_IDS, COCO_CLASSES

    model = _fast_rcnn_model(weights_factory)
    proposals = rpn_run[0] / "proposals.pkl"
    assert cli.main(["infer", str(small_images), "--output_dir", str(tmp_path / "infer"), "--proposals",
                     str(proposals), *model]) == 0
    inferred = _records(tmp_path / "infer" / "detections_coco.json")
    best = max(inferred, key=lambda r: r["score"])
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "coffee.png", "height": 200, "width": 300}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": best["category_id"], "bbox": best["bbox"],
                         "area": best["bbox"][2] * best["bbox"][3], "iscrowd": 0}],
        "categories": [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)],
    }))
    evaluate = ["eval", "--annotations", str(annotations), "--image_dir", str(small_images), "--no-progress"]
    assert cli.main([*evaluate, "--output_dir", str(tmp_path / "eval"), "--proposals", str(proposals), *model]) == 0
    evaluated = _records(tmp_path / "eval" / "detections_coco.json")
    assert len(inferred) > 0
    _assert_same_detections(evaluated, inferred)
    capsys.readouterr()
    assert cli.main([*evaluate, "--output_dir", str(tmp_path / "none"), *model]) == 2
    assert "--proposals FILE or --rpn-weights RPN.pkl" in _one_line_error(capsys.readouterr().err)
