"""Scale-out on ``torch.distributed``: one process per device, a sharded item list, results in order.

The engine is generic: :func:`run_sharded` runs ``fn(state, item)`` over ``items`` in
``num_processes`` processes (or in the processes an existing ``torchrun`` launch created, on one
or many nodes), where ``state = init_fn(context)`` is built once per process (typically: load the
model onto ``context.device``). Each rank takes a contiguous, deterministic shard of the list; the
per-rank result lists are merged with ``all_gather_object`` in rank order, which is input order.

The command-line hookup (``detconvert infer|eval --num-gpus N``, ``tools/infer_simple.py``,
``tools/test_net.py``) is one line; the ``--num-gpus N`` flag itself is defined by the command line
(``detconvert.commands.infer.add_parallel_arguments``), which must not import torch to print ``--help``::

    results = run_on_gpus(predict_one, image_paths, args.num_gpus, init_fn=load_model)

``fn`` and ``init_fn`` must be module-level functions (spawned processes import them by name).
The same code runs under ``torchrun --nnodes M --nproc-per-node N`` (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` in the environment): the launcher's processes then
are the ranks, and every rank returns the full merged list (write outputs on
:func:`is_main_process` only).

Training code wraps its model with :func:`wrap_ddp` (single-process-per-GPU
``DistributedDataParallel``), which is what every modern reference does instead of DataParallel.
"""
from __future__ import annotations

import datetime
import gc
import os
import pickle
import queue as queue_module
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from detconvert.errors import DetconvertError

Item = TypeVar("Item")
Result = TypeVar("Result")

DEFAULT_TIMEOUT_S = 1800.0
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class WorkerContext:
    """Who this process is: handed to ``init_fn`` so it can place the model.

    Attributes:
        rank: global rank (0 .. world_size - 1).
        world_size: number of processes over all nodes.
        local_rank: rank on this node (the CUDA device index with ``device='cuda'``).
        device: the device this process computes on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def shard_bounds(num_items: int, world_size: int, rank: int) -> Tuple[int, int]:
    """``[start, stop)`` of ``rank``'s contiguous shard; shard sizes differ by at most one.

    Contiguous shards concatenated in rank order give back the input order.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Sequence[Item], world_size: int, rank: int) -> List[Item]:
    """``rank``'s contiguous shard of ``items`` (see :func:`shard_bounds`)."""
    start, stop = shard_bounds(len(items), world_size, rank)
    return list(items[start:stop])


def torchrun_environment() -> bool:
    """True when this process was started by ``torchrun`` (or another ``env://`` launcher)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def is_main_process() -> bool:
    """True on global rank 0, and in a process that is not part of a distributed job."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for the rendezvous of spawned processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _default_backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def _process_device(device_type: str, local_rank: int) -> torch.device:
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(device_type)


def _run_shard(
    context: WorkerContext,
    fn: Callable[[Any, Item], Result],
    items: Sequence[Item],
    init_fn: Optional[Callable[[WorkerContext], Any]],
    object_group: Optional[Any],
) -> List[Result]:
    """Run this rank's shard and all-gather every rank's results (in rank order = input order).

    A failure on one rank is gathered like a result, so every rank leaves the collective and
    raises with the failing rank's traceback instead of the others waiting for the timeout.
    """
    state = None
    try:
        state = init_fn(context) if init_fn is not None else None
        outcome: Tuple[str, Any] = ("ok", [fn(state, item) for item in shard(items, context.world_size, context.rank)])
    except Exception:  # reported to all ranks below
        outcome = ("error", traceback.format_exc())
    finally:
        # The state may be a DistributedDataParallel model: its reducer holds the process group and
        # sits in reference cycles (autograd hooks), so without this it is destroyed at interpreter
        # exit, after destroy_process_group — an occasional SIGABRT ("terminate called without an
        # active exception") in a worker that had already returned its results.
        del state
        gc.collect()
    gathered: List[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, outcome, group=object_group)
    failures = [(rank, text) for rank, (status, text) in enumerate(gathered) if status == "error"]
    if failures:
        rank, text = failures[0]
        raise RuntimeError(f"run_sharded: rank {rank} of {context.world_size} failed:\n{text}")
    merged: List[Result] = []
    for _status, results in gathered:
        merged.extend(results)
    return merged


