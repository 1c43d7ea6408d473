"""detconvert export --to detectron2: the name mapping as data, the class/anchor re-layouts, the YAML, the file."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
import yaml

from detconvert.errors import ConfigError, DetconvertError
from detconvert.export import SourceModel
from detconvert.export._common import affine_scale_blobs, detectron_blobs
from detconvert.export.detectron2 import (
    D2_FROZEN_BN_EPS,
    blobs_to_detectron2,
    detectron2_config,
    detectron2_state_dict,
    export_detectron2,
    rpn_anchor_permutation,
    unsupported_in_detectron2,
)
from detconvert.io.unpickle import restricted_load
from detconvert.ops.anchors import generate_anchors
from tests._export_models import C4_MASK, FPN_KEYPOINT, FPN_MASK, RETINANET, RPN_ONLY, meta_blobs, random_model, tiny_spec
from tests._modeling_specs import spec_for
from tests._shared import requires_shared

pytestmark = requires_shared

#: One config of every architecture family (C4/FPN, 2mlp/4conv1fc GN, ResNeXt, keypoints, RetinaNet, RPN-only,
#: precomputed proposals, dilated-free C4 fast R-CNN).
REPRESENTATIVE = [
    FPN_MASK, C4_MASK, FPN_KEYPOINT, RETINANET, RPN_ONLY,
    "04_2018_gn_baselines__e2e_mask_rcnn_R-50-FPN_2x_gn",
    "12_2017_baselines__e2e_mask_rcnn_X-101-64x4d-FPN_1x",
    "12_2017_baselines__fast_rcnn_R-50-C4_1x",
    "12_2017_baselines__retinanet_X-101-32x8d-FPN_1x",
]

#: Module names detectron2's own modules have (read from detectron2's backbone/resnet.py, backbone/fpn.py,
#: proposal_generator/rpn.py, roi_heads/*.py, meta_arch/retinanet.py): a few per family, written out by hand.
EXPECTED_NAMES = {
    FPN_MASK: [
        "backbone.bottom_up.stem.conv1.weight", "backbone.bottom_up.stem.conv1.norm.running_var",
        "backbone.bottom_up.res2.0.shortcut.norm.bias", "backbone.bottom_up.res4.5.conv2.weight",
        "backbone.fpn_lateral2.weight", "backbone.fpn_output5.bias",
        "proposal_generator.rpn_head.conv.weight", "proposal_generator.rpn_head.objectness_logits.bias",
        "proposal_generator.rpn_head.anchor_deltas.weight", "roi_heads.box_head.fc1.weight",
        "roi_heads.box_head.fc2.bias", "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.bbox_pred.bias", "roi_heads.mask_head.mask_fcn4.weight",
        "roi_heads.mask_head.deconv.weight", "roi_heads.mask_head.predictor.bias",
    ],
    C4_MASK: [
        "backbone.stem.conv1.weight", "backbone.res4.5.conv3.norm.weight", "roi_heads.res5.0.shortcut.weight",
        "roi_heads.res5.2.conv2.norm.running_mean", "roi_heads.mask_head.deconv.weight",
        "proposal_generator.rpn_head.conv.weight",
    ],
    FPN_KEYPOINT: ["roi_heads.keypoint_head.conv_fcn8.weight", "roi_heads.keypoint_head.score_lowres.weight"],
    RETINANET: ["backbone.top_block.p6.weight", "backbone.top_block.p7.bias", "head.cls_subnet.6.weight",
                "head.bbox_subnet.0.bias", "head.cls_score.weight", "head.bbox_pred.weight",
                "backbone.fpn_lateral3.weight"],
    "04_2018_gn_baselines__e2e_mask_rcnn_R-50-FPN_2x_gn": [
        "backbone.bottom_up.stem.conv1.norm.weight", "backbone.fpn_lateral2.norm.weight",
        "roi_heads.box_head.conv4.norm.bias", "roi_heads.mask_head.mask_fcn1.norm.weight"],
}


@pytest.mark.parametrize("config_id", REPRESENTATIVE)
def test_mapping_is_one_to_one_and_complete(config_id):
    spec = spec_for(config_id)
    assert unsupported_in_detectron2(spec) == []
    model, blobs = meta_blobs(spec)
    affine = affine_scale_blobs(model)
    state, provenance, dropped = blobs_to_detectron2(spec, blobs, affine)
    mapped = [b for b in provenance.values() if b != "(FrozenBN)"]
    # every Detectron tensor is exported exactly once or dropped with a reason, never both
    assert len(mapped) == len(set(mapped))
    assert set(mapped) | set(dropped) == set(blobs)
    assert not set(mapped) & set(dropped)
    # the only drop is Detectron's fixed keypoint up-sampling kernel
    assert set(dropped) <= {"kps_score_w", "kps_score_b"}
    assert bool(dropped) == (spec.keypoint_head is not None)
    # d2 names are dotted module paths ending in a tensor name
    assert all(re.fullmatch(r"[a-z_0-9]+(\.[a-z_0-9]+)*\.(weight|bias|running_mean|running_var)", n) for n in state)
    # every affine norm became a FrozenBatchNorm2d with the two running buffers; GN norms did not
    frozen = [n for n, b in provenance.items() if b in affine]
    assert len(frozen) == len(affine)
    for name in frozen:
        base = name[: -len("weight")]
        np.testing.assert_array_equal(state[base + "running_mean"], 0.0)
        np.testing.assert_array_equal(state[base + "running_var"], np.float32(1.0 - D2_FROZEN_BN_EPS))
    assert sum(b == "(FrozenBN)" for b in provenance.values()) == 2 * len(affine)
    for name in EXPECTED_NAMES.get(config_id, []):
        assert name in state, name


@pytest.mark.parametrize("config_id", [FPN_MASK, C4_MASK, RETINANET, "12_2017_baselines__e2e_mask_rcnn_X-101-64x4d-FPN_1x"])
def test_class_layer_shapes(config_id):
    spec = spec_for(config_id)
    model, blobs = meta_blobs(spec)
    state, _, _ = blobs_to_detectron2(spec, blobs, affine_scale_blobs(model))
    fg = spec.num_classes - 1
    if spec.retinanet is not None:
        a = spec.retinanet.num_anchors
        assert state["head.cls_score.weight"].shape[0] == a * fg
        assert state["head.bbox_pred.weight"].shape[0] == 4 * a
        return
    assert state["roi_heads.box_predictor.cls_score.weight"].shape[0] == fg + 1  # background last
    assert state["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 4 * fg
    assert state["roi_heads.mask_head.predictor.weight"].shape[0] == fg


def test_background_moves_last_and_is_dropped_from_boxes_and_masks():
    model = random_model(tiny_spec(FPN_MASK))
    blobs = detectron_blobs(model)
    state, _, _ = detectron2_state_dict(model)
    cls_w = state["roi_heads.box_predictor.cls_score.weight"]
    np.testing.assert_array_equal(cls_w[-1], blobs["cls_score_w"][0])  # background row last
    np.testing.assert_array_equal(cls_w[:-1], blobs["cls_score_w"][1:])  # class j (1-based) at j - 1
    np.testing.assert_array_equal(state["roi_heads.box_predictor.cls_score.bias"][-1], blobs["cls_score_b"][0])
    np.testing.assert_array_equal(state["roi_heads.box_predictor.bbox_pred.weight"], blobs["bbox_pred_w"][4:])
    np.testing.assert_array_equal(state["roi_heads.mask_head.predictor.weight"], blobs["mask_fcn_logits_w"][1:])
    np.testing.assert_array_equal(state["roi_heads.mask_head.predictor.bias"], blobs["mask_fcn_logits_b"][1:])
    # everything else is copied unchanged
    np.testing.assert_array_equal(state["backbone.fpn_lateral3.weight"], blobs["fpn_inner_res3_0_sum_lateral_w"])


def test_class_agnostic_mask_keeps_its_channel():
    from dataclasses import replace

    spec = tiny_spec(FPN_MASK)
    spec = replace(spec, mask_head=replace(spec.mask_head, cls_specific_mask=False))
    model = random_model(spec)
    state, _, _ = detectron2_state_dict(model)
    np.testing.assert_array_equal(state["roi_heads.mask_head.predictor.weight"],
                                  detectron_blobs(model)["mask_fcn_logits_w"])
    assert detectron2_config(spec)["MODEL"]["ROI_MASK_HEAD"]["CLS_AGNOSTIC_MASK"] is True


def _d2_cell_anchor_shapes(sizes, ratios):
    """detectron2's DefaultAnchorGenerator.generate_cell_anchors order: sizes outside, ratios inside (h/w = r)."""
    out = []
    for size in sizes:
        for ratio in ratios:
            w = np.sqrt(size * size / ratio)
            out.append((w, ratio * w))
    return np.array(out)


