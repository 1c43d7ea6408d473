"""Acceptance against Detectron's own cfgs: all 87 configs, both embedded-cfg dump styles.

``../shared/reference/cfg_dumps/<id>.yaml`` / ``.py2.yaml`` are what Detectron's merge +
``assert_and_infer_cfg`` produced for config ``<id>`` (and embedded in ``model_final.pkl``).
"""
from __future__ import annotations

import functools

import pytest

from detconvert.config import build_spec, flatten, translate_config
from detconvert.config.bundle import BUNDLE_DIR, bundle_texts
from detconvert.config.defaults import values_equal
from detconvert.io.cfg_yaml import load_detectron_cfg_text
from tests._shared import REFERENCE, SHARED, config_ids, config_yaml_path, golden_ids, load_json, requires_shared

# Keys whose dump value depends on the run that wrote it, not on the config; excluded from equality.
ENVIRONMENT_DEPENDENT = {
    "ROOT_DIR": "os.getcwd() of the process that wrote the dump ('/detectron')",
    "NUM_GPUS": "the dumps were written with NUM_GPUS 1; the YAMLs say 1/2/4/8 (the training GPU count)",
    "TRAIN.SNAPSHOT_ITERS": "NUM_GPUS-scaled checkpoint period: every dump says 80000 although no YAML sets it "
    "and Detectron's default is 20000 ('divide by NUM_GPUS', utils/train.py)",
}
# Report kinds that explain why a translated value differs from Detectron's.
EXPLAINING_KINDS = {"prefix", "alias", "num_classes"}


@functools.lru_cache(maxsize=None)
def _yaml_translation(config_id: str):
    return translate_config(config_yaml_path(config_id))


@functools.lru_cache(maxsize=None)
def _dump(config_id: str, style: str):
    suffix = ".py2.yaml" if style == "py2" else ".yaml"
    path = REFERENCE / "cfg_dumps" / f"{config_id}{suffix}"
    return load_detectron_cfg_text(path.read_text(), path)


@requires_shared
@pytest.mark.parametrize("style", ["py3", "py2"])
@pytest.mark.parametrize("config_id", config_ids())
def test_inferred_cfg_equals_detectrons(config_id, style):
    """Defaults + merge + inference reproduce Detectron's cfg on every key (both dump styles)."""
    ours = flatten(_yaml_translation(config_id).detectron_cfg.to_dict())
    theirs = flatten(_dump(config_id, style))
    assert set(ours) == set(theirs)
    wrong = {k: (theirs[k], ours[k]) for k in theirs if k not in ENVIRONMENT_DEPENDENT and not values_equal(theirs[k], ours[k])}
    assert not wrong


@requires_shared
@pytest.mark.parametrize("config_id", config_ids())
def test_translated_cfg_differs_only_where_reported(config_id):
    """The translated cfg equals Detectron's on every key both have, except changes in the report."""
    translated = _yaml_translation(config_id)
    ours = flatten(translated.cfg.to_dict())
    theirs = flatten(_dump(config_id, "py3"))
    explained = {c.key for c in translated.report if c.kind in EXPLAINING_KINDS}
    common = set(ours) & set(theirs)
    assert "TRAIN.WEIGHTS" not in ours and "MODEL.CONV_BODY" in common
    wrong = {
        k: (theirs[k], ours[k])
        for k in common
        if k not in ENVIRONMENT_DEPENDENT and k not in explained and not values_equal(theirs[k], ours[k])
    }
    assert not wrong
    assert all(not ours[k].split(".")[-1].startswith("add_") for k in ("MODEL.CONV_BODY", "FAST_RCNN.ROI_BOX_HEAD"))


@requires_shared
@pytest.mark.parametrize("config_id", config_ids())
def test_yaml_and_embedded_cfg_give_the_same_spec(config_id):
    spec = build_spec(_yaml_translation(config_id).cfg)
    for style in ("py3", "py2"):
        embedded = translate_config(_dump(config_id, style), source_name=f"{config_id} ({style} dump)")
        assert build_spec(embedded.cfg) == spec


@requires_shared
@pytest.mark.parametrize("config_id", config_ids())
def test_translation_is_idempotent(config_id):
    first = _yaml_translation(config_id)
    text = first.to_yaml()
    second = translate_config(text, source_name="translated")
    assert flatten(second.cfg.to_dict()).keys() == flatten(first.cfg.to_dict()).keys()
    assert all(values_equal(a, b) for a, b in zip(flatten(second.cfg.to_dict()).values(), flatten(first.cfg.to_dict()).values()))
    body = lambda t: t.split("\n", 2)[2]  # noqa: E731 - the header names the source
    assert body(second.to_yaml()) == body(text)
    assert not [c for c in second.report if c.kind in ("prefix", "alias", "hint", "renamed", "variant")]


@requires_shared
@pytest.mark.parametrize("config_id", golden_ids())
def test_spec_matches_cfg_used_of_golden_runs(config_id):
    """The values the golden runs used (run.json cfg_used) are the ones the spec carries."""
    used = load_json(REFERENCE / "outputs" / config_id / "run.json")["cfg_used"]
    spec = build_spec(_yaml_translation(config_id).cfg)
    assert spec.num_classes == used["MODEL"]["NUM_CLASSES"]
    assert (spec.test.scale, spec.test.max_size, spec.test.nms) == (used["TEST"]["SCALE"], used["TEST"]["MAX_SIZE"], used["TEST"]["NMS"])
    if spec.rpn is not None:
        assert spec.rpn.pre_nms_top_n == used["TEST"]["RPN_PRE_NMS_TOP_N"]
        assert spec.rpn.post_nms_top_n == used["TEST"]["RPN_POST_NMS_TOP_N"]


@requires_shared
def test_pipelines_cover_the_inventory():
    """detectron.md section 6: 40 e2e, 30 precomputed-proposal, 9 RPN-only, 8 RetinaNet."""
    counts = {}
    for config_id in config_ids():
        pipeline = build_spec(_yaml_translation(config_id).cfg).pipeline
        counts[pipeline] = counts.get(pipeline, 0) + 1
    assert counts == {"e2e": 40, "precomputed_proposals": 30, "rpn_only": 9, "retinanet": 8}


@requires_shared
def test_bundle_is_fresh():
    """configs_detectron/ equals what tools/gen_configs_detectron.py generates (run it if this fails)."""
    texts = bundle_texts(SHARED / "detectron_configs")
    assert len(texts) == 87
    on_disk = {str(p.relative_to(BUNDLE_DIR)): p.read_text() for p in BUNDLE_DIR.glob("*/*.yaml")}
    assert on_disk == texts


@requires_shared
def test_model_final_pkl_source_gives_the_same_spec(weights_factory):
    """A 2018-style model_final.pkl: its embedded cfg gives the YAML's spec; its cls_score agrees."""
    config_id = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"
    pkl = weights_factory(config_id, "--py2-style")
    from_pkl = translate_config(pkl)
    assert build_spec(from_pkl.cfg) == build_spec(_yaml_translation(config_id).cfg)
    assert "cls_score_w has 81 rows" in from_pkl.num_classes_source
