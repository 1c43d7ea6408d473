"""Run a predictor over images and folders: Detectron-style pictures plus one COCO results json.

This is the library behind ``tools/infer_simple.py`` and ``detconvert infer``. Images are read with
OpenCV (BGR, as Detectron reads them); an unreadable image is skipped with a warning and the run goes
on. Every picture and the json are written atomically. Pictures are named as Detectron names them:
``<image file name>.<ext>`` (``coffee.png`` -> ``coffee.png.png``), so ``a.jpg`` and ``a.png`` never
collide.

Precomputed-proposal models (Detectron's ``fast_rcnn_*`` configs, no RPN) take their proposals from a
:data:`~detconvert.inference.proposals.ProposalSource`: a proposal file (``file_proposal_source``) or an RPN-only model run on the same
images (``rpn_proposal_source``). RPN-only models produce proposals, not detections: their pictures
show the highest-scoring proposals and the proposals go to a Detectron-format proposal file.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from detconvert.inference import vis
from detconvert.inference.tta import uses_augmentation
from detconvert.inference.proposals import (
    ProposalSource,
    check_proposal_inputs,
    predictor_pipeline,
    proposal_file_id,
    write_proposals,
)
from detconvert.inference.results import detections_to_coco, run_metadata, write_results, write_run_metadata
from detconvert.data.classes import ClassTable, table_from_names
from detconvert.errors import DetconvertError, PathLike
from detconvert.spec import ArchSpec
from detconvert.structures import Detections

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_JSON_NAME = "detections_coco.json"
DEFAULT_PROPOSALS_NAME = "proposals.pkl"

Log = Callable[[str], None]
#: ``(image paths, BGR images) -> one [R, 4] proposal array per image`` (original-image pixels, best first).


@dataclass
class InferSummary:
    """What :func:`infer_images` did.

    Attributes:
        images: images that were run, in order.
        image_ids: the ``image_id`` each image got in the results json (same order).
        pictures: pictures written.
        skipped: ``(path, reason)`` for images that could not be read.
        num_detections: detections written to the json (after ``classes`` filtering).
        json_path: the results json.
        results: the json's records.
        num_proposals: proposals an RPN-only model produced (all images).
        proposals_path: the proposal file an RPN-only run wrote.
        run_metadata_path: ``<json stem>.run.json`` beside the json: precision, dtype, layout, device, weights
            (the json itself stays the plain record list pycocotools reads).
    """

    images: List[Path] = field(default_factory=list)
    image_ids: List[int] = field(default_factory=list)
    pictures: List[Path] = field(default_factory=list)
    skipped: List[Tuple[Path, str]] = field(default_factory=list)
    num_detections: int = 0
    json_path: Optional[Path] = None
    results: List[Dict[str, Any]] = field(default_factory=list)
    num_proposals: int = 0
    proposals_path: Optional[Path] = None
    run_metadata_path: Optional[Path] = None


def collect_images(inputs: Union[PathLike, Sequence[PathLike]], image_ext: Optional[str] = None) -> List[Path]:
    """Expand files and folders into a list of image files.

    A folder contributes its image files (by extension, not recursive) in sorted order; a file is taken as
    given (whether it decodes is found out when it is read).

    Args:
        inputs: image files and/or folders.
        image_ext: only this extension inside folders (Detectron's ``--image-ext``), e.g. ``"jpg"``.

    Raises:
        DetconvertError: a path does not exist, a folder holds no images, or nothing was given.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    exts = (f".{image_ext.lower().lstrip('.')}",) if image_ext else IMAGE_EXTS
    images: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in exts)
            if not found:
                raise DetconvertError(f"no images ({', '.join('*' + e for e in exts)}) in this folder", path)
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise DetconvertError("no such image file or folder", path)
    if not images:
        raise DetconvertError("no images given (pass image files or a folder)")
    return images


def read_image(path: PathLike) -> Optional[np.ndarray]:
    """``cv2.imread`` as Detectron does (BGR uint8); None when OpenCV cannot decode the file."""
    try:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return image


def assign_image_ids(images: Sequence[Path]) -> List[int]:
    """COCO-style ids for a run: the numbers in names like ``000000397133.jpg`` when every name is such a
    number and they are unique, else the 1-based position of each image in the run."""
    stems = [p.stem for p in images]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(images) + 1))


def filter_classes(dets: Detections, keep: Optional[Iterable[int]]) -> Detections:
    """Only the detections whose contiguous class index is in ``keep`` (None keeps all)."""
    if keep is None:
        return dets
    sel = np.flatnonzero(np.isin(dets.classes, np.fromiter(keep, dtype=np.int64)))
    return Detections(
        boxes=dets.boxes[sel],
        scores=dets.scores[sel],
        classes=dets.classes[sel],
        image_size=dets.image_size,
        masks=None if dets.masks is None else [dets.masks[i] for i in sel],
        keypoints=None if dets.keypoints is None else dets.keypoints[sel],
        is_proposals=dets.is_proposals,
        extras=dets.extras,
    )


