"""The restricted unpickler reads what weight files legitimately hold, exactly as ``pickle.load`` does.

Covers every pickle protocol (0-5), Python-2 byte formats (latin1), the lazy/streamed payload path,
numpy's own Python-2 test pickle, and the synthetic Detectron files of make_weights.py in both byte
formats (identical arrays, writable, zero-copy into torch).
"""
from __future__ import annotations

import importlib.util
import io
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from detconvert.errors import WeightFileError
from detconvert.io.unpickle import LAZY_PAYLOAD_BYTES, restricted_load
from detconvert.io.weights import load_weights
from tests._shared import REFERENCE, SHARED, SKIP_REASON

R50_C4 = "12_2017_baselines__e2e_mask_rcnn_R-50-C4_1x"


def sample_object():
    rng = np.random.default_rng(7)
    big = rng.normal(size=(LAZY_PAYLOAD_BYTES // 4 + 123,)).astype(np.float32)  # above the lazy threshold
    return {
        "blobs": OrderedDict(
            conv1_w=rng.normal(size=(8, 3, 7, 7)).astype(np.float32),
            big_w=big,
            f64=rng.normal(size=(3, 2)),
            fortran=np.asfortranarray(rng.normal(size=(4, 5)).astype(np.float32)),
            big_endian=np.arange(6, dtype=">f4").reshape(2, 3),
            scalar0d=np.array(3.5, np.float32),
            empty=np.zeros((0, 4), np.float32),
            ints=np.arange(5, dtype=np.int32),
        ),
        "cfg": "MODEL:\n  NUM_CLASSES: 81\n" + "#" * (LAZY_PAYLOAD_BYTES + 10),  # a lazily read string
        "meta": [1, -2, 2**70, 1.5, True, None, (1, 2), b"raw\xff", "t\u00e9xt", np.float64(4.25)],
    }


def assert_same(a, b):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.shape == b.shape and a.dtype.newbyteorder("=") == b.dtype.newbyteorder("=")
        np.testing.assert_array_equal(a, b)
        assert a.flags.c_contiguous and a.flags.writeable and a.dtype.isnative
    else:
        assert a == b and type(a) is type(b), (a, b)


@pytest.mark.parametrize("protocol", range(0, 6))
def test_every_protocol_matches_pickle_load(protocol):
    data = pickle.dumps(sample_object(), protocol=protocol)
    ours = restricted_load(io.BytesIO(data), "mem.pkl")
    reference = pickle.loads(data)
    assert_same(ours, reference)


def test_python2_byte_format_decodes_latin1(tmp_path):
    if SHARED is None:
        pytest.skip(SKIP_REASON)
    spec = importlib.util.spec_from_file_location("make_weights", REFERENCE / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    obj = sample_object()
    obj["blobs"] = {k: v for k, v in obj["blobs"].items() if k not in ("fortran", "big_endian")}
    obj["meta"] = [1, 1.5, None, "t\u00e9xt", (3, 4)]
    buffer = io.BytesIO()
    module.Py2StylePickler(buffer).dump(obj)
    data = buffer.getvalue()
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # the wall Python 3 users hit with 2018 files
    ours = restricted_load(io.BytesIO(data), "py2.pkl")
    assert_same(ours, pickle.loads(data, encoding="latin1"))


def test_numpy_own_python2_test_pickle():
    path = os.path.join(os.path.dirname(np.__file__), "_core", "tests", "data", "astype_copy.pkl")
    if not os.path.exists(path):
        pytest.skip(f"numpy does not ship {path}")
    with open(path, "rb") as handle:
        ours = restricted_load(handle, path)
    with open(path, "rb") as handle:
        reference = pickle.load(handle, encoding="latin1")
    assert_same(ours, reference)
    with pytest.raises(WeightFileError, match="a pickle of a ndarray, not a Detectron weight file"):
        load_weights(path)


@pytest.mark.parametrize("cut", [1, 100, 5000, -1])
def test_truncation_anywhere_is_reported(cut):
    data = pickle.dumps(sample_object(), protocol=2)
    with pytest.raises(WeightFileError, match="truncated pickle"):
        restricted_load(io.BytesIO(data[:cut] if cut > 0 else data[:-1]), "cut.pkl")


@pytest.mark.slow
def test_synthetic_detectron_files_both_byte_formats(weights_factory):
    py3 = load_weights(weights_factory(R50_C4))
    py2 = load_weights(weights_factory(R50_C4, "--py2-style"))
    assert py3.flavour == py2.flavour == "detectron_detector"
    assert list(py3.blobs) == list(py2.blobs) and list(py3.momentum) == list(py2.momentum)
    for name, array in py3.blobs.items():
        assert array.dtype == np.float32 and array.flags.c_contiguous and array.flags.writeable
        np.testing.assert_array_equal(array, py2.blobs[name])
    for name, array in py3.momentum.items():
        np.testing.assert_array_equal(array, py2.momentum[name])
    # Detectron's layout: momentum only for trainable params, e.g. not for AffineChannel or conv1.
    assert "res5_0_branch2a_w" in py3.momentum and "res_conv1_bn_s" not in py3.momentum
    assert "conv1_w" not in py3.momentum and not any(n.endswith("_momentum") for n in py3.blobs)
    # Both cfg texts parse to the same tree.
    assert py3.cfg["MODEL"] == py2.cfg["MODEL"] and py3.cfg["MODEL"]["NUM_CLASSES"] == 81
    np.testing.assert_array_equal(py3.cfg["PIXEL_MEANS"], py2.cfg["PIXEL_MEANS"])
    # Arrays reach torch without a copy.
    array = py2.blobs["cls_score_w"]
    tensor = torch.from_numpy(array)
    assert tensor.data_ptr() == array.ctypes.data
    tensor[0, 0] = 123.0
    assert array[0, 0] == 123.0


@pytest.mark.slow
def test_imagenet_style_file(weights_factory):
    wf = load_weights(weights_factory(R50_C4, "--blobs-only-imagenet", "--py2-style"))
    assert wf.flavour == "detectron_imagenet" and wf.cfg is None and not wf.momentum
    assert "fc1000_w" in wf.blobs and all(n.startswith(("conv1", "res", "fc1000")) for n in wf.blobs)
    assert "fc1000_w" in wf.leftover_names(n for n in wf.blobs if not n.startswith("fc1000"))


@pytest.mark.parametrize("chunk", [7, 4096])
def test_streamed_utf8_payload_across_chunk_boundaries(monkeypatch, chunk):
    import detconvert.io.unpickle as unpickle

    monkeypatch.setattr(unpickle, "DECODE_CHUNK_BYTES", chunk)
    array = np.random.default_rng(3).normal(size=LAZY_PAYLOAD_BYTES // 2).astype(np.float32)  # 2-byte chars cut
    data = pickle.dumps({"w": array}, protocol=2)
    np.testing.assert_array_equal(restricted_load(io.BytesIO(data), "c.pkl")["w"], array)