def test_c4_rpn_channels_follow_their_anchors():
    spec = tiny_spec(C4_MASK)
    rpn = spec.rpn
    assert len(rpn.anchor_sizes) * len(rpn.aspect_ratios) == 15
    perm = rpn_anchor_permutation(spec)
    assert perm is not None and sorted(perm.tolist()) == list(range(15))
    det = generate_anchors(stride=rpn.anchor_stride, sizes=rpn.anchor_sizes, aspect_ratios=rpn.aspect_ratios)
    det_wh = np.stack([det[:, 2] - det[:, 0] + 1, det[:, 3] - det[:, 1] + 1], axis=1)
    d2_wh = _d2_cell_anchor_shapes(rpn.anchor_sizes, rpn.aspect_ratios)
    # Detectron's anchors are quantized: same shape within a few pixels, far from every other anchor
    for k in range(15):
        dist = np.abs(np.log(det_wh / d2_wh[k])).sum(axis=1)
        assert int(np.argmin(dist)) == perm[k]
        assert dist[perm[k]] < 0.1
    model = random_model(spec)
    blobs = detectron_blobs(model)
    state, _, _ = detectron2_state_dict(model)
    np.testing.assert_array_equal(state["proposal_generator.rpn_head.objectness_logits.weight"],
                                  blobs["rpn_cls_logits_w"][perm])
    deltas = state["proposal_generator.rpn_head.anchor_deltas.bias"].reshape(15, 4)
    np.testing.assert_array_equal(deltas, blobs["rpn_bbox_pred_b"].reshape(15, 4)[perm])