def resolve_class_filter(classes: Optional[Sequence[Union[str, int]]], table: ClassTable) -> Optional[List[int]]:
    """Class names or contiguous indices (``--classes person,dog``) -> contiguous indices.

    Raises:
        DetconvertError: a name the model does not know (the message lists a few it does).
    """
    if not classes:
        return None
    indices = []
    for item in classes:
        text = str(item).strip()
        if text.isdigit() and 1 <= int(text) < table.num_classes:
            indices.append(int(text))
            continue
        try:
            indices.append(table.index_of_name(text))
        except KeyError:
            known = ", ".join(table.names[1:6])
            raise DetconvertError(
                f"unknown class '{text}' (this model's classes: {known}, ...; {table.num_classes - 1} in all)",
                "--classes",
            ) from None
    return indices


def _summary_line(path: Path, dets: Detections, table: ClassTable, thresh: float) -> str:
    if dets.is_proposals:
        scores = f", objectness {dets.scores.min():.3f}-{dets.scores.max():.3f}" if len(dets) else ""
        return f"{path.name}: {len(dets)} proposals{scores}"
    counts: Dict[int, int] = {}
    for c in dets.classes.tolist():
        counts[c] = counts.get(c, 0) + 1
    per_class = ", ".join(
        f"{table.names[c] if c < table.num_classes else c}: {n}" for c, n in sorted(counts.items())
    )
    shown = int(np.sum(dets.scores >= thresh)) if len(dets) else 0
    scores = f", scores {dets.scores.min():.3f}-{dets.scores.max():.3f}" if len(dets) else ""
    return f"{path.name}: {len(dets)} detections ({per_class or 'none'}){scores}; {shown} at >= {thresh:g}"


def _progress(iterable, total: int, enabled: Optional[bool]):
    from tqdm import tqdm

    # tqdm writes to stderr; off when stderr is not a terminal (logs, CI) unless asked for.
    enabled = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(iterable, total=total, disable=not enabled, unit="img", desc="detconvert infer")


