"""Inference over many images on several processes: the engine behind ``--num-gpus`` / ``--num-processes``.

Each process loads the model once (:class:`ModelLoader`, a picklable ``init_fn``), reads and detects its
contiguous shard of the image list, and :func:`detconvert.parallel.distributed.run_sharded` merges the
:class:`~detconvert.structures.Detections` back in input order. Pictures and the results json are then
written by the caller, once, exactly as for a single-process run.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from detconvert.parallel.distributed import WorkerContext, run_on_gpus, run_sharded, torchrun_environment
from detconvert.structures import Detections


@dataclass(frozen=True)
class ModelLoader:
    """``load_model`` arguments; called once in every worker with that worker's device."""

    weights: str
    cfg: Optional[str] = None
    dataset: Optional[str] = None
    overrides: Tuple[Tuple[str, str], ...] = ()
    precision: str = "exact"

    def __call__(self, context: WorkerContext) -> Any:
        from detconvert.inference.predictor import load_model

        return load_model(self.weights, self.cfg, dataset=self.dataset, device=str(context.device),
                          overrides=list(self.overrides), precision=self.precision)


def _detect_path(predictor: Any, path: str) -> Optional[Detections]:
    from detconvert.inference.runner import read_image

    image = read_image(path)
    return None if image is None else predictor.predict([image])[0]


def predict_paths(
    loader: ModelLoader,
    paths: Sequence[Path],
    *,
    num_gpus: Optional[int] = None,
    num_processes: int = 1,
) -> List[Optional[Detections]]:
    """Detections for every path, in order (None where the image cannot be read).

    Args:
        loader: how each worker builds its predictor.
        paths: image files.
        num_gpus: ``--num-gpus``: one process per GPU (also under ``torchrun``, any value).
        num_processes: CPU processes (gloo) when ``num_gpus`` is 0 or None and there is no torchrun.
    """
    items = [str(p) for p in paths]
    if num_gpus or torchrun_environment():
        return run_on_gpus(_detect_path, items, num_gpus, init_fn=loader)
    return run_sharded(_detect_path, items, num_processes, init_fn=loader, device="cpu")
