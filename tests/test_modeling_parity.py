"""Intermediate parity with Detectron's goldens: features, RPN, box / mask / keypoint / RetinaNet heads.

Each golden model runs its backbone once (module-scoped fixture) on the golden network input
(``unit/image_blob_*``, zero-padded as ``contents.json`` says; the GroupNorm golden, whose input is not
stored, on ``make_image_blob(chelsea.png)``, checked against its ``im_info``). Heads are fed the golden RoIs
(pooled with ``torchvision.ops.roi_align(aligned=False)`` per FPN level and restored with
``*_idx_restore_int32``) and compared row by row: ``max|ours - golden| <= rel * max|golden|`` per array,
``rel`` the exact-mode bound of the CPU kernel family in effect (``tests/_parity.py``: 1e-5 with AVX-512
kernels, 5e-5 with AVX2). Heavy heads are checked on a subset of rows to keep the test fast on two cores.
"""
from __future__ import annotations

import json
from typing import Dict, Optional

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from detconvert.io.weights import load_weights
from detconvert.modeling.detector import DetectronModel, build_model
from detconvert.modeling.loading import load_detectron_blobs
from tests import _parity
from tests._modeling_specs import spec_for
from tests._shared import REFERENCE, requires_shared

pytestmark = requires_shared

MASK_FPN = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"
MASK_C4 = "12_2017_baselines__e2e_mask_rcnn_R-50-C4_1x"
KPS_FPN = "12_2017_baselines__e2e_keypoint_rcnn_R-50-FPN_1x"
RETINA = "12_2017_baselines__retinanet_R-50-FPN_1x"
RPN_FPN = "12_2017_baselines__rpn_R-50-FPN_1x"
MASK_GN = "04_2018_gn_baselines__e2e_mask_rcnn_R-50-FPN_2x_gn"  # on chelsea.png (reference README: GroupNorm golden)
GOLDENS = [MASK_FPN, MASK_C4, KPS_FPN, RETINA, RPN_FPN, MASK_GN]
C4_ROWS = 48  # rows of the C4 res5 heads checked (res5 on 1000 RoIs is slow on 2 cores)


def output_dir(config_id: str):
    return REFERENCE / ("outputs_chelsea" if config_id == MASK_GN else "outputs") / config_id


def assert_dense(name: str, ours, golden: np.ndarray, scale: Optional[float] = None) -> None:
    """Image-level maps (features, RPN, RetinaNet)."""
    _parity.assert_close(name, ours, golden, _parity.tolerances().dense_rel, scale)


def assert_head(name: str, ours, golden: np.ndarray) -> None:
    """Head outputs on the golden RoIs."""
    _parity.assert_close(name, ours, golden, _parity.tolerances().head_rel)


