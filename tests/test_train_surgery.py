"""Class surgery: --keep-classes person,dog gives a 3-class model whose predictions for the kept
classes are the 81-class model's (same boxes / masks, scores renormalised over bg + kept)."""
from __future__ import annotations

import pytest
import torch

from tests._shared import requires_shared

pytestmark = requires_shared
CONFIG = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"


@pytest.fixture(scope="module")
def coco_model():
    from detconvert.modeling.detector import build_model
    from tests._modeling_specs import spec_for

    torch.manual_seed(0)
    model = build_model(spec_for(CONFIG))
    # default init gives near-identical logits: spread the classifier so the test can fail
    with torch.no_grad():
        for p in (model.box_predictor.cls_score.weight, model.box_predictor.bbox_pred.weight):
            p.normal_(0, 0.05)
    return model.eval()


def test_keep_person_dog_predictions_equal_81_class_model(coco_model):
    from detconvert.data.classes import coco_table
    from detconvert.train.surgery import class_indices, keep_classes

    names = list(coco_table().names)
    rows = class_indices(names, ["person", "dog"])
    small, report = keep_classes(coco_model, rows, names)
    assert small.spec.num_classes == 3 and report.classes == ["__background__", "person", "dog"]
    assert {n.split(".")[-2] for n in report.changed} >= {"cls_score", "bbox_pred", "mask_fcn_logits"}

    keep = [0] + rows
    # The same weights in a narrower matmul: equal up to float32 summation order (BLAS blocking).
    res = coco_model.spec.box_head.roi_xform_resolution if hasattr(coco_model.spec.box_head, "roi_xform_resolution") else 7
    feats = torch.randn(6, coco_model.spec.fpn.dim, res, res)
    with torch.no_grad():
        old_cls, old_box = coco_model.box_predictor(coco_model.box_head(feats))
        new_cls, new_box = small.box_predictor(small.box_head(feats))
        torch.testing.assert_close(new_cls, old_cls[:, keep], rtol=1e-5, atol=1e-6)
        box_cols = torch.tensor([4 * c + j for c in keep for j in range(4)])
        torch.testing.assert_close(new_box, old_box[:, box_cols], rtol=1e-5, atol=1e-6)
        old_p = old_cls.softmax(1)
        renorm = old_p[:, keep] / old_p[:, keep].sum(1, keepdim=True)
        torch.testing.assert_close(new_cls.softmax(1), renorm, rtol=1e-5, atol=1e-7)

        mres = coco_model.spec.mask_head.roi_xform_resolution if hasattr(coco_model.spec.mask_head, "roi_xform_resolution") else 14
        mfeats = torch.randn(3, coco_model.spec.fpn.dim, mres, mres)
        torch.testing.assert_close(small.mask_head(mfeats), coco_model.mask_head(mfeats)[:, keep], rtol=1e-5, atol=1e-6)


def test_unknown_class_is_a_one_line_error():
    from detconvert.data.classes import coco_table
    from detconvert.errors import DetconvertError
    from detconvert.train.surgery import class_indices

    with pytest.raises(DetconvertError) as err:
        class_indices(list(coco_table().names), ["person", "doggo"])
    assert "doggo" in err.value.message and "dog" in err.value.message


def test_reset_classes_reinitialises_only_class_layers(coco_model):
    from detconvert.train.surgery import reset_classes

    new, report = reset_classes(coco_model, 5, ["__background__", "a", "b", "c", "d"])
    assert new.spec.num_classes == 5
    changed_modules = {n.rsplit(".", 1)[0].split(".")[-1] for n in report.changed}
    assert changed_modules <= {"cls_score", "bbox_pred", "mask_fcn_logits", "mask_fcn_logits_up", "upsample"}
    old = coco_model.state_dict()
    for name, t in new.state_dict().items():
        if name not in report.changed:
            assert torch.equal(t, old[name]), name
