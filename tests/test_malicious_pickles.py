"""Malicious pickles are refused with the global named, and their side effect never happens.

Each payload tries to create a marker file. As a control, the same bytes given to Python's own
``pickle.loads`` *do* create it (so the payload is live and the test can fail); given to
``load_weights`` the marker must not exist afterwards.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import subprocess

import numpy as np
import pytest

from detconvert.errors import UnsafePickleError, WeightFileError
from detconvert.io.weights import load_weights


class Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class ArrayWithEvilDtype:
    """A genuine ndarray reconstruction whose dtype slot is a call to os.system."""

    def __init__(self, evil):
        self.evil = evil

    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                (1, (2,), self.evil, False, b"\0" * 8))


def touch(marker):
    return f"touch {marker}"


def payloads(marker):
    """name -> (pickle bytes, the global that must be named)."""
    m = str(marker)
    system = Reduce(os.system, touch(m))
    return {
        "os.system proto 2": (pickle.dumps(system, protocol=2), "posix.system"),
        "os.system proto 5 (STACK_GLOBAL)": (pickle.dumps(system, protocol=5), "posix.system"),
        "subprocess.Popen proto 4": (pickle.dumps(Reduce(subprocess.Popen, ["touch", m]), protocol=4),
                                     "subprocess.Popen"),
        "eval via builtins proto 0": (pickle.dumps(Reduce(eval, f"open({m!r}, 'w')"), protocol=0),
                                      "__builtin__.eval"),
        "exec via builtins proto 3": (pickle.dumps(Reduce(exec, f"open({m!r}, 'w')"), protocol=3), "builtins.exec"),
        "getattr chain proto 0": (
            b"c__builtin__\ngetattr\n(c__builtin__\n__import__\n(S'os'\ntRS'system'\ntR(S'" + touch(m).encode()
            + b"'\ntR.",
            "__builtin__.getattr",
        ),
        "INST opcode": (b"(S'" + touch(m).encode() + b"'\nios\nsystem\n.", "os.system"),
        "OBJ opcode": (b"(cos\nsystem\nS'" + touch(m).encode() + b"'\no.", "os.system"),
        "nested in a blob value": (pickle.dumps({"blobs": {"conv1_w": system}, "cfg": ""}, protocol=2),
                                   "posix.system"),
        "in the cfg slot": (pickle.dumps({"blobs": {}, "cfg": system}, protocol=2), "posix.system"),
        "in the dtype slot of an array": (
            pickle.dumps({"blobs": {"w": ArrayWithEvilDtype(system)}}, protocol=2), "posix.system"),
        "numpy-looking exec (runstring)": (
            pickle.dumps(Reduce(np.testing._private.utils.runstring, f"open({m!r}, 'w')", {}), protocol=2),
            "numpy.testing._private.utils.runstring"),
        "proto 1 system": (pickle.dumps({"x": system}, protocol=1), "posix.system"),
    }


CASES = sorted(payloads("marker"))


@pytest.mark.parametrize("name", CASES)
def test_payload_is_refused_and_never_runs(name, tmp_path):
    control = tmp_path / "control"
    data, _ = payloads(control)[name]
    with contextlib.suppress(Exception):
        result = pickle.loads(data)  # Python's own unpickler runs it: the payload is live
        if isinstance(result, subprocess.Popen):
            result.wait()  # the control's child process must finish before we look for its marker
    assert control.exists(), f"control: payload {name!r} did not run under pickle.loads"

    marker = tmp_path / "marker"
    data, global_name = payloads(marker)[name]
    path = tmp_path / "model_final.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafePickleError) as info:
        load_weights(path)
    assert not marker.exists(), "the payload ran"
    assert info.value.global_name == global_name
    assert f"refused to unpickle global '{global_name}'" in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_object_arrays_are_refused_without_running_their_contents(tmp_path):
    marker = tmp_path / "marker"
    array = np.array([Reduce(os.system, touch(marker)), 1], dtype=object)
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"w": array}}, protocol=2))
    with pytest.raises(WeightFileError):
        load_weights(path)
    assert not marker.exists()


def test_persistent_ids_and_extension_codes_are_refused(tmp_path):
    path = tmp_path / "persid.pkl"
    path.write_bytes(b"\x80\x02(X\x07\x00\x00\x00storageq\x00tQ.")  # BINPERSID (legacy torch storages)
    with pytest.raises(WeightFileError, match="persistent ids"):
        load_weights(path)
    path.write_bytes(b"\x80\x02\x82\x01.")  # EXT1: copyreg extension registry
    with pytest.raises(UnsafePickleError, match="copyreg extension #1"):
        load_weights(path)


def test_payload_inside_a_torch_checkpoint_is_refused(tmp_path):
    import torch

    marker = tmp_path / "marker"
    path = tmp_path / "model_final.pkl"  # a torch zip named .pkl: routed to torch.load(weights_only=True)
    torch.save({"w": torch.ones(3), "evil": Reduce(os.system, touch(marker))}, path)
    with pytest.raises(UnsafePickleError) as info:
        load_weights(path)
    assert not marker.exists()
    assert info.value.global_name == "posix.system"
