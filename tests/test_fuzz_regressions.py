"""Every crash the fuzzer found (``tests/fuzz/harness.py``), reduced to a small input, as a regression test.

Before each fix these inputs escaped the readers as a non-detconvert exception (a traceback and exit 1
from the CLI) or as a ``DetconvertError`` that did not name the file. Each test checks the control where
one exists (the raw operation really raises what escaped), then that the reader now answers with a
``DetconvertError`` naming the file.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from detconvert.config import build_spec, translate_config
from detconvert.errors import ConfigError, DetconvertError, WeightFileError
from detconvert.inference.proposals import read_proposals
from detconvert.inspect.report import inspect_weights, summarise_cfg
from detconvert.io.py2_pickle_writer import Py2PickleWriter
from detconvert.io.weights import load_weights


def detector_pickle(path, cfg_text):
    buffer = io.BytesIO()
    Py2PickleWriter(buffer).dump({"blobs": {"conv1_w": np.ones((2, 3, 1, 1), np.float32)}, "cfg": cfg_text})
    path.write_bytes(buffer.getvalue())
    return path


def refused(reader, path, match):
    with pytest.raises(DetconvertError, match=match) as info:
        reader(path)
    assert str(info.value).startswith(f"{path}"), str(info.value)
    return info.value


def test_codecs_encode_of_text_that_is_not_latin1(tmp_path):
    # issue 13's most frequent escape: UnicodeEncodeError from text.encode('latin1') in _codecs.encode.
    with pytest.raises(UnicodeEncodeError):
        "\u0180".encode("latin1")
    path = tmp_path / "model_final.pkl"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc6\x80X\x06\x00\x00\x00latin1\x86R.")
    refused(load_weights, path, "_codecs.encode of text that is not latin1")


@pytest.mark.parametrize("dtype_string, control", [
    (b"f4,(", SyntaxError),  # what the fuzzer found: NumPy literal_evals a comma string
    (b"(2)f4,i4", None),  # a structured dtype: refused before NumPy builds it
    (b"f" * 50, TypeError),
])
def test_dtype_string_numpy_would_parse_as_python(tmp_path, dtype_string, control):
    # issue 13: SyntaxError from np.dtype() given a mutated dtype string (io/unpickle.py _make_dtype).
    if control is not None:
        with pytest.raises(control):
            np.dtype(dtype_string.decode())
    path = tmp_path / "model_final.pkl"
    arg = b"U" + bytes([len(dtype_string)]) + dtype_string
    path.write_bytes(b"\x80\x02cnumpy\ndtype\n" + arg + b"K\x00K\x01\x87R.")
    refused(load_weights, path, "numpy dtype string")


def test_embedded_cfg_whose_model_section_is_not_a_mapping(tmp_path):
    # issue 13: AttributeError 'str' object has no attribute 'get' in summarise_cfg.
    path = detector_pickle(tmp_path / "model_final.pkl", "MODEL: generalized_rcnn\nNUM_GPUS: 8\n")
    report = inspect_weights(load_weights(path))  # the weights stay usable
    assert report.cfg_summary is None
    assert any("MODEL is a str, not a section" in note for note in report.notes), report.notes
    with pytest.raises(ConfigError, match="MODEL is a str"):
        summarise_cfg({"MODEL": "generalized_rcnn"})
    path = detector_pickle(tmp_path / "arrays.pkl", "MODEL: {MASK_ON: !!binary AAAA}\n")
    report = inspect_weights(load_weights(path))  # bytes where a flag belongs: not compared as a flag
    assert any("MODEL.MASK_ON is a bytes" in note for note in report.notes), report.notes


def test_unicode_opcode_with_a_cut_escape(tmp_path):
    # found: UnicodeDecodeError 'rawunicodeescape' ... truncated \uXXXX escape (protocol-0 UNICODE).
    with pytest.raises(UnicodeDecodeError):
        b"\\u12".decode("raw-unicode-escape")
    path = tmp_path / "model_final.pkl"
    path.write_bytes(b"\x80\x02V\\u12\n.")
    refused(load_weights, path, "bad \\\\u escape")
    path.write_bytes(b"\x80\x02S'\\x4'\n.")  # and a STRING opcode with a cut \x escape (ValueError)
    refused(load_weights, path, "bad escape")


def test_ordered_dict_of_items_that_are_not_pairs(tmp_path):
    path = tmp_path / "model_final.pkl"
    path.write_bytes(b"\x80\x02ccollections\nOrderedDict\n]K\x01a\x85R.")  # OrderedDict([1])
    refused(load_weights, path, "not \\(key, value\\) pairs")


def test_array_used_as_a_dict_key(tmp_path):
    # an ndarray placeholder is hashable while unpickling; the resolved array is not.
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
             b"(K\x01K\x01\x85cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R\x89U\x04\x00\x00\x00\x00tb")
    path = tmp_path / "model_final.pkl"
    path.write_bytes(b"\x80\x02}" + array + b"K\x01s.")
    refused(load_weights, path, "unhashable")


def test_empty_array_with_a_dimension_numpy_refuses(tmp_path):
    # found in review: shape (0, 2**62) claims no bytes, but np.empty raises ValueError ("array is too big")
    with pytest.raises(ValueError):
        np.empty((0, 1 << 62), np.float32)
    dims = b"K\x00\x8a\x08" + (1 << 62).to_bytes(8, "little")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
             b"(K\x01(" + dims + b"tcnumpy\ndtype\nU\x02f4K\x00K\x01\x87R\x89U\x00tb")
    path = tmp_path / "model_final.pkl"
    path.write_bytes(b"\x80\x02}(U\x05blobs}U\x01w" + array + b"su.")
    refused(load_weights, path, "larger than the whole file")


def test_cfg_ndarray_whose_shape_is_not_numbers(tmp_path):
    # found: ValueError from int() of a shape entry in the embedded cfg's _reconstruct (cfg_yaml).
    text = ("PIXEL_MEANS: !!python/object/apply:numpy.core.multiarray._reconstruct\n"
            "  args: [!!python/name:numpy.ndarray '', !!python/tuple [0], b]\n"
            "  state: !!python/tuple [1, !!python/tuple [x], !!python/object/apply:numpy.dtype "
            "{args: [f8, 0, 1]}, false, !!binary AAAAAAAAAAA=]\n")
    path = detector_pickle(tmp_path / "model_final.pkl", text)
    wf = load_weights(path)  # an unreadable embedded cfg leaves the weights usable
    assert wf.cfg is None and "malformed ndarray state" in wf.cfg_error
    refused(translate_config, path, "carries no Detectron cfg")


def test_yaml_values_python_cannot_build(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("MODEL:\n  NUM_CLASSES: " + "9" * 5000 + "\n")  # int() refuses > 4300 digits
    refused(translate_config, path, "a value Python cannot build")
    path.write_text("MODEL: {? [1, 2] : 3}\n")  # a sequence as a mapping key
    refused(translate_config, path, "not valid YAML|Python cannot build")


def test_build_spec_error_names_the_config_file(tmp_path):
    # found: build_spec's ConfigError ("key MODEL.CONV_BODY is not set") named no file.
    path = tmp_path / "config.yaml"
    path.write_text("MODEL:\n  TYPE: generalized_rcnn\n  NUM_CLASSES: 81\n")
    translated = translate_config(path)
    with pytest.raises(ConfigError, match="CONV_BODY") as info:
        build_spec(translated.cfg)
    assert info.value.source is None  # the config alone does not know its file...
    with pytest.raises(ConfigError, match="CONV_BODY") as info:
        build_spec(translated.cfg, translated.source)
    assert str(info.value).startswith(f"{path}: ")  # ...the translation does
    from detconvert.inference.predictor import spec_from_cfg  # load_model's path (imports torch)

    refused(spec_from_cfg, path, "CONV_BODY")


def test_number_tuple_holding_a_string(tmp_path):
    # found by the campaign: ValueError float('.10 0.0') in build_spec from an embedded cfg's
    # BBOX_REG_WEIGHTS: !!python/tuple [10,.10 0.0, 5.0, 5.0] (Detectron's type check is shallow).
    path = tmp_path / "config.yaml"
    path.write_text("MODEL:\n  BBOX_REG_WEIGHTS: [10, '.10 0.0', 5.0, 5.0]\n")
    refused(translate_config, path, "MODEL.BBOX_REG_WEIGHTS: expected numbers")
    path.write_text("MODEL:\n  BBOX_REG_WEIGHTS: [10.0, 10.0, 5.0, 5]\n")  # ints among floats stay fine
    assert translate_config(path).cfg.MODEL.BBOX_REG_WEIGHTS == (10.0, 10.0, 5.0, 5)


@pytest.mark.parametrize("content, match", [
    ({"boxes": [[[1, 2, 3, 4], [1]]]}, "not a table of numbers"),  # found: ValueError (inhomogeneous)
    ({"boxes": [[1, 2, 3]]}, "not rows of 4"),
    ({"boxes": 5}, "not a list"),
    ({"boxes": None}, "'boxes' is None, not a list"),  # found (campaign of 2026-12-06): TypeError from len(None)
    ({"boxes": [[["a", "b", "c", "d"]]]}, "not numbers"),
    ({"boxes": [[[1, 2, 3, 4]]], "scores": [[0.5, 0.4]]}, "1 boxes but 2 scores"),
    ({"boxes": [[]], "ids": [{"x": 1}]}, "image id is a dict"),
    ({"boxes": [[]], "ids": [10 ** 30]}, "image id is too long"),
])
def test_proposal_json_that_is_not_proposals(tmp_path, content, match):
    path = tmp_path / "proposals.json"
    path.write_text(json.dumps(content))
    refused(read_proposals, path, match)


def test_proposal_json_nested_deeper_than_python_allows(tmp_path):
    path = tmp_path / "proposals.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(RecursionError):
        json.loads(path.read_text())
    refused(read_proposals, path, "nested deeper")


def test_blob_key_and_metadata_previews_stay_short(tmp_path):
    # an integer key of 100k digits: repr()/str() raise ValueError (int_max_str_digits)
    big = 10 ** 100_000
    with pytest.raises(ValueError):
        repr(big)
    digits = big.to_bytes((big.bit_length() + 8) // 8, "little", signed=True)
    long4 = b"\x8b" + len(digits).to_bytes(4, "little") + digits
    path = tmp_path / "model_final.pkl"
    path.write_bytes(b"\x80\x02}(" + long4 + b"K\x01u.")  # {big: 1}
    refused(load_weights, path, "not a Detectron weight file")
    path.write_bytes(b"\x80\x02}(U\x05blobs}U\x04meta" + long4 + b"u.")  # detector with big-int metadata
    report = inspect_weights(load_weights(path))
    assert report.metadata["meta"].startswith("<an integer of") and len(report.format_text()) < 5000


def test_weight_file_error_is_a_detconvert_error():
    assert issubclass(WeightFileError, DetconvertError)
