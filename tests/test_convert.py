"""``detconvert weights``: checkpoints with metadata that ``load_model`` runs to the same detections.

Goldens converted and re-run: Mask R-CNN R-50-FPN (safetensors, full forward compared with the pickle's
detections and Detectron's). Keypoint / C4 files are converted without a forward (tensor equality),
the C4 one in 2018's Python-2 byte format and to ``.pth``.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from detconvert import __version__, cli
from detconvert.export.checkpoint import convert_weights, load_backbone
from detconvert.errors import DetconvertError, WeightFileError
from detconvert.io.weights import load_weights
from detconvert.inference.predictor import load_model
from detconvert.spec import ArchSpec
from tests._shared import REFERENCE, requires_shared
from tests.test_pipeline_golden import MASK_C4, MASK_FPN, assert_detections_match, golden_run

pytestmark = requires_shared


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def mask_fpn_checkpoint(weights_factory, tmp_path_factory):
    src = weights_factory(MASK_FPN)
    out = tmp_path_factory.mktemp("convert") / "mask_fpn.safetensors"
    report = tmp_path_factory.mktemp("report") / "report.json"
    rc = cli.main(["weights", str(src), "-o", str(out), "--report", str(report)])
    assert rc == 0
    return src, out, report


def test_checkpoint_metadata(mask_fpn_checkpoint):
    src, out, report = mask_fpn_checkpoint
    wf = load_weights(out)
    assert wf.flavour == "safetensors"
    meta = wf.metadata
    assert meta["format"] == "detconvert" and meta["kind"] == "detector"
    assert meta["converter_version"] == __version__
    assert meta["source_sha256"] == _sha256(src)
    spec = ArchSpec.from_dict(json.loads(meta["spec"]))
    assert spec.pipeline == "e2e" and spec.fpn is not None and spec.mask_head is not None and spec.num_classes == 81
    names = json.loads(meta["class_names"])
    assert names[0] == "__background__" and names[1] == "person" and len(names) == 81
    assert json.loads(meta["conventions"])["pixel_means"] == [102.9801, 115.9465, 122.7717]
    assert "MODEL" in meta["cfg"]  # the embedded cfg text it was built from
    assert json.loads(meta["precision"]) == {"precision": "exact", "compute_dtype": "float32"}  # blobs copied as is
    data = json.loads(report.read_text())
    assert data["counts"]["model_tensors"] == data["counts"]["blobs_read"] == 201  # e2e_mask_rcnn_R-50-FPN: 201 params
    assert data["counts"]["unexpected"] == 0


def test_converted_checkpoint_reproduces_pickle_detections(mask_fpn_checkpoint):
    _, out, _ = mask_fpn_checkpoint
    direct, golden, _ = golden_run(MASK_FPN)  # load_model(model_final.pkl) on coffee.png
    predictor = load_model(out, device="cpu")
    assert predictor.class_names == json.loads(load_weights(out).metadata["class_names"])
    dets = predictor.predict([str(REFERENCE / "images" / "coffee.png")])[0]
    # Same weights, same code: identical to the pickle's run, and therefore to Detectron's golden.
    np.testing.assert_array_equal(dets.boxes, direct.boxes)
    np.testing.assert_array_equal(dets.scores, direct.scores)
    np.testing.assert_array_equal(dets.classes, direct.classes)
    assert [m["counts"] for m in dets.masks] == [m["counts"] for m in direct.masks]
    assert_detections_match(dets, golden, "converted checkpoint")


def test_refuses_to_overwrite_without_force(mask_fpn_checkpoint, tmp_path, capsys):
    src, _, _ = mask_fpn_checkpoint
    existing = tmp_path / "taken.safetensors"
    existing.write_bytes(b"keep me")
    rc = cli.main(["weights", str(src), "-o", str(existing)])
    err = capsys.readouterr().err
    assert rc == 2 and existing.read_bytes() == b"keep me"
    assert err.strip().count("\n") == 0 and "--force" in err and str(existing) in err


def test_pth_from_python2_file_and_force(weights_factory, tmp_path):
    src = weights_factory(MASK_C4, "--py2-style")
    out = tmp_path / "c4.pth"
    out.write_bytes(b"old")
    result = convert_weights(src, fmt="pth", output=out, force=True)
    wf = load_weights(out)
    assert wf.flavour == "torch" and wf.metadata["format"] == "detconvert"
    assert result.num_tensors == len(wf.blobs)
    # Detectron blob -> checkpoint tensor, one to one, values unchanged (C4 mask head reads res5 via ']_').
    source = load_weights(src).blobs
    for tensor_name, blob in result.report.loaded.items():
        np.testing.assert_array_equal(wf.blobs[tensor_name], source[blob], err_msg=tensor_name)
    assert result.report.fallbacks == {} or all(v.startswith("res5_") for v in result.report.fallbacks.values())


def test_imagenet_pickle_becomes_backbone_checkpoint(weights_factory, tmp_path):
    src = weights_factory(MASK_C4, "--blobs-only-imagenet", "--py2-style")
    out = tmp_path / "R-50.safetensors"
    result = convert_weights(src, output=out)
    assert result.kind == "backbone" and result.body.depth == 50 and result.body.last_stage == 5
    assert result.report.unexpected == []
    # Usable as initialisation: load into the body of a detector built from another config.
    from detconvert.modeling.detector import build_model
    from tests._modeling_specs import spec_for

    model = build_model(spec_for(MASK_FPN))
    missing = load_backbone(model.body, out)
    assert missing == []
    blobs = load_weights(src).blobs
    state = model.body.state_dict()
    np.testing.assert_array_equal(state["stem.conv1.conv.weight"].numpy(), blobs["conv1_w"])
    np.testing.assert_array_equal(state["stem.conv1.norm.weight"].numpy(), blobs["res_conv1_bn_s"])
    with pytest.raises(WeightFileError, match="backbone"):
        load_model(out, device="cpu")


def test_bad_source_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "model_final.pkl"
    bad.write_text("<html>404 Not Found</html>")
    out = tmp_path / "out.safetensors"
    rc = cli.main(["weights", str(bad), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.strip().count("\n") == 0 and str(bad) in err
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
    with pytest.raises(DetconvertError, match="format"):
        convert_weights(bad, fmt="onnx")
