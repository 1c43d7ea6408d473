"""``detconvert export`` on a regenerated Detectron model_final.pkl: every target from the command line."""
from __future__ import annotations

import numpy as np
import pytest

from detconvert.cli import main
from detconvert.io.unpickle import restricted_load
from detconvert.io.weights import load_weights
from tests._export_models import FPN_MASK
from tests._shared import requires_shared

pytestmark = [requires_shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def pkl(weights_factory):
    return weights_factory(FPN_MASK, "--py2-style")


def test_detectron2_from_a_real_pickle(pkl, tmp_path, capsys):
    out = tmp_path / "mask_rcnn_d2.pkl"
    assert main(["export", str(pkl), "--to", "detectron2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}, {out.with_suffix('.yaml')} (detectron2," in printed
    with open(out, "rb") as handle:
        d2 = restricted_load(handle, out)["model"]
    blobs = load_weights(pkl).blobs
    np.testing.assert_array_equal(d2["roi_heads.box_predictor.cls_score.weight"][-1], blobs["cls_score_w"][0])
    np.testing.assert_array_equal(d2["roi_heads.box_predictor.bbox_pred.bias"], blobs["bbox_pred_b"][4:])
    np.testing.assert_array_equal(d2["backbone.bottom_up.res3.2.conv2.norm.weight"], blobs["res3_2_branch2b_bn_s"])
    np.testing.assert_array_equal(d2["proposal_generator.rpn_head.conv.weight"], blobs["conv_rpn_fpn2_w"])


def test_pth_and_safetensors_go_through_detconvert_weights(pkl, tmp_path, capsys):
    import detconvert

    pth = tmp_path / "model.pth"
    assert main(["export", str(pkl), "--to", "pth", "-o", str(pth)]) == 0
    st = tmp_path / "model.safetensors"
    assert main(["export", str(pth), "--to", "safetensors", "-o", str(st)]) == 0  # checkpoint -> other format
    a, b = load_weights(pth), load_weights(st)
    assert a.metadata["spec"] == b.metadata["spec"] and a.metadata["source_sha256"] == b.metadata["source_sha256"]
    assert sorted(a.blobs) == sorted(b.blobs)
    for name in a.blobs:
        np.testing.assert_array_equal(a.blobs[name], b.blobs[name])
    assert detconvert.load_model(st, device="cpu").spec.conv_body_name == "FPN.fpn_ResNet50_conv5_body"


def test_torchvision_msra_refusal_is_one_line(pkl, tmp_path, capsys):
    out = tmp_path / "tv.pth"
    assert main(["export", str(pkl), "--to", "torchvision", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"detconvert export: error: {pkl}: RESNETS.STRIDE_1X1 is True") and "\n" not in err
    assert not out.exists()


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.pkl"), "--to", "detectron2", "-o", str(tmp_path / "o.pkl")]) == 2
    html = tmp_path / "model_final.pkl"
    html.write_text("<html><body>Not Found</body></html>")
    assert main(["export", str(html), "--to", "detectron2", "-o", str(tmp_path / "o.pkl")]) == 2
    err = capsys.readouterr().err
    assert "HTML" in err and "Traceback" not in err
    assert not (tmp_path / "o.pkl").exists()
