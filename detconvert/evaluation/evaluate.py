"""Run a predictor over a COCO-format dataset and evaluate it: the library behind ``tools/test_net.py``.

The dataset is an image folder plus a COCO annotation json (``images[].file_name`` relative to the
folder). Contiguous class indices are mapped to the annotation file's category ids explicitly
(:func:`category_table`), and results whose ids the annotations lack are reported, not silently scored
as zero.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from detconvert.evaluation.coco import EvalReport, evaluate_results, load_annotations
from detconvert.inference.results import (detections_to_coco, read_results, run_metadata, write_results,
                                          write_run_metadata)
from detconvert.data.classes import ClassTable, table_from_names
from detconvert.errors import DetconvertError, PathLike
from detconvert.inference.runner import _progress, read_image

Log = Callable[[str], None]
DEFAULT_RESULTS_NAME = "detections_coco.json"


def _stderr_warning(message: str) -> None:
    print(f"detconvert: warning: {message}", file=sys.stderr)


def category_table(table: ClassTable, coco_gt) -> Tuple[ClassTable, List[str]]:
    """The model's class table with category ids taken from the annotation file.

    Rules, in order:

    1. a class whose name is an annotation category name gets that category's id;
    2. when no name matches but the annotations have exactly ``num_classes - 1`` categories, class ``k``
       gets the ``k``-th category in id order — Detectron's own ``JsonDataset`` rule
       (``json_category_id_to_contiguous_id``);
    3. otherwise a class keeps the id of its own table (COCO's ids for COCO names).

    Returns:
        The table to write results with, and notes saying which rule was used.
    """
    categories = sorted(coco_gt.loadCats(coco_gt.getCatIds()), key=lambda c: c["id"])
    by_name = {c["name"]: c["id"] for c in categories}
    matched = [name for name in table.names[1:] if name in by_name]
    notes: List[str] = []
    if matched:
        ids = [0] + [by_name.get(name, table.category_ids[i]) for i, name in enumerate(table.names) if i > 0]
        unmatched = len(table.names) - 1 - len(matched)
        if unmatched:
            notes.append(
                f"{len(matched)} classes mapped to annotation categories by name; {unmatched} not in the "
                "annotations keep their own ids"
            )
        return ClassTable(table.name, table.names, tuple(ids), table.keypoint_names), notes
    if len(categories) == table.num_classes - 1:
        notes.append(
            "no class name matches the annotation categories; class k is mapped to the k-th category by id "
            "(Detectron's JsonDataset rule)"
        )
        ids = (0, *(c["id"] for c in categories))
        return ClassTable(table.name, table.names, ids, table.keypoint_names), notes
    notes.append("no class name matches the annotation categories; classes keep their own category ids")
    return table, notes


def evaluate_results_file(
    results_path: PathLike,
    annotations: PathLike,
    *,
    iou_types: Optional[Sequence[str]] = None,
    log: Optional[Log] = print,
    warn: Optional[Log] = None,
) -> EvalReport:
    """Evaluate an existing COCO results json (``test_net.py --results FILE``).

    Raises:
        DetconvertError: unreadable results or annotations, or results for unknown images.
    """
    coco_gt = load_annotations(annotations)
    results = read_results(results_path)
    report = evaluate_results(coco_gt, results, iou_types, log=log, warn=warn or _stderr_warning)
    report.results_path = Path(results_path)
    return report


def evaluate_dataset(
    predictor: Any,
    image_dir: PathLike,
    annotations: PathLike,
    output_dir: PathLike,
    *,
    json_path: Optional[PathLike] = None,
    iou_types: Optional[Sequence[str]] = None,
    batch_size: int = 1,
    class_table: Optional[ClassTable] = None,
    progress: Optional[bool] = None,
    log: Optional[Log] = print,
    warn: Optional[Log] = None,
    predict_paths: Optional[Callable[[List[Path]], List[Any]]] = None,
    proposals: Optional[Callable[[List[Path], List[np.ndarray]], List[np.ndarray]]] = None,
) -> EvalReport:
    """Detect on every annotated image, write the results json, evaluate with pycocotools.

    Args:
        predictor: a :class:`detconvert.inference.predictor.Predictor`.
        image_dir: folder the annotation's ``file_name`` entries are relative to.
        annotations: COCO-format annotation json.
        output_dir: where the results json goes (``detections_coco.json``) unless ``json_path`` is given.
        json_path: results json path.
        iou_types: kinds to evaluate (default: all the model produces and the annotations support).
        batch_size: images per ``predict`` call.
        class_table: class names (default: ``predictor.class_names``); ids come from the annotations
            (:func:`category_table`).
        progress: tqdm bar; None = only on a terminal.
        log: receives notes and the AP tables (None: silent).
        warn: receives warnings (default: stderr).
        predict_paths: detect all images at once from their paths on several processes
            (:mod:`detconvert.inference.sharded`) instead of ``predictor.predict``.
        proposals: for precomputed-proposal models, ``proposals(paths, images) -> [R, 4] boxes per
            image`` (:func:`detconvert.inference.proposals.file_proposal_source` / ``rpn_proposal_source``).

    Raises:
        DetconvertError: missing image folder, unreadable annotations, no readable image.
    """
    warn = warn or _stderr_warning
    log_ = log or (lambda message: None)
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DetconvertError("image folder not found", image_dir)
    if batch_size < 1:
        raise DetconvertError("must be at least 1", "--batch-size")
    coco_gt = load_annotations(annotations)
    table, notes = category_table(class_table or table_from_names(predictor.class_names), coco_gt)
    for note in notes:
        log_(note)
    keypoint_confidence = "bbox"
    spec = getattr(predictor, "spec", None)
    if spec is not None and getattr(spec, "keypoint_head", None) is not None:
        keypoint_confidence = spec.keypoint_head.keypoint_confidence

    entries = sorted(coco_gt.dataset["images"], key=lambda im: im["id"])
    if not entries:
        raise DetconvertError("the annotations list no images", annotations)
    results: List[dict] = []
    batch: List[Tuple[int, Path, np.ndarray]] = []
    done = 0

    precomputed = None
    if predict_paths is not None:
        paths = [image_dir / entry["file_name"] for entry in entries]
        precomputed = dict(zip((entry["id"] for entry in entries), predict_paths(paths)))

    def run_batch() -> None:
        if precomputed is not None:
            all_dets = [precomputed[image_id] for image_id, _, _ in batch]
        else:
            images = [image for _, _, image in batch]
            given = proposals([path for _, path, _ in batch], images) if proposals is not None else None
            all_dets = predictor.predict(images, proposals=given) if given is not None else predictor.predict(images)
        for (image_id, _, _), dets in zip(batch, all_dets):
            results.extend(detections_to_coco(dets, image_id, table, keypoint_confidence=keypoint_confidence))

    for entry in _progress(entries, len(entries), progress):
        path = image_dir / entry["file_name"]
        image = read_image(path) if path.is_file() else None
        if image is None:
            warn(f"{path}: missing or unreadable; skipped (its annotations count as missed)")
            continue
        batch.append((entry["id"], path, image))
        done += 1
        if len(batch) == batch_size:
            run_batch()
            batch = []
    if batch:
        run_batch()
    if done == 0:
        raise DetconvertError(f"none of the {len(entries)} annotated images could be read", image_dir)
    out_path = Path(json_path) if json_path else Path(output_dir) / DEFAULT_RESULTS_NAME
    write_results(results, out_path)
    log_(f"wrote {len(results)} detections on {done} images to {out_path}")
    report = evaluate_results(coco_gt, results, iou_types, log=log, warn=warn)
    report.warnings[:0] = notes
    report.results_path = out_path
    # The results json stays a plain list for pycocotools; precision, device and the AP go beside it.
    report.run_metadata_path = write_run_metadata(out_path, run_metadata(
        predictor, results=out_path.name, images=done, detections=len(results),
        stats={kind: {name: float(v) for name, v in stats.items()} for kind, stats in report.stats.items()}))
    return report
