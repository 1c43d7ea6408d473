"""Structure and loading tests of detconvert.modeling (fast: no forward pass on real images)."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detconvert.errors import MappingError
from detconvert.modeling.detector import build_model
from detconvert.modeling.layers import AffineChannel2d, FixedBilinearUpsample, bilinear_upsample_kernel
from detconvert.modeling.loading import group_names, load_detectron_blobs
from detconvert.modeling.mapping import MappingTableError, blob_table, declare_blob, lookup_name, named_tensors
from tests._modeling_specs import spec_for
from tests._shared import REFERENCE, config_ids, requires_shared

R50_FPN = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"
R50_C4 = "12_2017_baselines__e2e_mask_rcnn_R-50-C4_1x"
GN_FPN = "04_2018_gn_baselines__e2e_mask_rcnn_R-50-FPN_2x_gn"
X101_KPS = "12_2017_baselines__e2e_keypoint_rcnn_X-101-32x8d-FPN_1x"


def _tsv(config_id: str):
    rows = [line.rstrip("\n").split("\t") for line in open(REFERENCE / "blobs" / f"{config_id}.tsv")]
    return {looked: tuple(int(x) for x in shape.split(",")) for _, shape, looked in rows}


def _meta_model(config_id: str):
    with torch.device("meta"):
        return build_model(spec_for(config_id))


def _synthetic_blobs(model, seed: int = 0):
    """Distinct random values for every blob the model declares (shapes from the model)."""
    rng = np.random.default_rng(seed)
    tensors = named_tensors(model)
    return {blob: rng.standard_normal(tuple(tensors[t].shape)).astype(np.float32) for t, blob in blob_table(model).items()}


# --------------------------------------------------------------------------- mapping vs Detectron


@requires_shared
@pytest.mark.parametrize("config_id", config_ids())
def test_model_consumes_exactly_detectrons_blobs(config_id):
    """The blob set (looked-up names, ']_' rule applied) and shapes equal blobs/<id>.tsv."""
    want = _tsv(config_id)
    model = _meta_model(config_id)
    tensors = named_tensors(model)
    got = {}
    for tname, blob in model.blob_table().items():
        key, _ = lookup_name(blob, set(want))
        assert key not in got, f"{key} read twice"
        got[key] = tuple(tensors[tname].shape)
    assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])
    assert {k: v for k, v in got.items() if want[k] != v} == {}


@requires_shared
def test_v0upshare_reuses_box_res5_without_duplicate_tensors():
    model = _meta_model(R50_C4)
    assert model.mask_head._shared_res5[0] is model.box_head.res5
    keys = list(model.state_dict())
    assert len(keys) == len(set(keys)) == len(model.blob_table())
    assert not any(k.startswith("mask_head.res5") or "_shared" in k for k in keys)


@requires_shared
def test_stride_placement_follows_stride_1x1():
    msra = _meta_model(R50_FPN).body.res3[0]
    assert (msra.branch2a.conv.stride, msra.branch2b.conv.stride) == ((2, 2), (1, 1))
    resnext = _meta_model(X101_KPS).body.res3[0]
    assert (resnext.branch2a.conv.stride, resnext.branch2b.conv.stride) == ((1, 1), (2, 2))
    assert resnext.branch2b.conv.groups == 32


@requires_shared
def test_group_norm_eps_and_groups_come_from_spec():
    spec = spec_for(GN_FPN)
    norm = dataclasses.replace(spec.body.norm, gn_eps=1e-3, gn_num_groups=16)
    spec = dataclasses.replace(spec, body=dataclasses.replace(spec.body, norm=norm))
    with torch.device("meta"):
        model = build_model(spec)
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and all(m.eps == 1e-3 and m.num_groups == 16 for m in gns)
    assert not any(isinstance(m, AffineChannel2d) for m in model.modules())


@requires_shared
def test_freeze_at_stops_gradients_of_stem_and_res2_only():
    model = _meta_model(R50_FPN)  # TRAIN.FREEZE_AT = 2
    assert not any(p.requires_grad for p in model.body.stem.parameters())
    assert not any(p.requires_grad for p in model.body.res2.parameters())
    assert all(p.requires_grad for p in model.body.res3.parameters())


# --------------------------------------------------------------------------- layers


def test_affine_channel_is_exact_and_frozen():
    layer = AffineChannel2d(3)
    layer.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
    layer.bias.copy_(torch.tensor([0.1, 0.0, 3.0]))
    x = torch.randn(2, 3, 4, 5)
    expected = x * layer.weight.view(1, 3, 1, 1) + layer.bias.view(1, 3, 1, 1)
    layer.train()
    layer.requires_grad_(True)
    y = layer(x)
    assert torch.allclose(y, expected, atol=1e-6, rtol=0)
    assert list(layer.parameters()) == []  # buffers: nothing an optimizer or train() can change
    assert torch.equal(layer(x), y)


def test_fixed_bilinear_is_the_deconvolution_not_interpolate():
    kernel = bilinear_upsample_kernel(2, 2)
    one_d = np.array([0.25, 0.75, 0.75, 0.25])
    assert np.allclose(kernel[0, 0], np.outer(one_d, one_d)) and not kernel[0, 1].any()
    up = FixedBilinearUpsample(2, 2)
    x = torch.rand(1, 2, 6, 6) + 1.0
    ours = up(x)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert ours.shape == ref.shape == (1, 2, 12, 12)
    assert torch.allclose(ours[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-6)
    assert torch.allclose(ours[..., 0, 0], 0.75 * 0.75 * x[..., 0, 0], atol=1e-6)  # border: 0.75 * x0 per axis
    assert not up.weight.requires_grad


def test_blob_table_rejects_undeclared_and_duplicate_tensors():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = declare_blob(nn.Conv2d(1, 1, 1), "x")
            self.b = nn.Conv2d(1, 1, 1)

    with pytest.raises(MappingTableError, match="declares no Detectron blob"):
        blob_table(Bad())
    bad = Bad()
    declare_blob(bad.b, "x")
    with pytest.raises(MappingTableError, match="claimed by both"):
        blob_table(bad)


def test_lookup_name_applies_detectrons_bracket_fallback():
    assert lookup_name("_[mask]_res5_0_branch2a_w", {"res5_0_branch2a_w"}) == ("res5_0_branch2a_w", True)
    assert lookup_name("_[mask]_fcn1_w", {"_[mask]_fcn1_w"}) == ("_[mask]_fcn1_w", False)
    assert lookup_name("fc6_w", set()) == ("fc6_w", False)


def test_group_names_is_exact_and_compact():
    names = [f"res2_{b}_branch2{c}_w" for b in range(3) for c in "abc"] + ["res2_0_branch1_w", "conv1_w"]
    names += [f"res4_{b}_branch2a_w" for b in range(23)]
    grouped = group_names(names)
    assert grouped == ["conv1_w", "res2_0_branch1_w", "res2_{0,1,2}_branch2{a,b,c}_w", "res4_{0..22}_branch2a_w"]
    # an incomplete product must not be merged into a pattern that claims names which do not exist
    partial = ["a_0_x", "a_0_y", "a_1_x", "b_2_x", "b_3_y"]
    grouped = group_names(partial)
    assert sorted(n for g in grouped for n in _expand(g)) == sorted(partial) and len(grouped) < len(partial)


def _expand(pattern: str):
    m = re.search(r"\{([^}]*)\}", pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    alts = [str(i) for i in range(int(body.split("..")[0]), int(body.split("..")[1]) + 1)] if ".." in body else body.split(",")
    return [n for a in alts for n in _expand(pattern[: m.start()] + a + pattern[m.end():])]


# --------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def c4_model():
    if REFERENCE is None:
        pytest.skip("needs ../shared for the spec")
    return build_model(spec_for(R50_C4))


def test_load_fills_every_tensor_exactly_once_and_sorts_leftovers(c4_model):
    blobs = _synthetic_blobs(c4_model)
    blobs["conv_rpn_w_momentum"] = np.zeros_like(blobs["conv_rpn_w"])
    blobs["fc1000_w"] = np.ones((1000, 2048), np.float32)
    blobs["conv1_b"] = np.zeros(64, np.float32)
    blobs["res2_0_branch2a_b"] = np.full(64, 0.5, np.float32)  # a non-zero bias of a bias-free conv
    blobs["kps_score_w"] = np.zeros((17, 17, 4, 4), np.float32)
    blobs["something_else"] = np.zeros(3, np.float32)
    report = load_detectron_blobs(c4_model, blobs, source="w.pkl")
    tensors = named_tensors(c4_model)
    assert set(report.loaded) == set(tensors)
    for tname, blob in report.loaded.items():
        assert np.array_equal(tensors[tname].detach().numpy(), blobs[blob]), tname
    assert report.expected_leftovers == {
        "conv_rpn_w_momentum": "momentum",
        "fc1000_w": "imagenet_classifier",
        "conv1_b": "imagenet_zero_bias",
        "kps_score_w": "fixed_bilinear",
    }
    assert report.unexpected == ["res2_0_branch2a_b", "something_else"]
    d = report.to_dict()
    assert d["counts"]["model_tensors"] == len(tensors) and d["unexpected"]["blobs"] == report.unexpected
    assert "res2_{0,1,2}_branch2{a,b,c}_w" in report.format_table()


def test_shape_mismatch_names_module_blob_and_both_shapes_and_leaves_model_untouched(c4_model):
    blobs = _synthetic_blobs(c4_model, seed=1)
    before = c4_model.body.stem.conv1.conv.weight.clone()
    blobs["cls_score_w"] = np.zeros((2, 2048), np.float32)
    with pytest.raises(MappingError) as err:
        load_detectron_blobs(c4_model, blobs, source="w.pkl")
    msg = str(err.value)
    assert msg.startswith("w.pkl: module box_predictor.cls_score: blob cls_score_w")
    assert "(2, 2048)" in msg and "(81, 2048)" in msg and "NUM_CLASSES" in msg
    assert torch.equal(c4_model.body.stem.conv1.conv.weight, before)


@requires_shared
def test_fpn_weights_into_c4_config_is_diagnosed(c4_model):
    fpn_blobs = {b: np.zeros(s, np.float32) for b, s in _tsv(R50_FPN).items()}
    with pytest.raises(MappingError, match="weights have FPN blobs .*config says C4") as err:
        load_detectron_blobs(c4_model, fpn_blobs, source="fpn.pkl")
    assert "rpn_head" in str(err.value) and "\n" not in str(err.value)


@requires_shared
def test_backbone_only_file_is_diagnosed_and_loads_into_body(c4_model):
    body_blobs = {b: v for b, v in _synthetic_blobs(c4_model).items() if re.match(r"(conv1|res_conv1|res[2-4]_)", b)}
    with pytest.raises(MappingError, match="backbone only"):
        load_detectron_blobs(c4_model, body_blobs)
    report = load_detectron_blobs(c4_model.body, body_blobs)
    assert len(report.loaded) == len(named_tensors(c4_model.body)) and not report.unexpected


def test_retinanet_softmax_is_a_distribution_per_anchor_group():
    from detconvert.modeling.retinanet import RetinaNetHead
    from detconvert.spec import RetinaNetSpec

    head = RetinaNetHead(RetinaNetSpec(num_convs=1, softmax=True), num_classes=3, in_channels=4, min_level=3)
    assert head.cls_pred.out_channels == 9 * 3  # A * C, background included
    logits = torch.randn(1, 27, 2, 2)
    probs = head.probabilities(logits)
    groups = probs.view(1, 9, 3, 2, 2)
    assert torch.allclose(groups.sum(2), torch.ones(1, 9, 2, 2), atol=1e-6)
    assert torch.allclose(groups[:, 4], torch.softmax(logits[:, 12:15], dim=1), atol=1e-6)
    sigmoid_head = RetinaNetHead(RetinaNetSpec(num_convs=1), num_classes=3, in_channels=4, min_level=3)
    assert sigmoid_head.cls_pred.out_channels == 9 * 2 and "retnet_cls_pred_fpn3_w" in blob_table(sigmoid_head).values()
