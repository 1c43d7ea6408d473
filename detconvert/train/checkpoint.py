"""Training checkpoints keyed by parameter *name* (never by position).

A checkpoint holds ``model`` (state dict), ``momentum`` (``{param name: SGD buffer}``), ``step`` (the next
iteration to run), the ``solver`` settings and free-form ``extra``. Resuming restores the step, recomputes
the LR from the schedule at that step and restores each momentum buffer by name, so it does not matter
in which order modules were constructed (Detectron.pytorch PR #118). Fine-tuning (``--load_ckpt`` /
``--load_detectron``) loads weights only: a fresh optimizer with the new LR and no momentum (lessons L3).
Files are written atomically.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from detconvert.errors import DetconvertError
from detconvert.io.atomic import atomic_write
from detconvert.train.solver import SolverConfig, lr_at_iter, set_lr

__all__ = ["save_checkpoint", "load_checkpoint", "resume", "load_weights_for_finetune"]


def _param_names(optimizer: torch.optim.Optimizer) -> Dict[int, str]:
    names = {}
    for group in optimizer.param_groups:
        if "name" not in group:
            raise ValueError("optimizer groups must carry parameter names (use solver.build_optimizer)")
        for p in group["params"]:
            names[id(p)] = group["name"]
    return names


def save_checkpoint(path: Union[str, Path], model: nn.Module, optimizer: torch.optim.Optimizer, step: int, solver: SolverConfig, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write model weights, momentum buffers by name, step and solver settings atomically."""
    names = _param_names(optimizer)
    momentum = {}
    for p, state in optimizer.state.items():
        if "momentum_buffer" in state and state["momentum_buffer"] is not None:
            momentum[names[id(p)]] = state["momentum_buffer"].detach().cpu().clone()
    payload = {
        "format": "detconvert-train-checkpoint/1",
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "momentum": momentum,
        "step": int(step),
        "solver": dataclasses.asdict(solver),
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_write(path, "wb", True) as f:
        f.write(buffer.getvalue())


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors only: ``weights_only=True``)."""
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DetconvertError("checkpoint not found", str(path)) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error
        raise DetconvertError(f"not a detconvert training checkpoint ({type(exc).__name__})", str(path)) from None
    if not isinstance(payload, dict) or payload.get("format") != "detconvert-train-checkpoint/1":
        raise DetconvertError("not a detconvert training checkpoint (no format tag)", str(path))
    return payload


def resume(path: Union[str, Path], model: nn.Module, optimizer: torch.optim.Optimizer, solver: SolverConfig) -> int:
    """Restore weights, momentum by parameter name and the LR of the saved step.

    Returns:
        The step to continue from.

    Raises:
        DetconvertError: a saved momentum belongs to no parameter of the model, or shapes differ.
    """
    payload = load_checkpoint(path)
    model.load_state_dict(payload["model"])
    by_name = {group["name"]: group["params"][0] for group in optimizer.param_groups}
    for name, buf in payload["momentum"].items():
        p = by_name.get(name)
        if p is None:
            raise DetconvertError(f"momentum for '{name}' has no matching trainable parameter", str(path))
        if tuple(buf.shape) != tuple(p.shape):
            raise DetconvertError(f"momentum for '{name}' has shape {tuple(buf.shape)}, parameter {tuple(p.shape)}", str(path))
        optimizer.state[p]["momentum_buffer"] = buf.to(p.device, p.dtype).clone()
    step = int(payload["step"])
    set_lr(optimizer, lr_at_iter(step, solver))
    return step


def load_weights_for_finetune(path: Union[str, Path], model: nn.Module, strict: bool = True) -> None:
    """Load only the weights of a checkpoint (``--load_ckpt``): the optimizer stays fresh."""
    payload = load_checkpoint(path)
    model.load_state_dict(payload["model"], strict=strict)
