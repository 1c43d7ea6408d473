"""detconvert export --to torchvision: strict loading into torchvision's builders and equal features."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torchvision

from detconvert.errors import ConfigError
from detconvert.export import SourceModel
from detconvert.export.torchvision import (
    TV_FROZEN_BN_EPS,
    export_torchvision,
    torchvision_builder,
    torchvision_builder_kwargs,
    torchvision_state_dict,
    unsupported_in_torchvision,
)
from tests._export_models import C4_MASK, FPN_KEYPOINT, FPN_MASK, RETINANET, random_model
from tests._modeling_specs import spec_for
from tests._shared import requires_shared

pytestmark = requires_shared


def _torchvision_model(spec):
    return getattr(torchvision.models.detection, torchvision_builder(spec))(**torchvision_builder_kwargs(spec)).eval()


def test_frozen_bn_eps_is_torchvisions():
    assert torchvision.ops.misc.FrozenBatchNorm2d(4).eps == TV_FROZEN_BN_EPS


@pytest.mark.parametrize("config_id,builder", [
    (FPN_MASK, "maskrcnn_resnet50_fpn"),
    (FPN_KEYPOINT, "keypointrcnn_resnet50_fpn"),
    ("12_2017_baselines__e2e_faster_rcnn_R-50-FPN_1x", "fasterrcnn_resnet50_fpn"),
])
def test_state_dict_loads_strictly(config_id, builder):
    spec = spec_for(config_id)
    assert unsupported_in_torchvision(spec) == [] and torchvision_builder(spec) == builder
    model = random_model(spec)
    state, dropped = torchvision_state_dict(model)
    tv = _torchvision_model(spec)
    tv.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    assert set(dropped) == ({"kps_score_w", "kps_score_b"} if spec.keypoint_head else set())
    # class layers keep Detectron's layout (torchvision's background is class 0 too)
    np.testing.assert_array_equal(tv.roi_heads.box_predictor.cls_score.weight.detach().numpy(),
                                  model.box_predictor.cls_score.weight.detach().numpy())


def test_features_equal_ours_when_the_architecture_matches():
    """STRIDE_1X1=False: the same network in both; torchvision gets RGB, we get BGR."""
    spec = spec_for(FPN_MASK)
    spec = replace(spec, body=replace(spec.body, stride_1x1=False))
    ours = random_model(spec, seed=3)
    state, _ = torchvision_state_dict(ours)
    tv = _torchvision_model(spec)
    tv.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    bgr = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 50.0
    with torch.no_grad():
        want = ours.pyramid(ours.features(bgr))
        got = list(tv.backbone(bgr.flip(1)).values())  # '0'..'3', 'pool' = P2..P6
    assert len(got) == len(want) == 5
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert float((g - w).abs().max()) <= 1e-4 * float(w.abs().max())


def test_builder_kwargs_make_torchvisions_input_detectrons_blob():
    spec = spec_for(FPN_MASK)
    tv = _torchvision_model(spec)
    bgr = np.random.default_rng(0).integers(0, 256, size=(3, 8, 8)).astype(np.float32)
    rgb01 = torch.from_numpy(bgr[::-1].copy()) / 255.0
    normalised = tv.transform.normalize(rgb01)
    detectron_blob = bgr - np.array(spec.conventions.pixel_means, np.float32)[:, None, None]
    np.testing.assert_allclose(normalised.numpy(), detectron_blob[::-1], atol=2e-4)


@pytest.mark.parametrize("config_id,missing", [
    (C4_MASK, "a C4 model"),
    (RETINANET, "RetinaNet"),
    ("04_2018_gn_baselines__e2e_mask_rcnn_R-50-FPN_2x_gn", "GroupNorm in the backbone"),
    ("12_2017_baselines__e2e_mask_rcnn_X-101-64x4d-FPN_1x", "ResNet-101"),
    ("12_2017_baselines__rpn_R-50-FPN_1x", "a rpn_only model"),
])
def test_refuses_what_torchvision_lacks(config_id, missing, tmp_path):
    spec = spec_for(config_id)
    assert any(missing in p for p in unsupported_in_torchvision(spec))


def test_msra_stride_refused_unless_allowed(tmp_path):
    spec = spec_for(FPN_MASK)
    assert spec.body.stride_1x1
    model = random_model(spec)
    src = SourceModel(model, [], tmp_path / "model_final.pkl")
    with pytest.raises(ConfigError, match="STRIDE_1X1.*--allow-architecture-change"):
        export_torchvision(src, tmp_path / "tv.pth")
    assert not (tmp_path / "tv.pth").exists()
    report = export_torchvision(src, tmp_path / "tv.pth", allow_architecture_change=True)
    assert report.warnings and "WILL differ" in report.warnings[0]
    state = torch.load(tmp_path / "tv.pth", weights_only=True)
    _torchvision_model(spec).load_state_dict(state, strict=True)


def test_c4_export_is_a_one_line_error(tmp_path):
    from tests._export_models import tiny_spec

    model = random_model(tiny_spec(C4_MASK))
    with pytest.raises(ConfigError, match="^.*cannot express a C4 model") as info:
        export_torchvision(SourceModel(model, [], tmp_path / "m.pkl"), tmp_path / "tv.pth")
    assert "\n" not in str(info.value)