def _object_group(backend: str) -> Optional[Any]:
    # Results are Python objects: gather them over gloo (CPU memory) even when the tensors of
    # the job go over nccl, so pickled results never occupy GPU memory.
    return None if backend == "gloo" else dist.new_group(backend="gloo")


def _spawned_worker(
    local_rank: int,
    world_size: int,
    port: int,
    device_type: str,
    backend: str,
    timeout_s: float,
    fn: Callable,
    items: Sequence[Any],
    init_fn: Optional[Callable],
    result_queue: Any,
) -> None:
    if device_type == "cpu":
        # The processes share the machine's cores; do not oversubscribe them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    device = _process_device(device_type, local_rank)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=local_rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        context = WorkerContext(local_rank, world_size, local_rank, device)
        merged = _run_shard(context, fn, items, init_fn, _object_group(backend))
        if local_rank == 0:
            result_queue.put(merged)
        # No rank tears its connections down while another still talks over them.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Done, and rank 0's results are flushed to the parent: leave without interpreter finalisation. Tearing
    # torch's, gloo's and our RoIAlign thread pools down at exit races now and then (SIGABRT, "terminate called
    # without an active exception", seen in CI on workers that had already finished), which failed runs whose
    # results were complete. Failures never get here: they propagate to torch.multiprocessing's error file.
    result_queue.close()
    result_queue.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _require_picklable(obj: Any, what: str) -> None:
    try:
        pickle.dumps(obj)  # serialising only: spawn pickles fn/init_fn the same way; nothing is loaded
    except Exception as exc:  # lambdas, closures, local functions
        raise TypeError(
            f"{what} must be a module-level function (spawned processes import it by name): {exc}"
        ) from exc


