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


RETINANET = "12_2017_baselines__retinanet_R-50-FPN_1x"


def _retinanet(**retinanet_fields):
    import dataclasses

    from detconvert.modeling.detector import build_model
    from tests._modeling_specs import spec_for

    spec = spec_for(RETINANET)
    spec = dataclasses.replace(spec, retinanet=dataclasses.replace(spec.retinanet, **retinanet_fields))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    with torch.no_grad():  # spread the predictors so that a wrong channel cannot match by chance
        for p in (model.retinanet_head.cls_pred.weight, model.retinanet_head.cls_pred.bias,
                  model.retinanet_head.bbox_pred.weight):
            p.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("variant", [{}, {"softmax": True}, {"class_specific_bbox": True}])
def test_keep_classes_on_retinanet_keeps_each_anchors_channels(variant):
    """RetinaNet's channels are anchor-major (a * C + c) and its sigmoid head has no background channel:
    the kept model's logits are the old ones at each anchor's kept classes."""
    from detconvert.data.classes import coco_table
    from detconvert.train.surgery import class_indices, keep_classes

    model = _retinanet(**variant)
    names = list(coco_table().names)
    rows = class_indices(names, ["dog", "person", "zebra"])  # not in index order: the order is kept too
    small, report = keep_classes(model, rows, names)
    assert small.spec.num_classes == 4 and "retinanet_head.cls_pred.weight" in report.changed
    anchors = model.spec.retinanet.num_anchors
    softmax = bool(variant.get("softmax"))
    classes = ([0] + rows) if softmax else [r - 1 for r in rows]
    per_anchor = 81 if softmax else 80
    cls_channels = [a * per_anchor + c for a in range(anchors) for c in classes]
    feats = [torch.randn(1, 256, 6, 5), torch.randn(1, 256, 3, 3)]
    with torch.no_grad():
        (old_cls, _), (old_box, _) = model.retinanet_head(feats)
        (new_cls, _), (new_box, _) = small.retinanet_head(feats)
        torch.testing.assert_close(new_cls, old_cls[:, cls_channels], rtol=1e-5, atol=1e-6)
        if variant.get("class_specific_bbox"):
            box_channels = [a * 320 + 4 * c + j for a in range(anchors) for c in classes for j in range(4)]
            assert "retinanet_head.bbox_pred.weight" in report.changed
        else:
            box_channels = list(range(4 * anchors))  # class-agnostic boxes: untouched
            assert "retinanet_head.bbox_pred.weight" not in report.changed
        torch.testing.assert_close(new_box, old_box[:, box_channels], rtol=1e-5, atol=1e-6)
        old_p = model.retinanet_head.probabilities(old_cls)
        new_p = small.retinanet_head.probabilities(new_cls)
        if softmax:  # renormalised over background + kept, per anchor
            grouped = old_p.reshape(1, anchors, 81, 6, 5)[:, :, [0] + rows]
            expected = (grouped / grouped.sum(2, keepdim=True)).reshape(1, -1, 6, 5)
        else:  # a sigmoid per class: the same probabilities
            expected = old_p[:, cls_channels]
        torch.testing.assert_close(new_p, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("softmax", [False, True])
def test_reset_classes_on_retinanet_starts_every_anchor_as_background(softmax):
    """``--num-classes`` re-initialises the class layers as Detectron does (get_retinanet_bias_init): with
    default-initialised or zero biases the focal loss starts at p = 0.5 and diverges."""
    import numpy as np

    from detconvert.train.surgery import reset_classes

    model = _retinanet(softmax=softmax)
    new, report = reset_classes(model, 4, ["__background__", "a", "b", "c"])
    head = new.retinanet_head
    assert set(report.changed) == {"retinanet_head.cls_pred.weight", "retinanet_head.cls_pred.bias"}
    assert abs(float(head.cls_pred.weight.detach().std()) - 0.01) < 0.001
    bias = head.cls_pred.bias.reshape(model.spec.retinanet.num_anchors, -1)
    prior = model.spec.retinanet.prior_prob
    if softmax:
        assert torch.allclose(bias[:, 0], torch.tensor(float(np.log(3 * (1 - prior) / prior))))
        assert torch.count_nonzero(bias[:, 1:]) == 0
        with torch.no_grad():  # the logits of a zero feature map are the biases
            probs = head.probabilities(head.cls_pred.bias.detach()[None, :, None, None])
        assert torch.allclose(probs.reshape(-1, 4)[:, 1:].sum(1), torch.tensor(prior), rtol=1e-4)
    else:
        assert torch.allclose(torch.sigmoid(bias), torch.tensor(prior), rtol=1e-4)
    old = model.state_dict()
    for name, t in new.state_dict().items():
        if name not in report.changed:
            assert torch.equal(t, old[name]), name


def test_training_init_keeps_the_fixed_bilinear_upsamplers():
    """``kps_score`` (and ``mask_fcn_logits_up``) are Detectron's BilinearInterpolation, never trained: the
    training initialisers must not write noise into them (they are frozen, so it would stay)."""
    from detconvert.modeling.detector import build_model
    from detconvert.modeling.layers import FixedBilinearUpsample
    from detconvert.train.forward import init_for_training
    from tests._modeling_specs import spec_for

    model = build_model(spec_for("12_2017_baselines__e2e_keypoint_rcnn_R-50-FPN_1x"))
    upsamplers = {n: m.weight.clone() for n, m in model.named_modules() if isinstance(m, FixedBilinearUpsample)}
    assert upsamplers, "the keypoint head has a fixed up-sampler (KRCNN.UP_SCALE 2)"
    init_for_training(model, seed=0)
    modules = dict(model.named_modules())
    for name, weight in upsamplers.items():
        assert torch.equal(modules[name].weight, weight), name
