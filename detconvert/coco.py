"""COCO results json (what Detectron's ``json_dataset_evaluator`` writes) and evaluation with pycocotools.

Record layout, one dict per detection, as ``_coco_{bbox,segms,kp}_results_one_category`` write them:

* ``image_id``: the dataset's image id; ``category_id``: the **dataset** category id (never the
  contiguous class index; see :mod:`detconvert.datasets`); ``score``: the box score.
* ``bbox``: ``[x, y, w, h]`` from Detectron's inclusive ``[x1, y1, x2, y2]`` with ``w = x2 - x1 + 1``
  (``utils/boxes.xyxy_to_xywh``), computed in float64 like Detectron.
* ``segmentation``: the COCO RLE of the pasted mask, ``counts`` decoded to ``str`` so it is JSON.
* ``keypoints``: ``[x1, y1, 1, x2, y2, 1, ...]`` — Detectron writes visibility ``1`` for every keypoint and
  uses the box score as the instance score (``KRCNN.KEYPOINT_CONFIDENCE: bbox``; ``logit``/``prob`` use the
  mean of that heatmap row instead). Coordinates are Detectron's heatmap maxima in image pixels, written
  as they are (no -0.5 shift).

Detectron writes one file per kind; detconvert writes all fields of a detection into one record and
splits them again for evaluation, so each kind is scored exactly as Detectron scored it (pycocotools'
``loadRes`` would otherwise take the box area for mask evaluation).
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np

from detconvert.datasets import ClassTable
from detconvert.errors import DetconvertError, PathLike
from detconvert.io.atomic import atomic_write
from detconvert.structures import Detections

IOU_TYPES = ("bbox", "segm", "keypoints")
# Which record field each COCOeval iouType reads.
_FIELD_OF = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}

# The rows COCOeval.summarize() prints, by index of COCOeval.stats.
_BOX_STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)
_KP_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

Log = Callable[[str], None]


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``[x1, y1, x2, y2]`` (inclusive) -> ``[x, y, w, h]`` with Detectron's ``+1`` widths, in float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.hstack([boxes[:, 0:2], boxes[:, 2:4] - boxes[:, 0:2] + 1.0])


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`xyxy_to_xywh`: ``x2 = x + w - 1``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.hstack([boxes[:, 0:2], boxes[:, 0:2] + boxes[:, 2:4] - 1.0])


def detections_to_coco(
    dets: Detections,
    image_id: int,
    class_table: ClassTable,
    *,
    keypoint_confidence: str = "bbox",
) -> List[Dict[str, Any]]:
    """COCO result records for one image's detections.

    Args:
        dets: the image's detections (RPN-only proposals are not COCO results and give no records).
        image_id: the dataset's id of this image.
        class_table: maps contiguous class indices to dataset category ids.
        keypoint_confidence: ``"bbox"`` (Detectron's default), ``"logit"`` or ``"prob"``.

    Returns:
        One dict per detection, in the detections' order.
    """
    if dets.is_proposals:
        return []
    if keypoint_confidence not in ("bbox", "logit", "prob"):
        raise ValueError(f"keypoint_confidence must be bbox, logit or prob, not {keypoint_confidence!r}")
    xywh = xyxy_to_xywh(dets.boxes)
    scores = np.asarray(dets.scores, dtype=np.float64)
    records = []
    for i in range(len(dets)):
        record: Dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(class_table.category_id(int(dets.classes[i]))),
            "bbox": [float(v) for v in xywh[i]],
            "score": float(scores[i]),
        }
        if dets.masks is not None:
            rle = dets.masks[i]
            counts = rle["counts"]
            record["segmentation"] = {
                "size": [int(s) for s in rle["size"]],
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
            }
        if dets.keypoints is not None:
            kps = np.asarray(dets.keypoints[i], dtype=np.float32)
            triplets: List[float] = []
            for k in range(kps.shape[1]):
                triplets += [float(kps[0, k]), float(kps[1, k]), 1]
            record["keypoints"] = triplets
            if keypoint_confidence != "bbox":
                row = 2 if keypoint_confidence == "logit" else 3
                record["score"] = float(np.mean(kps[row].astype(np.float64)))
        records.append(record)
    return records


def write_results(results: Sequence[Dict[str, Any]], path: PathLike) -> Path:
    """Write a COCO results json atomically; returns the path."""
    path = Path(path)
    with atomic_write(path, "w") as handle:
        json.dump(list(results), handle)
    return path


def read_results(path: PathLike) -> List[Dict[str, Any]]:
    """Read and check a COCO results json (a list of records with image_id, category_id and score).

    Raises:
        DetconvertError: missing file, not JSON, or not a list of result records.
    """
    path = Path(path)
    data = _read_json(path, "results")
    if not isinstance(data, list):
        raise DetconvertError("not a COCO results file: expected a JSON list of detections", path)
    for n, record in enumerate(data):
        if not isinstance(record, dict) or not {"image_id", "category_id", "score"} <= record.keys():
            raise DetconvertError(
                f"entry {n} is not a COCO result (needs image_id, category_id, score and a bbox, "
                "segmentation or keypoints)",
                path,
            )
        if not any(k in record for k in _FIELD_OF.values()):
            raise DetconvertError(f"entry {n} has no bbox, segmentation or keypoints", path)
    return data


def load_annotations(path: PathLike):
    """Load a COCO-format annotation json into a ``pycocotools.coco.COCO`` (quietly).

    Raises:
        DetconvertError: missing file, not JSON, or missing ``images`` / ``annotations`` / ``categories``.
    """
    from pycocotools.coco import COCO

    path = Path(path)
    data = _read_json(path, "annotation")
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
        raise DetconvertError(
            "not a COCO annotation file: expected a JSON object with images, annotations and categories", path
        )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco.createIndex()
        except (KeyError, TypeError) as exc:
            raise DetconvertError(f"malformed COCO annotations: missing field {exc}", path) from None
    coco.source = str(path)  # for messages
    return coco


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DetconvertError(f"{what} file not found", path) from None
    except IsADirectoryError:
        raise DetconvertError(f"is a folder, expected a {what} json file", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DetconvertError(f"not valid JSON ({exc})", path) from None


def missing_category_warning(results: Iterable[Dict[str, Any]], coco_gt) -> Optional[str]:
    """A warning when results use category ids the annotations do not define, else None.

    Such detections can never match and silently lower AP to 0 for those classes (the contiguous-index vs
    dataset-id mix-up of detectron2#428 / maskrcnn-benchmark#539).
    """
    known = set(coco_gt.getCatIds())
    counts: Dict[int, int] = {}
    for record in results:
        cat = record["category_id"]
        if cat not in known:
            counts[cat] = counts.get(cat, 0) + 1
    if not counts:
        return None
    listed = ", ".join(f"{c} ({n})" for c, n in sorted(counts.items())[:10])
    more = f" and {len(counts) - 10} more" if len(counts) > 10 else ""
    return (
        f"results use category ids absent from the annotations: {listed}{more} "
        f"[id (detections)]; they can never match (are the class indices mapped to the dataset's ids?)"
    )


@dataclass
class EvalReport:
    """What :func:`evaluate_results` measured.

    Attributes:
        stats: per iou type, the summary metrics by name (``AP``, ``AP50``, ... as COCOeval.stats).
        tables: per iou type, the standard table COCOeval.summarize() prints.
        warnings: messages about the inputs (missing category ids, skipped kinds).
        results_path: the results json that was evaluated, when there is one.
    """

    stats: Dict[str, Dict[str, float]] = field(default_factory=dict)
    tables: Dict[str, str] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    results_path: Optional[Path] = None


def _default_log(message: str) -> None:
    print(message)


def evaluate_results(
    coco_gt,
    results: Sequence[Dict[str, Any]],
    iou_types: Optional[Sequence[str]] = None,
    *,
    log: Optional[Log] = _default_log,
    warn: Optional[Log] = None,
) -> EvalReport:
    """Evaluate COCO results against annotations with pycocotools, as Detectron's evaluator does.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` (see :func:`load_annotations`).
        results: result records (see :func:`detections_to_coco`).
        iou_types: kinds to evaluate; default: every kind the results carry (keypoints only when the
            annotations have keypoints).
        log: receives each printed table (None: silent).
        warn: receives warnings (default: stderr as ``detconvert: warning: ...``).

    Returns:
        An :class:`EvalReport`.

    Raises:
        DetconvertError: results for images the annotations do not have, or an unknown iou type.
    """
    from pycocotools.cocoeval import COCOeval

    warn = warn or _stderr_warning
    report = EvalReport()
    source = getattr(coco_gt, "source", "annotations")
    gt_images = set(coco_gt.getImgIds())
    unknown_images = sorted({r["image_id"] for r in results} - gt_images)
    if unknown_images:
        raise DetconvertError(
            f"results name image ids the annotations do not have: {unknown_images[:10]}"
            + (" ..." if len(unknown_images) > 10 else ""),
            source,
        )
    message = missing_category_warning(results, coco_gt)
    if message:
        report.warnings.append(message)
        warn(message)

    has_gt_keypoints = any("keypoints" in a for a in coco_gt.dataset.get("annotations", []))
    if iou_types is None:
        iou_types = [t for t in IOU_TYPES if any(_FIELD_OF[t] in r for r in results)]
        if "keypoints" in iou_types and not has_gt_keypoints:
            iou_types.remove("keypoints")
            note = "keypoints not evaluated: the annotations have no keypoints"
            report.warnings.append(note)
            warn(note)
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise DetconvertError(f"unknown evaluation type '{iou_type}' (expected bbox, segm or keypoints)")
        key = _FIELD_OF[iou_type]
        # One kind per evaluation, like Detectron's separate bbox/segm/keypoint files (see module doc).
        subset = [
            {"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"], key: r[key]}
            for r in results
            if key in r
        ]
        names = _KP_STAT_NAMES if iou_type == "keypoints" else _BOX_STAT_NAMES
        if not subset:
            note = f"{iou_type}: no detections to evaluate; AP is 0"
            report.warnings.append(note)
            warn(note)
            report.stats[iou_type] = {name: 0.0 for name in names}
            continue
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet):
            coco_dt = coco_gt.loadRes(subset)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            # Detectron evaluates on all annotated images (sorted ids), detections or not.
            evaluator.params.imgIds = sorted(gt_images)
            if iou_type == "keypoints":
                # OKS needs keypoint annotations: only categories that define keypoints (COCO: person).
                evaluator.params.catIds = sorted(c["id"] for c in coco_gt.dataset["categories"] if c.get("keypoints"))
            evaluator.evaluate()
            evaluator.accumulate()
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            evaluator.summarize()
        report.stats[iou_type] = {name: float(v) for name, v in zip(names, evaluator.stats)}
        report.tables[iou_type] = table.getvalue()
        if log is not None:
            log(f"Evaluate annotation type *{iou_type}*")
            log(table.getvalue().rstrip("\n"))
    return report


def _stderr_warning(message: str) -> None:
    import sys

    print(f"detconvert: warning: {message}", file=sys.stderr)
