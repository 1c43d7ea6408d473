"""A DataParallel that gives each device its own minibatch, of its own size.

Reimplements the documented behaviour of Detectron.pytorch's ``lib/nn/parallel/data_parallel.py``
(``minibatch=True``: every input is a list with one entry per device; ``cpu_keywords`` stay on the
CPU; dict outputs are gathered) on top of :func:`torch.nn.parallel.replicate` and
:func:`torch.nn.parallel.parallel_apply`, without its known bugs:

* fewer chunks than devices (the last, short batch of an epoch) uses only the first devices
  instead of raising ``IndexError`` (Detectron.pytorch#54), and empty chunks are skipped;
* outputs are gathered on ``output_device`` only after each replica has reduced its own
  activations to losses, so device 0 does not hold everyone's activations (return losses from
  ``forward``; see :class:`DataParallel`).

For more than one machine, or for training at scale, prefer one process per GPU with
:func:`detconvert.parallel.distributed.wrap_ddp`.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.parallel import parallel_apply, replicate

from detconvert.parallel.scatter_gather import (
    Chunk,
    DeviceLike,
    ScatterError,
    as_device,
    count_minibatch_chunks,
    gather,
    is_empty_chunk,
    scatter_minibatch,
    scatter_split,
)


def _module_device(module: nn.Module) -> Optional[torch.device]:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return None


class DataParallel(nn.Module):
    """Run ``module`` on several devices, each with its own inputs, and gather the outputs.

    **Minibatch mode** (``minibatch=True``, the default): every positional and keyword input is a
    list with one entry per device chunk, as built by
    :func:`detconvert.data.batching.collate_minibatch`. Chunk ``i`` goes to device ``i`` with its own
    size; there may be fewer chunks than devices (only the first devices run), and a chunk whose
    device-bound inputs are all empty (None, zero-length, empty list) is not run at all.

    **Split mode** (``minibatch=False``): inputs are whole-batch tensors, split along ``dim`` 0 into
    at most one piece per device (uneven splits allowed). cpu keywords are split too (tensors along
    ``dim``, lists by slicing) but stay on the CPU.

    **Losses.** Compute losses inside ``forward`` and return them, e.g.
    ``{"losses": {"loss_cls": loss_cls, ...}, "metrics": {"accuracy": acc}}``: each replica then frees
    its activations and only the small loss tensors travel to ``output_device``. A 0-dim loss gathers
    to a ``[num_chunks]`` tensor; reduce it with :func:`mean_over_devices` (or ``.sum()``) before
    ``backward``. Gradients flow back through the replicas to ``module``'s parameters.

    **Devices.** ``device_ids=None`` uses every CUDA device, or — without CUDA — the CPU: then the
    module is simply called once per chunk in this process (split mode: a plain call). Passing a
    list of identical devices (``[torch.device("cpu")] * 4``) runs the same chunks sequentially on
    that device: that is how the scatter/gather logic is tested without GPUs. Distinct CUDA
    devices use ``replicate`` + ``parallel_apply``.

    Args:
        module: the network; its ``forward`` receives one chunk's inputs.
        device_ids: CUDA indices or :class:`torch.device` objects, or None (see above).
        output_device: where gathered tensors go (default: the first device; ``-1`` = CPU).
        cpu_keywords: keyword inputs left untouched on the CPU (e.g. ``("im_info", "roidb")``).
        minibatch: minibatch mode (per-device lists) or split mode (whole-batch tensors).
        batch_outputs: gather into one output; if False, return one gathered output per chunk
            (None for a skipped empty chunk).
        dim: concatenation (and, in split mode, split) dimension.
    """

    def __init__(
        self,
        module: nn.Module,
        device_ids: Optional[Sequence[DeviceLike]] = None,
        output_device: Optional[DeviceLike] = None,
        cpu_keywords: Sequence[str] = (),
        minibatch: bool = True,
        batch_outputs: bool = True,
        dim: int = 0,
    ):
        super().__init__()
        self.module = module
        if device_ids is None:
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            devices = [torch.device("cuda", i) for i in range(count)]
        else:
            devices = [as_device(d) for d in device_ids]
            if not devices:
                raise ScatterError("device_ids is empty; pass None to use all GPUs (or the CPU)")
        # An empty list means "no CUDA": plain calls on the CPU, one per chunk.
        self.devices: List[torch.device] = devices
        self.output_device = as_device(output_device) if output_device is not None else (
            devices[0] if devices else torch.device("cpu")
        )
        self.cpu_keywords = tuple(cpu_keywords)
        self.minibatch = minibatch
        self.batch_outputs = batch_outputs
        self.dim = dim
        if len(set(devices)) == 1:
            self.module.to(devices[0])

    # The chunks of one call, before running them.
    def scatter(self, inputs: Sequence[Any], kwargs: dict) -> List[Chunk]:
        """Split this call's inputs into per-device ``(args, kwargs)`` chunks (see the class docs)."""
        if self.minibatch:
            devices = self.devices or [torch.device("cpu")] * count_minibatch_chunks(inputs, kwargs)
            return scatter_minibatch(inputs, kwargs, devices, self.cpu_keywords)
        return scatter_split(inputs, kwargs, self.devices, self.dim, self.cpu_keywords)

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """Scatter, run each non-empty chunk on its device, gather (see the class docs)."""
        if not self.devices and not self.minibatch:
            return self.module(*inputs, **kwargs)
        chunks = self.scatter(inputs, kwargs)
        devices = self.devices or [torch.device("cpu")] * len(chunks)
        active = [i for i, chunk in enumerate(chunks) if not is_empty_chunk(chunk, self.cpu_keywords)]
        if not active:
            raise ScatterError(f"all {len(chunks)} per-device chunks are empty; nothing to run")
        outputs = self._run([chunks[i] for i in active], [devices[i] for i in active])
        if self.batch_outputs:
            return gather(outputs, self.output_device, self.dim)
        per_chunk: List[Any] = [None] * len(chunks)
        for i, out in zip(active, outputs):
            per_chunk[i] = gather([out], self.output_device, self.dim)
        return per_chunk

    def _run(self, chunks: List[Chunk], devices: List[torch.device]) -> List[Any]:
        if len(set(devices)) == 1:
            # One device (or a simulated list of identical ones): no replicas, sequential calls.
            if _module_device(self.module) not in (None, devices[0]):
                self.module.to(devices[0])
            return [self.module(*args, **kw) for args, kw in chunks]
        if any(d.type != "cuda" for d in devices) or len(set(devices)) != len(devices):
            raise ScatterError(
                f"devices {[str(d) for d in devices]}: replicas need distinct CUDA devices "
                "(or a list of one repeated device, run sequentially)"
            )
        replicas = replicate(self.module, devices)
        return parallel_apply(replicas, [a for a, _ in chunks], [k for _, k in chunks], devices)


def mean_over_devices(gathered: Any) -> Any:
    """Average every gathered ``[num_chunks]`` tensor of a (nested) loss dict over its chunks.

    ``DataParallel`` returns one value per chunk for each 0-dim loss; Detectron.pytorch averaged
    them (``train_net_step.py``: ``loss.mean()``), which weights every device equally.
    """
    if isinstance(gathered, torch.Tensor) and gathered.is_floating_point():
        return gathered.mean()
    if isinstance(gathered, dict):
        return {k: mean_over_devices(v) for k, v in gathered.items()}
    return gathered
