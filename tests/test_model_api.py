"""``load_model`` / ``Predictor`` behaviour: inputs, batches, overrides, class names, precomputed proposals."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import detconvert
from detconvert.errors import DetconvertError, WeightFileError
from detconvert.inference.predictor import load_model
from detconvert.inference.proposals import proposals_from_rpn, read_proposals, write_proposals
from tests._shared import REFERENCE, config_yaml_path, requires_shared
from tests.test_pipeline_golden import (
    KPS_FPN,
    MASK_FPN,
    RPN_FPN,
    assert_detections_match,
    golden_predictor,
    golden_run,
    weights_path,
)

pytestmark = requires_shared
PRECOMPUTED = "12_2017_baselines__fast_rcnn_R-50-FPN_1x"


def coffee() -> np.ndarray:
    return cv2.imread(str(REFERENCE / "images" / "coffee.png"))


def test_lazy_export_and_class_names():
    assert detconvert.load_model is load_model
    mask = golden_predictor(MASK_FPN)
    assert mask.class_names[0] == "__background__" and mask.class_names[1] == "person" and len(mask.class_names) == 81
    assert golden_predictor(KPS_FPN).class_names == ["__background__", "person"]
    assert mask.device == torch.device("cpu") and mask.spec.pipeline == "e2e" and not mask.needs_proposals
    assert mask.load_report.unexpected == []


def test_bad_inputs_are_detconvert_errors(tmp_path):
    with pytest.raises(WeightFileError):
        load_model(tmp_path / "missing.pkl")
    predictor = golden_predictor(MASK_FPN)
    with pytest.raises(DetconvertError, match="not an image"):
        predictor.predict([str(tmp_path / "nothing.png")])
    with pytest.raises(DetconvertError, match="uint8"):
        predictor.predict([coffee().astype(np.float32)])
    with pytest.raises(DetconvertError, match="H x W x 3"):
        predictor.predict([coffee()[:, :, 0]])
    assert predictor.predict([]) == []


def test_batch_each_image_its_own_top_n():
    """coffee (800x1200 blob) batched with astronaut (800x800): coffee's content and padded size are
    unchanged, so its detections must still be Detectron's; the other image gets its own results."""
    astronaut = cv2.imread(str(REFERENCE / "images" / "astronaut.png"))
    dets = golden_predictor(MASK_FPN).predict([coffee(), astronaut], keep_blobs=True)
    _, golden, _ = golden_run(MASK_FPN)
    assert_detections_match(dets[0], golden, "coffee in a batch of two")
    other = dets[1]
    assert other.image_size == (512, 512) and 0 < len(other) <= 100
    assert np.isfinite(other.boxes).all() and other.boxes[:, 2].max() <= 511 and other.boxes[:, 3].max() <= 511
    assert len(other.masks) == len(other) and all(m["size"] == [512, 512] for m in other.masks)
    rois = dets[0].extras["rois"]
    assert set(np.unique(rois[:, 0]).tolist()) == {0.0, 1.0}
    assert (rois[:, 0] == 0).sum() == 1000 and (rois[:, 0] == 1).sum() == 1000  # RPN_POST_NMS_TOP_N per image


def test_overrides_change_the_test_path():
    predictor = load_model(weights_path(MASK_FPN), config_yaml_path(MASK_FPN), device="cpu",
                           overrides=[("TEST.DETECTIONS_PER_IM", "10")], dataset="coco_2017_val")
    assert predictor.spec.test.detections_per_im == 10
    dets = predictor.predict(coffee())[0]
    full, _, _ = golden_run(MASK_FPN)
    top10 = np.sort(full.scores)[::-1][:10]
    assert len(dets) == 10
    np.testing.assert_allclose(np.sort(dets.scores)[::-1], top10, atol=1e-6)


def test_weights_config_mismatch_is_one_line():
    with pytest.raises(DetconvertError) as info:
        load_model(weights_path(KPS_FPN), config_yaml_path(MASK_FPN), device="cpu")
    assert "\n" not in str(info.value) and "model_final" in str(info.value)


@pytest.fixture(scope="module")
def precomputed_predictor(tmp_path_factory):
    """fast_rcnn_R-50-FPN (no RPN, no weight recipe): seeded random weights, class scores made confident."""
    from detconvert.inference.predictor import Predictor, spec_from_cfg
    from detconvert.modeling.detector import build_model

    spec = spec_from_cfg(config_yaml_path(PRECOMPUTED), dataset="coco")
    assert spec.pipeline == "precomputed_proposals" and spec.rpn is None
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=(2.0 / p[0].numel()) ** 0.5)  # He-normal, like Detectron's init
            elif name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        model.box_predictor.cls_score.weight.mul_(20.0)  # spread the logits so some classes pass 0.05
    return Predictor(model, detconvert.inference.predictor.default_class_names(spec.num_classes), torch.device("cpu"))


def test_precomputed_proposals_file_json_and_rpn_model_agree(precomputed_predictor, tmp_path):
    image = coffee()
    rpn = golden_predictor(RPN_FPN)
    from_rpn = proposals_from_rpn(rpn, [image])
    golden_boxes = np.asarray(golden_run(RPN_FPN)[1]["boxes"], np.float32)
    assert from_rpn[0].shape == golden_boxes.shape  # the RPN-only golden's 1770 proposals

    dets_rpn = precomputed_predictor.predict([image], proposals=from_rpn)[0]
    assert 0 < len(dets_rpn) <= 100 and np.isfinite(dets_rpn.boxes).all() and np.isfinite(dets_rpn.scores).all()
    assert dets_rpn.boxes.shape == (len(dets_rpn), 4) and dets_rpn.masks is None
    assert (dets_rpn.scores > 0.05).all() and dets_rpn.boxes[:, 2].max() <= 599 and dets_rpn.boxes[:, 3].max() <= 399

    scores = [d.scores for d in rpn.predict([image])]
    pkl = write_proposals(tmp_path / "proposals.pkl", [397133], from_rpn, scores)
    js = write_proposals(tmp_path / "proposals.json", [397133], from_rpn, scores)
    for path in (pkl, js):
        ids, boxes, _ = read_proposals(path)
        assert ids == [397133]
        np.testing.assert_array_equal(boxes[0], from_rpn[0])
    dets_file = precomputed_predictor.predict([image], proposals=read_proposals(pkl)[1])[0]
    np.testing.assert_array_equal(dets_file.boxes, dets_rpn.boxes)
    np.testing.assert_array_equal(dets_file.scores, dets_rpn.scores)
    np.testing.assert_array_equal(dets_file.classes, dets_rpn.classes)

    with pytest.raises(DetconvertError, match="proposals"):
        precomputed_predictor.predict([image])


def test_precomputed_proposals_dedup_maps_back(precomputed_predictor):
    """Duplicated proposals (DEDUP_BOXES) give the same detections as the unique ones."""
    from detconvert.inference.pipeline import prepare_proposals

    boxes = np.asarray(golden_run(RPN_FPN)[1]["boxes"], np.float32)[:300]
    once = precomputed_predictor.predict([coffee()], proposals=[boxes])[0]
    twice = precomputed_predictor.predict([coffee()], proposals=[np.concatenate([boxes, boxes])])[0]
    np.testing.assert_array_equal(once.boxes, twice.boxes)
    # json_dataset's roidb preparation: clipped, unique, no sides <= 2 px.
    prepared = prepare_proposals(np.array([[-5, -5, 10, 10], [-5, -5, 10, 10], [0, 0, 1, 50]], np.float32), 400, 600)
    np.testing.assert_array_equal(prepared, [[0, 0, 10, 10]])
