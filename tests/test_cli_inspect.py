"""``detconvert inspect`` on good files and on every kind of bad input the issue lists.

Bad input: exit code 2, exactly one stderr line ``detconvert inspect: error: <file>: <problem>``, no
traceback; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

from detconvert.cli import main


def tiny_blobs():
    rng = np.random.default_rng(0)
    return OrderedDict(
        conv1_w=rng.normal(size=(64, 3, 7, 7)).astype(np.float32),
        res_conv1_bn_s=np.ones(64, np.float32),
        res_conv1_bn_b=np.zeros(64, np.float32),
        cls_score_w=rng.normal(size=(81, 1024)).astype(np.float32),
        cls_score_b=np.zeros(81, np.float32),
        cls_score_w_momentum=np.zeros((81, 1024), np.float32),
    )


def run_cli(capsys, *argv):
    code = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, path, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"detconvert inspect: error: {path}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def write(path, data: bytes):
    path.write_bytes(data)
    return path


BAD_INPUTS = {
    # name: (make(tmp_path) -> path, expected fragments)
    "missing": (lambda d: d / "nope.pkl", ["no such file"]),
    "directory": (lambda d: d, ["is a directory"]),
    "empty": (lambda d: write(d / "empty.pkl", b""), ["empty file"]),
    "truncated": (
        lambda d: write(d / "cut.pkl", pickle.dumps({"blobs": dict(tiny_blobs()), "cfg": ""}, protocol=2)[:30000]),
        ["truncated pickle (the download may be incomplete)"],
    ),
    "html": (
        lambda d: write(d / "model_final.pkl", b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title>"),
        ["an HTML page, not a weight file (a failed download?)"],
    ),
    "text": (lambda d: write(d / "notes.pkl", b"MODEL:\n  TYPE: generalized_rcnn\n"), ["a text file", "MODEL:"]),
    "gzip": (lambda d: write(d / "model.pkl.gz", gzip.compress(b"x" * 100)), ["gzip-compressed"]),
    "random": (
        lambda d: write(d / "random.pkl", bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))),
        ["unrecognised binary data"],
    ),
    "code_global": (
        lambda d: write(d / "evil.pkl", pickle.dumps({"blobs": {"x": _Evil()}}, protocol=2)),
        ["refused to unpickle global 'posix.system'"],
    ),
    "unknown_class": (
        lambda d: write(d / "cls.pkl", b"\x80\x02cdetectron.utils.collections\nAttrDict\nq\x00)\x81q\x01."),
        ["refused to unpickle global 'detectron.utils.collections.AttrDict'"],
    ),
    "non_float": (
        lambda d: write(d / "ints.pkl", pickle.dumps({"blobs": {"iter": np.arange(3), "w": np.ones(2, np.float32)},
                                                       "cfg": ""}, protocol=2)),
        ["non-float blob", "iter (int64)"],
    ),
    "not_a_weight_dict": (
        lambda d: write(d / "list.pkl", pickle.dumps([1, 2, 3], protocol=2)),
        ["a pickle of a list, not a Detectron weight file"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    make, fragments = BAD_INPUTS[case]
    path = make(tmp_path)
    code, out, err = run_cli(capsys, path)
    assert out == ""
    assert_one_line_error(code, err, path, *fragments)


def test_debug_shows_the_traceback(tmp_path, capsys):
    path = write(tmp_path / "page.pkl", b"<html><body>Access denied</body></html>")
    code = main(["--debug", "inspect", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "WeightFileError" in err


def test_real_entry_point_prints_no_traceback(tmp_path):
    path = write(tmp_path / "page.pkl", b"<html><body>Access denied</body></html>")
    proc = subprocess.run([sys.executable, "-m", "detconvert", "inspect", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"detconvert inspect: error: {path}: an HTML page, not a weight file (a failed download?)"


def test_torch_checkpoint_named_pkl_is_routed(tmp_path, capsys):
    path = tmp_path / "model_final.pkl"
    torch.save({"model": {"backbone.conv1.weight": torch.ones(4, 3), "bn.num_batches_tracked": torch.tensor(5)},
                "iteration": 10}, path)
    code, out, err = run_cli(capsys, path, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["flavour"] == "torch" and report["num_blobs"] == 1
    assert report["architecture"]["kind"] == "unknown"


def test_detectron2_zoo_pickle_is_recognised(tmp_path, capsys):
    path = tmp_path / "model_final_f10217.pkl"
    payload = {"model": {"backbone.bottom_up.stem.conv1.weight": np.ones((64, 3, 7, 7), np.float32)},
               "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    path.write_bytes(pickle.dumps(payload, protocol=2))
    code, out, err = run_cli(capsys, path)
    assert code == 0, err
    assert "flavour:     detectron2" in out and "Detectron2 Model Zoo" in out
    assert "without Detectron blob names" in out


def test_detector_pickle_report_and_json(tmp_path, capsys):
    path = tmp_path / "small.pkl"
    path.write_bytes(pickle.dumps({"blobs": dict(tiny_blobs()), "cfg": "MODEL: {NUM_CLASSES: 81}\n"}, protocol=2))
    code, out, err = run_cli(capsys, path, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["flavour"] == "detectron_detector"
    assert report["num_blobs"] == 5 and report["num_momentum"] == 1 and report["momentum_present"] is True
    assert report["architecture"]["num_classes"] == 81
    assert len(report["sha256"]) == 64
    assert report["cfg_summary"]["MODEL.NUM_CLASSES"] == 81 and report["cfg_agrees"] is True


def test_demo_writes_reads_inspects_and_converts(tmp_path, capsys):
    from safetensors import safe_open

    out_dir = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    source, converted = out_dir / "sample_model_final.pkl", out_dir / "sample_model_final.safetensors"
    assert source.stat().st_size < 5_000_000
    data = source.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)  # 2018's Python-2 byte format, as promised
    reference = pickle.loads(data, encoding="latin1")
    with safe_open(str(converted), framework="np") as handle:
        metadata = handle.metadata()
        arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    blobs = {k: v for k, v in reference["blobs"].items() if not k.endswith("_momentum")}
    assert sorted(arrays) == sorted(blobs)
    for name, array in blobs.items():
        np.testing.assert_array_equal(arrays[name], array)
    import hashlib

    from detconvert.spec import Conventions
    assert metadata["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert json.loads(metadata["conventions"])["pixel_means"] == list(Conventions().pixel_means)
    assert metadata["converter"].startswith("detconvert ")
    assert f"wrote    {source}" in printed and "flavour:     detectron_detector" in printed
    # A second run is deterministic (seeded recipe).
    assert main(["demo", "--output-dir", str(out_dir)]) == 0
    assert source.read_bytes() == data


def test_inspect_resolves_model_zoo_names_offline(tmp_path, monkeypatch, capsys):
    """A zoo name reaches the catalogue: offline and uncached, the error names what is missing."""
    from detconvert.cli import main

    monkeypatch.setenv("DETCONVERT_CACHE", str(tmp_path / "cache"))
    rc = main(["inspect", "--offline", "R-50"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "R-50" in err[0] and "offline" in err[0].lower()
