"""Hostile files are refused quickly, in little memory, each measured in its own process.

Each file is built here (a few bytes to ~1 MB) to make a reader allocate or walk far more than the file
holds: shapes claiming terabytes, one payload re-used through the memo, a billion laughs in a pickle or
in YAML, nesting 100,000 deep, lengths claiming gigabytes, 600,000 images. Each is read by the reader
behind a command (``inspect``: ``load_weights`` + ``inspect_weights``; ``config``: ``translate_config`` +
``build_spec``; ``--proposals``: ``read_proposals``) in a fresh Python process, which must answer with a
``DetconvertError`` naming the file. The child reports the reader's own time and its peak RSS.

Issue 13 asks for < 2 s and < 200 MB per file. RSS is asserted as is (it does not depend on CPU speed;
the interpreter with NumPy and PyYAML is ~45 MB of it); the time is asserted with a 5x margin for this
shared 2-core machine (a refusal that scales with what the file claims takes minutes, not seconds).
``python tests/test_hostile_files.py`` prints the table.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_RSS_MB = 200
MAX_SECONDS = 2.0
TIME_MARGIN = 5  # shared machine: CPU time per child varies by 2-3x with the other jobs on it

CHILD = r"""
import json, sys, time
from pathlib import Path
reader, path = sys.argv[1], Path(sys.argv[2])
from detconvert.errors import DetconvertError
if reader == "inspect":
    from detconvert.inspect.report import inspect_weights
    from detconvert.io.weights import load_weights
    run = lambda p: inspect_weights(load_weights(p)).format_text()
elif reader == "config":
    from detconvert.config import build_spec, translate_config
    def run(p):
        translated = translate_config(p)
        build_spec(translated.cfg, translated.source)
else:
    from detconvert.inference.proposals import read_proposals
    run = read_proposals
start = time.perf_counter()
try:
    run(path)
    outcome, message = "loaded", ""
except DetconvertError as exc:
    outcome, message = "refused", str(exc)
