"""Bad configs: one line, exit 2, naming the file and the key; Detectron.pytorch variants accepted."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from detconvert.cli import main
from detconvert.config import DEFAULTS, build_spec, translate_config
from detconvert.errors import ConfigError
from tests._shared import REFERENCE, requires_shared

BASE = """\
MODEL:
  TYPE: generalized_rcnn
  CONV_BODY: FPN.add_fpn_ResNet50_conv5_body
  NUM_CLASSES: 81
  FASTER_RCNN: True
FPN:
  FPN_ON: True
  MULTILEVEL_ROIS: True
  MULTILEVEL_RPN: True
FAST_RCNN:
  ROI_BOX_HEAD: fast_rcnn_heads.add_roi_2mlp_head
  ROI_XFORM_METHOD: RoIAlign
  ROI_XFORM_RESOLUTION: 7
  ROI_XFORM_SAMPLING_RATIO: 2
TEST:
  SCALE: 800
  NMS: 0.5
"""


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def test_unknown_key_names_file_key_and_nearest(tmp_path, capsys):
    path = _write(tmp_path, BASE.replace("  NMS: 0.5", "  NMSS: 0.5"))
    line = _cli_error(capsys, ["config", str(path)])
    assert str(path) in line and "TEST.NMSS" in line and "did you mean TEST.NMS?" in line


def test_wrong_type_names_expected_and_given(tmp_path, capsys):
    path = _write(tmp_path, BASE.replace("  NMS: 0.5", "  NMS: 1"))  # Detectron refuses an int for a float key
    line = _cli_error(capsys, ["config", str(path)])
    assert str(path) in line and "TEST.NMS" in line and "expected float" in line and "given int" in line


def test_unknown_module_name(tmp_path, capsys):
    path = _write(tmp_path, BASE.replace("add_roi_2mlp_head", "add_roi_3mlp_head"))
    line = _cli_error(capsys, ["config", str(path)])
    assert str(path) in line and "FAST_RCNN.ROI_BOX_HEAD" in line and "roi_3mlp_head" in line and "roi_2mlp_head" in line


def test_fork_with_extra_section(tmp_path, capsys):
    path = _write(tmp_path, BASE + "BODY_UV_RCNN:\n  NUM_PATCHES: 24\n")  # DensePose's section
    line = _cli_error(capsys, ["config", str(path)])
    assert str(path) in line and "BODY_UV_RCNN" in line and "fork" in line


def test_contradicting_num_classes_names_both_numbers(tmp_path, capsys):
    path = _write(tmp_path, BASE)
    blobs = {"cls_score_w": np.zeros((2, 1024), np.float32), "cls_score_b": np.zeros(2, np.float32)}
    with pytest.raises(ConfigError) as info:
        translate_config(path, weights_cfg_or_blobs=blobs)
    assert "81" in str(info.value) and "2" in str(info.value) and "MODEL.NUM_CLASSES" in str(info.value)
    with pytest.raises(ConfigError, match="21 classes .* 2"):
        translate_config(path, dataset="voc_2007_trainval", weights_cfg_or_blobs=blobs)
    weights = tmp_path / "model_final.pkl"
    with open(weights, "wb") as handle:
        pickle.dump({"blobs": blobs}, handle, protocol=2)
    line = _cli_error(capsys, ["config", str(path), "--weights", str(weights)])
    assert str(path) in line and "81" in line and "cls_score_w has 2 rows" in line


def test_num_classes_sources(tmp_path):
    path = _write(tmp_path, BASE)
    assert translate_config(path).cfg.MODEL.NUM_CLASSES == 81
    assert translate_config(path, dataset="keypoints_coco_2014_train").cfg.MODEL.NUM_CLASSES == 2
    assert translate_config(path, dataset="voc_2012_train").cfg.MODEL.NUM_CLASSES == 21
    classes = _write(tmp_path, "# my classes\ncat\ndog\n\nbird\n", "classes.txt")
    translated = translate_config(path, dataset=classes)
    assert translated.cfg.MODEL.NUM_CLASSES == 4
    assert any(c.kind == "num_classes" and c.old == 81 and c.new == 4 for c in translated.report)
    agreeing = {"cls_score_w": np.zeros((81, 1024), np.float32)}
    assert translate_config(path, weights_cfg_or_blobs=agreeing).cfg.MODEL.NUM_CLASSES == 81
    with pytest.raises(ConfigError, match="unknown dataset"):
        translate_config(path, dataset="imagenet")


def test_renamed_and_deprecated_keys_are_converted(tmp_path):
    text = BASE.replace("  SCALE: 800\n", "  SCALES: (800,)\n  DATASET: coco_2014_minival\n") + "USE_GPU_NMS: True\n"
    translated = translate_config(_write(tmp_path, text))
    assert translated.cfg.TEST.SCALE == 800
    assert translated.hints["TEST.DATASETS"] == ("coco_2014_minival",)
    kinds = {(c.kind, c.key) for c in translated.report}
    assert ("renamed", "TEST.SCALES") in kinds and ("deprecated", "USE_GPU_NMS") in kinds


def test_detectron_pytorch_variant_is_understood(tmp_path):
    text = (
        BASE.replace("FPN.add_fpn_ResNet50_conv5_body", "FPN.fpn_ResNet50_conv5_body")
        .replace("fast_rcnn_heads.add_roi_2mlp_head", "fast_rcnn_heads.roi_Xconv1fc_gn_head")
        + "RESNETS:\n  USE_GN: True\n  FREEZE_AT: 0\n  IMAGENET_PRETRAINED_WEIGHTS: data/R-50-GN.pkl\n"
        + "RPN:\n  CLS_ACTIVATION: sigmoid\nMODEL_EXTRA: 1\n".replace("MODEL_EXTRA: 1\n", "")
        + "SOLVER:\n  TYPE: SGD\n"
    )
    text = text.replace("  FASTER_RCNN: True\n", "  FASTER_RCNN: True\n  LOAD_IMAGENET_PRETRAINED_WEIGHTS: True\n")
    translated = translate_config(_write(tmp_path, text))
    spec = build_spec(translated.cfg)
    assert spec.body.norm.kind == "gn" and spec.body.freeze_at == 0
    assert spec.box_head.kind == "roi_Xconv1fc_gn_head"
    assert translated.hints["RESNETS.IMAGENET_PRETRAINED_WEIGHTS"] == "data/R-50-GN.pkl"
    with pytest.raises(ConfigError, match="RPN.CLS_ACTIVATION"):
        translate_config(_write(tmp_path, text.replace("CLS_ACTIVATION: sigmoid", "CLS_ACTIVATION: softmax"), "soft.yaml"))


def test_model_type_and_old_names_are_aliased(tmp_path):
    text = BASE.replace("TYPE: generalized_rcnn", "TYPE: mask_rcnn").replace(
        "fast_rcnn_heads.add_roi_2mlp_head", "head_builder.add_roi_2mlp_head"
    )
    translated = translate_config(_write(tmp_path, text))
    assert translated.cfg.MODEL.TYPE == "generalized_rcnn"
    assert translated.cfg.FAST_RCNN.ROI_BOX_HEAD == "fast_rcnn_heads.roi_2mlp_head"
    assert translated.detectron_cfg.FAST_RCNN.ROI_BOX_HEAD == "head_builder.add_roi_2mlp_head"
    with pytest.raises(ConfigError, match="MODEL.TYPE"):
        translate_config(_write(tmp_path, BASE.replace("TYPE: generalized_rcnn", "TYPE: yolo"), "yolo.yaml"))


def test_output_is_written_atomically_and_not_overwritten(tmp_path, capsys):
    path = _write(tmp_path, BASE)
    out = tmp_path / "out.yaml"
    assert main(["config", str(path), "-o", str(out)]) == 0
    capsys.readouterr()
    assert translate_config(out).cfg == translate_config(path).cfg
    line = _cli_error(capsys, ["config", str(path), "-o", str(out)])
    assert "--force" in line
    bad = _write(tmp_path, BASE.replace("  NMS: 0.5", "  NMS: 1"), "bad.yaml")
    out2 = tmp_path / "out2.yaml"
    _cli_error(capsys, ["config", str(bad), "-o", str(out2)])
    assert not out2.exists() and not list(tmp_path.glob(".out2*"))


def test_defaults_are_detectrons_and_immutable():
    assert (DEFAULTS.TEST.SCALE, DEFAULTS.TEST.NMS, DEFAULTS.FAST_RCNN.ROI_XFORM_SAMPLING_RATIO) == (600, 0.3, 0)
    assert DEFAULTS.PIXEL_MEANS.shape == (1, 1, 3)
    with pytest.raises(AttributeError):
        DEFAULTS.TEST.SCALE = 800
    with pytest.raises(ValueError):
        DEFAULTS.PIXEL_MEANS[0, 0, 0] = 0.0
    steps = DEFAULTS.SOLVER.STEPS
    steps.append(1)
    assert DEFAULTS.SOLVER.STEPS == []


def test_values_decoded_and_coerced_as_detectron(tmp_path):
    text = BASE + "TRAIN:\n  SCALES: (640, 800)\n  DATASETS: ('a', 'b')\n  WEIGHTS: /x/R-50.pkl\nEPS: 1e-10\n"
    translated = translate_config(_write(tmp_path, text))
    assert translated.cfg.TRAIN.SCALES == (640, 800)  # a string literal_eval'd to a tuple
    assert translated.hints["TRAIN.WEIGHTS"] == "/x/R-50.pkl"  # not a literal: stays a string
    assert translated.cfg.EPS == 1e-10  # YAML 1.1 reads 1e-10 as a string; literal_eval makes it a float
    listy = translate_config(_write(tmp_path, BASE + "RPN:\n  SIZES: [32, 64]\n", "l.yaml"))
    assert listy.cfg.RPN.SIZES == (32, 64)  # list -> tuple (the default's type)


def test_explain_and_json(tmp_path, capsys):
    path = _write(tmp_path, BASE)
    assert main(["config", str(path), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "ResNet-50" in out and "P2-P6" in out and "roi_2mlp_head" in out
    assert main(["config", str(path), "--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["num_classes"] == 81 and data["spec"]["pipeline"] == "e2e"


@requires_shared
def test_embedded_cfg_from_another_detectron_version_drops_unknown_keys():
    """A model_final.pkl cfg carries every key of the Detectron that trained it: removed keys are reported, not fatal."""
    from detconvert.io.cfg_yaml import load_detectron_cfg_text

    cid = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"
    dump = load_detectron_cfg_text((REFERENCE / "cfg_dumps" / f"{cid}.yaml").read_text())
    reference = translate_config(dump, source_name="model_final.pkl")
    dump["MODEL"]["OLD_REMOVED_KEY"] = True
    translated = translate_config(dump, source_name="model_final.pkl")
    assert translated.to_yaml() == reference.to_yaml()
    dropped = [c for c in translated.report if c.kind == "dropped"]
    assert [c.key for c in dropped] == ["MODEL.OLD_REMOVED_KEY"]
    # The same key in a user's YAML stays an error.
    with pytest.raises(ConfigError, match="OLD_REMOVED_KEY"):
        translate_config("MODEL:\n  OLD_REMOVED_KEY: True\n", source_name="user.yaml")
