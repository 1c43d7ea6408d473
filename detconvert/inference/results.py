"""COCO results json, the format of detections that Detectron's ``json_dataset_evaluator`` writes.

Record layout, one dict per detection, as ``_coco_{bbox,segms,kp}_results_one_category`` write them:

* ``image_id``: the dataset's image id; ``category_id``: the **dataset** category id (never the
  contiguous class index; see :mod:`detconvert.data.classes`); ``score``: the box score.
* ``bbox``: ``[x, y, w, h]`` from Detectron's inclusive ``[x1, y1, x2, y2]`` with ``w = x2 - x1 + 1``
  (``utils/boxes.xyxy_to_xywh``), computed in float64 like Detectron.
* ``segmentation``: the COCO RLE of the pasted mask, ``counts`` decoded to ``str`` so it is JSON.
* ``keypoints``: ``[x1, y1, 1, x2, y2, 1, ...]`` — Detectron writes visibility ``1`` for every keypoint and
  uses the box score as the instance score (``KRCNN.KEYPOINT_CONFIDENCE: bbox``; ``logit``/``prob`` use the
  mean of that heatmap row instead). Coordinates are Detectron's heatmap maxima in image pixels, written
  as they are (no -0.5 shift).

Detectron writes one file per kind; detconvert writes all fields of a detection into one record
(:mod:`detconvert.evaluation.coco` splits them again to score each kind as Detectron did).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from detconvert.data.classes import ClassTable
from detconvert.errors import DetconvertError, PathLike
from detconvert.io.atomic import atomic_write
from detconvert.structures import Detections

# The record field of each kind of result (COCOeval's iouType -> field).
RESULT_FIELDS = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


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


def run_metadata_path(results_path: PathLike) -> Path:
    """Where the run metadata of a results file goes: ``detections_coco.json`` -> ``detections_coco.run.json``
    (``frames.jsonl`` -> ``frames.run.json``).

    The results file itself stays the plain list of records pycocotools' ``loadRes`` reads, so how it was
    produced (precision, dtype, layout, device, weights) is written beside it.
    """
    path = Path(results_path)
    return path.with_name(f"{path.stem}.run.json" if path.suffix in (".json", ".jsonl") else f"{path.name}.run.json")


def run_metadata(predictor: Any, **extra: Any) -> Dict[str, Any]:
    """What produced a set of results: detconvert version, the predictor's precision policy, its weights."""
    from detconvert import __version__

    policy = getattr(predictor, "precision_policy", None)
    meta: Dict[str, Any] = {"detconvert_version": __version__}
    meta.update(policy.describe() if policy is not None else {"precision": str(getattr(predictor, "precision", "exact"))})
    source = getattr(predictor, "source", None)
    if source is not None:
        meta["weights"] = str(source)
    meta.update(extra)
    return meta


def write_run_metadata(results_path: PathLike, metadata: Dict[str, Any]) -> Path:
    """Write ``metadata`` (JSON) atomically beside ``results_path`` (:func:`run_metadata_path`); returns its path."""
    path = run_metadata_path(results_path)
    with atomic_write(path, "w") as handle:
        json.dump(metadata, handle, indent=1, sort_keys=True)
    return path


def read_results(path: PathLike) -> List[Dict[str, Any]]:
    """Read and check a COCO results json (a list of records with image_id, category_id and score).

    Raises:
        DetconvertError: missing file, not JSON, or not a list of result records.
    """
    path = Path(path)
    data = read_json(path, "results")
    if not isinstance(data, list):
        raise DetconvertError("not a COCO results file: expected a JSON list of detections", path)
    for n, record in enumerate(data):
        if not isinstance(record, dict) or not {"image_id", "category_id", "score"} <= record.keys():
            raise DetconvertError(
                f"entry {n} is not a COCO result (needs image_id, category_id, score and a bbox, "
                "segmentation or keypoints)",
                path,
            )
        if not any(k in record for k in RESULT_FIELDS.values()):
            raise DetconvertError(f"entry {n} has no bbox, segmentation or keypoints", path)
    return data


def read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DetconvertError(f"{what} file not found", path) from None
    except IsADirectoryError:
        raise DetconvertError(f"is a folder, expected a {what} json file", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DetconvertError(f"not valid JSON ({exc})", path) from None
