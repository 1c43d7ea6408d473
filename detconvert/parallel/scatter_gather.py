"""Scatter and gather for :class:`detconvert.parallel.DataParallel`, independent of CUDA.

These functions take an explicit list of :class:`torch.device` objects, so the chunking and
gathering rules can be exercised with a *simulated* device list (``[torch.device("cpu")] * 4``,
or ``"meta"`` devices) on a machine without a GPU; on real GPUs the very same code runs.

Semantics follow Detectron.pytorch's ``lib/nn/parallel`` (``DataParallel._minibatch_scatter`` and
``scatter_gather.gather``) with two of its failure modes fixed: fewer chunks than devices and empty
chunks are allowed (Detectron.pytorch#54 raised ``IndexError``).
"""
from __future__ import annotations

import numbers
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from detconvert.errors import DetconvertError

DeviceLike = Union[int, str, torch.device]
Chunk = Tuple[Tuple[Any, ...], Dict[str, Any]]


class ScatterError(DetconvertError, ValueError):
    """Inputs that cannot be split over the devices (wrong structure, too many chunks, ...)."""

    def __init__(self, message: str):
        super().__init__(message, "DataParallel")


def as_device(device: DeviceLike) -> torch.device:
    """``3`` -> ``cuda:3``, ``-1`` -> ``cpu`` (torch's convention for output_device), strings parsed."""
    if isinstance(device, torch.device):
        return device
    if isinstance(device, int):
        return torch.device("cpu") if device < 0 else torch.device("cuda", device)
    return torch.device(device)


