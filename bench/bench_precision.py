"""How far ``--precision fast`` moves detections from ``exact``: every shared golden and a shapes validation set.

Usage::

    python bench/bench_precision.py [--shapes-images 200] [--skip-goldens] [--json OUT.json]

For each model both precisions run on the same image(s) and fast's detections are matched to exact's
(greedily, best exact score first): an exact detection is *found* when a fast detection of the same class
overlaps it at IoU >= 0.9 (Detectron's inclusive-pixel IoU). Over the found pairs: the score MAE and max,
the box IoU, the mask IoU (mean and min, pasted masks of at least 100 pixels) and the keypoint distance
(median and 95th percentile over all keypoints, pixels). On the shapes set
(``detconvert.train.shapes.write_shapes_dataset``, a seed the shipped model never saw) both runs are also
scored with pycocotools: box and mask AP, and fast minus exact. The issue's bar: a fast mode that moves
shapes box or mask AP by more than 0.5 point is a bug.

Models: the coffee goldens of ``../shared/reference/outputs`` (Mask R-CNN FPN and C4, Keypoint R-CNN,
RetinaNet, RPN: weights regenerated from their recipes, cached as the tests cache them) and the
GroupNorm Mask R-CNN golden on chelsea; the shipped shapes model (``detconvert/data/demo``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: (config id, image) of every shared golden detconvert runs.
GOLDENS = [
    ("12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x", "coffee.png"),
    ("12_2017_baselines__e2e_mask_rcnn_R-50-C4_1x", "coffee.png"),
    ("12_2017_baselines__e2e_keypoint_rcnn_R-50-FPN_1x", "coffee.png"),
    ("12_2017_baselines__retinanet_R-50-FPN_1x", "coffee.png"),
    ("12_2017_baselines__rpn_R-50-FPN_1x", "coffee.png"),
    ("04_2018_gn_baselines__e2e_mask_rcnn_R-50-FPN_2x_gn", "chelsea.png"),
]
MATCH_IOU = 0.9
#: Masks smaller than this (exact's, pixels) are left out of the mask IoU: the synthetic golden weights give
#: many near-empty masks (0-5 pixels) whose IoU is 0 or 1 by a single pixel.
MIN_MASK_AREA = 100
SHAPES_SEED = 2026  # the shipped model was trained on seed 0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, M]`` IoU of inclusive-pixel boxes (Detectron's ``+1``)."""
    a = a.astype(np.float64)[:, None, :]
    b = b.astype(np.float64)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1, 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0] + 1) * (x[..., 3] - x[..., 1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def match(exact, fast) -> List[tuple]:
    """``(exact index, fast index)`` pairs: same class, IoU >= MATCH_IOU, greedy by exact score."""
    if len(exact) == 0 or len(fast) == 0:
        return []
    iou = box_iou(exact.boxes, fast.boxes)
    iou[exact.classes[:, None] != fast.classes[None, :]] = -1.0
    pairs, used = [], set()
    for i in np.argsort(-exact.scores, kind="stable"):
        order = [j for j in np.argsort(-iou[i], kind="stable") if j not in used and iou[i, j] >= MATCH_IOU]
        if order:
            used.add(order[0])
            pairs.append((int(i), int(order[0])))
    return pairs


class Drift:
    """Running totals of fast-vs-exact agreement over one or more images."""

    def __init__(self) -> None:
        self.exact = 0
        self.fast = 0
        self.found = 0
        self.score_err: List[float] = []
        self.box_iou: List[float] = []
        self.mask_iou: List[float] = []
        self.kp_err: List[float] = []

    def add(self, exact, fast) -> None:
        from pycocotools import mask as mask_util

        pairs = match(exact, fast)
        self.exact += len(exact)
        self.fast += len(fast)
        self.found += len(pairs)
        for i, j in pairs:
            self.score_err.append(abs(float(exact.scores[i]) - float(fast.scores[j])))
            self.box_iou.append(float(box_iou(exact.boxes[i:i + 1], fast.boxes[j:j + 1])[0, 0]))
            if exact.masks is not None and mask_util.area(exact.masks[i]) >= MIN_MASK_AREA:
                self.mask_iou.append(float(mask_util.iou([fast.masks[j]], [exact.masks[i]], [0])[0, 0]))
            if exact.keypoints is not None:
                d = exact.keypoints[i][:2] - fast.keypoints[j][:2]
                self.kp_err.extend(np.sqrt((d ** 2).sum(0)).tolist())  # one distance per keypoint

    def row(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "exact_detections": self.exact, "fast_detections": self.fast,
            "found_share": self.found / self.exact if self.exact else 1.0,
            "score_mae": float(np.mean(self.score_err)) if self.score_err else 0.0,
            "score_max": float(np.max(self.score_err)) if self.score_err else 0.0,
            "box_iou_mean": float(np.mean(self.box_iou)) if self.box_iou else 1.0,
        }
        if self.mask_iou:
            out.update(mask_iou_mean=float(np.mean(self.mask_iou)), mask_iou_min=float(np.min(self.mask_iou)),
                       masks_compared=len(self.mask_iou))
        if self.kp_err:
            out.update(keypoint_px_median=float(np.median(self.kp_err)),
                       keypoint_px_p95=float(np.percentile(self.kp_err, 95)))
        return out


def run_goldens(ids: Optional[List[str]]) -> List[Dict[str, Any]]:
    import cv2

    import detconvert
    from tests._shared import REFERENCE
    from tests.conftest import make_weights

    rows = []
    for config_id, image_name in GOLDENS:
        if ids and not any(s in config_id for s in ids):
            continue
        weights = make_weights(config_id)
        image = cv2.imread(str(REFERENCE / "images" / image_name))
        drift = Drift()
        dets = {}
        for precision in ("exact", "fast"):  # one cold run each: this measures drift, bench_infer.py speed
            predictor = detconvert.load_model(weights, device="cpu", precision=precision)
            dets[precision] = predictor.predict([image])[0]
        drift.add(dets["exact"], dets["fast"])
        row = {"model": config_id, "image": image_name, "fast": str(predictor.precision_policy), **drift.row()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _shapes_predictor(precision: str):
    from detconvert.demo import load_shapes_model
    from detconvert.inference.predictor import Predictor

    base = load_shapes_model("cpu")  # a fresh model per precision: the policy sets its memory format
    return Predictor(base.model, base.class_names, base.device, load_report=base.load_report, source=base.source,
                     precision=precision)


def run_shapes(num_images: int) -> Dict[str, Any]:
    from detconvert.evaluation.evaluate import evaluate_dataset
    from detconvert.inference.runner import read_image
    from detconvert.train.shapes import write_shapes_dataset

    with tempfile.TemporaryDirectory() as tmp:
        ann, image_dir = write_shapes_dataset(Path(tmp) / "val", num_images=num_images, seed=SHAPES_SEED)
        stats, dets = {}, {}
        images = sorted(image_dir.glob("*.png"))
        for precision in ("exact", "fast"):
            predictor = _shapes_predictor(precision)
            report = evaluate_dataset(predictor, image_dir, ann, Path(tmp) / precision, log=None, progress=False)
            stats[precision] = {kind: report.stats[kind]["AP"] * 100 for kind in ("bbox", "segm")}
            dets[precision] = [predictor.predict([read_image(p)])[0] for p in images]
            fast_policy = str(predictor.precision_policy)
    drift = Drift()
    for e, f in zip(dets["exact"], dets["fast"]):
        drift.add(e, f)
    row = {"model": "shapes (shipped demo model)", "image": f"{num_images} val images, seed {SHAPES_SEED}",
           "fast": fast_policy, **drift.row(),
           "box_ap_exact": stats["exact"]["bbox"], "box_ap_fast": stats["fast"]["bbox"],
           "mask_ap_exact": stats["exact"]["segm"], "mask_ap_fast": stats["fast"]["segm"],
           "box_ap_diff": stats["fast"]["bbox"] - stats["exact"]["bbox"],
           "mask_ap_diff": stats["fast"]["segm"] - stats["exact"]["segm"]}
    print(json.dumps(row), flush=True)
    return row


def markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| model (image) | exact dets | found by fast (IoU >= 0.9, same class) | box IoU mean | score MAE / max | "
             f"mask IoU mean / min (masks >= {MIN_MASK_AREA} px) | keypoint px median / p95 | box AP exact -> fast | "
             "mask AP exact -> fast |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["model"].split("__")[-1]
        mask = f"{r['mask_iou_mean']:.4f} / {r['mask_iou_min']:.4f}" if "mask_iou_mean" in r else "-"
        kps = f"{r['keypoint_px_median']:.2f} / {r['keypoint_px_p95']:.1f}" if "keypoint_px_median" in r else "-"
        box_ap = (f"{r['box_ap_exact']:.1f} -> {r['box_ap_fast']:.1f} ({r['box_ap_diff']:+.2f})"
                  if "box_ap_exact" in r else "-")
        mask_ap = (f"{r['mask_ap_exact']:.1f} -> {r['mask_ap_fast']:.1f} ({r['mask_ap_diff']:+.2f})"
                   if "mask_ap_exact" in r else "-")
        lines.append(f"| {name} ({r['image']}) | {r['exact_detections']} | {r['found_share'] * 100:.1f}% | "
                     f"{r['box_iou_mean']:.4f} | {r['score_mae']:.1e} / {r['score_max']:.1e} | {mask} | {kps} | "
                     f"{box_ap} | {mask_ap} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes-images", type=int, default=200, help="shapes validation images (default 200)")
    parser.add_argument("--skip-goldens", action="store_true")
    parser.add_argument("--skip-shapes", action="store_true")
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="goldens whose id contains TEXT")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    import torch

    from detconvert.inference.precision import resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fast = {resolve_precision('fast', 'cpu')}",
          flush=True)
    rows = []
    if not args.skip_goldens:
        rows += run_goldens(args.only)
    if not args.skip_shapes:
        rows.append(run_shapes(args.shapes_images))
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
