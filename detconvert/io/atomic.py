"""Atomic file output: write to a temp file in the target folder, then rename.

A crash, a Ctrl-C or a full disk never leaves a half-written file under the final name. A process killed
with SIGKILL cleans nothing up, so its temp file stays; temp names carry the writer's pid and host
(``.NAME.p<pid>@<host>.<random>.part``) so that the next write into the same folder can tell a temp file
whose writer is dead from one still being written, and removes only the former.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import IO, Iterator, List, Set

from detconvert.errors import DetconvertError, PathLike

#: ``p<pid>@<host>.`` after ``.NAME.``; ``.part`` (and, for videos, the container's extension) at the end
_OWNER = re.compile(r"\.p(\d+)@([A-Za-z0-9_]+)\.[^/]*\.part(\.[A-Za-z0-9]+)?$")
_swept: Set[str] = set()


@functools.lru_cache(maxsize=None)
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:64] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_stale_temps(folder: Path) -> List[Path]:
    """Remove the temp files in ``folder`` left by killed writers of this host; once per folder and process.

    Only names in this module's format are touched, and only when their pid is not running here: a
    writer on another host sharing the folder (NFS) or a live one is never disturbed. A recycled pid makes
    a dead writer look alive, which only leaves its temp file where it was.
    """
    key = os.path.realpath(folder)
    if key in _swept:
        return []
    _swept.add(key)
    removed, host = [], _host()
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _OWNER.search(entry.name) if entry.name.startswith(".") else None
            if match and match[2] == host and int(match[1]) != os.getpid() and not _alive(int(match[1])):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def temp_beside(final: Path, suffix: str = "") -> Path:
    """Create an empty temp file beside ``final`` named for its writer (see above); the caller renames it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(final.parent)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.p{os.getpid()}@{_host()}.", suffix=f".part{suffix}",
                                dir=final.parent)
    os.close(fd)
    return Path(name)


def publish(tmp: PathLike, final: PathLike) -> Path:
    """Rename a finished temp file (from :func:`temp_beside`) to ``final`` with a plain open()'s permissions."""
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600
    os.replace(tmp, final)
    return Path(final)


def discard(tmp: PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", force: bool = True) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success it is renamed to ``path``, on error removed.

    Args:
        path: final file name.
        mode: ``"wb"`` or ``"w"``.
        force: if False and ``path`` exists, raise a :class:`DetconvertError` instead of overwriting.
    """
    final = Path(path)
    if not force and final.exists():
        raise DetconvertError("exists; pass --force to overwrite", final)
    tmp = temp_beside(final)
    try:
        with open(tmp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        publish(tmp, final)
    except BaseException:
        discard(tmp)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