def to_device(obj: Any, device: torch.device) -> Any:
    """Copy every tensor inside ``obj`` (nested lists/tuples/dicts) to ``device``.

    Anything that is not a tensor (numpy arrays, numbers, strings, roidb entries, ...) is passed on
    by reference, as torch's and Detectron.pytorch's ``Scatter`` do: replicas share it, so a model
    must not write into it. The copy is differentiable (``Tensor.to``), so gradients flow back to
    the caller's tensors.
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def count_minibatch_chunks(inputs: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """Number of per-device entries in minibatch-mode inputs (every input is a list, one entry per device).

    Raises:
        ScatterError: an input is not a list/tuple, or the inputs disagree on the number of entries.
    """
    lengths = {}
    for name, value in [(f"positional input {i}", v) for i, v in enumerate(inputs)] + list(kwargs.items()):
        if not isinstance(value, (list, tuple)):
            raise ScatterError(
                f"minibatch mode needs every input to be a list with one entry per device; "
                f"'{name}' is a {type(value).__name__}"
            )
        lengths[name] = len(value)
    if not lengths:
        raise ScatterError("minibatch mode needs at least one input (a list with one entry per device)")
    if len(set(lengths.values())) != 1:
        raise ScatterError(f"inputs disagree on the number of per-device entries: {lengths}")
    return next(iter(lengths.values()))


def scatter_minibatch(
    inputs: Sequence[Sequence[Any]],
    kwargs: Mapping[str, Sequence[Any]],
    devices: Sequence[DeviceLike],
    cpu_keywords: Sequence[str] = (),
) -> List[Chunk]:
    """Give chunk ``i`` of every input to device ``i`` (Detectron.pytorch's ``minibatch=True``).

    Each entry keeps its own size, so device 0 may get a ``[2, 3, 800, 1216]`` blob and device 1 a
    ``[2, 3, 1344, 800]`` one. Keywords named in ``cpu_keywords`` (``im_info``, ``roidb``) are passed
    through untouched — the very same object, on the CPU. With fewer chunks than devices only the
    first devices are used.

    Args:
        inputs: positional inputs, each a list with one entry per chunk.
        kwargs: keyword inputs, each a list with one entry per chunk.
        devices: the devices, at least as many as there are chunks.
        cpu_keywords: keyword names whose entries stay where they are.

    Returns:
        One ``(args, kwargs)`` pair per chunk, in chunk order.

    Raises:
        ScatterError: malformed inputs or more chunks than devices.
    """
    num_chunks = count_minibatch_chunks(inputs, kwargs)
    if num_chunks > len(devices):
        raise ScatterError(
            f"{num_chunks} per-device chunks but only {len(devices)} device(s); "
            "build the batch with at most one chunk per device"
        )
    chunks: List[Chunk] = []
    for i in range(num_chunks):
        device = as_device(devices[i])
        chunk_args = tuple(to_device(x[i], device) for x in inputs)
        chunk_kwargs = {
            k: (v[i] if k in cpu_keywords else to_device(v[i], device)) for k, v in kwargs.items()
        }
        chunks.append((chunk_args, chunk_kwargs))
    return chunks


def _even_sizes(total: int, parts: int) -> List[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _first_tensor(obj: Any) -> Optional[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        values = obj
    elif isinstance(obj, Mapping):
        values = obj.values()
    else:
        return None
    for v in values:
        found = _first_tensor(v)
        if found is not None:
            return found
    return None


def _split_tensors(obj: Any, sizes: List[int], dim: int) -> List[Any]:
    """Split every tensor in ``obj`` into pieces of ``sizes`` along ``dim``; replicate the rest (torch semantics)."""
    if isinstance(obj, torch.Tensor):
        if obj.dim() <= dim or obj.size(dim) != sum(sizes):
            raise ScatterError(
                f"cannot split a tensor of shape {tuple(obj.shape)} into {sizes} along dim {dim}"
            )
        return list(torch.split(obj, sizes, dim))
    if isinstance(obj, (list, tuple)) and obj:
        columns = [_split_tensors(v, sizes, dim) for v in obj]
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return [type(obj)(*col) for col in zip(*columns)]
        return [type(obj)(col) for col in zip(*columns)]
    if isinstance(obj, Mapping) and obj:
        keys = list(obj)
        columns = [_split_tensors(obj[k], sizes, dim) for k in keys]
        return [dict(zip(keys, col)) for col in zip(*columns)]
    return [obj for _ in sizes]


def _split_cpu_value(obj: Any, sizes: List[int], dim: int) -> List[Any]:
    """Split a cpu keyword: tensors along ``dim``, lists (e.g. a roidb) by slicing; others replicated."""
    if isinstance(obj, torch.Tensor):
        return _split_tensors(obj, sizes, dim)
    if isinstance(obj, (list, tuple)):
        if len(obj) != sum(sizes):
            raise ScatterError(f"cannot split a list of {len(obj)} entries into {sizes}")
        starts = np.cumsum([0] + sizes)
        return [obj[a:b] for a, b in zip(starts[:-1], starts[1:])]
    return [obj for _ in sizes]


def scatter_split(
    inputs: Sequence[Any],
    kwargs: Mapping[str, Any],
    devices: Sequence[DeviceLike],
    dim: int = 0,
    cpu_keywords: Sequence[str] = (),
) -> List[Chunk]:
    """Split whole-batch inputs along ``dim`` over the devices (Detectron.pytorch's ``minibatch=False``).

    Unlike torch's scatter and Detectron.pytorch, the batch does not have to divide evenly, and a
    batch smaller than the number of devices uses only ``batch size`` devices. The batch size is
    taken from the first tensor found (positional inputs first, then keywords).

    Returns:
        One ``(args, kwargs)`` pair per used device.
    """
    probe = _first_tensor(list(inputs) + [v for k, v in kwargs.items() if k not in cpu_keywords])
    if probe is None:
        probe = _first_tensor(list(kwargs.values()))
    if probe is None or probe.dim() <= dim:
        raise ScatterError(f"no tensor with a dimension {dim} to split the batch along")
    batch = probe.size(dim)
    if batch == 0:
        raise ScatterError("the batch is empty")
    sizes = _even_sizes(batch, min(batch, len(devices)))
    split_args = [_split_tensors(x, sizes, dim) for x in inputs]
    split_kwargs = {
        k: (_split_cpu_value(v, sizes, dim) if k in cpu_keywords else _split_tensors(v, sizes, dim))
        for k, v in kwargs.items()
    }
    chunks: List[Chunk] = []
    for i in range(len(sizes)):
        device = as_device(devices[i])
        chunk_args = tuple(to_device(col[i], device) for col in split_args)
        chunk_kwargs = {
            k: (col[i] if k in cpu_keywords else to_device(col[i], device)) for k, col in split_kwargs.items()
        }
        chunks.append((chunk_args, chunk_kwargs))
    return chunks


def _is_empty_value(obj: Any) -> bool:
    if obj is None:
        return True
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj.ndim > 0 and obj.shape[0] == 0
    if isinstance(obj, (list, tuple, Mapping)):
        return len(obj) == 0
    return False


def is_empty_chunk(chunk: Chunk, cpu_keywords: Sequence[str] = ()) -> bool:
    """True when every device-bound value of the chunk is None, zero-length or an empty container.

    Such a chunk (e.g. a device that got no images in the last, short batch) is not run at all.
    A chunk made only of cpu keywords is never considered empty: nothing says it holds no work.
    """
    args, kwargs = chunk
    values = list(args) + [v for k, v in kwargs.items() if k not in cpu_keywords]
    return bool(values) and all(_is_empty_value(v) for v in values)


def gather(outputs: Sequence[Any], output_device: DeviceLike, dim: int = 0) -> Any:
    """Merge per-device outputs into one, recursively (Detectron.pytorch's ``scatter_gather.gather``).

    * tensors: concatenated along ``dim`` on ``output_device``; 0-dim tensors (a loss) are first
      unsqueezed, so N per-device losses gather to a ``[N]`` tensor;
    * ``None``: dropped; if every output is None the result is None;
    * numpy arrays: concatenated along ``dim`` (0-dim arrays stacked), still numpy;
    * Python and numpy scalars (bool, int, float): a ``[N]`` tensor on ``output_device``;
    * strings and bytes: a list of N;
    * lists, tuples, namedtuples: gathered element-wise (same lengths required);
    * mappings (nested included): a dict of gathered values (same keys required).

    Args:
        outputs: one output per device, in device order.
        output_device: where gathered tensors go (``-1``/``"cpu"`` for the CPU).
        dim: concatenation dimension.

    Raises:
        ScatterError: per-device outputs of different structure; TypeError for unsupported types.
    """
    device = as_device(output_device)
    present = [o for o in outputs if o is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, torch.Tensor):
        _require_all(present, torch.Tensor)
        return torch.cat([(t.unsqueeze(0) if t.dim() == 0 else t).to(device) for t in present], dim)
    if isinstance(first, np.ndarray):
        _require_all(present, np.ndarray)
        return np.concatenate([np.atleast_1d(a) for a in present], axis=dim)
    if isinstance(first, (str, bytes)):
        _require_all(present, (str, bytes))
        return list(present)
    if isinstance(first, (numbers.Number, np.generic)):
        _require_all(present, (numbers.Number, np.generic))
        return torch.as_tensor(np.asarray(present), device=device)
    if isinstance(first, Mapping):
        _require_all(present, Mapping)
        keys = list(first)
        for o in present[1:]:
            if set(o) != set(keys):
                raise ScatterError(f"per-device outputs have different keys: {sorted(keys)} vs {sorted(o)}")
        return {k: gather([o[k] for o in present], device, dim) for k in keys}
    if isinstance(first, (list, tuple)):
        _require_all(present, (list, tuple))
        if len({len(o) for o in present}) != 1:
            raise ScatterError(f"per-device outputs are sequences of different lengths: {[len(o) for o in present]}")
        columns = [gather(list(col), device, dim) for col in zip(*present)]
        if isinstance(first, tuple) and hasattr(first, "_fields"):
            return type(first)(*columns)
        return type(first)(columns)
    raise TypeError(f"cannot gather per-device outputs of type {type(first).__name__}")


def _require_all(values: Sequence[Any], kind) -> None:
    for v in values:
        if not isinstance(v, kind):
            raise ScatterError(
                f"per-device outputs mix {type(values[0]).__name__} and {type(v).__name__}"
            )
