"""Test-time augmentation end to end: Detectron's ``test_time_aug`` golden reproduced, and keypoint augmentation.

* ``outputs/test_time_aug__e2e_mask_rcnn_R-50-FPN_2x`` (reference README, "Test-time augmentation golden"):
  ``configs/test_time_aug/e2e_mask_rcnn_R-50-FPN_2x.yaml`` (``BBOX_AUG`` flip + 8 scales and their flips,
  ``UNION``, ``MASK_AUG`` ``SOFT_AVG``, ``BBOX_VOTE`` 0.9) with the ``12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x``
  weights, through ``tools/infer_simple.py`` with ``load_model().predict`` spied on: one augmented run (35
  network passes at up to 1200 x 1800 px, minutes on 2 cores) checks both what ``predict`` returned and
  what the script wrote, by the README's detection rules (``assert_detections_match``).
* Keypoints: the e2e keypoint R-50-FPN golden weights with ``TEST.KPS_AUG`` of
  ``configs/test_time_aug/keypoint_rcnn_R-50-FPN_1x.yaml`` (flip, 8 scales and flips, ``HM_AVG``,
  ``SCALE_SIZE_DEP`` at 150^2). There is no Detectron golden for it; it runs, is deterministic and differs
  from the unaugmented result. It runs on a 20 x 600 strip of coffee: every scale then hits ``MAX_SIZE``
  2000 (a 67 x 2000 input), and ``TEST.DETECTIONS_PER_IM`` 10 keeps the keypoint head's share small.
"""
from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest

from detconvert.data.classes import coco_table
from detconvert.errors import ConfigError, DetconvertError
from detconvert.inference.results import xywh_to_xyxy
from detconvert.structures import Detections
from tests._shared import REFERENCE, SHARED, requires_shared
from tests.test_pipeline_golden import (
    KPS_FPN, MASK_FPN, assert_detections_match, decode_rle, weights_path,
)

pytestmark = requires_shared

TTA = "test_time_aug__e2e_mask_rcnn_R-50-FPN_2x"
REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def _tta_yaml(name: str):
    return SHARED / "detectron_configs" / "test_time_aug" / name


@pytest.fixture(scope="module")
def coffee():
    return cv2.imread(str(REFERENCE / "images" / "coffee.png"))


@pytest.fixture(scope="module")
def tta_golden():
    return json.loads((REFERENCE / "outputs" / TTA / "detections.json").read_text())


@pytest.fixture(scope="module")
def tta_predictor():
    from detconvert.inference.predictor import load_model

    return load_model(weights_path(MASK_FPN), _tta_yaml("e2e_mask_rcnn_R-50-FPN_2x.yaml"), device="cpu")


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory, coffee):
    """One augmented golden run (35 network passes, minutes on 2 cores), shared by the predict and the CLI checks:
    ``tools/infer_simple.py`` run as a script in this process, with ``Predictor.predict`` spied on.

    Returns ``(Detections that load_model().predict returned, [(done, total, what) per pass], exit code,
    COCO records that infer_simple wrote)``.
    """
    import runpy

    from detconvert.inference.predictor import Predictor

    out = tmp_path_factory.mktemp("tta_infer_simple")
    cv2.imwrite(str(out / "coffee.png"), coffee)
    returned, passes = [], []
    real_predict = Predictor.predict

    def spied_predict(self, images, *args, on_pass=None, **kwargs):
        def record(*progress):
            passes.append(progress)
            if on_pass is not None:
                on_pass(*progress)

        dets = real_predict(self, images, *args, on_pass=record, **kwargs)
        returned.extend(dets)
        return dets

    argv = [str(REPO / "tools" / "infer_simple.py"), "--load_detectron", str(weights_path(MASK_FPN)),
            "--cfg", str(_tta_yaml("e2e_mask_rcnn_R-50-FPN_2x.yaml")), "--device", "cpu",
            "--output_dir", str(out / "out"), str(out / "coffee.png")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Predictor, "predict", spied_predict)
        patch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exited:
            runpy.run_path(argv[0], run_name="__main__")
    assert len(returned) == 1, "infer_simple ran predict on one image"
    records = json.loads((out / "out" / "detections_coco.json").read_text())
    return returned[0], passes, exited.value.code, records


