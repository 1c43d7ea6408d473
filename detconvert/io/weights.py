"""``load_weights(path)``: read any Detectron-related weight file, safely, and say what it is.

The format is sniffed from the content, never from the extension (users save HTML error pages as
``model_final.pkl`` and torch checkpoints as ``.pkl``):

=====================  ===========================================================================
flavour                what the file is
=====================  ===========================================================================
detectron_detector     ``{'blobs': {name: array}, 'cfg': <yaml>}`` (``utils/net.save_model_to_weights_file``),
                       optionally with a ``'detconvert'`` entry (:data:`SPEC_KEY`, below)
detectron_imagenet     a bare ``{name: array}`` dict (ImageNet initialisation, ``R-50.pkl``)
detectron2             detectron2 zoo pickle ``{'model': {name: array}, '__author__': ..., ...}``
torch                  a ``torch.save`` checkpoint (zip, or the legacy format), read with ``weights_only=True``
safetensors            a safetensors file
=====================  ===========================================================================

**The** ``'detconvert'`` **entry.** Detectron's reader (``utils/net.initialize_gpu_from_weights_file``)
takes ``'blobs'`` and ``'cfg'`` from the container and ignores any other key, so a detector pickle may
carry detconvert's own description beside its cfg: ``'detconvert'`` holds JSON text
``{"format": "detconvert-spec", "version": 1, "spec": ArchSpec.to_dict(), "class_names": [...]}``
(plus optional provenance, e.g. ``"training"``). It says what Detectron's keys cannot: a body narrower
than any ResNet the config names (the shipped shapes model), and the class names. Files without it
read as before; :func:`spec_entry_text` writes it, :attr:`WeightFile.stored_spec` is what was read.

Anything else (HTML, text, gzip, empty, random bytes, a truncated download) is a
:class:`~detconvert.errors.WeightFileError` with a one-line reason. Pickles go through
:mod:`detconvert.io.unpickle` only.
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from detconvert.errors import ConfigError, PathLike, UnsafePickleError, WeightFileError
from detconvert.io.cfg_yaml import load_detectron_cfg_text
from detconvert.io.unpickle import restricted_load

#: Container key of detconvert's spec entry in a Detectron detector pickle (see the module docstring).
SPEC_KEY = "detconvert"
SPEC_FORMAT = "detconvert-spec"
SPEC_VERSION = 1

FLAVOURS = ("detectron_detector", "detectron_imagenet", "detectron2", "torch", "safetensors")
MOMENTUM_SUFFIX = "_momentum"  # Detectron's optimizer history: '<param>_momentum' (utils/net.py)

_SNIFF_BYTES = 4096
_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"
# torch.save's legacy (pre-1.6, non-zip) format starts with a pickled magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_PROTO0_GLOBAL = re.compile(rb"^c[\w.]+\n[\w.]+\n")


@dataclass(frozen=True)
class WeightFile:
    """What :func:`load_weights` read.

    Attributes:
        path: the file.
        flavour: one of :data:`FLAVOURS`.
        blobs: float32 parameters and leftovers by name, momentum excluded. Arrays are writable,
            C-contiguous and owned, so ``torch.from_numpy`` shares their memory.
        momentum: Detectron's ``<param>_momentum`` blobs, keyed by the *parameter* name.
        cfg_text: the embedded cfg YAML (Detectron detector files), else None.
        cfg: ``cfg_text`` parsed by :func:`~detconvert.io.cfg_yaml.load_detectron_cfg_text`, else None.
        cfg_error: why ``cfg_text`` could not be parsed (the weights stay usable), else None.
        size: file size in bytes.
        extras: non-float arrays of torch/safetensors files (e.g. ``num_batches_tracked``), kept apart.
        metadata: other top-level values (detectron2 ``__author__``, safetensors ``__metadata__``).
        stored_spec: a detector pickle's ``'detconvert'`` entry, parsed (``spec``, ``class_names``, ...),
            else None.
    """

    path: Path
    flavour: str
    blobs: Dict[str, np.ndarray]
    momentum: Dict[str, np.ndarray]
    cfg_text: Optional[str]
    cfg: Optional[Dict[str, Any]]
    size: int
    cfg_error: Optional[str] = None
    extras: Dict[str, np.ndarray] = field(default_factory=dict)
    metadata: Dict[str, Any] = field(default_factory=dict)
    stored_spec: Optional[Dict[str, Any]] = None
    _sha256: List[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def sha256(self) -> str:
        """SHA-256 of the file (computed on first use: a second pass over the file)."""
        if not self._sha256:
            digest = hashlib.sha256()
            with open(self.path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
            self._sha256.append(digest.hexdigest())
        return self._sha256[0]

    @property
    def num_parameters(self) -> int:
        """Number of scalars in :attr:`blobs`."""
        return int(sum(a.size for a in self.blobs.values()))

    @property
    def num_bytes(self) -> int:
        """Bytes of the arrays in :attr:`blobs`."""
        return int(sum(a.nbytes for a in self.blobs.values()))

    def leftover_names(self, consumed: Iterable[str]) -> List[str]:
        """Blob names not in ``consumed``, in file order (what a model mapping did not use)."""
        used = set(consumed)
        return [name for name in self.blobs if name not in used]


# ---------------------------------------------------------------------------------------------------
# sniffing


def _describe_text(head: bytes) -> Optional[str]:
    """A reason if ``head`` looks like text (HTML page, JSON, YAML...), else None."""
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a multi-byte char cut at the end of the sniff window
            return None
        text = head[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    if not text or printable < 0.95 * len(text):
        return None
    lowered = text.lstrip().lower()
    if lowered.startswith(("<!doctype html", "<html", "<head", "<?xml")) or "<html" in lowered[:1024]:
        return "an HTML page, not a weight file (a failed download?)"
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    return f"a text file, not a weight file (it starts with {first!r})"


def sniff(path: Path, head: bytes, size: int) -> str:
    """The container kind from the first bytes: pickle, torch_zip, torch_legacy, safetensors.

    Raises:
        WeightFileError: for everything that is not a weight container, with the reason.
    """
    if size == 0:
        raise WeightFileError("empty file (0 bytes; the download may have failed)", path)
    if head.startswith(_ZIP_MAGIC):
        return "torch_zip"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch_legacy"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if head.startswith(_GZIP_MAGIC):
        raise WeightFileError("gzip-compressed data, not a weight file (decompress it first)", path)
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 2 <= header_len <= size - 8:
            return "safetensors"
    if head[:1] in (b"(", b"}", b"]") or _PROTO0_GLOBAL.match(head):
        return "pickle"  # protocol 0/1 pickles (dict / mark / global first); refused or read below
    text = _describe_text(head)
    if text:
        raise WeightFileError(text, path)
    if head[:1] == b"\x80":
        raise WeightFileError(f"pickle protocol {head[1] if len(head) > 1 else '?'} is not supported", path)
    raise WeightFileError(
        f"unrecognised binary data (starts with {head[:8].hex()}), not a pickle, torch or safetensors file", path
    )


# ---------------------------------------------------------------------------------------------------
# readers per container


def _str_key(key: Any, path: Path) -> str:
    if isinstance(key, bytes):
        return key.decode("latin1")  # Python-2 str keys read with encoding='bytes'
    if not isinstance(key, str):
        raise WeightFileError(f"has a blob named by a {type(key).__name__} ({preview(key, 60)}), not a string", path)
    return key


def _split_detectron_blobs(raw: Mapping[Any, Any], path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """float32 blobs and momentum from a Detectron ``{name: array}`` dict; non-float is an error."""
    named: Dict[str, np.ndarray] = {}
    bad: List[str] = []
    for key, value in raw.items():
        name = _str_key(key, path)
        if not isinstance(value, np.ndarray):
            bad.append(f"{name} ({type(value).__name__})")
            continue
        if value.dtype.kind != "f":
            bad.append(f"{name} ({value.dtype})")
            continue
        if value.dtype != np.float32:
            # Detectron's initialize_gpu_from_weights_file casts every blob with astype(np.float32).
            value = value.astype(np.float32)
        named[name] = value
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise WeightFileError(
            f"has {len(bad)} non-float blob(s): {', '.join(bad[:3])}{more}; Detectron blobs are float32 arrays",
            path,
        )
    blobs: Dict[str, np.ndarray] = {}
    momentum: Dict[str, np.ndarray] = {}
    for name, value in named.items():
        base = name[: -len(MOMENTUM_SUFFIX)] if name.endswith(MOMENTUM_SUFFIX) else None
        if base is not None and base in named and named[base].shape == value.shape:
            momentum[base] = value
        else:
            blobs[name] = value
    return blobs, momentum


def spec_entry_text(spec: Mapping[str, Any], class_names: Iterable[str], **extra: Any) -> str:
    """The JSON text of a ``'detconvert'`` container entry (``spec``: ``ArchSpec.to_dict()``)."""
    entry = {"format": SPEC_FORMAT, "version": SPEC_VERSION, "spec": dict(spec), "class_names": list(class_names)}
    entry.update(extra)
    return json.dumps(entry, sort_keys=True)


def _parse_spec_entry(value: Any, path: Path) -> Dict[str, Any]:
    """The ``'detconvert'`` entry of a detector pickle, checked; a one-line error when it is malformed."""
    if isinstance(value, bytes):
        value = value.decode("latin1")
    if not isinstance(value, str):
        raise WeightFileError(f"its '{SPEC_KEY}' entry is a {type(value).__name__}, not JSON text", path)
    try:
        entry = json.loads(value)
    except RecursionError:
        raise WeightFileError(f"its '{SPEC_KEY}' entry is JSON nested deeper than Python allows", path) from None
    except ValueError as exc:
        raise WeightFileError(f"its '{SPEC_KEY}' entry is not valid JSON ({exc})", path) from None
    if not isinstance(entry, dict) or entry.get("format") != SPEC_FORMAT:
        raise WeightFileError(f"its '{SPEC_KEY}' entry is not a {SPEC_FORMAT} record", path)
    if entry.get("version") != SPEC_VERSION:
        raise WeightFileError(f"its '{SPEC_KEY}' entry has version {entry.get('version')!r}; this detconvert reads "
                              f"version {SPEC_VERSION}", path)
    names = entry.get("class_names")
    if not isinstance(entry.get("spec"), dict) or not (
            isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise WeightFileError(f"its '{SPEC_KEY}' entry lacks a 'spec' object or a 'class_names' list", path)
    return entry


def _read_pickle(path: Path, size: int) -> Dict[str, Any]:
    with open(path, "rb") as handle:
        obj = restricted_load(handle, path, size)
    if not isinstance(obj, dict):
        raise WeightFileError(
            f"a pickle of a {type(obj).__name__}, not a Detectron weight file (expected a dict)", path
        )
    keys = {(_str_key(k, path) if isinstance(k, (str, bytes)) else k): v for k, v in obj.items()}
    if "blobs" in keys:
        if not isinstance(keys["blobs"], dict):
            raise WeightFileError(f"'blobs' is a {type(keys['blobs']).__name__}, not a dict of arrays", path)
        blobs, momentum = _split_detectron_blobs(keys["blobs"], path)
        cfg_text = keys.get("cfg")
        if isinstance(cfg_text, bytes):
            cfg_text = cfg_text.decode("latin1")
        cfg, cfg_error = None, None
        if cfg_text is not None:
            try:
                cfg = load_detectron_cfg_text(cfg_text, path)
            except ConfigError as exc:
                cfg_error = exc.message
        stored = _parse_spec_entry(keys[SPEC_KEY], path) if SPEC_KEY in keys else None
        other = {k: v for k, v in keys.items() if k not in ("blobs", "cfg", SPEC_KEY)}
        return dict(flavour="detectron_detector", blobs=blobs, momentum=momentum, cfg_text=cfg_text, cfg=cfg,
                    cfg_error=cfg_error, metadata=other, stored_spec=stored)
    if "model" in keys and "__author__" in keys:
        if not isinstance(keys["model"], dict):
            raise WeightFileError("a detectron2 pickle whose 'model' is not a dict of arrays", path)
        blobs, momentum = _split_detectron_blobs(keys["model"], path)
        other = {k: v for k, v in keys.items() if k != "model"}
        return dict(flavour="detectron2", blobs=blobs, momentum=momentum, metadata=other)
    if keys and all(isinstance(v, np.ndarray) for v in keys.values()):
        blobs, momentum = _split_detectron_blobs(keys, path)
        return dict(flavour="detectron_imagenet", blobs=blobs, momentum=momentum)
    shown = ", ".join(preview(k, 60, quote=True) for k in list(keys)[:5])
    raise WeightFileError(
        f"a pickled dict with keys {shown or '(none)'}, not a Detectron weight file "
        "(expected {'blobs': ..., 'cfg': ...} or {blob name: array})",
        path,
    )


def _tensor_to_numpy(value: Any) -> np.ndarray:
    import torch

    tensor = value.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.contiguous().numpy()


def _state_dict_arrays(obj: Mapping[str, Any], path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """float arrays and kept-apart non-float arrays (e.g. BN ``num_batches_tracked``)."""
    blobs: Dict[str, np.ndarray] = {}
    extras: Dict[str, np.ndarray] = {}
    for key, value in obj.items():
        array = value if isinstance(value, np.ndarray) else _tensor_to_numpy(value) if hasattr(value, "numpy") else None
        if array is None:
            continue
        if array.dtype.kind == "f":
            blobs[str(key)] = array if array.dtype == np.float32 else array.astype(np.float32)
        else:
            extras[str(key)] = array
    return blobs, extras


def _read_torch(path: Path) -> Dict[str, Any]:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise UnsafePickleError(found.group(1), path) from exc
        raise WeightFileError(f"torch checkpoint refused by weights_only loading: {str(exc).splitlines()[0]}",
                              path) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightFileError(f"unreadable torch checkpoint: {str(exc).splitlines()[0]}", path) from exc
    state = obj
    metadata: Dict[str, Any] = {}
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):  # detectron2/maskrcnn-benchmark, mmdetection layouts
            if isinstance(obj.get(key), dict):
                state = obj[key]
                metadata = {k: v for k, v in obj.items() if k != key and isinstance(v, (str, int, float, bool))}
                break
    if not isinstance(state, dict):
        raise WeightFileError(f"a torch file holding a {type(state).__name__}, not a state dict", path)
    blobs, extras = _state_dict_arrays(state, path)
    if not blobs:
        raise WeightFileError("a torch file without any float tensors", path)
    return dict(flavour="torch", blobs=blobs, momentum={}, extras=extras, metadata=metadata)


def _read_safetensors(path: Path) -> Dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = dict(handle.metadata() or {})
            state = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise WeightFileError(f"corrupt safetensors file: {str(exc).splitlines()[0]}", path) from exc
    blobs, extras = _state_dict_arrays(state, path)
    blobs = {k: (v if v.flags.writeable and v.flags.c_contiguous else np.array(v)) for k, v in blobs.items()}
    return dict(flavour="safetensors", blobs=blobs, momentum={}, extras=extras, metadata=metadata)


def load_weights(path: PathLike) -> WeightFile:
    """Read a weight file of any supported flavour, safely, sniffing the format from its content.

    Args:
        path: the file (any extension).

    Returns:
        A :class:`WeightFile`.

    Raises:
        WeightFileError: missing file, directory, or not a weight file (HTML, text, gzip, empty,
            random bytes, truncated or corrupt pickle, non-float blobs), with a one-line reason.
        UnsafePickleError: the pickle names a global outside the allow-list (never executed).
    """
    path = Path(path)
    if not path.exists():
        raise WeightFileError("no such file", path)
    if path.is_dir():
        raise WeightFileError("is a directory, not a weight file", path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except PermissionError as exc:
        raise WeightFileError("permission denied", path) from exc
    except OSError as exc:
        raise WeightFileError(f"cannot read: {exc.strerror or exc}", path) from exc
    kind = sniff(path, head, size)
    if kind == "pickle":
        fields = _read_pickle(path, size)
    elif kind in ("torch_zip", "torch_legacy"):
        fields = _read_torch(path)
    else:
        fields = _read_safetensors(path)
    fields.setdefault("cfg_text", None)
    fields.setdefault("cfg", None)
    return WeightFile(path=path, size=size, **fields)


class _Enough(Exception):
    pass


def preview(value: Any, limit: int = 200, quote: bool = False) -> str:
    """JSON-like text of ``value`` (as ``json.dumps(value, default=str)`` writes it), cut after about
    ``limit`` characters *while* writing: a pickled value may share one list a billion times over, or hold
    an integer of 100,000 digits, and must still be described in microseconds. ``quote``: strings quoted."""
    parts: List[str] = []
    used = [0]

    def emit(text: str) -> None:
        parts.append(text)
        used[0] += len(text)
        if used[0] > limit:
            raise _Enough

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            emit("{")
            for i, (key, val) in enumerate(item.items()):
                emit(", " if i else "")
                walk(key if isinstance(key, str) else preview(key, limit))
                emit(": ")
                walk(val)
            emit("}")
        elif isinstance(item, (list, tuple)):
            emit("[")
            for i, val in enumerate(item):
                emit(", " if i else "")
                walk(val)
            emit("]")
        elif isinstance(item, bool) or item is None or isinstance(item, float):
            emit(json.dumps(item))
        elif isinstance(item, int):
            emit(str(item) if item.bit_length() < 256 else f"<an integer of {item.bit_length()} bits>")
        elif isinstance(item, (str, bytes)):
            text = item[: limit + 1]
            emit(json.dumps(text.decode("latin1") if isinstance(text, bytes) else text))
        elif isinstance(item, np.ndarray):
            emit(json.dumps(f"<array {item.dtype} {item.shape}>"))
        else:
            emit(json.dumps(str(item)[: limit + 1]))

    if isinstance(value, str) and not quote:
        return value[: limit + 1]
    try:
        walk(value)
    except _Enough:
        pass
    return "".join(parts)[: limit + 1]


def describe_metadata(wf: WeightFile) -> Dict[str, str]:
    """Top-level metadata as short strings (for ``inspect``)."""
    out = {}
    for key, value in wf.metadata.items():
        text = value[:201] if isinstance(value, str) else preview(value, 201)
        out[preview(key, 200)] = text if len(text) <= 200 else text[:197] + "..."
    if wf.stored_spec is not None:  # the 'detconvert' entry, in words (the spec wins over the cfg when loading)
        spec, body = wf.stored_spec["spec"], wf.stored_spec["spec"].get("body")
        body = body if isinstance(body, dict) else {}
        shape = ", ".join(f"{k} {preview(body[k], 60)}" for k in ("block_counts", "stem_out_dim", "res2_out_dim")
                          if k in body)
        out[SPEC_KEY] = (f"detconvert spec stored beside the cfg (load_model builds from it): "
                         f"{preview(spec.get('conv_body_name') or spec.get('meta_arch'), 60)}, {shape}; "
                         f"classes {preview(', '.join(wf.stored_spec['class_names']), 200)}")
    return out
