"""detconvert export --to onnx (optional extra: onnx, onnxscript, onnxruntime)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detconvert.errors import DetconvertError
from detconvert.export import SourceModel
from detconvert.export import onnx as onnx_export
from tests._export_models import C4_MASK, FPN_MASK, random_model, tiny_spec
from tests._shared import requires_shared

pytestmark = requires_shared


def test_missing_exporter_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "onnx_missing", lambda: ["onnxscript"])
    model = random_model(tiny_spec(FPN_MASK))
    with pytest.raises(DetconvertError, match=r"needs onnxscript .*pip install 'detconvert\[onnx\]'"):
        onnx_export.export_onnx(SourceModel(model, [], tmp_path / "m.pkl"), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("config_id", [FPN_MASK, C4_MASK])
def test_graph_matches_pytorch_at_another_size(config_id, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = random_model(tiny_spec(config_id))
    out = tmp_path / "net.onnx"
    report = onnx_export.export_onnx(SourceModel(model, [], tmp_path / "m.pkl"), out, image_size=(64, 96))
    assert report.details["max_relative_difference"] <= onnx_export.ONNX_PARITY_RTOL
    network = onnx_export.DenseNetwork(model)
    names = network.output_names
    expected_first = "fpn_res2_0_sum" if config_id == FPN_MASK else "res4_0_sum"
    assert names[0] == expected_first and names[-1].startswith("rpn_bbox_pred")
    # dynamic batch and size: run a 2-image batch of another size (multiple of 32)
    x = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(5)) * 50.0
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(names, {"images": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in network(x)]
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape, name
        assert np.abs(g - w).max() <= onnx_export.ONNX_PARITY_RTOL * np.abs(w).max(), name


def test_size_must_fit_the_coarsest_stride(tmp_path):
    pytest.importorskip("onnxscript")
    model = random_model(tiny_spec(FPN_MASK))
    with pytest.raises(DetconvertError, match="multiples of 32"):
        onnx_export.export_onnx(SourceModel(model, [], tmp_path / "m.pkl"), tmp_path / "m.onnx", image_size=(100, 96))