def infer_images(
    predictor: Any,
    inputs: Union[PathLike, Sequence[PathLike]],
    output_dir: PathLike,
    *,
    ext: str = "png",
    thresh: float = 0.7,
    kp_thresh: float = 2.0,
    always_out: bool = False,
    classes: Optional[Sequence[Union[str, int]]] = None,
    json_path: Optional[PathLike] = None,
    verbose: bool = False,
    progress: Optional[bool] = None,
    batch_size: int = 1,
    image_ext: Optional[str] = None,
    class_table: Optional[ClassTable] = None,
    log: Optional[Log] = None,
    warn: Optional[Log] = None,
    predict_paths: Optional[Callable[[List[Path]], List[Optional[Detections]]]] = None,
    proposals: Optional[ProposalSource] = None,
    proposals_out: Optional[PathLike] = None,
    proposals_drawn: int = vis.PROPOSALS_DRAWN,
) -> InferSummary:
    """Detect on every image, write Detectron-style pictures and one COCO results json.

    Args:
        predictor: a :class:`detconvert.inference.predictor.Predictor` (``predict``, ``class_names``, ``spec``).
        inputs: image files and/or folders.
        output_dir: where pictures (``<image name>.<ext>``) go; created if needed.
        ext: picture format: ``png`` (default), ``jpg`` or ``pdf``.
        thresh: score threshold for drawing (Detectron's ``--thresh``, 0.7). The json keeps every
            detection the model returned.
        kp_thresh: keypoint logit threshold for drawing (``--kp-thresh``, 2).
        always_out: also write a picture when no detection reaches ``thresh`` (``--always-out``).
        classes: keep only these classes (names or contiguous indices), in pictures and json.
        json_path: results json (default ``<output_dir>/detections_coco.json``).
        verbose: print a one-line summary per image.
        progress: tqdm progress bar; None = only when stderr is a terminal.
        batch_size: images per ``predictor.predict`` call.
        image_ext: only this extension inside folders.
        class_table: class names and category ids (default: from ``predictor.class_names``).
        log: receives per-image lines (default: stdout).
        warn: receives warnings (default: stderr as ``detconvert: warning: ...``).
        predict_paths: detect all images at once from their paths (several processes, see
            :mod:`detconvert.inference.sharded`) instead of ``predictor.predict`` per batch;
            pictures and json are still written here, in input order.
        proposals: where a precomputed-proposal model's proposals come from (required for such a
            model, refused for others); see :func:`file_proposal_source`, :func:`rpn_proposal_source`.
        proposals_out: RPN-only models: the proposal file to write (Detectron's pickle, or json for a
            ``.json`` name; default ``<output_dir>/proposals.pkl``), ids as :func:`proposal_file_id`.
        proposals_drawn: RPN-only models: how many of the highest-scoring proposals each picture
            shows (no class labels; ``thresh`` does not apply to objectness).

    Returns:
        An :class:`InferSummary`.

    Raises:
        DetconvertError: missing inputs, empty folder, unknown ``--classes`` name, bad ``ext``, no
            image at all could be read, proposals missing for (or given to) a model, ``proposals_out``
            for a model that makes no proposals.
    """
    log = log or print
    warn = warn or (lambda message: print(f"detconvert: warning: {message}", file=sys.stderr))
    ext = ext.lower().lstrip(".")
    if ext not in vis.PICTURE_EXTS:
        raise DetconvertError(f"unsupported picture format '{ext}' (choose png, jpg or pdf)", "--output-ext")
    if batch_size < 1:
        raise DetconvertError("must be at least 1", "--batch-size")
    check_proposal_inputs(predictor, proposals is not None, getattr(predictor, "source", None))
    rpn_only = predictor_pipeline(predictor) == "rpn_only"
    if proposals_out is not None and not rpn_only:
        raise DetconvertError("only an RPN-only model writes proposals; this model outputs detections",
                              "--proposals-out")
    if predict_paths is not None and proposals is not None:
        raise DetconvertError("precomputed proposals run in one process; drop --num-processes / --num-gpus",
                              "--proposals")
    images = collect_images(inputs, image_ext)
    table = class_table or table_from_names(predictor.class_names)
    keep = resolve_class_filter(classes, table)
    keypoint_names = table.keypoint_names or vis.COCO_KEYPOINT_NAMES
    output_dir = Path(output_dir)
    json_path = Path(json_path) if json_path else output_dir / DEFAULT_JSON_NAME
    summary = InferSummary(json_path=json_path)
    proposal_ids: List[Union[int, str]] = []
    proposal_boxes: List[np.ndarray] = []
    proposal_scores: List[np.ndarray] = []

    precomputed = dict(zip(images, predict_paths(images))) if predict_paths is not None else None

    def run_batch(batch: List[Tuple[Path, int, np.ndarray]]) -> None:
        if precomputed is not None:
            all_dets = [precomputed[path] for path, _, _ in batch]
        elif proposals is not None:
            arrays = [image for _, _, image in batch]
            all_dets = predictor.predict(arrays, proposals=proposals([path for path, _, _ in batch], arrays))
        elif augmented:  # many passes per image: the progress line counts them
            all_dets = predictor.predict([image for _, _, image in batch], on_pass=show_pass)
        else:
            all_dets = predictor.predict([image for _, _, image in batch])
        for (path, image_id, image), dets in zip(batch, all_dets):
            if dets.is_proposals:
                proposal_ids.append(proposal_file_id(path))
                proposal_boxes.append(dets.boxes)
                proposal_scores.append(dets.scores)
                summary.num_proposals += len(dets)
            dets = filter_classes(dets, keep)
            summary.images.append(path)
            summary.image_ids.append(image_id)
            records = detections_to_coco(dets, image_id, table)
            for record in records:
                record["file_name"] = path.name  # which file an id stands for (ignored by pycocotools)
            summary.results.extend(records)
            summary.num_detections += len(records)
            if verbose:
                log(_summary_line(path, dets, table, thresh))
            if always_out or vis.has_visible(dets, thresh):
                picture = vis.draw_detections(
                    image, dets, table.names, thresh=thresh, kp_thresh=kp_thresh, keypoint_names=keypoint_names,
                    max_proposals=proposals_drawn,
                )
                summary.pictures.append(vis.write_picture(picture, output_dir / f"{path.name}.{ext}"))

    batch: List[Tuple[Path, int, np.ndarray]] = []
    image_ids = dict(zip(images, assign_image_ids(images)))
    bar = _progress(images, len(images), progress)
    spec = getattr(predictor, "spec", None)
    augmented = isinstance(spec, ArchSpec) and uses_augmentation(spec)

    def show_pass(done: int, total: int, what: str) -> None:
        bar.set_postfix_str(f"test-time augmentation pass {done}/{total} ({what})")

    for path in bar:
        image = read_image(path)
        if image is None:
            reason = "not an image OpenCV can read; skipped"
            summary.skipped.append((path, reason))
            warn(f"{path}: {reason}")
            continue
        batch.append((path, image_ids[path], image))
        if len(batch) == batch_size:
            run_batch(batch)
            batch = []
    if batch:
        run_batch(batch)
    if not summary.images:
        raise DetconvertError(f"none of the {len(images)} image(s) could be read", Path(images[0]).parent)
    write_results(summary.results, json_path)
    summary.run_metadata_path = write_run_metadata(json_path, run_metadata(
        predictor, results=json_path.name, images=len(summary.images), detections=summary.num_detections))
    if rpn_only:

        summary.proposals_path = write_proposals(
            Path(proposals_out) if proposals_out else output_dir / DEFAULT_PROPOSALS_NAME,
            proposal_ids, proposal_boxes, proposal_scores)
    return summary