def _spawn(
    fn: Callable,
    items: Sequence[Any],
    num_processes: int,
    init_fn: Optional[Callable],
    device_type: str,
    backend: str,
    timeout_s: float,
) -> List[Any]:
    _require_picklable(fn, "fn")
    _require_picklable(init_fn, "init_fn")
    result_queue = mp.get_context("spawn").Queue()
    processes = mp.start_processes(
        _spawned_worker,
        args=(num_processes, find_free_port(), device_type, backend, timeout_s, fn, list(items), init_fn, result_queue),
        nprocs=num_processes,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                merged = result_queue.get(timeout=0.2)
                break
            except queue_module.Empty:
                # join() raises (with the worker's traceback) if a worker failed.
                if processes.join(timeout=0):
                    raise RuntimeError("run_sharded: all workers exited without returning results")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run_sharded: no result after {timeout_s:.0f} s")
        while not processes.join(timeout=max(1.0, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"run_sharded: workers did not exit after {timeout_s:.0f} s")
        return merged
    finally:
        for process in processes.processes:
            if process.is_alive():
                process.terminate()
        for process in processes.processes:
            process.join(timeout=5)


def run_sharded(
    fn: Callable[[Any, Item], Result],
    items: Sequence[Item],
    num_processes: int = 1,
    init_fn: Optional[Callable[[WorkerContext], Any]] = None,
    device: str = "cpu",
    backend: Optional[str] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> List[Result]:
    """Run ``fn(state, item)`` for every item over several processes; results in input order.

    Three ways to run, one code path for the work itself:

    * a distributed job already exists (``torchrun``'s environment, or an initialized process
      group): this process is one rank of it — ``num_processes`` is ignored, the launcher decides,
      on one node or many (``torchrun --nnodes``); every rank returns the merged list;
    * ``num_processes == 1``: in this process, no process group;
    * ``num_processes > 1``: that many processes are spawned on this machine (``torch.multiprocessing``,
      rendezvous on a free port of 127.0.0.1), one per CUDA device with ``device='cuda'``.

    Args:
        fn: ``fn(state, item) -> result``, a module-level function; results must be picklable.
        items: the work list (e.g. image paths); rank ``r`` gets a contiguous shard.
        num_processes: processes to spawn when no distributed job exists.
        init_fn: ``init_fn(context) -> state``, run once per process before its items (load the model
            onto ``context.device`` here); ``state`` is None without it.
        device: ``"cpu"`` or ``"cuda"`` (each process then uses ``cuda:<local rank>``).
        backend: process-group backend; default gloo on CPU, nccl on CUDA.
        timeout_s: collective and overall time limit.

    Returns:
        ``[fn(state, item) for item in items]``, in the order of ``items``.
    """
    device_type = torch.device(device).type
    backend = backend or _default_backend(device_type)
    if dist.is_available() and (dist.is_initialized() or torchrun_environment()):
        created = not dist.is_initialized()
        if created:
            dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s))
        try:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            context = WorkerContext(
                dist.get_rank(), dist.get_world_size(), local_rank, _process_device(device_type, local_rank)
            )
            return _run_shard(context, fn, items, init_fn, _object_group(dist.get_backend()))
        finally:
            if created:
                dist.destroy_process_group()
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if num_processes == 1:
        context = WorkerContext(0, 1, 0, _process_device(device_type, 0) if device_type == "cuda" else torch.device(device))
        state = init_fn(context) if init_fn is not None else None
        return [fn(state, item) for item in items]
    return _spawn(fn, items, num_processes, init_fn, device_type, backend, timeout_s)


def resolve_num_gpus(num_gpus: Optional[int]) -> int:
    """``--num-gpus``: None -> 1 if CUDA is available else 0; checked against the visible devices.

    Raises:
        DetconvertError: more GPUs requested than visible, or a negative count.
    """
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if num_gpus is None:
        return min(1, available)
    if num_gpus < 0:
        raise DetconvertError(f"must be >= 0, got {num_gpus}", "--num-gpus")
    if num_gpus > available:
        raise DetconvertError(
            f"{num_gpus} requested but {available} CUDA device(s) visible (use --num-gpus 0 for the CPU)",
            "--num-gpus",
        )
    return num_gpus


def run_on_gpus(
    fn: Callable[[Any, Item], Result],
    items: Sequence[Item],
    num_gpus: Optional[int],
    init_fn: Optional[Callable[[WorkerContext], Any]] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> List[Result]:
    """The ``--num-gpus N`` entry point: 0 = CPU in this process, N >= 1 = one process per GPU.

    Under ``torchrun`` the launcher's processes are used instead (any ``num_gpus``). See
    :func:`run_sharded` for ``fn``/``init_fn``.
    """
    if dist.is_available() and (dist.is_initialized() or torchrun_environment()):
        device = "cuda" if torch.cuda.is_available() and num_gpus != 0 else "cpu"
        return run_sharded(fn, items, init_fn=init_fn, device=device, timeout_s=timeout_s)
    count = resolve_num_gpus(num_gpus)
    if count == 0:
        return run_sharded(fn, items, 1, init_fn, "cpu", timeout_s=timeout_s)
    return run_sharded(fn, items, count, init_fn, "cuda", timeout_s=timeout_s)


def wrap_ddp(
    model: torch.nn.Module,
    device: Any,
    find_unused_parameters: bool = False,
    broadcast_buffers: bool = True,
) -> DistributedDataParallel:
    """Move ``model`` to ``device`` and wrap it in single-process-per-device ``DistributedDataParallel``.

    Call inside a process group (``run_sharded``'s ``init_fn``, or after ``torchrun`` +
    ``init_process_group``). Set ``find_unused_parameters=True`` when some parameters get no gradient
    in an iteration — e.g. a mask head skipped for a batch without foreground RoIs; it costs an
    extra graph traversal per step, so it is off by default.

    Raises:
        RuntimeError: no process group is initialized.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "wrap_ddp needs an initialized process group (run it in run_sharded's init_fn, or after "
            "torch.distributed.init_process_group under torchrun)"
        )
    device = torch.device(device)
    model.to(device)
    options: dict = {"find_unused_parameters": find_unused_parameters}
    if not broadcast_buffers:
        # Only the non-default is passed: newer torch deprecates the keyword (a FutureWarning on
        # every construction) while keeping buffer broadcasting as its default.
        options["broadcast_buffers"] = False
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index], output_device=index, **options)
    return DistributedDataParallel(model, **options)
