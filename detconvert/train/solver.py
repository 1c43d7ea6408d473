"""Detectron's solver on ``torch.optim.SGD`` (``utils/lr_policy.py``, ``modeling/optimizer.py``).

Learning rate: ``SOLVER.LR_POLICY`` (``steps_with_decay``, ``step``, ``steps_with_lrs``, ``exp_decay``,
``cosine_decay``) with linear or constant warm-up, returned as float32 like ``get_lr_at_iter``.

Update: Caffe2's ``MomentumSGDUpdate`` keeps ``v = lr * g + mu * v`` (lr inside the history), so Detectron
rescales ``v`` by ``new_lr / old_lr`` whenever the LR changes (``SOLVER.SCALE_MOMENTUM``). PyTorch's buffer
``b = mu * b + g`` excludes the LR, so ``torch.optim.SGD`` *is* the corrected update: we never rescale
the buffer (Detectron.pytorch's ``_CorrectMomentum`` scaled it a second time at every LR step).
Biases get twice the LR and no weight decay (Detectron scales their gradient by 2); GroupNorm affine
parameters get ``WEIGHT_DECAY_GN``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["SolverConfig", "lr_at_iter", "build_optimizer", "set_lr", "scale_to_batch_size", "caffe2_momentum_sgd"]


@dataclass(frozen=True)
class SolverConfig:
    """``cfg.SOLVER`` (defaults of ``core/config.py``)."""

    base_lr: float = 0.001
    lr_policy: str = "step"
    gamma: float = 0.1
    step_size: int = 30000
    steps: Tuple[int, ...] = ()
    lrs: Tuple[float, ...] = ()
    max_iter: int = 40000
    momentum: float = 0.9
    weight_decay: float = 0.0005
    weight_decay_gn: float = 0.0
    warm_up_iters: int = 500
    warm_up_factor: float = 1.0 / 3.0
    warm_up_method: str = "linear"
    bias_lr_factor: float = 2.0  # Detectron: bias gradients scaled by 2 in optimizer._add_parameter_update_ops
    bias_weight_decay: bool = False
    clip_grad_norm: Optional[float] = None  # not in Detectron; off by default

    _KEYS = {
        "base_lr": "BASE_LR", "lr_policy": "LR_POLICY", "gamma": "GAMMA", "step_size": "STEP_SIZE",
        "steps": "STEPS", "lrs": "LRS", "max_iter": "MAX_ITER", "momentum": "MOMENTUM",
        "weight_decay": "WEIGHT_DECAY", "weight_decay_gn": "WEIGHT_DECAY_GN", "warm_up_iters": "WARM_UP_ITERS",
        "warm_up_factor": "WARM_UP_FACTOR", "warm_up_method": "WARM_UP_METHOD",
    }

    @classmethod
    def from_detectron(cls, solver: Mapping[str, Any]) -> "SolverConfig":
        """From a ``SOLVER`` dict (missing keys keep Detectron's defaults)."""
        values = {}
        for name, key in cls._KEYS.items():
            if key in solver:
                v = solver[key]
                values[name] = tuple(v) if isinstance(v, (list, tuple)) else v
        return cls(**values)

    def with_(self, **changes: Any) -> "SolverConfig":
        return replace(self, **changes)


def _step_index(it: int, cfg: SolverConfig) -> int:
    """``lr_policy.get_step_index``: index of the last ``STEPS`` entry <= ``it``."""
    steps = list(cfg.steps) + [cfg.max_iter]
    ind = 0
    for ind, step in enumerate(steps):  # noqa: B007
        if it < step:
            break
    return ind - 1


def _policy_lr(it: int, cfg: SolverConfig) -> float:
    policy = cfg.lr_policy
    if policy == "steps_with_decay":
        return cfg.base_lr * cfg.gamma ** _step_index(it, cfg)
    if policy == "step":
        return cfg.base_lr * cfg.gamma ** (it // cfg.step_size)
    if policy == "steps_with_lrs":
        return cfg.lrs[_step_index(it, cfg)]
    if policy == "exp_decay":
        return cfg.base_lr * math.exp(math.log(cfg.gamma) * it / cfg.max_iter)
    if policy == "cosine_decay":
        return cfg.base_lr * 0.5 * (math.cos(math.pi * it / cfg.max_iter) + 1.0)
    if policy == "steps_with_relative_lrs":
        return cfg.base_lr * cfg.lrs[_step_index(it, cfg)]
    raise ValueError(f"unknown SOLVER.LR_POLICY {policy!r}")


def lr_at_iter(it: int, cfg: SolverConfig) -> float:
    """Learning rate of iteration ``it`` (``lr_policy.get_lr_at_iter``), rounded to float32 like Detectron."""
    lr = _policy_lr(it, cfg)
    if it < cfg.warm_up_iters:
        if cfg.warm_up_method == "constant":
            factor = cfg.warm_up_factor
        elif cfg.warm_up_method == "linear":
            alpha = it / cfg.warm_up_iters
            factor = cfg.warm_up_factor * (1 - alpha) + alpha
        else:
            raise ValueError(f"unknown SOLVER.WARM_UP_METHOD {cfg.warm_up_method!r}")
        lr *= factor
    return float(np.float32(lr))


def _is_bias(name: str) -> bool:
    return name.endswith(".bias") or name.endswith("_b")


def build_optimizer(model: nn.Module, cfg: SolverConfig, lr: Optional[float] = None) -> torch.optim.SGD:
    """SGD with Detectron's per-parameter rules, groups keyed by parameter *name*.

    One param group per trainable parameter, tagged ``name`` and ``lr_mult``: biases ``lr_mult =
    bias_lr_factor`` (2) and no weight decay, GroupNorm affine ``WEIGHT_DECAY_GN``, others
    ``WEIGHT_DECAY``. Frozen parameters (``requires_grad=False``) are left out.

    Args:
        model: the model.
        cfg: solver settings.
        lr: starting LR (default ``lr_at_iter(0)``).

    Returns:
        The optimizer; use :func:`set_lr` to change the LR.
    """
    gn_params = set()
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            gn_params.update(id(p) for p in module.parameters(recurse=False))
    base = lr_at_iter(0, cfg) if lr is None else lr
    groups = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in gn_params:
            mult, wd = 1.0, cfg.weight_decay_gn
        elif _is_bias(name):
            mult, wd = cfg.bias_lr_factor, (cfg.weight_decay if cfg.bias_weight_decay else 0.0)
        else:
            mult, wd = 1.0, cfg.weight_decay
        groups.append({"params": [p], "name": name, "lr_mult": mult, "weight_decay": wd, "lr": base * mult})
    return torch.optim.SGD(groups, lr=base, momentum=cfg.momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR to ``lr * lr_mult``; momentum buffers are *not* rescaled (see module doc)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def scale_to_batch_size(cfg: SolverConfig, original_batch_size: int, batch_size: int, iter_size: int = 1) -> SolverConfig:
    """Detectron.pytorch's adjustment to the actual batch (``tools/train_net_step.py``).

    ``BASE_LR *= batch_size / original`` (``original = NUM_GPUS * IMS_PER_BATCH``; gradients are *summed*
    over ``iter_size`` so the LR follows ``batch_size``, not the effective batch); ``STEPS`` and
    ``MAX_ITER`` scale by ``original / (batch_size * iter_size)`` (rounded).
    """
    step_scale = original_batch_size / float(batch_size * iter_size)
    return cfg.with_(
        base_lr=cfg.base_lr * batch_size / float(original_batch_size),
        steps=tuple(int(s * step_scale + 0.5) for s in cfg.steps),
        max_iter=int(cfg.max_iter * step_scale + 0.5),
    )


def caffe2_momentum_sgd(param: np.ndarray, grad: np.ndarray, momentum_blob: np.ndarray, lr: float, mu: float) -> Tuple[np.ndarray, np.ndarray]:
    """Caffe2 ``MomentumSGDUpdate`` (nesterov=0) for comparisons: ``v = lr g + mu v; p -= v``."""
    v = lr * grad + mu * momentum_blob
    return param - v, v