seconds = time.perf_counter() - start
status = open("/proc/self/status").read()
peak_kb = int(status.split("VmHWM:")[1].split()[0])  # this process's own peak RSS (its mm, since exec)
print(json.dumps({"outcome": outcome, "message": message, "seconds": seconds, "peak_rss_mb": peak_kb / 1024}))
"""


# ---------------------------------------------------------------------------------------------------
# pickle pieces (protocol 2, as Python 2's cPickle writes them)

def _u(text: bytes) -> bytes:  # SHORT_BINSTRING
    return b"U" + bytes([len(text)]) + text


def _array(shape: Tuple[int, ...], data_opcodes: bytes) -> bytes:
    """numpy _reconstruct + BUILD((1, shape, float32, False, <data>)) with the data given as opcodes."""
    dims = b"".join(b"J" + struct.pack("<i", d) if d < 2 ** 31 else b"\x8a\x08" + struct.pack("<q", d)
                    for d in shape)
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _u(b"b") + b"\x87R"
            b"(K\x01(" + dims + b"tcnumpy\ndtype\n" + _u(b"f4") + b"K\x00K\x01\x87R\x89" + data_opcodes + b"tb")


def _detector(blobs_opcodes: bytes, cfg: bytes = b"") -> bytes:
    cfg_part = (_u(b"cfg") + b"T" + struct.pack("<i", len(cfg)) + cfg) if cfg else b""
    return b"\x80\x02}(" + _u(b"blobs") + blobs_opcodes + cfg_part + b"u."


def _doubling(levels: int, kind: bytes) -> bytes:
    """memo 0 = an empty list (kind b"l") or tuple; memo i = [memo i-1, memo i-1]: 2**levels leaves in
    ~12 bytes a level. Leaves memo ``levels`` on the stack."""
    out = (b"]" if kind == b"l" else b")") + b"r\x00\x00\x00\x00"
    for i in range(1, levels + 1):
        prev = struct.pack("<I", i - 1)
        pair = b"j" + prev + b"j" + prev
        out += b"0" + (b"(" + pair + b"l" if kind == b"l" else pair + b"\x86") + b"r" + struct.pack("<I", i)
    return out


LAUGHS = ("lol: &l0 [lol]\n" + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i-1}'] * 10)}]\n" for i in range(1, 10)))


def hostile_files() -> Dict[str, Tuple[str, str, Callable[[], bytes]]]:
    """name -> (reader, file name, bytes)."""
    one_mib = b"\0" * (1 << 20)
    cfg_in_pickle = lambda text: _detector(b"}", text.encode())  # noqa: E731
    return {
        # --- weight files (detconvert inspect)
        "code-executing global": ("inspect", "model_final.pkl",
                                  lambda: b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R."),
        "empty file": ("inspect", "model_final.pkl", lambda: b""),
        "HTML error page": ("inspect", "model_final.pkl", lambda: b"<!DOCTYPE html><html><body>404</body></html>"),
        "gzip data": ("inspect", "model_final.pkl", lambda: gzip.compress(b"\x80\x02}.")),
        "truncated download": ("inspect", "model_final.pkl",
                               lambda: _detector(b"}" + _u(b"w") + _array((256,), b"T" + struct.pack("<i", 1024)
                                                                          + b"\0" * 1024) + b"s")[:700]),
        "array claims 4 TiB": ("inspect", "model_final.pkl",
                               lambda: _detector(b"}" + _u(b"w") + _array((1 << 20, 1 << 20), _u(b"\0" * 4)) + b"s")),
        "array shape overflows int64": ("inspect", "model_final.pkl",
                                        lambda: _detector(b"}" + _u(b"w") + _array((1 << 62,) * 3, _u(b"")) + b"s")),
        "1 MiB payload re-used by 1000 arrays": (
            "inspect", "model_final.pkl",
            lambda: _detector(b"}" + _u(b"a0") + _array((1 << 18,), b"T" + struct.pack("<i", 1 << 20) + one_mib
                                                         + b"r\x00\x00\x01\x00") + b"s"
                              + b"".join(_u(b"a%d" % i) + _array((1 << 18,), b"j\x00\x00\x01\x00") + b"s"
                                         for i in range(1, 1000)))),
        "list billion laughs (2**60 leaves)": ("inspect", "model_final.pkl", lambda: _detector(
            b"}" + _u(b"w") + _array((1,), _u(b"\0" * 4)) + b"s" + _u(b"meta") + _doubling(60, b"l"))),
        "tuple dict key of 2**60 leaves": ("inspect", "model_final.pkl", lambda: _detector(
            b"}" + _doubling(60, b"t") + b"K\x01s")),
        "lists nested 100,000 deep": ("inspect", "model_final.pkl",
                                      lambda: b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."),
        "100,000 open MARKs": ("inspect", "model_final.pkl", lambda: b"\x80\x02" + b"(" * 100_000 + b"t."),
        "string claims 2 GiB": ("inspect", "model_final.pkl",
                                lambda: b"\x80\x02T\xff\xff\xff\x7f" + b"x" * 100 + b"."),
        "unicode claims 8 EiB": ("inspect", "model_final.pkl",
                                 lambda: b"\x80\x04\x8d" + struct.pack("<Q", 1 << 63) + b"x" * 100 + b"."),
        "integer claims 2 GiB of digits": ("inspect", "model_final.pkl",
                                           lambda: b"\x80\x02\x8b\xff\xff\xff\x7f" + b"\x01" * 100 + b"."),
        "70,000 scattered memo indices": ("inspect", "model_final.pkl", lambda: b"\x80\x02]" + b"".join(
            b"r" + struct.pack("<I", (1 << 30) + 7 * i) for i in range(70_000)) + b"."),
        "list that holds itself twice, 60 deep": ("inspect", "model_final.pkl",
                                                  lambda: b"\x80\x02]q\x00" + b"(h\x00h\x00e" + b"."),
        # --- the embedded cfg (detconvert config model_final.pkl; inspect keeps the weights and notes the cfg)
        "cfg billion laughs": ("config", "model_final.pkl", lambda: cfg_in_pickle(LAUGHS)),
        "cfg nested 100,000 deep": ("config", "model_final.pkl",
                                    lambda: cfg_in_pickle("MODEL: " + "[" * 100_000 + "]" * 100_000)),
        "cfg alias that contains itself": ("config", "model_final.pkl", lambda: cfg_in_pickle("MODEL: &a [*a]\n")),
        "cfg text of 4 MiB": ("config", "model_final.pkl",
                              lambda: cfg_in_pickle("MODEL: {NUM_CLASSES: 81}\n" + "#" * (4 << 20) + "\n")),
        # --- a config file (detconvert config)
        "config billion laughs": ("config", "config.yaml", lambda: LAUGHS.encode()),
        "config nested 100,000 deep": ("config", "config.yaml", lambda: ("MODEL: " + "{a: " * 100_000).encode()),
        "config integer of 100,000 digits": ("config", "config.yaml",
                                             lambda: b"MODEL:\n  NUM_CLASSES: " + b"9" * 100_000 + b"\n"),
        # --- proposal files (--proposals)
        "proposals billion laughs": ("proposals", "proposals.pkl",
                                     lambda: b"\x80\x02}(" + _u(b"boxes") + _doubling(60, b"l") + b"u."),
        "proposals for 270,000 images (pickle)": (
            "proposals", "proposals.pkl",
            lambda: b"\x80\x02}(" + _u(b"boxes") + b"]q\x010](" + b"h\x01" * 270_000 + b"eu."),
        "proposals for 270,000 images (json)": (
            "proposals", "proposals.json", lambda: b'{"boxes": [' + b"[]," * 269_999 + b"[]]}"),
        "proposal array claims 16 GB": ("proposals", "proposals.pkl", lambda: b"\x80\x02}(" + _u(b"boxes") + b"]("
                                        + _array((10 ** 9, 4), _u(b"\0" * 16)) + b"eu."),
        "proposals json nested 100,000 deep": ("proposals", "proposals.json",
                                               lambda: b"[" * 100_000 + b"]" * 100_000),
    }


def measure_rss(reader: str, path: Path) -> Dict[str, object]:
    """Run ``reader`` on ``path`` in a fresh process: its answer, the reader's own time, and the process's
    peak RSS in MB (``VmHWM`` of ``/proc/self/status``: the high-water mark of the memory it has had since
    ``exec``; ``wait4``'s ``ru_maxrss`` would not do, Linux carries the parent's over fork and exec)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.run([sys.executable, "-c", CHILD, reader, str(path)], capture_output=True, env=env,
                             cwd=ROOT, timeout=300)
    result: Dict[str, object] = {"returncode": process.returncode,
                                 "stderr": process.stderr.decode(errors="replace")[-3000:]}
    if process.stdout.strip():
        result.update(json.loads(process.stdout.decode().strip().splitlines()[-1]))
    return result


