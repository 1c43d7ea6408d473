"""Small Detectron networks with random weights for the export tests (specs from ../shared's cfg dumps)."""
from __future__ import annotations

from dataclasses import replace
from typing import Dict

import numpy as np
import torch

from detconvert.modeling.detector import DetectronModel, build_model
from detconvert.modeling.layers import AffineChannel2d
from detconvert.spec import ArchSpec
from tests._modeling_specs import spec_for

FPN_MASK = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"
C4_MASK = "12_2017_baselines__e2e_mask_rcnn_R-50-C4_1x"
FPN_KEYPOINT = "12_2017_baselines__e2e_keypoint_rcnn_R-50-FPN_1x"
RETINANET = "12_2017_baselines__retinanet_R-50-FPN_1x"
RPN_ONLY = "12_2017_baselines__rpn_R-50-FPN_1x"


def tiny_spec(config_id: str) -> ArchSpec:
    """The network of ``config_id`` with one block per stage and narrow widths (same module kinds)."""
    spec = spec_for(config_id)
    body = replace(spec.body, block_counts=(1, 1, 1, 1), width_per_group=4, stem_out_dim=8, res2_out_dim=16)
    changes = {"body": body}
    if spec.fpn is not None:
        changes["fpn"] = replace(spec.fpn, dim=16)
        if spec.rpn is not None:
            changes["rpn"] = replace(spec.rpn, conv_dim=16)
    elif spec.rpn is not None:
        changes["rpn"] = replace(spec.rpn, conv_dim=body.out_dim(4))
    if spec.box_head is not None and spec.box_head.kind == "roi_2mlp_head":
        changes["box_head"] = replace(spec.box_head, mlp_dim=32)
    if spec.mask_head is not None and spec.mask_head.kind != "mask_rcnn_fcn_head_v0upshare":
        changes["mask_head"] = replace(spec.mask_head, dim_reduced=16)
    return replace(spec, **changes)


def randomize(model: DetectronModel, seed: int = 0) -> DetectronModel:
    """Fill every tensor with seeded random values of a sensible scale (affine scales around 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                if isinstance(module, AffineChannel2d) and name == "weight":
                    t.copy_(0.5 + torch.rand(t.shape, generator=gen))
                elif t.dim() > 1:
                    fan_in = t[0].numel() if not isinstance(module, torch.nn.ConvTranspose2d) else t.shape[0]
                    t.copy_(torch.randn(t.shape, generator=gen) * (1.0 / fan_in) ** 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
    return model.eval()


def random_model(spec: ArchSpec, seed: int = 0) -> DetectronModel:
    return randomize(build_model(spec), seed)


def meta_blobs(spec: ArchSpec):
    """``(model on the meta device, {blob: zero array of its shape})``: names and shapes without memory."""
    with torch.device("meta"):
        model = build_model(spec)
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    blobs: Dict[str, np.ndarray] = {b: np.zeros(tuple(tensors[n].shape), np.float32)
                                    for n, b in model.blob_table().items()}
    return model, blobs
