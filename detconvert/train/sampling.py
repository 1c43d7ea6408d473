"""Random choices behind Detectron's training targets, seeded or injected.

Detectron draws every random subsample through the global ``numpy.random`` state:
``npr.choice(pool, size, replace=False)`` for RPN foreground (``roi_data/rpn._get_rpn_blobs``), RoI
foreground/background (``roi_data/fast_rcnn._sample_rois``) and keypoint RoIs
(``roi_data/keypoint_rcnn.add_keypoint_rcnn_blobs``), and ``npr.randint(len(pool), size=n)`` for RPN
background (sampling *with* replacement) and the training scale of each image (``roi_data/minibatch``).

Our target code never touches the global state: it asks a :class:`RandomSource`. :class:`SeededSampling`
wraps a legacy ``RandomState``, so seeding it as Detectron seeded ``np.random`` reproduces Detectron's
draws exactly; :class:`ReplaySampling` returns recorded draws (the ``rng_events`` of the reference
goldens) so a port can be compared choice by choice.
"""
from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Protocol, Sequence

import numpy as np

__all__ = ["RandomSource", "SeededSampling", "ReplaySampling"]


class RandomSource(Protocol):
    """The two draws Detectron's data code makes."""

    def choice(self, pool: np.ndarray, size: int) -> np.ndarray:
        """``size`` distinct elements of ``pool`` in random order (``npr.choice(replace=False)``)."""

    def randint(self, high: int, size: int) -> np.ndarray:
        """``size`` integers uniform in ``[0, high)``, with replacement (``npr.randint``)."""


class SeededSampling:
    """Draws from a private legacy ``numpy.random.RandomState``.

    Args:
        seed: the seed; the same seed and call order as Detectron's ``np.random.seed(seed)`` yields the
            same choices.
    """

    def __init__(self, seed: Optional[int] = None) -> None:
        self.state = np.random.RandomState(seed)

    def choice(self, pool: np.ndarray, size: int) -> np.ndarray:
        return self.state.choice(pool, size=int(size), replace=False)

    def randint(self, high: int, size: int) -> np.ndarray:
        return self.state.randint(int(high), size=int(size))


class ReplaySampling:
    """Returns recorded draws in order, checking each call matches the recording.

    Args:
        events: dicts ``{"fn": "choice"|"randint", "args": [...], "kwargs": {...}, "result": [...]}`` as
            stored under ``rng_events`` in the reference ``run.json``.

    Raises:
        AssertionError: a call differs from the recorded one (function, pool or size), or the
            recording is exhausted. A mismatch means the port's control flow diverged from Detectron's.
    """

    def __init__(self, events: Iterable[Mapping[str, Any]]) -> None:
        self.events: List[Mapping[str, Any]] = list(events)
        self.position = 0

    def _next(self, fn: str, size: int) -> Mapping[str, Any]:
        if self.position >= len(self.events):
            raise AssertionError(f"no recorded draw left for {fn}(size={size})")
        event = self.events[self.position]
        self.position += 1
        recorded_size = event.get("kwargs", {}).get("size")
        if event["fn"] != fn or (recorded_size is not None and int(recorded_size) != int(size)):
            raise AssertionError(
                f"draw {self.position - 1}: port asked {fn}(size={size}), Detectron made "
                f"{event['fn']}(size={recorded_size})"
            )
        return event

    def choice(self, pool: np.ndarray, size: int) -> np.ndarray:
        event = self._next("choice", size)
        recorded_pool = event["args"][0]
        if isinstance(recorded_pool, list) and not np.array_equal(np.asarray(recorded_pool), np.asarray(pool)):
            raise AssertionError(f"draw {self.position - 1}: choice pool differs from Detectron's")
        return np.asarray(event["result"], dtype=np.asarray(pool).dtype)

    def randint(self, high: int, size: int) -> np.ndarray:
        event = self._next("randint", size)
        # ``npr.randint(0, high=n, size=k)`` and ``npr.randint(n, size=k)`` draw the same numbers.
        recorded_high = event.get("kwargs", {}).get("high", event["args"][0] if event["args"] else None)
        if recorded_high is not None and int(recorded_high) != int(high):
            raise AssertionError(f"draw {self.position - 1}: randint high {high} != recorded {recorded_high}")
        return np.asarray(event["result"], dtype=np.int64)

    @property
    def exhausted(self) -> bool:
        """True when every recorded draw was consumed."""
        return self.position == len(self.events)