class Golden:
    """A golden model with weights loaded, its golden blobs and one shared backbone forward."""

    def __init__(self, config_id: str, weights_path):
        self.id = config_id
        out = output_dir(config_id)
        self.blobs = np.load(out / "blobs.npz")
        self.features_sample = np.load(out / "features_sample.npz")
        contents = json.loads((out / "contents.json").read_text())
        self.spec = spec_for(config_id)
        self.model: DetectronModel = build_model(self.spec)
        weights = load_weights(weights_path)
        self.report = load_detectron_blobs(self.model, weights.blobs, source=weights_path)
        data = self._network_input(contents["data_blob"])
        # FPN.USE_GN: Detectron's features sample also has each output conv before its GroupNorm
        # (fpn_res<N>_*_sum; after it: fpn_res<N>_*_sum_gn).
        self.pre_gn: Dict[str, torch.Tensor] = {}
        hooks = []
        if self.spec.fpn is not None and self.spec.fpn.use_gn:
            levels = self.model.fpn.backbone_levels  # coarse to fine, as fpn.output
            for lvl, module in zip(levels, self.model.fpn.output):
                name = self.model.fpn.feature_names[lvl - self.spec.fpn.min_level]
                hooks.append(module.conv.register_forward_hook(
                    lambda _m, _i, out, name=name: self.pre_gn.__setitem__(name, out)))
        with torch.inference_mode():
            self.feats = self.model.features(torch.from_numpy(data))
        for h in hooks:
            h.remove()

    def _network_input(self, data_blob: Optional[dict]) -> np.ndarray:
        if data_blob is None:  # GroupNorm golden: the library's preprocessing, checked by its im_info
            import cv2

            from detconvert.inference.pipeline import make_image_blob

            blob = make_image_blob(self.spec, [cv2.imread(str(REFERENCE / "images" / "chelsea.png"))])
            np.testing.assert_array_equal(blob.im_info, self.blobs["im_info"])
            return blob.data
        unit = np.load(REFERENCE / "unit" / f"{data_blob['unit_case']}.npz")["data"]
        h, w = data_blob["shape"][2:]
        data = np.zeros((1, 3, h, w), np.float32)
        vh, vw = data_blob["valid_hw"]
        data[:, :, :vh, :vw] = unit[:, :, :vh, :vw]
        return data

    def feature(self, golden_name: str) -> torch.Tensor:
        """Our map for a ``features_sample.npz`` name (GroupNorm FPN: ``*_sum_gn`` is our level output)."""
        if golden_name == "res4_5_sum":
            return self.feats["res4"]
        if "_sum_gn" in golden_name:
            return self.feats[golden_name.replace("_sum_gn", "_sum")]
        if golden_name in self.pre_gn:
            return self.pre_gn[golden_name]
        return self.feats[golden_name]

    def pool(self, rois_name: str, resolution: int, sampling_ratio: int, rows: Optional[np.ndarray] = None) -> torch.Tensor:
        """RoIAlign (Caffe2 legacy, aligned=False) of golden RoIs; FPN: per level + restore order."""
        b = self.blobs
        if self.spec.fpn is None:
            rois = b[rois_name] if rows is None else b[rois_name][rows]
            return roi_align(self.feats["res4"], torch.from_numpy(rois.astype(np.float32)), resolution,
                             spatial_scale=1 / 16, sampling_ratio=sampling_ratio, aligned=False)
        levels = range(self.spec.fpn.roi_min_level, self.spec.fpn.roi_max_level + 1)
        per_level = [b[f"{rois_name}_fpn{lvl}"] for lvl in levels]
        concat = np.concatenate(per_level)
        level_of = np.concatenate([np.full(len(r), lvl) for r, lvl in zip(per_level, levels)])
        restore = b[f"{rois_name}_idx_restore_int32"]
        order = restore if rows is None else restore[rows]
        out = None
        names = dict(zip(range(2, 7), self.model.fpn.feature_names))
        for lvl in levels:
            sel = np.nonzero(level_of[order] == lvl)[0]
            if not len(sel):
                continue
            pooled = roi_align(self.feats[names[lvl]], torch.from_numpy(concat[order[sel]].astype(np.float32)),
                               resolution, spatial_scale=2.0 ** -lvl, sampling_ratio=sampling_ratio, aligned=False)
            if out is None:
                out = pooled.new_zeros((len(order),) + pooled.shape[1:])
            out[torch.from_numpy(sel)] = pooled
        return out


_CACHE: Dict[str, Golden] = {}


@pytest.fixture(scope="module")
def golden(request, weights_factory) -> Golden:
    """Parametrised indirectly with a config id; pytest reorders tests so each golden is built once."""
    return Golden(request.param, weights_factory(request.param))


def goldens(*ids: str):
    return pytest.mark.parametrize("golden", ids, indirect=True)


@goldens(*GOLDENS)
def test_weights_fill_every_tensor(golden: Golden):
    assert len(golden.report.loaded) == len(golden.model.blob_table())
    assert golden.report.unexpected == []


@goldens(*GOLDENS)
def test_backbone_and_fpn_features(golden: Golden):
    fs = golden.features_sample
    names = [k[: -len("__first8")] for k in fs.files if k.endswith("__first8")]
    assert names
    for name in names:
        ours = golden.feature(name)
        first8 = fs[f"{name}__first8"]
        scale = float(np.abs(first8).max())
        assert_dense(f"{name}[:, :8]", ours[:, :8], first8)
        flat = ours.double().transpose(0, 1).reshape(ours.shape[1], -1)
        assert_dense(f"{name} chan_mean", flat.mean(1), fs[f"{name}__chan_mean"], scale)
        assert_dense(f"{name} chan_std", flat.std(1, unbiased=False), fs[f"{name}__chan_std"], scale)
    if golden.id == MASK_GN:  # GN pyramid + the convs before each GroupNorm + res4 + P6
        assert len(names) == 10


