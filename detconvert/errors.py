"""Errors that the command line reports as one line (exit code 2) instead of a traceback.

Every error a user can cause with bad input — a wrong file, a typo in a config, weights that do not
fit a config — is a :class:`DetconvertError`. Its message names the file (or key) and what is wrong.
Anything else escaping the library is a bug and keeps its traceback.
"""
from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class DetconvertError(Exception):
    """A user-facing error: ``"<source>: <message>"`` on one line.

    Args:
        message: what is wrong, in words a user acts on.
        source: the file, config key or command the error is about (optional).
    """

    exit_code = 2

    def __init__(self, message: str, source: Optional[PathLike] = None):
        self.message = message
        self.source = None if source is None else os.fspath(source)
        super().__init__(str(self))

    def __str__(self) -> str:
        one_line = " ".join(self.message.split("\n"))
        return f"{self.source}: {one_line}" if self.source else one_line


class WeightFileError(DetconvertError):
    """The file is not a weight file we can read (missing, truncated, HTML, unsafe pickle, ...)."""


class UnsafePickleError(WeightFileError):
    """The pickle asks for a global outside the allow-list; it was refused, never executed."""

    def __init__(self, global_name: str, source: Optional[PathLike] = None):
        self.global_name = global_name
        super().__init__(
            f"refused to unpickle global '{global_name}': not something a Detectron weight file contains "
            "(the file may be malicious or not a Detectron file)",
            source,
        )


class ConfigError(DetconvertError):
    """A Detectron config (YAML or embedded cfg) that cannot be merged, translated or built."""


class MappingError(DetconvertError):
    """Weights and model disagree: a missing blob, a wrong shape, blobs of another architecture."""


class DownloadError(DetconvertError):
    """A model-zoo download failed verification or could not be completed."""
