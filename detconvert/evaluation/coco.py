"""COCO evaluation with pycocotools, scored as Detectron's ``json_dataset_evaluator`` scored it.

Results are read in the format of :mod:`detconvert.inference.results`. Detectron writes one file per kind;
detconvert writes all fields of a detection into one record and splits them again for evaluation, so each
kind is scored exactly as Detectron scored it (pycocotools' ``loadRes`` would otherwise take the box area
for mask evaluation).
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from detconvert.errors import DetconvertError, PathLike
from detconvert.inference.results import RESULT_FIELDS, read_json

IOU_TYPES = ("bbox", "segm", "keypoints")

# The rows COCOeval.summarize() prints, by index of COCOeval.stats.
_BOX_STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)
_KP_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")

Log = Callable[[str], None]


def load_annotations(path: PathLike):
    """Load a COCO-format annotation json into a ``pycocotools.coco.COCO`` (quietly).

    Raises:
        DetconvertError: missing file, not JSON, or missing ``images`` / ``annotations`` / ``categories``.
    """
    from pycocotools.coco import COCO

    path = Path(path)
    data = read_json(path, "annotation")
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
        run_metadata_path: the run metadata written beside a results json this run produced
            (:func:`detconvert.inference.results.write_run_metadata`: precision, device, weights, these stats).
    """

    stats: Dict[str, Dict[str, float]] = field(default_factory=dict)
    tables: Dict[str, str] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    results_path: Optional[Path] = None
    run_metadata_path: Optional[Path] = None


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
        iou_types = [t for t in IOU_TYPES if any(RESULT_FIELDS[t] in r for r in results)]
        if "keypoints" in iou_types and not has_gt_keypoints:
            iou_types.remove("keypoints")
            note = "keypoints not evaluated: the annotations have no keypoints"
            report.warnings.append(note)
            warn(note)
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise DetconvertError(f"unknown evaluation type '{iou_type}' (expected bbox, segm or keypoints)")
        key = RESULT_FIELDS[iou_type]
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
