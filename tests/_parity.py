"""Exact-mode parity with Detectron's goldens: tolerances per CPU kernel family, and the comparisons shared
by ``test_pipeline_golden.py`` and ``test_modeling_parity.py``.

The goldens were computed by Detectron on an AVX-512 CPU, NCHW float32. In exact mode detconvert runs the
same ops in the same layout, so what is left is the summation order of the CPU kernels in effect:

* ``avx512``: ATen and oneDNN run their AVX-512 kernels (the goldens' own ISA; Intel, AMD Zen 4+);
* ``avx2``: AVX2 kernels (AMD Zen 1-3, or ``ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2`` on any CPU,
  as ``.ci/run``'s second pass does): another summation order, so looser bounds.

The bounds hold the measured errors with a margin (the numbers are in the comments of ``TOLERANCES``) and
are below what the former channels-last CPU path gave (GroupNorm golden: scores 1.5e-4 off, boxes 3.6e-3 px,
a mask at IoU 0.9959), so a layout or kernel change that moves Detectron's numbers fails here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch


@dataclass(frozen=True)
class Tolerances:
    family: str
    dense_rel: float  # image-level blobs (features, RPN / RetinaNet outputs): max|ours - golden| <= dense_rel * max|golden|
    head_rel: float  # head outputs on the golden RoIs (the same relative rule)
    own_roi_head_rel: float  # head outputs on the pipeline's own RoIs: these carry the RoIs' float noise too
    score: float  # detection scores and RoI probabilities, absolute; also the near-tie epsilon at a top-N cut
    box_px: float  # detection boxes and keypoints, original-image pixels
    roi_rel: float  # a RoI equals a golden one when every coordinate is within roi_rel * (its side + 1) ...
    roi_px: float  # ... + roi_px (network-input pixels; RPN boxes grow with exp(delta), and so does their noise)
    mask_iou: float  # decoded masks, minimum IoU


# Bounds: the exact-mode figures for scores, boxes and masks; the others set from the errors measured on
# the six shared goldens (NCHW float32, AMD EPYC with AVX-512 (no AMX), natively and with AVX2 forced), each with a
# margin of 2x or more. Measured maxima (AVX-512 | AVX2 forced): dense 2.9e-6 | 1.4e-5 (GN RPN probs), scores
# 4.6e-6 | 2.2e-5, boxes 1.5e-4 | 2.9e-4 px, masks IoU 1.0 | 1.0, heads on the golden RoIs 3.2e-6 | 1.8e-5 (GN
# mask head with AVX2), head outputs on the pipeline's own RoIs
# 4.5e-5 | 2.9e-4 (GN mask probs), RoI corners 7.9e-4 px | 4.5e-3 px (relative to the side: 1.9e-5 with AVX2).
# The former channels-last path fails them (GN golden: dense 7e-5, scores 8e-5, boxes 1.8e-3 px, head outputs 1.5e-3).
TOLERANCES: Dict[str, Tolerances] = {
    "avx512": Tolerances(
        family="avx512", dense_rel=1e-5, head_rel=1e-5, own_roi_head_rel=2e-4, score=1e-5,
        box_px=1e-3, roi_rel=1e-5, roi_px=2e-3, mask_iou=0.9999,
    ),
    "avx2": Tolerances(
        family="avx2", dense_rel=5e-5, head_rel=5e-5, own_roi_head_rel=1e-3, score=5e-5,
        box_px=5e-3, roi_rel=5e-5, roi_px=1e-2, mask_iou=0.999,
    ),
}

_AVX512_ONEDNN = ("AVX512", "AVX10", "ALL")  # DNNL_MAX_CPU_ISA values that keep oneDNN's AVX-512 kernels


def kernel_family() -> str:
    """``"avx512"`` when both ATen and oneDNN run AVX-512 kernels, else ``"avx2"``.

    ``torch.backends.cpu.get_cpu_capability()`` is what ATen dispatches to (it honours
    ``ATEN_CPU_CAPABILITY``); oneDNN (the convolutions) has its own cap, ``DNNL_MAX_CPU_ISA`` /
    ``ONEDNN_MAX_CPU_ISA``; MKL (the fully connected layers) a third, ``MKL_ENABLE_INSTRUCTIONS``, which
    ``.ci/run`` sets too but which is not read here (MKL's choice is not visible from Python). Anything below AVX-512 on either side gets the looser bounds (a CPU
    older than AVX2 too: those bounds are the wider ones, though no such CPU was measured).
    """
    aten = torch.backends.cpu.get_cpu_capability().upper()
    onednn = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    if aten.startswith("AVX512") and onednn.startswith(_AVX512_ONEDNN):
        return "avx512"
    return "avx2"


def tolerances() -> Tolerances:
    return TOLERANCES[kernel_family()]


def max_rel_error(ours, golden: np.ndarray, scale: Optional[float] = None) -> Tuple[float, float]:
    """``(max|ours - golden|, scale)`` in float64; ``scale`` defaults to ``max|golden|``."""
    if isinstance(ours, torch.Tensor):
        ours = ours.detach().cpu().numpy()
    ours = np.asarray(ours)
    assert ours.shape == golden.shape, f"shape {ours.shape} vs golden {golden.shape}"
    if not golden.size:
        return 0.0, 0.0
    scale = float(np.abs(golden).max()) if scale is None else scale
    return float(np.abs(ours.astype(np.float64) - golden.astype(np.float64)).max()), scale


def record(name: str, measured: float, bound: float) -> None:
    """With ``DETCONVERT_PARITY_LOG=<file>``, append ``family name measured bound`` (to re-measure the margins)."""
    path = os.environ.get("DETCONVERT_PARITY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{kernel_family()}\t{os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}\t{name}\t{measured:.4g}\t{bound:.4g}\n")


def assert_close(name: str, ours, golden: np.ndarray, rel: float, scale: Optional[float] = None) -> None:
    """``max|ours - golden| <= rel * max|golden|`` (or ``rel * scale``)."""
    err, scale = max_rel_error(ours, golden, scale)
    record(name, err / scale if scale else 0.0, rel)
    assert err <= rel * scale, (
        f"{name}: max abs error {err:.3g} > {rel:g} * {scale:.3g} ({kernel_family()} bounds)"
    )


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU with Detectron's +1 widths between ``[N, 4]`` and ``[M, 4]`` boxes (float64)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


# ------------------------------------------------------------------------------- RoI sets after top-N cuts


def top_n_cut(scores: np.ndarray, n: int) -> Optional[float]:
    """The score at a top-``n`` cut of ``scores`` (the n-th largest), or None when nothing is cut."""
    flat = np.asarray(scores).ravel()
    if n <= 0 or flat.size <= n:
        return None
    return float(np.partition(flat, flat.size - n)[flat.size - n])


def same_roi_pairs(
    ours: np.ndarray, golden: np.ndarray, tol: Tolerances,
    ours_scores: Optional[np.ndarray] = None, golden_scores: Optional[np.ndarray] = None,
) -> List[Tuple[int, int]]:
    """One-to-one ``(golden row, our row)`` pairs of equal RoIs: same image, every coordinate within
    ``roi_px + roi_rel * (side + 1)``, and (when scores are given) score within ``tol.score``."""
    if len(ours) == 0 or len(golden) == 0:
        return []
    g = golden.astype(np.float64)
    o = ours.astype(np.float64)
    side = np.maximum(g[:, 3] - g[:, 1], g[:, 4] - g[:, 2]) + 1
    bound = tol.roi_px + tol.roi_rel * side
    ok = (np.abs(g[:, None, 1:5] - o[None, :, 1:5]).max(-1) <= bound[:, None]) & (g[:, None, 0] == o[None, :, 0])
    if ours_scores is not None and golden_scores is not None:
        ok &= np.abs(np.ravel(golden_scores)[:, None].astype(np.float64) - np.ravel(ours_scores)[None, :]) <= tol.score
    free = np.ones(len(o), dtype=bool)
    pairs = []
    for gi in range(len(g)):
        cand = np.flatnonzero(ok[gi] & free)
        if len(cand):
            free[cand[0]] = False
            pairs.append((gi, int(cand[0])))
    return pairs


def assert_same_roi_set_up_to_ties(
    name: str,
    ours: np.ndarray, ours_scores: np.ndarray,
    golden: np.ndarray, golden_scores: np.ndarray,
    cuts: Iterable[Optional[float]],
    tol: Tolerances,
) -> Tuple[List[Tuple[int, int]], np.ndarray, np.ndarray]:
    """The RoI set equals the golden one except for near-ties at the top-N cuts it went through.

    Detectron cuts RoI sets by score (pre- and post-NMS top-N, the FPN collect step); scores that
    differ by float noise may swap across a cut, on another CPU as between Detectron and us. So a
    golden RoI may be missing from ours only when its golden score is within ``tol.score`` of one of
    ``cuts`` (the scores at those cuts, from the golden blobs), and then each RoI of ours that has no
    golden twin must be within ``tol.score`` of a cut too (it is the other half of the swap). Every
    other RoI must be in both sets.

    Returns:
        ``(pairs, golden rows missing in ours, our rows missing in golden)``.
    """
    assert ours.ndim == golden.ndim == 2 and ours.shape[1] == golden.shape[1], f"{name}: {ours.shape} vs {golden.shape}"
    cut_values = np.array([c for c in cuts if c is not None], np.float64)
    pairs = same_roi_pairs(ours, golden, tol, ours_scores, golden_scores)
    missing = np.setdiff1d(np.arange(len(golden)), [g for g, _ in pairs])
    extra = np.setdiff1d(np.arange(len(ours)), [o for _, o in pairs])

    def at_a_cut(scores: np.ndarray) -> np.ndarray:
        s = np.ravel(scores).astype(np.float64)
        if not len(cut_values):
            return np.zeros(len(s), dtype=bool)
        return np.abs(s[:, None] - cut_values[None, :]).min(1) <= tol.score

    if pairs:
        g_rows, o_rows = (np.array(x) for x in zip(*pairs))
        g, o = golden[g_rows].astype(np.float64), ours[o_rows].astype(np.float64)
        side = np.maximum(g[:, 3] - g[:, 1], g[:, 4] - g[:, 2]) + 1
        record(f"{name} corner error / bound", float((np.abs(g[:, 1:5] - o[:, 1:5]).max(1) / (tol.roi_px + tol.roi_rel * side)).max()), 1.0)
        record(f"{name} score", float(np.abs(np.ravel(golden_scores)[g_rows] - np.ravel(ours_scores)[o_rows]).max()), tol.score)
    record(f"{name} RoIs differing", float(len(missing) + len(extra)), float(len(golden)))
    bad_g = missing[~at_a_cut(np.ravel(golden_scores)[missing])]
    bad_o = extra[~at_a_cut(np.ravel(ours_scores)[extra])]
    assert not len(bad_g) and not len(bad_o), (
        f"{name}: {len(bad_g)} golden RoIs missing and {len(bad_o)} RoIs of ours not in the golden set away from "
        f"a top-N cut (cuts {cut_values.tolist()}, +-{tol.score:g}, {kernel_family()} bounds); e.g. golden "
        f"{golden[bad_g[:2]].tolist()} scores {np.ravel(golden_scores)[bad_g[:2]].tolist()}, "
        f"ours {ours[bad_o[:2]].tolist()} scores {np.ravel(ours_scores)[bad_o[:2]].tolist()}"
    )
    return pairs, missing, extra


def scores_by_roi(rois: np.ndarray, pools: Iterable[Tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The score of each row of ``rois`` looked up among ``(rois_l, scores_l)`` pools it was collected from.

    The FPN collect step keeps rows of the per-level ``rpn_rois_fpn<l>`` unchanged, so rows match bit for bit.
    """
    table = {}
    for r, s in pools:
        for row, score in zip(np.ascontiguousarray(r, np.float32), np.ravel(s)):
            table[row.tobytes()] = float(score)
    rows = np.ascontiguousarray(rois, np.float32)
    out = np.array([table.get(row.tobytes(), np.nan) for row in rows])
    assert not np.isnan(out).any(), "a collected RoI is not in the per-level sets it was collected from"
    return out