def test_fpn_rpn_needs_no_permutation():
    assert rpn_anchor_permutation(spec_for(FPN_MASK)) is None


def test_config_values():
    cfg = detectron2_config(spec_for(FPN_MASK), "m.pkl")["MODEL"]
    assert cfg["META_ARCHITECTURE"] == "GeneralizedRCNN" and cfg["WEIGHTS"] == "m.pkl"
    assert cfg["PIXEL_MEAN"] == [102.9801, 115.9465, 122.7717] and cfg["PIXEL_STD"] == [1.0, 1.0, 1.0]
    assert cfg["RESNETS"]["STRIDE_IN_1X1"] is True and cfg["RESNETS"]["NORM"] == "FrozenBN"
    assert cfg["RESNETS"]["OUT_FEATURES"] == ["res2", "res3", "res4", "res5"]
    assert cfg["ROI_HEADS"]["NUM_CLASSES"] == 80 and cfg["ROI_HEADS"]["IN_FEATURES"] == ["p2", "p3", "p4", "p5"]
    box = cfg["ROI_BOX_HEAD"]
    assert (box["POOLER_TYPE"], box["POOLER_SAMPLING_RATIO"], box["NUM_FC"], box["SMOOTH_L1_BETA"]) == ("ROIAlign", 2, 2, 1.0)
    assert box["BBOX_REG_WEIGHTS"] == [10.0, 10.0, 5.0, 5.0]
    assert cfg["RPN"]["SMOOTH_L1_BETA"] == pytest.approx(1 / 9) and cfg["RPN"]["IN_FEATURES"][-1] == "p6"
    assert cfg["ANCHOR_GENERATOR"]["SIZES"] == [[32.0], [64.0], [128.0], [256.0], [512.0]]
    assert cfg["ROI_MASK_HEAD"]["NUM_CONV"] == 4
    x101 = detectron2_config(spec_for("12_2017_baselines__e2e_mask_rcnn_X-101-64x4d-FPN_1x"))["MODEL"]["RESNETS"]
    assert (x101["DEPTH"], x101["NUM_GROUPS"], x101["WIDTH_PER_GROUP"], x101["STRIDE_IN_1X1"]) == (101, 64, 4, False)
    c4 = detectron2_config(spec_for(C4_MASK))["MODEL"]
    assert c4["ROI_HEADS"]["NAME"] == "Res5ROIHeads" and c4["ROI_MASK_HEAD"]["NUM_CONV"] == 0
    assert c4["ANCHOR_GENERATOR"]["SIZES"] == [[32.0, 64.0, 128.0, 256.0, 512.0]]
    gn = detectron2_config(spec_for("04_2018_gn_baselines__e2e_mask_rcnn_R-50-FPN_2x_gn"))["MODEL"]
    assert (gn["RESNETS"]["NORM"], gn["FPN"]["NORM"], gn["ROI_BOX_HEAD"]["NORM"], gn["ROI_BOX_HEAD"]["NUM_CONV"]) == (
        "GN", "GN", "GN", 4)
    ret = detectron2_config(spec_for(RETINANET))["MODEL"]
    assert ret["META_ARCHITECTURE"] == "RetinaNet" and ret["RETINANET"]["NUM_CLASSES"] == 80
    assert ret["BACKBONE"]["NAME"] == "build_retinanet_resnet_fpn_backbone"
    assert ret["ANCHOR_GENERATOR"]["SIZES"][0] == pytest.approx([32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)])
    assert detectron2_config(spec_for(RPN_ONLY))["MODEL"]["META_ARCHITECTURE"] == "ProposalNetwork"


