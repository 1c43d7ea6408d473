"""The embedded-cfg loader and the weight reader on real Detectron byte formats."""
from __future__ import annotations

import numpy as np
import pytest

from detconvert.errors import ConfigError
from detconvert.io.cfg_yaml import load_detectron_cfg_text
from tests._shared import REFERENCE, config_ids, requires_shared


def assert_same_tree(a, b, path="cfg"):
    """Deep equality that also checks types (tuple vs list, ndarray dtype/shape)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys differ {set(a) ^ set(b)}"
        for key in a:
            assert_same_tree(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# ---------------------------------------------------------------------------------------------------
# embedded cfg text (cfg_dumps/<id>.yaml written by Python 3, <id>.py2.yaml as 2018's Python 2 wrote it)


@requires_shared
@pytest.mark.parametrize("config_id", config_ids())
def test_cfg_dumps_py2_and_py3_load_to_the_same_tree(config_id):
    py3_path = REFERENCE / "cfg_dumps" / f"{config_id}.yaml"
    py2_path = REFERENCE / "cfg_dumps" / f"{config_id}.py2.yaml"
    py3 = load_detectron_cfg_text(py3_path.read_text(), py3_path)
    py2 = load_detectron_cfg_text(py2_path.read_text(), py2_path)
    assert_same_tree(py3, py2)
    # The two NumPy values come back as real values, not as opaque objects.
    means = py3["PIXEL_MEANS"]
    assert isinstance(means, np.ndarray) and means.dtype == np.float64 and means.shape == (1, 1, 3)
    np.testing.assert_array_equal(means.ravel(), [102.9801, 115.9465, 122.7717])
    assert type(py3["BBOX_XFORM_CLIP"]) is float
    assert py3["BBOX_XFORM_CLIP"] == pytest.approx(np.log(1000.0 / 16.0), abs=0)
    # Sub-trees are plain dicts (AttrDict nodes unwrapped), tuples stay tuples.
    assert type(py3["MODEL"]) is dict and type(py3["MODEL"]["BBOX_REG_WEIGHTS"]) is tuple
    assert py3["MODEL"]["CONV_BODY"] and isinstance(py3["MODEL"]["NUM_CLASSES"], int)


def test_cfg_old_attrdict_module_path_and_python2_tags():
    text = (
        "!!python/object/new:utils.collections.AttrDict\n"
        "dictitems:\n"
        "  MODEL: !!python/object/new:utils.collections.AttrDict\n"
        "    dictitems: {CONV_BODY: !!python/unicode 'FPN.add_fpn_ResNet50_conv5_body', NUM_CLASSES: 81}\n"
        "    state: {!!python/unicode '__immutable__': true}\n"
        "  NAME: !!python/str 'x'\n"
        "  SIZES: !!python/tuple [32, 64]\n"
        "state: {__immutable__: true}\n"
    )
    cfg = load_detectron_cfg_text(text)
    assert cfg == {"MODEL": {"CONV_BODY": "FPN.add_fpn_ResNet50_conv5_body", "NUM_CLASSES": 81}, "NAME": "x",
                   "SIZES": (32, 64)}


@pytest.mark.parametrize(
    "text, tag",
    [
        ("A: !!python/object/apply:os.system ['touch /tmp/x']\n", "!!python/object/apply:os.system"),
        ("A: !!python/object/new:collections.OrderedDict {}\n", "!!python/object/new:collections.OrderedDict"),
        ("A: !!python/name:builtins.eval ''\n", "!!python/name:builtins.eval"),
        ("A: !!python/object/apply:numpy.core.multiarray.fromstring [x]\n",
         "!!python/object/apply:numpy.core.multiarray.fromstring"),
        ("A: !custom 3\n", "!custom"),
    ],
)
def test_cfg_refuses_other_tags_naming_them(text, tag):
    with pytest.raises(ConfigError) as info:
        load_detectron_cfg_text(text, "model_final.pkl")
    assert tag in str(info.value) and str(info.value).startswith("model_final.pkl: embedded cfg:")


@pytest.mark.parametrize("text", ["- just\n- a list\n", "{unclosed: [\n", ""])
def test_cfg_not_a_mapping_or_not_yaml(text):
    with pytest.raises(ConfigError):
        load_detectron_cfg_text(text, "f.pkl")
