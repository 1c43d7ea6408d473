"""A restricted, streaming unpickler for Detectron weight files. It never imports or calls what a file names.

Detectron (``detectron/utils/io.py::save_object``) writes its weights with ``pickle`` protocol 2; the
2018 files were written by Python 2.7 ``cPickle`` and NumPy 1.x. What such a file legitimately holds is
small: dicts, lists, tuples, strings, numbers and NumPy arrays, dtypes and scalars (reduced through
``numpy.core.multiarray._reconstruct`` / ``scalar`` and ``numpy.dtype``; NumPy 2 says ``numpy._core``).
Python 3's pickler adds ``_codecs.encode`` for ``bytes`` under protocol 2, and ``collections.OrderedDict``
appears in files re-saved by other tools.

This module interprets the pickle opcode stream itself instead of subclassing :class:`pickle.Unpickler`:

* **Safety.** Every global (``GLOBAL``, ``STACK_GLOBAL``, ``INST``) is looked up in :data:`ALLOWED_GLOBALS`,
  a table of *our own* handlers; anything else raises :class:`UnsafePickleError` naming it, before any
  code runs. No Python object named by the file is ever imported or called.
* **Memory.** ``pickle.load`` memoizes every array payload (as a Python-2 ``str`` decoded with latin1),
  so the whole file lives twice in memory until the load ends. Here payloads of
  :data:`LAZY_PAYLOAD_BYTES` or more are not read when the opcode is met; they are read straight into
  the final array's memory when the array is built (``readinto``), or decoded in bounded chunks when
  Python 3 wrote them as UTF-8 text. Peak memory is the arrays plus a few MiB.
* **Python 2.** ``STRING``/``BINSTRING`` payloads decode with latin1, as ``pickle.load(f,
  encoding='latin1')`` does (what Detectron's ``load_object`` uses on Python 3).
"""
from __future__ import annotations

import codecs
import collections
import io
import re
import struct
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple

import numpy as np

from detconvert.errors import PathLike, UnsafePickleError, WeightFileError

#: Payloads (str/bytes opcodes) at least this large are read lazily, straight into their array.
LAZY_PAYLOAD_BYTES = 1 << 16
#: Chunk size when converting a Python-3 UTF-8 payload back to raw bytes.
DECODE_CHUNK_BYTES = 1 << 20
#: Longest text line (protocol 0 opcodes) we accept.
MAX_LINE_BYTES = 1 << 20
#: Deepest container nesting we accept (Detectron files nest 2 levels), and the most MARKs open at once.
MAX_DEPTH = 64
#: Most memo entries with consecutive indices, as every pickler writes them (a Detectron detector file uses
#: ~5 per blob, a COCO-train proposal file ~1.5M): kept in a list, 8 bytes each.
MAX_MEMO_ENTRIES = 1 << 23
#: Most memo entries at other indices (LONG_BINPUT can name any of 4 billion; no pickler skips any).
MAX_SPARSE_MEMO_ENTRIES = 1 << 16
#: Most values in a tuple used as a dict key (hashing and comparing a tuple walks all of it, shared
#: parts again each time; weight files key by strings).
MAX_KEY_ITEMS = 10_000
#: Most values in the unpickled tree, a value reached twice through the memo counted twice: what a
#: consumer walking the result visits (a pickle "billion laughs" is a few bytes of shared references).
MAX_TREE_ITEMS = 1 << 22
#: Most dimensions of an array (NumPy's own limit is 64; Detectron blobs have at most 4).
MAX_NDIM = 32
#: A dtype argument as numpy.dtype.__reduce__ writes it: kind + item size ('f4', '<f8', 'b1', 'c16').
#: Anything else is refused before NumPy parses it (NumPy evaluates comma strings with ast.literal_eval).
_DTYPE_STRING = re.compile(r"[<>=|]?[A-Za-z?][0-9]{0,3}")
#: NumPy dtype kinds an array or scalar may have: bool, ints, floats, complex.
NUMERIC_KINDS = "biufc"

TRUNCATED = "truncated pickle (the download may be incomplete)"


# ---------------------------------------------------------------------------------------------------
# placeholders built while interpreting; resolved to plain values at the end


@dataclass
class _Payload:
    """A string/bytes opcode argument left in the file: ``length`` bytes at ``offset``.

    ``kind`` is ``"latin1"`` (Python-2 str: the bytes are the value), ``"utf8"`` (Python-3 str) or
    ``"bytes"``.
    """

    offset: int
    length: int
    kind: str


@dataclass
class _Latin1Encoded:
    """``_codecs.encode(<utf8 payload>, 'latin1')``: bytes, recovered chunk-wise when needed."""

    payload: _Payload


