import os
import stat

import pytest

from detconvert.errors import DetconvertError
from detconvert.io.atomic import atomic_write


def test_atomic_write_renames_and_uses_umask_permissions(tmp_path):
    target = tmp_path / "out.bin"
    old = os.umask(0o022)
    try:
        with atomic_write(target) as f:
            f.write(b"abc")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"abc"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_refuses_overwrite_without_force(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(DetconvertError, match="--force"):
        with atomic_write(target, force=False) as f:
            f.write(b"new")
    assert target.read_bytes() == b"old"


# --- temp files left by killed writers -----------------------------------------------------------------

_WRITER = """
import sys, time
from detconvert.io.atomic import atomic_write
with atomic_write(sys.argv[1]) as f:
    f.write(b"half")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def _start_writer(target):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(root)})
    assert process.stdout.readline().strip() == "writing"
    return process


def _fresh_sweep(monkeypatch):
    from detconvert.io import atomic

    monkeypatch.setattr(atomic, "_swept", set())  # each test is a new process's first write into the folder


def test_a_killed_writers_temp_is_removed_by_the_next_write(tmp_path, monkeypatch):
    import signal

    _fresh_sweep(monkeypatch)
    writer = _start_writer(tmp_path / "model.pkl")
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".model.pkl.p") and left[0].endswith(".part"), left
    assert (tmp_path / left[0]).read_bytes() == b"half"
    (tmp_path / ".hidden.part").write_bytes(b"not ours")  # no pid@host: never touched
    with atomic_write(tmp_path / "other.json") as f:  # any write into the folder sweeps it
        f.write(b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.part", "other.json"]


def test_a_live_writers_temp_and_another_hosts_are_left_alone(tmp_path, monkeypatch):
    _fresh_sweep(monkeypatch)
    writer = _start_writer(tmp_path / "model.pkl")
    try:
        foreign = tmp_path / ".model.pkl.p1@some_other_host.abc123.part"  # pid 1 is dead nowhere, host differs
        foreign.write_bytes(b"nfs")
        with atomic_write(tmp_path / "model.pkl") as f:
            f.write(b"whole")
        names = sorted(p.name for p in tmp_path.iterdir())
        assert "model.pkl" in names and foreign.name in names
        assert len([n for n in names if n.startswith(f".model.pkl.p{writer.pid}@")]) == 1  # still being written
    finally:
        writer.kill()
        writer.wait()
    assert (tmp_path / "model.pkl").read_bytes() == b"whole"


def test_a_folder_is_swept_once_per_process(tmp_path, monkeypatch):
    from detconvert.io import atomic

    _fresh_sweep(monkeypatch)
    assert atomic.sweep_stale_temps(tmp_path) == []
    stale = tmp_path / f".x.p{2 ** 22 + 12345}@{atomic._host()}.q.part.mp4"  # above pid_max's default: dead
    stale.write_bytes(b"")
    assert atomic.sweep_stale_temps(tmp_path) == []  # already swept by this process: no second listdir
    monkeypatch.setattr(atomic, "_swept", set())
    assert atomic.sweep_stale_temps(tmp_path) == [stale]