@pytest.mark.golden_parity  # .ci/run repeats it with AVX2 kernels
def test_load_model_predict_reproduces_detectrons_augmented_result(tta_run, tta_golden):
    dets, passes, _, _ = tta_run
    assert_detections_match(dets, tta_golden, TTA)
    counts = {int(c): int(n) for c, n in zip(*np.unique(dets.classes, return_counts=True))}
    assert counts == {30: 66, 35: 8, 54: 26}  # the README's numbers (54 / 14 / 32 without augmentation)
    # 18 box passes (flip, 8 scales x 2, identity), then 17 mask passes (the identity reuses the box maps).
    assert [p[:2] for p in passes] == [(k, 35) for k in range(1, 36)]
    assert passes[0][2] == "boxes, scale 800, flipped" and passes[17][2] == "boxes, scale 800"
    assert passes[18][2] == "masks, scale 800, flipped" and passes[-1][2] == "masks, scale 1200, flipped"


def test_augmentation_is_on_by_default_and_set_turns_it_off(tta_predictor, coffee):
    from detconvert.config.build_spec import explain
    from detconvert.inference.predictor import load_model
    from detconvert.inference.tta import uses_augmentation

    assert uses_augmentation(tta_predictor.spec)
    assert "test-time augmentation: 35 passes per image" in explain(tta_predictor.spec)
    with pytest.raises(DetconvertError, match="test-time augmentation"):
        tta_predictor.predict([coffee], keep_blobs=True)
    off = load_model(weights_path(MASK_FPN), _tta_yaml("e2e_mask_rcnn_R-50-FPN_2x.yaml"), device="cpu",
                     overrides=[("TEST.BBOX_AUG.ENABLED", "False"), ("TEST.MASK_AUG.ENABLED", "False")])
    assert not uses_augmentation(off.spec)


def _coco_records_to_detections(records, image_size) -> Detections:
    table = coco_table()
    return Detections(
        boxes=xywh_to_xyxy(np.array([r["bbox"] for r in records])).astype(np.float32),
        scores=np.array([r["score"] for r in records], np.float32),
        classes=np.array([table.index_of_category(r["category_id"]) for r in records], np.int64),
        image_size=image_size,
        masks=[r["segmentation"] for r in records],
    )


@pytest.mark.golden_parity
def test_infer_simple_reproduces_the_golden(tta_run, tta_golden):
    _, _, exit_code, records = tta_run
    assert exit_code in (0, None)
    assert_detections_match(_coco_records_to_detections(records, (400, 600)), tta_golden, "infer_simple")


# ------------------------------------------------------------------------------------------- keypoints


def _kps_aug_overrides():
    """``TEST.KPS_AUG`` of Detectron's keypoint test_time_aug config, as ``--set`` pairs."""
    import yaml

    block = yaml.safe_load(_tta_yaml("keypoint_rcnn_R-50-FPN_1x.yaml").read_text())["TEST"]["KPS_AUG"]
    return [(f"TEST.KPS_AUG.{k}", str(v)) for k, v in block.items()]


@pytest.fixture(scope="module")
def keypoint_runs(coffee):
    from detconvert.inference.predictor import load_model

    overrides = _kps_aug_overrides()
    assert ("TEST.KPS_AUG.SCALE_SIZE_DEP", "True") in overrides and ("TEST.KPS_AUG.AREA_TH", "22500") in overrides
    # The 10 best boxes: the keypoint head (8 convs of 512 channels per box) is most of each pass's cost.
    top10 = [("TEST.DETECTIONS_PER_IM", "10")]
    predictor = load_model(weights_path(KPS_FPN), device="cpu", overrides=overrides + top10)
    strip = np.ascontiguousarray(coffee[170:190])  # 20 x 600: every augmented scale is capped at 67 x 2000
    passes = []
    first = predictor.predict([strip], on_pass=lambda *p: passes.append(p))[0]
    second = predictor.predict([strip])[0]
    plain = load_model(weights_path(KPS_FPN), device="cpu", overrides=top10).predict([strip])[0]
    return first, second, plain, passes


def test_keypoint_augmentation_runs_is_deterministic_and_changes_keypoints(keypoint_runs):
    first, second, plain, passes = keypoint_runs
    assert len(passes) == 18 and passes[-1][:2] == (18, 18)  # 1 box pass + 17 more keypoint passes
    assert len(first) > 0 and first.keypoints.shape == (len(first), 4, 17)
    for name in ("boxes", "scores", "classes", "keypoints"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)
    # KPS_AUG changes only the heatmaps: same boxes as without augmentation, other keypoints.
    np.testing.assert_array_equal(first.boxes, plain.boxes)
    moved = np.abs(first.keypoints[:, :2] - plain.keypoints[:, :2]).max(axis=(1, 2))
    assert (moved > 0.5).mean() > 0.5, f"augmented keypoints moved on {(moved > 0.5).sum()} of {len(moved)} boxes"