@goldens(MASK_FPN, MASK_C4, KPS_FPN, RPN_FPN, MASK_GN)
def test_rpn_head_outputs(golden: Golden):
    with torch.inference_mode():
        logits, deltas = golden.model.rpn_head(golden.model.pyramid(golden.feats))
    if golden.spec.fpn is None:
        assert_dense("rpn_cls_logits", logits[0], golden.blobs["rpn_cls_logits"])
        assert_dense("rpn_bbox_pred", deltas[0], golden.blobs["rpn_bbox_pred"])
        return
    for lvl, lg, dl in zip(range(golden.spec.rpn.min_level, golden.spec.rpn.max_level + 1), logits, deltas):
        assert_dense(f"rpn_cls_logits_fpn{lvl}", lg, golden.blobs[f"rpn_cls_logits_fpn{lvl}"])
        assert_dense(f"rpn_bbox_pred_fpn{lvl}", dl, golden.blobs[f"rpn_bbox_pred_fpn{lvl}"])


@goldens(MASK_FPN, MASK_C4, KPS_FPN, MASK_GN)
def test_box_head_outputs(golden: Golden):
    x = golden.spec.box_head.roi_xform
    rows = np.arange(C4_ROWS) if golden.spec.fpn is None else None
    with torch.inference_mode():
        pooled = golden.pool("rois", x.resolution, x.sampling_ratio, rows)
        cls_score, bbox_pred = golden.model.box_predictor(golden.model.box_head(pooled))
    sl = slice(None) if rows is None else rows
    assert_head("cls_score", cls_score, golden.blobs["cls_score"][sl])
    assert_head("cls_prob", torch.softmax(cls_score, 1), golden.blobs["cls_prob"][sl])
    assert_head("bbox_pred", bbox_pred, golden.blobs["bbox_pred"][sl])


@goldens(MASK_FPN, MASK_C4, MASK_GN)
def test_mask_head_probabilities(golden: Golden):
    x = golden.spec.mask_head.roi_xform
    n = len(golden.blobs["mask_channel_index"])
    rows = np.arange(min(n, C4_ROWS)) if golden.spec.fpn is None else np.arange(n)
    with torch.inference_mode():
        logits = golden.model.mask_head(golden.pool("mask_rois", x.resolution, x.sampling_ratio, rows))
    channel = torch.from_numpy(golden.blobs["mask_channel_index"][rows].astype(np.int64))
    own = torch.sigmoid(logits[torch.arange(len(rows)), channel])
    assert_head("mask_fcn_probs_own", own, golden.blobs["mask_fcn_probs_own"][rows])


@goldens(KPS_FPN)
def test_keypoint_heatmaps(golden: Golden):
    x = golden.spec.keypoint_head.roi_xform
    rows = np.arange(25)
    with torch.inference_mode():
        lowres, heatmaps = golden.model.keypoint_head(
            golden.pool("keypoint_rois", x.resolution, x.sampling_ratio, rows), return_lowres=True
        )
    assert_head("kps_score_lowres_first25", lowres, golden.blobs["kps_score_lowres_first25"])
    assert_head("kps_score_first25", heatmaps, golden.blobs["kps_score_first25"])


@goldens(RETINA)
def test_retinanet_head_outputs(golden: Golden):
    head = golden.model.retinanet_head
    with torch.inference_mode():
        cls_logits, deltas = head(golden.model.pyramid(golden.feats))
    for lvl, lg, dl in zip(range(3, 8), cls_logits, deltas):
        probs = head.probabilities(lg)
        if lvl == 3:
            assert_dense("retnet_cls_prob_fpn3_stride2", probs[:, :, ::2, ::2], golden.blobs["retnet_cls_prob_fpn3_stride2"])
        else:
            assert_dense(f"retnet_cls_prob_fpn{lvl}", probs, golden.blobs[f"retnet_cls_prob_fpn{lvl}"])
        assert_dense(f"retnet_bbox_pred_fpn{lvl}", dl, golden.blobs[f"retnet_bbox_pred_fpn{lvl}"])