def test_export_writes_a_d2_zoo_pickle_and_yaml(tmp_path):
    model = random_model(tiny_spec(FPN_KEYPOINT))
    src = SourceModel(model, ["__background__", "person"], tmp_path / "model_final.pkl")
    out = tmp_path / "d2" / "model.pkl"
    report = export_detectron2(src, out)
    assert report.outputs == [out, out.with_suffix(".yaml")]
    with open(out, "rb") as handle:
        data = restricted_load(handle, out)  # plain containers and arrays only
    assert data["__author__"] == "detconvert" and data["matching_heuristics"] is False
    state, _, _ = detectron2_state_dict(model)
    assert sorted(data["model"]) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(data["model"][name], value)
    cfg = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert cfg["MODEL"]["KEYPOINT_ON"] is True and cfg["MODEL"]["WEIGHTS"] == str(out)
    assert set(report.dropped) == {"kps_score_w", "kps_score_b"}
    with pytest.raises(DetconvertError, match="exists; pass --force"):
        export_detectron2(src, out)
    with pytest.raises(DetconvertError, match=r"\*\.pkl"):
        export_detectron2(src, tmp_path / "model.pth")


def test_refuses_what_detectron2_cannot_express(tmp_path):
    from dataclasses import replace

    spec = tiny_spec(RETINANET)
    spec = replace(spec, retinanet=replace(spec.retinanet, softmax=True))
    assert any("SOFTMAX" in p for p in unsupported_in_detectron2(spec))
    model = random_model(spec)
    with pytest.raises(ConfigError, match="detectron2 cannot express RETINANET.SOFTMAX"):
        export_detectron2(SourceModel(model, [], tmp_path / "x.pkl"), tmp_path / "out.pkl")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
