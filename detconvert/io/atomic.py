"""Atomic file output: write to a temp file in the target folder, then rename.

A crash, a Ctrl-C or a full disk never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from detconvert.errors import DetconvertError, PathLike


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
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    try:
        # mkstemp creates 0600; give the final file the permissions a plain open() would (0666 minus umask).
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
