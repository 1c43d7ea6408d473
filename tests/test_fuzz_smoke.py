"""A bounded fuzz smoke of the readers (``tests/fuzz/harness.py``), deterministic seed, in the normal suite.

Each target runs in its own process: coverage-guided with atheris when it is installed (the ``fuzz``
extra), else the harness's seeded random mutator, so the smoke never silently skips. The invariant is
the harness's: every input loads or raises a ``DetconvertError`` that names the file. Budget: ~40 s of
CPU for the four targets together (runs below; each process is also capped at 25 s).
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent / "fuzz" / "harness.py"
ATHERIS = importlib.util.find_spec("atheris") is not None
# Executions per target, sized to ~8 s each on this machine (atheris: weights ~220/s, proposals ~500/s,
# cfg ~30/s and config ~55/s, both translating a whole config per input).
RUNS = {"weights": 2000, "cfg": 200, "config": 350, "proposals": 3000}


@pytest.mark.parametrize("target", sorted(RUNS))
def test_fuzz_smoke(target, tmp_path):
    engine = "atheris" if ATHERIS else "random"
    runs = RUNS[target] if ATHERIS else RUNS[target] * 2  # the random engine is not instrumented: faster
    result = subprocess.run(
        [sys.executable, str(HARNESS), target, "--engine", engine, "--runs", str(runs), "--seed", "1",
         "--max-time", "25", "--crash-dir", str(tmp_path / "crashes"), "--corpus-dir", str(tmp_path / "corpus")],
        capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    crashes = sorted(p.name for p in (tmp_path / "crashes").glob("crash-*"))
    assert result.returncode == 0 and not crashes, f"{target}: crash {crashes}\n{output[-4000:]}"
    if engine == "atheris":
        assert "Done " in output, output[-2000:]  # libFuzzer's final line: it really ran
    else:
        assert "0 crashing input(s)" in output, output[-2000:]


def test_every_seed_loads_cleanly(tmp_path):
    """The seeds are valid files of their format (each target reads every seed without any error)."""
    sys.path.insert(0, str(HARNESS.parent))
    try:
        import harness
    finally:
        sys.path.remove(str(HARNESS.parent))
    readers = harness._import_readers()
    for target in harness.TARGETS:
        check = harness.Target(target, readers, tmp_path)
        seeds = harness.seeds(target)
        assert len(seeds) >= 3, target
        for data in seeds:
            path = check.path_for(data)
            if target == "cfg":
                with open(path, "wb") as handle:
                    readers["write_cfg_pickle"](handle, data)
            else:
                path.write_bytes(data)
            readers[target](path)  # no exception at all: a seed that fails is not a real-format seed


@pytest.mark.skipif(not ATHERIS, reason="the memory limit is libFuzzer's (atheris); the random engine has none")
def test_a_large_parent_does_not_trip_the_memory_limit(tmp_path):
    """Linux carries a parent's peak RSS (ru_maxrss) over fork + exec, and libFuzzer reads it: from the full
    suite (2.5 GB) every smoke target ended in a false out-of-memory. Here a 400 MB parent and a 300 MB budget."""
    parent = (
        "import subprocess, sys\n"
        "ballast = bytearray(b'x') * (400 << 20)  # written, so resident\n"
        "sys.exit(subprocess.run(sys.argv[1:]).returncode)\n"
    )
    result = subprocess.run(
        # 4 s: libFuzzer's memory check runs once a second
        [sys.executable, "-c", parent, sys.executable, str(HARNESS), "proposals", "--runs", "-1", "--seed", "1",
         "--max-time", "4", "--rss-budget-mb", "300", "--crash-dir", str(tmp_path / "crashes"),
         "--corpus-dir", str(tmp_path / "corpus")],
        capture_output=True, text=True, timeout=300,
    )
    crashes = sorted(p.name for p in (tmp_path / "crashes").glob("crash-*"))
    assert result.returncode == 0 and not crashes, f"{crashes}\n{(result.stdout + result.stderr)[-3000:]}"
    assert re.search(r"Done \d+ runs in [45] second", result.stderr + result.stdout), result.stderr[-2000:]