CASES = hostile_files()


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_file_is_refused_fast_in_little_memory(name, tmp_path):
    reader, file_name, build = CASES[name]
    path = tmp_path / file_name
    path.write_bytes(build())
    result = measure_rss(reader, path)
    print(f"{name:42s} {path.stat().st_size:>10,} B  {result.get('seconds', float('nan')):6.3f} s  "
          f"{result.get('peak_rss_mb', float('nan')):6.1f} MB  {result.get('message', '')[len(str(path)) + 2:][:90]}")
    assert result["returncode"] == 0 and result.get("outcome") == "refused", result
    assert str(result["message"]).startswith(f"{path}"), result["message"]  # one line naming the file
    assert result["peak_rss_mb"] < MAX_RSS_MB, result  # the whole process, interpreter included
    assert result["seconds"] < MAX_SECONDS * TIME_MARGIN, result


if __name__ == "__main__":  # the table for the closing note
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print(f"{'file':42s} {'size':>12s}  {'time':>8s}  {'peak RSS':>9s}  answer")
        baseline = Path(folder) / "baseline.pkl"
        baseline.write_bytes((ROOT / "tests" / "fuzz" / "corpus" / "weights" / "detector_py2.pkl").read_bytes())
        for name, (reader, file_name, build) in [("(a valid seed, for comparison)", ("inspect", "baseline.pkl",
                                                                                       None))] + list(CASES.items()):
            path = Path(folder) / file_name
            if build is not None:
                path.write_bytes(build())
            else:
                path = baseline
            r = measure_rss(reader, path)
            print(f"{name:42s} {path.stat().st_size:>10,} B  {r.get('seconds', float('nan')):6.3f} s  "
                  f"{r.get('peak_rss_mb', float('nan')):6.1f} MB  {r.get('outcome')}: {str(r.get('message', ''))[len(str(path)) + 2:][:80]}")
