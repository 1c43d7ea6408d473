"""``inspect_weights`` reads the architecture every Detectron config says, from blob names and shapes alone.

For each of the 87 configs a weight dict is built from ``../shared/reference/blobs/<id>.tsv`` (zeros of
the listed shapes under the looked-up names, i.e. the names a trained file stores), *without* its cfg,
and the result is compared with values derived here, independently, from ``cfg_dumps/<id>.yaml``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detconvert.inspect import inspect_weights, read_architecture
from detconvert.io.cfg_yaml import load_detectron_cfg_text
from detconvert.io.weights import WeightFile
from tests._shared import REFERENCE, config_ids, requires_shared

DEPTH_OF_BODY = {"ResNet50": 50, "ResNet101": 101, "ResNet152": 152}


def blobs_from_tsv(config_id: str) -> dict:
    blobs = {}
    for line in (REFERENCE / "blobs" / f"{config_id}.tsv").read_text().splitlines():
        _name, shape, looked_up = line.split("\t")
        dims = tuple(int(s) for s in shape.split(",")) if shape else ()
        blobs[looked_up] = np.zeros(dims, np.float32)  # np.zeros: no memory is touched
    return blobs


def expected_from_cfg(cfg: dict) -> dict:
    """What the config's own values say the test network is (Detectron's model_builder logic)."""
    model, fpn, rpn, resnets, retina = cfg["MODEL"], cfg["FPN"], cfg["RPN"], cfg["RESNETS"], cfg["RETINANET"]
    body = model["CONV_BODY"]
    depth = next(d for key, d in DEPTH_OF_BODY.items() if f"_{key}_" in body)
    is_retina = bool(retina["RETINANET_ON"])
    has_rpn = bool(rpn["RPN_ON"])
    has_box = not model["RPN_ONLY"] and not is_retina
    exp = {
        "conv_body": body,
        "depth": depth,
        "num_groups": resnets["NUM_GROUPS"],
        "width_per_group": resnets["WIDTH_PER_GROUP"],
        "norm": "gn" if resnets["TRANS_FUNC"] == "bottleneck_gn_transformation" else "affine",
        "fpn": bool(fpn["FPN_ON"]),
        "fpn_gn": bool(fpn["USE_GN"]) if fpn["FPN_ON"] else False,
        "fpn_extra_conv_levels": bool(fpn["EXTRA_CONV_LEVELS"]) if fpn["FPN_ON"] else False,
        "retinanet": is_retina,
        "rpn": ("fpn" if fpn["FPN_ON"] else "single_scale") if has_rpn else None,
        "rpn_anchors_per_location": None,
        "box_head": model_function(cfg["FAST_RCNN"]["ROI_BOX_HEAD"]) if has_box else None,
        "mask_head": model_function(cfg["MRCNN"]["ROI_MASK_HEAD"]) if model["MASK_ON"] else None,
        "keypoint_head": model_function(cfg["KRCNN"]["ROI_KEYPOINTS_HEAD"]) if model["KEYPOINTS_ON"] else None,
        "num_keypoints": cfg["KRCNN"]["NUM_KEYPOINTS"] if model["KEYPOINTS_ON"] else None,
        "num_classes": model["NUM_CLASSES"] if (has_box or is_retina) else None,
        "cls_agnostic_bbox_reg": bool(model["CLS_AGNOSTIC_BBOX_REG"]) if has_box else None,
        "kind": "detector" if (has_box or is_retina) else "rpn_only",
    }
    if has_rpn:
        ratios = fpn["RPN_ASPECT_RATIOS"] if fpn["FPN_ON"] else rpn["ASPECT_RATIOS"]
        exp["rpn_anchors_per_location"] = len(ratios) * (1 if fpn["FPN_ON"] else len(rpn["SIZES"]))
    if fpn["FPN_ON"]:
        exp["fpn_min_level"] = 3 if is_retina else 2  # RetinaNet builds P3-P7 (no res2 lateral)
    if is_retina:
        exp["retinanet_anchors_per_location"] = retina["SCALES_PER_OCTAVE"] * len(retina["ASPECT_RATIOS"])
    return exp


def model_function(name: str) -> str:
    tail = name.rsplit(".", 1)[-1]
    return tail[len("add_"):] if tail.startswith("add_") else tail


@requires_shared
@pytest.mark.parametrize("config_id", config_ids())
def test_architecture_from_blobs_matches_config(config_id):
    cfg = load_detectron_cfg_text((REFERENCE / "cfg_dumps" / f"{config_id}.yaml").read_text())
    arch = read_architecture(blobs_from_tsv(config_id))
    expected = expected_from_cfg(cfg)
    got = {key: getattr(arch, key) for key in expected}
    assert got == expected
    assert arch.block_counts[:3] == {50: (3, 4, 6), 101: (3, 4, 23), 152: (3, 8, 36)}[arch.depth]


@requires_shared
@pytest.mark.parametrize(
    "config_id",
    ["12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x", "04_2018_gn_baselines__e2e_mask_rcnn_R-50-FPN_2x_gn",
     "12_2017_baselines__retinanet_R-50-FPN_1x"],
)
def test_inspection_with_embedded_cfg_agrees_and_reports(config_id):
    cfg_text = (REFERENCE / "cfg_dumps" / f"{config_id}.yaml").read_text()
    blobs = blobs_from_tsv(config_id)
    wf = WeightFile(path=Path(f"{config_id}.pkl"), flavour="detectron_detector", blobs=blobs, momentum={},
                    cfg_text=cfg_text, cfg=load_detectron_cfg_text(cfg_text), size=0)
    report = inspect_weights(wf)
    assert report.cfg_agrees is True and report.cfg_disagreements == ()
    assert report.num_blobs == len(blobs)
    assert report.num_parameters == sum(a.size for a in blobs.values())
    assert "STRIDE_1X1" in " ".join(report.notes)
    text = report.format_text()
    assert "complete detector" in text and "agrees with the blobs" in text
    data = report.to_dict()
    assert data["architecture"]["num_classes"] == wf.cfg["MODEL"]["NUM_CLASSES"]

    # The same blobs under a cfg that says otherwise: the disagreement is named.
    wrong = dict(wf.cfg, MODEL=dict(wf.cfg["MODEL"], NUM_CLASSES=21))
    report = inspect_weights(WeightFile(path=wf.path, flavour=wf.flavour, blobs=blobs, momentum={},
                                        cfg_text=cfg_text, cfg=wrong, size=0))
    assert report.cfg_agrees is False
    assert any("MODEL.NUM_CLASSES" in d for d in report.cfg_disagreements)


@requires_shared
def test_backbone_only_and_leftovers():
    blobs = {k: v for k, v in blobs_from_tsv("12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x").items()
             if k.startswith(("conv1", "res"))}
    blobs.update(conv1_b=np.zeros(64, np.float32), res2_0_branch2a_b=np.zeros(64, np.float32),
                 fc1000_w=np.zeros((1000, 2048), np.float32), fc1000_b=np.zeros(1000, np.float32))
    wf = WeightFile(path=Path("R-50.pkl"), flavour="detectron_imagenet", blobs=blobs, momentum={}, cfg_text=None,
                    cfg=None, size=0)
    report = inspect_weights(wf)
    assert report.architecture.kind == "backbone_only"
    assert report.architecture.conv_body == "ResNet.add_ResNet50_conv5_body"
    assert set(report.preserved) == {"conv1_b", "res2_0_branch2a_b", "fc1000_w", "fc1000_b"}
    assert report.usable_for == "ImageNet backbone only: use as initialisation, not with --load_detectron"


def test_class_agnostic_and_unknown_names():
    arch = read_architecture({"cls_score_w": np.zeros((81, 1024)), "bbox_pred_w": np.zeros((8, 1024)),
                              "fc6_w": np.zeros((1024, 12544)), "fc7_w": np.zeros((1024, 1024))})
    assert arch.cls_agnostic_bbox_reg is True and arch.num_classes == 81 and arch.box_head == "roi_2mlp_head"
    arch = read_architecture({"backbone.bottom_up.stem.conv1.weight": np.zeros((64, 3, 7, 7))})
    assert arch.kind == "unknown" and arch.depth is None
