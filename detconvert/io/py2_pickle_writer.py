"""Writing Detectron's 2018 weight-file bytes: Python 2.7 cPickle, protocol 2.

Used to produce Detectron-format ``model_final.pkl`` files (the demo's sample, fine-tuned models
exported back to Detectron's format) that Detectron itself and every port can read.
"""
from __future__ import annotations

import struct
from typing import IO, Any, Dict

import numpy as np

# Python 2.7 cPickle protocol-2 byte format (what Detectron's save_object wrote in 2018)


class Py2PickleWriter:
    """Writes dicts of str -> (dict | list | str | int | float32 ndarray) as Python 2.7 cPickle protocol 2 did
    (lists and ints: Detectron's proposal files, ``{'boxes': [...], 'scores': [...], 'ids': [...]}``)."""

    def __init__(self, handle: IO[bytes]):
        self.handle = handle
        self.memo_size = 0
        self.memo: Dict[Any, int] = {}

    def _put(self, key: Any = None) -> None:
        if key is not None:
            self.memo[key] = self.memo_size
        self.handle.write(b"q" + bytes([self.memo_size]) if self.memo_size < 256
                          else b"r" + struct.pack("<I", self.memo_size))
        self.memo_size += 1

    def _get_or(self, key: Any) -> bool:
        if key not in self.memo:
            return False
        index = self.memo[key]
        self.handle.write(b"h" + bytes([index]) if index < 256 else b"j" + struct.pack("<I", index))
        return True

    def _str(self, data: bytes) -> None:  # Python 2 str: SHORT_BINSTRING / BINSTRING
        self.handle.write((b"U" + bytes([len(data)])) if len(data) < 256 else (b"T" + struct.pack("<i", len(data))))
        self.handle.write(data)
        self._put()

    def _global(self, module: str, name: str) -> None:
        if not self._get_or(("global", module, name)):
            self.handle.write(f"c{module}\n{name}\n".encode("ascii"))
            self._put(("global", module, name))

    def _small_int(self, value: int) -> None:
        self.handle.write(b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value))

    def _array(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=np.float32)
        self._global("numpy.core.multiarray", "_reconstruct")
        self._global("numpy", "ndarray")
        self.handle.write(b"K\x00\x85")  # (0,)
        self._str(b"b")
        self.handle.write(b"\x87R")  # TUPLE3, REDUCE
        self._put()
        self.handle.write(b"(K\x01")  # MARK, version 1
        self.handle.write(b"(")
        for dim in array.shape:
            self._small_int(dim)
        self.handle.write(b"t")
        self._put()
        if not self._get_or(("dtype", "f4")):
            self._global("numpy", "dtype")
            self._str(b"f4")
            self.handle.write(b"K\x00K\x01\x87R")  # ('f4', 0, 1) REDUCE
            self._put(("dtype", "f4"))
            self.handle.write(b"(K\x03")
            self._str(b"<")
            self.handle.write(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")  # state tuple, BUILD
        self.handle.write(b"\x89")  # is_fortran False
        self._str(array.tobytes())
        self.handle.write(b"t")
        self._put()
        self.handle.write(b"b")  # BUILD

    def _value(self, value: Any) -> None:
        if isinstance(value, dict):
            self.handle.write(b"}")
            self._put()
            if value:
                self.handle.write(b"(")
                for key, item in value.items():
                    self._str(key.encode("latin1"))
                    self._value(item)
                self.handle.write(b"u")
        elif isinstance(value, list):
            self.handle.write(b"]")
            self._put()
            if value:
                self.handle.write(b"(")
                for item in value:
                    self._value(item)
                self.handle.write(b"e")  # APPENDS
        elif isinstance(value, str):
            self._str(value.encode("latin1"))
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = int(value)
            if -(1 << 31) <= value < (1 << 31):
                self._small_int(value)
            else:
                raise TypeError(f"the sample writer does not write the long {value}")
        elif isinstance(value, np.ndarray):
            self._array(value)
        else:
            raise TypeError(f"the sample writer does not write {type(value).__name__}")

    def dump(self, obj: Dict[str, Any]) -> None:
        self.handle.write(b"\x80\x02")
        self._value(obj)
        self.handle.write(b".")