def test_keypoint_config_box_averaging_is_refused_for_an_e2e_model():
    # The keypoint config averages boxes (a fast_rcnn config); Detectron asserts UNION for FASTER_RCNN models.
    from detconvert.inference.predictor import load_model

    with pytest.raises(ConfigError, match="TEST.BBOX_AUG.SCORE_HEUR"):
        load_model(weights_path(KPS_FPN), device="cpu", overrides=[
            ("TEST.BBOX_AUG.ENABLED", "True"), ("TEST.BBOX_AUG.SCORE_HEUR", "AVG"), ("TEST.BBOX_AUG.COORD_HEUR", "AVG")])


def test_inspect_says_how_many_passes_the_files_config_runs():
    import copy
    import dataclasses

    import yaml

    from detconvert.inspect.report import inspect_weights
    from detconvert.io.weights import load_weights

    wf = load_weights(weights_path(MASK_FPN))
    assert inspect_weights(wf).test_time == "test-time augmentation: off, 1 pass"
    # The same weights with the test_time_aug config's TEST blocks embedded (as a file saved by that run).
    cfg = copy.deepcopy(wf.cfg)
    tta_test = yaml.safe_load(_tta_yaml("e2e_mask_rcnn_R-50-FPN_2x.yaml").read_text())["TEST"]
    for block in ("BBOX_AUG", "MASK_AUG", "BBOX_VOTE"):
        cfg["TEST"][block].update(tta_test[block])
    report = inspect_weights(dataclasses.replace(wf, cfg=cfg))
    assert report.test_time.startswith("test-time augmentation: 35 passes per image")
    assert "test time:   test-time augmentation: 35 passes" in report.format_text()
    cfg["TEST"]["MASK_AUG"]["HEUR"] = "HARD_AVG"
    refused = inspect_weights(dataclasses.replace(wf, cfg=cfg)).test_time
    assert refused.startswith("refused: key TEST.MASK_AUG.HEUR")


#: A small augmented config for the batching / sharding checks (4 passes at ~300 px).
SMALL_TTA = (
    ("TEST.SCALE", "320"), ("TEST.MAX_SIZE", "500"),
    ("TEST.BBOX_AUG.ENABLED", "True"), ("TEST.BBOX_AUG.H_FLIP", "True"), ("TEST.BBOX_AUG.SCALES", "(256,)"),
    ("TEST.BBOX_AUG.MAX_SIZE", "500"),
    ("TEST.MASK_AUG.ENABLED", "True"), ("TEST.MASK_AUG.H_FLIP", "True"), ("TEST.MASK_AUG.HEUR", "SOFT_MAX"),
)


def test_batched_and_sharded_inference_augment_each_image(coffee):
    from detconvert.inference.predictor import load_model
    from detconvert.inference.sharded import ModelLoader, predict_paths

    paths = [REFERENCE / "images" / "coffee.png", REFERENCE / "images" / "chelsea.png"]
    predictor = load_model(weights_path(MASK_FPN), device="cpu", overrides=list(SMALL_TTA))
    passes = []
    one_by_one = [predictor.predict([p], on_pass=lambda *a: passes.append(a))[0] for p in paths]
    assert [p[:2] for p in passes] == [(k, 4) for k in range(1, 5)] * 2
    batched = predictor.predict(paths)
    sharded = predict_paths(ModelLoader(str(weights_path(MASK_FPN)), overrides=SMALL_TTA), paths, num_processes=2)
    plain = load_model(weights_path(MASK_FPN), device="cpu", overrides=list(SMALL_TTA[:2])).predict(paths)
    for single, batch, shard, unaugmented in zip(one_by_one, batched, sharded, plain):
        # A batch runs image by image in this process: the same numbers.
        np.testing.assert_array_equal(batch.boxes, single.boxes)
        np.testing.assert_array_equal(batch.scores, single.scores)
        assert [m["counts"] for m in batch.masks] == [m["counts"] for m in single.masks]
        # Worker processes run other thread counts (another summation order): equal up to float noise.
        np.testing.assert_array_equal(shard.classes, single.classes)
        np.testing.assert_allclose(shard.boxes, single.boxes, atol=1e-3, rtol=0)
        np.testing.assert_allclose(shard.scores, single.scores, atol=1e-5, rtol=0)
        for a, b in zip(shard.masks, single.masks):  # a border pixel may flip at the 0.5 threshold
            a, b = decode_rle(a), decode_rle(b)
            assert np.logical_xor(a, b).sum() <= 2 + 0.001 * np.logical_or(a, b).sum()
        assert len(single) and single.scores.tolist() != unaugmented.scores.tolist()  # augmentation did something