class _DTypeStub:
    """``numpy.dtype(...)`` result; ``BUILD`` may still set its byte order."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _ArrayStub:
    """``_reconstruct(ndarray, (0,), b'b')`` result; ``BUILD`` gives it shape, dtype and data."""

    def __init__(self) -> None:
        self.array: Optional[np.ndarray] = None


class _Marker:
    """A global that is data, not a callable (``numpy.ndarray`` as the argument of ``_reconstruct``)."""

    def __init__(self, name: str):
        self.name = name


@dataclass(frozen=True)
class _Handler:
    """What an allowed global does when the pickle calls it (REDUCE / NEWOBJ / INST / OBJ)."""

    name: str
    call: Optional[Callable[["RestrictedUnpickler", tuple], Any]]


# ---------------------------------------------------------------------------------------------------
# the allow-list: our own implementations, keyed by the global the file names


def _as_str(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _make_dtype(unp: "RestrictedUnpickler", args: tuple) -> _DTypeStub:
    # numpy.dtype.__reduce__ -> numpy.dtype(kind+size, align, copy), state set by BUILD.
    if not args or not isinstance(_as_str(args[0]), str):
        raise unp.corrupt("numpy.dtype called without a type string")
    name = _as_str(args[0])
    if not _DTYPE_STRING.fullmatch(name):
        raise unp.corrupt(f"numpy dtype string {name[:40]!r} is not a type code such as 'f4'")
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError, SyntaxError) as exc:
        raise unp.corrupt(f"unknown numpy dtype {name!r}") from exc
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None:
        raise WeightFileError(f"holds a numpy array of dtype {name!r}, not a numeric array", unp.source)
    return _DTypeStub(dtype)


def _reconstruct(unp: "RestrictedUnpickler", args: tuple) -> _ArrayStub:
    # ndarray.__reduce__ -> _reconstruct(ndarray, (0,), b'b'); the data comes with BUILD.
    if len(args) != 3 or not (isinstance(args[0], _Marker) and args[0].name == "numpy.ndarray"):
        raise unp.corrupt("numpy _reconstruct of something other than numpy.ndarray")
    return _ArrayStub()


def _scalar(unp: "RestrictedUnpickler", args: tuple) -> Any:
    # numpy.core.multiarray.scalar(dtype, raw bytes) -> a numpy scalar.
    if len(args) != 2 or not isinstance(args[0], _DTypeStub):
        raise unp.corrupt("malformed numpy scalar")
    dtype = args[0].dtype
    raw = unp.bytes_of(args[1])
    if len(raw) != dtype.itemsize:
        raise unp.corrupt(f"numpy scalar of {dtype} with {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype)[0]


def _frombuffer(unp: "RestrictedUnpickler", args: tuple) -> np.ndarray:
    # ndarray.__reduce_ex__(5) -> numpy._core.numeric._frombuffer(buffer, dtype, shape, order).
    if len(args) != 4:
        raise unp.corrupt("malformed numpy _frombuffer call")
    buf, dtype, shape, order = args
    dtype = dtype.dtype if isinstance(dtype, _DTypeStub) else dtype
    if not isinstance(dtype, np.dtype):
        raise unp.corrupt("numpy _frombuffer without a dtype")
    if not isinstance(shape, (tuple, list)):
        raise unp.corrupt("numpy _frombuffer shape is not a tuple")
    return unp.build_array(tuple(shape), dtype, _as_str(order) == "F", buf)


def _codecs_encode(unp: "RestrictedUnpickler", args: tuple) -> Any:
    # Python 3 pickles bytes under protocol 2 as _codecs.encode(<latin1-decoded str>, 'latin1').
    if len(args) != 2 or _as_str(args[1]) not in ("latin1", "latin-1"):
        raise unp.corrupt("_codecs.encode with an encoding other than latin1")
    text = args[0]
    if isinstance(text, _Payload) and text.kind == "utf8":
        return _Latin1Encoded(text)
    if isinstance(text, _Payload):
        text = unp.materialize(text)
    if not isinstance(text, str):
        raise unp.corrupt("_codecs.encode of a non-string")
    try:
        return text.encode("latin1")
    except UnicodeEncodeError:
        # Python 3 only writes this call for bytes, whose text is latin1 by construction.
        raise unp.corrupt("_codecs.encode of text that is not latin1 (a Python-3 str where bytes belong)") from None


def _ordered_dict(unp: "RestrictedUnpickler", args: tuple) -> Dict[Any, Any]:
    if args and not (len(args) == 1 and isinstance(args[0], (list, dict))):
        raise unp.corrupt("OrderedDict called with unexpected arguments")
    out: Dict[Any, Any] = collections.OrderedDict()
    if args:
        pairs = args[0].items() if isinstance(args[0], dict) else args[0]
        items: List[Any] = []
        for pair in pairs:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise unp.corrupt("OrderedDict of items that are not (key, value) pairs")
            items.extend(pair)
        unp._set_items(out, items)
    return out


def _empty_bytes(unp: "RestrictedUnpickler", args: tuple) -> bytes:
    # Python 3 pickles b'' under protocols 0-2 as bytes() (the data of a zero-size array).
    if args:
        raise unp.corrupt("bytes() called with arguments")
    return b""


def _numpy_globals() -> Dict[str, _Handler]:
    table = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[f"{module}._reconstruct"] = _Handler(f"{module}._reconstruct", _reconstruct)
        table[f"{module}.scalar"] = _Handler(f"{module}.scalar", _scalar)
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        table[f"{module}._frombuffer"] = _Handler(f"{module}._frombuffer", _frombuffer)
    return table


#: Every global a weight file may name, with our handler for it. Data, not code paths: add here.
ALLOWED_GLOBALS: Dict[str, _Handler] = {
    **_numpy_globals(),
    "numpy.dtype": _Handler("numpy.dtype", _make_dtype),
    "numpy.ndarray": _Handler("numpy.ndarray", None),  # only as _reconstruct's first argument
    "_codecs.encode": _Handler("_codecs.encode", _codecs_encode),
    "collections.OrderedDict": _Handler("collections.OrderedDict", _ordered_dict),
    "builtins.bytes": _Handler("builtins.bytes", _empty_bytes),
    "__builtin__.bytes": _Handler("__builtin__.bytes", _empty_bytes),  # protocol < 3 spelling
}


# ---------------------------------------------------------------------------------------------------
# the interpreter


class _Mark:
    pass


class RestrictedUnpickler:
    """Interprets one pickle from a seekable binary file, allowing only :data:`ALLOWED_GLOBALS`.

    Args:
        file: a seekable binary file positioned at the pickle's first byte.
        source: the file name used in error messages.
        size: total size of ``file`` in bytes (for truncation checks); measured when omitted.
    """

    def __init__(self, file: BinaryIO, source: Optional[PathLike] = None, size: Optional[int] = None):
        self.file = file
        self.source = source
        if size is None:
            here = file.tell()
            size = file.seek(0, io.SEEK_END)
            file.seek(here)
        self.size = size
        self.stack: List[Any] = []
        self.metastack: List[List[Any]] = []
        self.memo: List[Any] = []  # index i at position i: the usual, consecutive case
        self.sparse_memo: Dict[int, Any] = {}
        self.proto = 0
        # Bytes of the file that arrays and lazily read strings may still take: a payload reached again
        # through the memo is counted again, so a small file cannot claim more memory than it holds.
        self.byte_budget = 2 * size + (1 << 20)
        self._resolved: Dict[int, Tuple[Any, int, int]] = {}  # id -> (value, tree items, height)
        self._resolving: set = set()
        self._tree_items = 0
        self._height = 0  # height of the container _resolve finished last (0 for a leaf)

    # -- errors ---------------------------------------------------------------------------------

    def corrupt(self, what: str) -> WeightFileError:
        return WeightFileError(f"corrupt pickle: {what}", self.source)

    # -- reading --------------------------------------------------------------------------------

    def _read(self, n: int) -> bytes:
        data = self.file.read(n)
        if len(data) != n:
            raise WeightFileError(TRUNCATED, self.source)
        return data

    def _readline(self) -> bytes:
        line = self.file.readline(MAX_LINE_BYTES)
        if not line.endswith(b"\n"):
            if len(line) >= MAX_LINE_BYTES:
                raise self.corrupt("text opcode argument too long")
            raise WeightFileError(TRUNCATED, self.source)
        return line[:-1]

    def _payload(self, length: int, kind: str) -> Any:
        """A string/bytes argument of ``length`` bytes: read now if small, else left in the file."""
        if length < 0:
            raise self.corrupt("negative string length")
        offset = self.file.tell()
        if offset + length > self.size:
            raise WeightFileError(TRUNCATED, self.source)
        if length < LAZY_PAYLOAD_BYTES:
            return self._decode(self._read(length), kind)
        self.file.seek(length, io.SEEK_CUR)
        return _Payload(offset, length, kind)

    def _decode(self, raw: bytes, kind: str) -> Any:
        if kind == "latin1":
            return raw.decode("latin1")
        if kind == "utf8":
            try:
                return raw.decode("utf-8", "surrogatepass")
            except UnicodeDecodeError as exc:
                raise self.corrupt("invalid UTF-8 in a string") from exc
        return raw

    def _spend(self, nbytes: int, what: str) -> None:
        if nbytes > self.byte_budget:
            raise self.corrupt(f"{what} claims more bytes than the file holds (a payload re-used through the memo?)")
        self.byte_budget -= nbytes

    def materialize(self, payload: _Payload) -> Any:
        """The Python value (str or bytes) of a lazy payload."""
        self._spend(payload.length, "a string")
        here = self.file.tell()
        try:
            self.file.seek(payload.offset)
            return self._decode(self._read(payload.length), payload.kind)
        finally:
            self.file.seek(here)

    def bytes_of(self, value: Any) -> bytes:
        """Raw bytes of an array/scalar payload in any of its pickled forms."""
        if isinstance(value, _Payload):
            value = self.materialize(value)
        elif isinstance(value, _Latin1Encoded):
            value = self.materialize(value.payload)
        if isinstance(value, str):
            try:
                return value.encode("latin1")
            except UnicodeEncodeError as exc:
                raise self.corrupt("array data is text, not bytes") from exc
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        raise self.corrupt(f"array data is a {type(value).__name__}")

    def _fill(self, out: memoryview, value: Any) -> None:
        """Copy a payload's raw bytes into ``out`` (exactly ``len(out)`` bytes), reading from the file."""
        if isinstance(value, _Payload) and value.kind in ("latin1", "bytes"):
            if value.length != len(out):
                raise self.corrupt(f"array data has {value.length} bytes, its shape needs {len(out)}")
            here = self.file.tell()
            try:
                self.file.seek(value.offset)
                filled = 0
                while filled < len(out):
                    n = self.file.readinto(out[filled:])
                    if not n:
                        raise WeightFileError(TRUNCATED, self.source)
                    filled += n
            finally:
                self.file.seek(here)
        elif isinstance(value, _Latin1Encoded) or (isinstance(value, _Payload) and value.kind == "utf8"):
            payload = value.payload if isinstance(value, _Latin1Encoded) else value
            self._fill_from_utf8(out, payload)
        else:
            raw = self.bytes_of(value)
            if len(raw) != len(out):
                raise self.corrupt(f"array data has {len(raw)} bytes, its shape needs {len(out)}")
            out[:] = raw

    def _fill_from_utf8(self, out: memoryview, payload: _Payload) -> None:
        # Python 3 wrote the raw bytes as the UTF-8 text of their latin1 decoding (up to 2 bytes each):
        # decode through one reused chunk buffer so that no full-size temporary exists. A multi-byte
        # character cut at the chunk's end is carried to the front of the next chunk.
        buffer = bytearray(DECODE_CHUNK_BYTES)
        view = memoryview(buffer)
        here = self.file.tell()
        try:
            self.file.seek(payload.offset)
            remaining, filled, carry = payload.length, 0, 0
            while remaining:
                n = self.file.readinto(view[carry : carry + min(len(buffer) - carry, remaining)])
                if not n:
                    raise WeightFileError(TRUNCATED, self.source)
                remaining -= n
                total = carry + n
                try:
                    text, used = codecs.utf_8_decode(view[:total], "strict", not remaining)
                    data = text.encode("latin1")
                except (UnicodeDecodeError, UnicodeEncodeError) as exc:
                    raise self.corrupt("array data is text, not latin1-encoded bytes") from exc
                if filled + len(data) > len(out):
                    raise self.corrupt(f"array data is longer than its shape needs ({len(out)} bytes)")
                out[filled : filled + len(data)] = data
                filled += len(data)
                carry = total - used
                if carry:
                    buffer[:carry] = buffer[used:total]
            if filled != len(out):
                raise self.corrupt(f"array data has {filled} bytes, its shape needs {len(out)}")
        finally:
            view.release()
            self.file.seek(here)

    def build_array(self, shape: Tuple[int, ...], dtype: np.dtype, fortran: bool, data: Any) -> np.ndarray:
        """A new, writable, C-contiguous, native-endian array filled from ``data``."""
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError) as exc:
            raise self.corrupt("array shape is not a tuple of integers") from exc
        if len(shape) > MAX_NDIM:
            raise self.corrupt(f"array with {len(shape)} dimensions")
        if any(s < 0 for s in shape):
            raise self.corrupt(f"negative array shape {shape[:8]}")
        nbytes, extent = dtype.itemsize, dtype.itemsize
        for s in shape:  # Python ints: no overflow; stop once it is too large for the file
            nbytes, extent = nbytes * s, extent * max(s, 1)
            if extent > max(self.size, 1 << 16):  # (0, 2**62) holds nothing, yet NumPy refuses to make it
                raise self.corrupt(f"array shape {shape[:8]} is larger than the whole file")
        low, high = self._data_length_bounds(data)
        if not low <= nbytes <= high:  # before allocating: the shape must match the data it comes with
            raise self.corrupt(f"array data has {low if low == high else f'{low}-{high}'} bytes, "
                               f"its shape {shape[:8]} of {dtype} needs {nbytes}")
        self._spend(nbytes, f"array of shape {shape[:8]}")
        array = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        self._fill(memoryview(array.reshape(-1, order="A").view(np.uint8)), data)
        if fortran:
            array = np.ascontiguousarray(array)
        if not dtype.isnative:
            array = array.astype(dtype.newbyteorder("="))
        return array

    def _data_length_bounds(self, value: Any) -> Tuple[int, int]:
        """Fewest and most raw bytes a payload can hold, without reading it (a UTF-8 payload encodes
        each byte in 1 or 2)."""
        if isinstance(value, _Latin1Encoded) or (isinstance(value, _Payload) and value.kind == "utf8"):
            length = (value.payload if isinstance(value, _Latin1Encoded) else value).length
            return (length + 1) // 2, length
        if isinstance(value, _Payload):
            return value.length, value.length
        if isinstance(value, (str, bytes, bytearray)):
            return len(value), len(value)
        raise self.corrupt(f"array data is a {type(value).__name__}")

    def _build_array_stub(self, stub: _ArrayStub, state: Any) -> None:
        # ndarray.__setstate__: (version, shape, dtype, is_fortran, data); version-less 4-tuples are older.
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise self.corrupt("malformed numpy array state")
        shape, dtype, fortran, data = state[-4:]
        dtype = dtype.dtype if isinstance(dtype, _DTypeStub) else dtype
        if not isinstance(dtype, np.dtype):
            raise self.corrupt("numpy array state without a dtype")
        if not isinstance(shape, tuple):
            raise self.corrupt("numpy array shape is not a tuple")
        stub.array = self.build_array(shape, dtype, bool(fortran), data)

    # -- globals --------------------------------------------------------------------------------

    def find_class(self, module: Any, name: Any) -> Any:
        module, name = _as_str(module), _as_str(name)
        if not isinstance(module, str) or not isinstance(name, str):
            raise self.corrupt("global with a non-string name")
        full = f"{module}.{name}"
        handler = ALLOWED_GLOBALS.get(full)
        if handler is None:
            raise UnsafePickleError(full, self.source)
        return _Marker(full) if handler.call is None else handler

    def _call(self, func: Any, args: Any) -> Any:
        if isinstance(func, _Marker):
            raise self.corrupt(f"calls {func.name}, which a weight file only uses as data")
        if not isinstance(func, _Handler):
            raise self.corrupt(f"calls a {type(func).__name__}")
        if not isinstance(args, tuple):
            raise self.corrupt(f"arguments of {func.name} are not a tuple")
        return func.call(self, args)

    # -- the opcode loop -------------------------------------------------------------------------

    def _pop_mark(self) -> List[Any]:
        if not self.metastack:
            raise self.corrupt("unbalanced MARK")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _pop(self) -> Any:
        if not self.stack:
            raise self.corrupt("stack underflow")
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack:
            raise self.corrupt("stack underflow")
        return self.stack[-1]

    def _memo_put(self, index: int) -> None:
        value, memo = self._top(), self.memo
        if 0 <= index < len(memo):
            memo[index] = value
        elif index == len(memo):
            if len(memo) >= MAX_MEMO_ENTRIES:
                raise self.corrupt(f"more than {MAX_MEMO_ENTRIES:,} memo entries")
            memo.append(value)
            self.sparse_memo.pop(index, None)
        else:
            if len(self.sparse_memo) >= MAX_SPARSE_MEMO_ENTRIES and index not in self.sparse_memo:
                raise self.corrupt(f"more than {MAX_SPARSE_MEMO_ENTRIES:,} memo entries at scattered indices")
            self.sparse_memo[index] = value

    def _memo_get(self, index: int) -> Any:
        if 0 <= index < len(self.memo):
            return self.memo[index]
        try:
            return self.sparse_memo[index]
        except KeyError:
            raise self.corrupt(f"memo key {index} used before it was set") from None

    def _check_key(self, key: Any) -> Any:
        """A dict key: a lazy string read, a tuple key bounded (hashing walks it all, shared parts again)."""
        if isinstance(key, _Payload):
            return self.materialize(key)
        if isinstance(key, tuple):
            sizes: Dict[int, int] = {}

            def size(value: Any, depth: int) -> int:
                if not isinstance(value, tuple):
                    return 1
                if depth > MAX_DEPTH:
                    raise self.corrupt(f"containers nested deeper than {MAX_DEPTH}")
                if id(value) not in sizes:
                    sizes[id(value)] = 1 + sum(size(v, depth + 1) for v in value)
                return sizes[id(value)]

            if size(key, 0) > MAX_KEY_ITEMS:
                raise self.corrupt(f"a dict key is a tuple of more than {MAX_KEY_ITEMS:,} values")
        return key

    def _set_items(self, target: Any, items: List[Any]) -> None:
        if not isinstance(target, dict):
            raise self.corrupt(f"SETITEMS on a {type(target).__name__}")
        if len(items) % 2:
            raise self.corrupt("odd number of items for a dict")
        for i in range(0, len(items), 2):
            key = self._check_key(items[i])
            try:
                target[key] = items[i + 1]
            except TypeError as exc:
                raise self.corrupt(f"unhashable dict key of type {type(key).__name__}") from exc

    def _build(self, obj: Any, state: Any) -> None:
        if isinstance(obj, _ArrayStub):
            self._build_array_stub(obj, state)
        elif isinstance(obj, _DTypeStub):
            # numpy.dtype.__setstate__: (version, byteorder, subarray, names, fields, ...).
            if not isinstance(state, tuple) or len(state) < 2:
                raise self.corrupt("malformed numpy dtype state")
            if len(state) > 4 and (state[3] is not None or state[4] is not None):
                raise WeightFileError("holds a structured numpy dtype, not a numeric array", self.source)
            order = _as_str(state[1])
            if order in ("<", ">"):
                obj.dtype = obj.dtype.newbyteorder(order)
        elif isinstance(obj, dict) and isinstance(state, dict):
            obj.update(state)  # an OrderedDict re-saved with a __dict__: plain items only
        else:
            raise self.corrupt(f"BUILD on a {type(obj).__name__}")

    def load(self) -> Any:
        """Interpret the pickle and return its object with every placeholder resolved."""
        read, stack_append = self.file.read, None
        while True:
            code = read(1)
            if not code:
                raise WeightFileError(TRUNCATED, self.source)
            op = code[0]
            stack = self.stack
            stack_append = stack.append
            if op == 0x80:  # PROTO
                self.proto = self._read(1)[0]
                if self.proto > 5:
                    raise self.corrupt(f"unsupported pickle protocol {self.proto}")
            elif op == 0x95:  # FRAME: a length hint only
                self._read(8)
            elif op == 0x2E:  # STOP
                return self._resolve(self._pop(), 0)
            elif op == 0x28:  # MARK
                if len(self.metastack) >= MAX_DEPTH:
                    raise self.corrupt(f"more than {MAX_DEPTH} MARKs open (containers nested too deep)")
                self.metastack.append(self.stack)
                self.stack = []
            elif op == 0x30:  # POP
                if stack:
                    stack.pop()
                else:
                    self._pop_mark()
            elif op == 0x31:  # POP_MARK
                self._pop_mark()
            elif op == 0x32:  # DUP
                stack_append(self._top())
            # --- scalars
            elif op == 0x4E:  # NONE
                stack_append(None)
            elif op == 0x88:  # NEWTRUE
                stack_append(True)
            elif op == 0x89:  # NEWFALSE
                stack_append(False)
            elif op == 0x4B:  # BININT1
                stack_append(self._read(1)[0])
            elif op == 0x4D:  # BININT2
                stack_append(struct.unpack("<H", self._read(2))[0])
            elif op == 0x4A:  # BININT
                stack_append(struct.unpack("<i", self._read(4))[0])
            elif op == 0x8A:  # LONG1
                n = self._read(1)[0]
                stack_append(int.from_bytes(self._read(n), "little", signed=True))
            elif op == 0x8B:  # LONG4
                n = struct.unpack("<i", self._read(4))[0]
                if n < 0 or n > 1 << 16:
                    raise self.corrupt("implausible LONG4 length")
                stack_append(int.from_bytes(self._read(n), "little", signed=True))
            elif op == 0x47:  # BINFLOAT
                stack_append(struct.unpack(">d", self._read(8))[0])
            elif op == 0x49:  # INT (protocol 0; 00/01 are False/True)
                line = self._readline()
                stack_append(False if line == b"00" else True if line == b"01" else self._int(line))
            elif op == 0x4C:  # LONG (protocol 0)
                stack_append(self._int(self._readline().rstrip(b"L")))
            elif op == 0x46:  # FLOAT (protocol 0)
                try:
                    stack_append(float(self._readline()))
                except ValueError as exc:
                    raise self.corrupt("bad FLOAT") from exc
            # --- strings and bytes
            elif op == 0x55:  # SHORT_BINSTRING (Python 2 str)
                stack_append(self._payload(self._read(1)[0], "latin1"))
            elif op == 0x54:  # BINSTRING
                stack_append(self._payload(struct.unpack("<i", self._read(4))[0], "latin1"))
            elif op == 0x53:  # STRING (protocol 0, repr-quoted)
                stack_append(self._text_string(self._readline()))
            elif op == 0x8C:  # SHORT_BINUNICODE
                stack_append(self._payload(self._read(1)[0], "utf8"))
            elif op == 0x58:  # BINUNICODE
                stack_append(self._payload(struct.unpack("<I", self._read(4))[0], "utf8"))
            elif op == 0x8D:  # BINUNICODE8
                stack_append(self._payload(struct.unpack("<Q", self._read(8))[0], "utf8"))
            elif op == 0x56:  # UNICODE (protocol 0)
                try:
                    stack_append(self._readline().decode("raw-unicode-escape"))
                except UnicodeDecodeError:
                    raise self.corrupt("bad \\u escape in a UNICODE string") from None
            elif op == 0x43:  # SHORT_BINBYTES
                stack_append(self._payload(self._read(1)[0], "bytes"))
            elif op == 0x42:  # BINBYTES
                stack_append(self._payload(struct.unpack("<I", self._read(4))[0], "bytes"))
            elif op in (0x8E, 0x96):  # BINBYTES8, BYTEARRAY8
                stack_append(self._payload(struct.unpack("<Q", self._read(8))[0], "bytes"))
            elif op == 0x98:  # READONLY_BUFFER: no-op for in-band data
                pass
            elif op == 0x97:  # NEXT_BUFFER
                raise self.corrupt("uses out-of-band buffers (pickle protocol 5), which a file cannot carry")
            # --- containers
            elif op == 0x29:  # EMPTY_TUPLE
                stack_append(())
            elif op in (0x85, 0x86, 0x87):  # TUPLE1..3
                n = op - 0x84
                if len(stack) < n:
                    raise self.corrupt("stack underflow")
                items = tuple(stack[-n:])
                del stack[-n:]
                stack_append(items)
            elif op == 0x74:  # TUPLE
                items = tuple(self._pop_mark())
                self.stack.append(items)
            elif op == 0x5D:  # EMPTY_LIST
                stack_append([])
            elif op == 0x6C:  # LIST
                items = self._pop_mark()
                self.stack.append(list(items))
            elif op == 0x61:  # APPEND
                value = self._pop()
                target = self._top()
                if not isinstance(target, list):
                    raise self.corrupt(f"APPEND to a {type(target).__name__}")
                target.append(value)
            elif op == 0x65:  # APPENDS
                items = self._pop_mark()
                target = self._top()
                if not isinstance(target, list):
                    raise self.corrupt(f"APPENDS to a {type(target).__name__}")
                target.extend(items)
            elif op == 0x7D:  # EMPTY_DICT
                stack_append({})
            elif op == 0x64:  # DICT
                items = self._pop_mark()
                target: Dict[Any, Any] = {}
                self._set_items(target, items)
                self.stack.append(target)
            elif op == 0x73:  # SETITEM
                value = self._pop()
                key = self._pop()
                self._set_items(self._top(), [key, value])
            elif op == 0x75:  # SETITEMS
                items = self._pop_mark()
                self._set_items(self._top(), items)
            elif op in (0x8F, 0x90, 0x91):  # EMPTY_SET, ADDITEMS, FROZENSET
                raise self.corrupt("holds a set, which no weight file contains")
            # --- memo
            elif op == 0x71:  # BINPUT
                self._memo_put(self._read(1)[0])
            elif op == 0x72:  # LONG_BINPUT
                self._memo_put(struct.unpack("<I", self._read(4))[0])
            elif op == 0x70:  # PUT
                self._memo_put(self._int(self._readline()))
            elif op == 0x94:  # MEMOIZE
                self._memo_put(len(self.memo) + len(self.sparse_memo))
            elif op == 0x68:  # BINGET
                stack_append(self._memo_get(self._read(1)[0]))
            elif op == 0x6A:  # LONG_BINGET
                stack_append(self._memo_get(struct.unpack("<I", self._read(4))[0]))
            elif op == 0x67:  # GET
                stack_append(self._memo_get(self._int(self._readline())))
            # --- globals and calls: only through ALLOWED_GLOBALS
            elif op == 0x63:  # GLOBAL
                module = self._readline().decode("latin1")
                name = self._readline().decode("latin1")
                stack_append(self.find_class(module, name))
            elif op == 0x93:  # STACK_GLOBAL
                name = self._resolve_small(self._pop())
                module = self._resolve_small(self._pop())
                self.stack.append(self.find_class(module, name))
            elif op == 0x69:  # INST
                module = self._readline().decode("latin1")
                name = self._readline().decode("latin1")
                handler = self.find_class(module, name)
                args = tuple(self._pop_mark())
                self.stack.append(self._call(handler, args))
            elif op == 0x6F:  # OBJ
                items = self._pop_mark()
                if not items:
                    raise self.corrupt("OBJ without a class")
                self.stack.append(self._call(items[0], tuple(items[1:])))
            elif op == 0x52:  # REDUCE
                args = self._pop()
                func = self._pop()
                self.stack.append(self._call(func, args))
            elif op == 0x81:  # NEWOBJ: cls.__new__(cls, *args); only OrderedDict does this legitimately
                args = self._pop()
                cls = self._pop()
                self.stack.append(self._call(cls, args))
            elif op == 0x92:  # NEWOBJ_EX
                kwargs = self._pop()
                args = self._pop()
                cls = self._pop()
                if kwargs:
                    raise self.corrupt("NEWOBJ_EX with keyword arguments")
                self.stack.append(self._call(cls, args))
            elif op == 0x62:  # BUILD
                state = self._pop()
                self._build(self._top(), state)
            elif op in (0x50, 0x51):  # PERSID, BINPERSID
                raise WeightFileError(
                    "pickle uses persistent ids (a legacy torch.save file?); not a Detectron weight file",
                    self.source,
                )
            elif op in (0x82, 0x83, 0x84):  # EXT1/2/4: copyreg extension registry
                size = {0x82: 1, 0x83: 2, 0x84: 4}[op]
                code_no = int.from_bytes(self._read(size), "little")
                raise UnsafePickleError(f"copyreg extension #{code_no}", self.source)
            else:
                offset = self.file.tell() - 1
                raise self.corrupt(f"unknown opcode 0x{op:02x} at byte {offset}")

    # -- helpers --------------------------------------------------------------------------------

    def _int(self, line: bytes) -> int:
        try:
            return int(line)
        except ValueError as exc:
            raise self.corrupt(f"bad integer {line[:20]!r}") from exc

    def _text_string(self, line: bytes) -> str:
        if len(line) < 2 or line[:1] not in (b"'", b'"') or line[-1:] != line[:1]:
            raise self.corrupt("STRING argument is not quoted")
        try:
            return codecs.escape_decode(line[1:-1])[0].decode("latin1")
        except ValueError:
            raise self.corrupt("bad escape in a STRING argument") from None

    def _resolve_small(self, value: Any) -> Any:
        return self.materialize(value) if isinstance(value, _Payload) else value

    def _resolve(self, obj: Any, depth: int) -> Any:
        """Replace placeholders by values, depth-first (arrays, lazy strings, encoded bytes).

        A container reached again through the memo is resolved once and shared, but counts again
        towards :data:`MAX_TREE_ITEMS` and :data:`MAX_DEPTH`: that is what a consumer walking the
        result would visit. A container that holds itself is refused.
        """
        if depth > MAX_DEPTH:
            raise self.corrupt(f"containers nested deeper than {MAX_DEPTH}")
        if not isinstance(obj, (dict, list, tuple)):
            self._count_items(1)
            return self._resolve_leaf(obj)
        key = id(obj)
        done = self._resolved.get(key)
        if done is not None:
            value, items, height = done
            if depth + height > MAX_DEPTH:
                raise self.corrupt(f"containers nested deeper than {MAX_DEPTH}")
            self._count_items(items)
            self._height = height
            return value
        if key in self._resolving:
            raise self.corrupt("a container holds itself")
        self._resolving.add(key)
        before, self._height = self._tree_items, 0
        height = 0
        if isinstance(obj, dict):
            resolved = []
            for k, v in obj.items():
                resolved.append((self._resolve(k, depth + 1), self._resolve(v, depth + 1)))
                height = max(height, self._height)
            obj.clear()
            try:
                obj.update(resolved)
            except TypeError:
                raise self.corrupt("a dict key is an unhashable value (an array or a list)") from None
            value: Any = obj
        else:
            items = []
            for v in obj:
                items.append(self._resolve(v, depth + 1))
                height = max(height, self._height)
            if isinstance(obj, list):
                obj[:] = items
                value = obj
            else:
                value = tuple(items)
        self._count_items(1)
        self._resolving.discard(key)
        self._height = height + 1
        self._resolved[key] = (value, self._tree_items - before, self._height)
        return value

    def _count_items(self, n: int) -> None:
        self._height = 0
        self._tree_items += n
        if self._tree_items > MAX_TREE_ITEMS:
            raise self.corrupt(f"holds more than {MAX_TREE_ITEMS:,} values (counting each memo re-use)")

    def _resolve_leaf(self, obj: Any) -> Any:
        if isinstance(obj, _ArrayStub):
            if obj.array is None:
                raise self.corrupt("numpy array without data")
            return obj.array
        if isinstance(obj, _Payload):
            return self.materialize(obj)
        if isinstance(obj, _Latin1Encoded):
            return self.bytes_of(obj)
        if isinstance(obj, _DTypeStub):
            return obj.dtype
        if isinstance(obj, (_Handler, _Marker)):
            raise self.corrupt("a global is stored as data")
        return obj


def restricted_load(file: BinaryIO, source: Optional[PathLike] = None, size: Optional[int] = None) -> Any:
    """Unpickle a weight file safely (see :class:`RestrictedUnpickler`).

    Args:
        file: a seekable binary file at the start of the pickle.
        source: file name for error messages.
        size: the file's size in bytes, if known.

    Returns:
        The unpickled object: dicts, lists, tuples, str, bytes, numbers and NumPy arrays only.

    Raises:
        UnsafePickleError: the pickle names a global outside :data:`ALLOWED_GLOBALS` (nothing is called).
        WeightFileError: truncated or corrupt pickle, non-numeric arrays.
    """
    try:
        return RestrictedUnpickler(file, source, size).load()
    except RecursionError as exc:
        raise WeightFileError(f"corrupt pickle: nested deeper than Python allows ({sys.getrecursionlimit()})",
                              source) from exc
