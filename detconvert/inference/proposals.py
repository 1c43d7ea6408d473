"""Precomputed proposals: Detectron's proposal files (``rpn_generator``'s pickle, or the same lists as json),
and where a precomputed-proposal (Fast R-CNN) model gets them from: a file matched to images by file stem,
or an RPN-only model run on the same images.

A :data:`ProposalSource` maps ``(image paths, decoded images)`` of one batch to one ``[R, 4]`` array of boxes
per image, in original-image pixels.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from detconvert.errors import DetconvertError, PathLike

if TYPE_CHECKING:  # the predictor pulls in torch; proposal files do not need it
    from detconvert.inference.predictor import ImageLike, Predictor

ProposalSource = Callable[[List[Path], List[np.ndarray]], List[np.ndarray]]


#: Most images a proposal file may list (COCO train has 118k) and most proposals per image (Detectron
#: keeps at most 2,000 after NMS, 12,000 before): checked on the list lengths, before any array is made.
MAX_PROPOSAL_IMAGES = 1 << 18
MAX_PROPOSALS_PER_IMAGE = 1 << 20


def read_proposals(path: PathLike) -> Tuple[List[Any], List[np.ndarray], List[Optional[np.ndarray]]]:
    """Read a proposal file: Detectron's pickle (``rpn_generator``: ``boxes``, ``scores``, ``ids``) or our json.

    The pickle is read with the restricted unpickler (never ``pickle.load``); the json holds the same
    three lists. Boxes are per image ``[R, 4]`` in original-image pixels, best first.

    Returns:
        ``(ids, boxes, scores)``, one entry per image in file order (scores may be None).

    Raises:
        DetconvertError: unreadable file, missing ``boxes``, lists of different lengths, entries that are
            not numbers, more than :data:`MAX_PROPOSAL_IMAGES` images or :data:`MAX_PROPOSALS_PER_IMAGE`
            boxes for one image.
    """
    from detconvert.io.unpickle import restricted_load

    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            with open(path, "rb") as handle:
                data = restricted_load(handle, path)
    except RecursionError:
        raise DetconvertError("cannot read proposals: nested deeper than Python allows", path) from None
    except (OSError, ValueError) as exc:
        raise DetconvertError(f"cannot read proposals: {' '.join(str(exc).split())[:200]}", path) from None
    if not isinstance(data, dict) or "boxes" not in data:
        raise DetconvertError("not a proposal file (expected a dict with 'boxes', 'scores', 'ids')", path)
    entries = {"boxes": data["boxes"], "scores": data.get("scores"), "ids": data.get("ids", data.get("indexes"))}
    if entries["boxes"] is None:  # scores and ids may be absent (None); boxes are the file
        raise DetconvertError("'boxes' is None, not a list with one entry per image", path)
    for name, value in entries.items():
        if value is not None and not isinstance(value, (list, tuple)):
            raise DetconvertError(f"'{name}' is a {type(value).__name__}, not a list with one entry per image", path)
        if value is not None and len(value) > MAX_PROPOSAL_IMAGES:
            raise DetconvertError(f"'{name}' lists {len(value):,} images, more than {MAX_PROPOSAL_IMAGES:,}", path)
    count = len(entries["boxes"])
    ids = list(range(count)) if entries["ids"] is None else list(entries["ids"])
    for image_id in ids:
        if not isinstance(image_id, (int, str, np.integer)) or (
                isinstance(image_id, int) and not -(1 << 63) <= image_id < (1 << 63)) or (
                isinstance(image_id, str) and len(image_id) > 1000):
            what = f"a {type(image_id).__name__}" if not isinstance(image_id, (int, str)) else "too long"
            raise DetconvertError(f"an image id is {what}, not a number or a file name", path)
    raw_scores = [None] * count if entries["scores"] is None else entries["scores"]
    if not (len(ids) == count == len(raw_scores)):
        raise DetconvertError(f"'boxes' ({count}), 'scores' ({len(raw_scores)}) and 'ids' ({len(ids)}) differ in length",
                              path)
    boxes = [_numbers(b, 4, f"boxes of image #{i}", path) for i, b in enumerate(entries["boxes"])]
    scores = [None if s is None else _numbers(s, 1, f"scores of image #{i}", path) for i, s in enumerate(raw_scores)]
    for i, (image_boxes, image_scores) in enumerate(zip(boxes, scores)):
        if image_scores is not None and len(image_scores) != len(image_boxes):
            raise DetconvertError(f"image #{i} has {len(image_boxes)} boxes but {len(image_scores)} scores", path)
    return ids, boxes, [None if s is None else s.reshape(-1) for s in scores]


def _numbers(value: Any, width: int, what: str, path: Path) -> np.ndarray:
    """``value`` (an array or nested lists of numbers) as float32 ``[N, width]``, N bounded before allocating."""
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_PROPOSALS_PER_IMAGE * width:
            raise DetconvertError(f"{what}: {len(value):,} entries, more than {MAX_PROPOSALS_PER_IMAGE:,} proposals",
                                  path)
        try:
            value = np.asarray(value)
        except (ValueError, TypeError, OverflowError):
            raise DetconvertError(f"{what} are not a table of numbers", path) from None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf" or value.ndim > 2:
        shown = f"a {value.dtype} array of {value.ndim} dimension(s)" if isinstance(value, np.ndarray) else (
            f"a {type(value).__name__}")
        raise DetconvertError(f"{what} are {shown}, not numbers in rows of {width}", path)
    if value.size % width or (value.ndim == 2 and value.shape[1] != width and value.size):
        raise DetconvertError(f"{what} have shape {value.shape}, not rows of {width}", path)
    if value.size // width > MAX_PROPOSALS_PER_IMAGE:
        raise DetconvertError(f"{what}: {value.size // width:,} proposals, more than {MAX_PROPOSALS_PER_IMAGE:,}", path)
    return value.astype(np.float32).reshape(-1, width)


def write_proposals(path: PathLike, ids: Sequence[Any], boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                    *, force: bool = True) -> Path:
    """Write proposals as Detectron does (``rpn_generator.generate_rpn_on_dataset``): a pickle of
    ``{'boxes': [...], 'scores': [...], 'ids': [...], 'cfg': ''}``, or the same lists as json (``.json``)."""
    import pickle

    from detconvert.io.atomic import atomic_write

    path = Path(path)
    if path.suffix.lower() == ".json":
        data = {"ids": [i if isinstance(i, (int, str)) else int(i) for i in ids],
                "boxes": [np.asarray(b, np.float32).tolist() for b in boxes],
                "scores": [np.asarray(s, np.float32).tolist() for s in scores]}
        with atomic_write(path, "w", force=force) as handle:
            json.dump(data, handle)
        return path
    data = {"boxes": [np.asarray(b, np.float32) for b in boxes], "scores": [np.asarray(s, np.float32) for s in scores],
            "ids": list(ids), "cfg": ""}
    with atomic_write(path, "wb", force=force) as handle:
        pickle.dump(data, handle, protocol=2)
    return path


def proposals_from_rpn(rpn: "Predictor", images: Sequence[ImageLike]) -> List[np.ndarray]:
    """Run an RPN-only predictor and return its proposals per image (``--rpn-weights`` pairing)."""
    if rpn.spec.pipeline != "rpn_only":
        raise DetconvertError("the proposal model must be an RPN-only model (MODEL.RPN_ONLY)", rpn.source)
    return [d.boxes for d in rpn.predict(images)]


def proposal_file_id(path: Path) -> Union[int, str]:
    """The id an image has in proposal files we write: its file stem, as an int when it is a number
    (Detectron's proposal files hold COCO image ids, which are the numbers in COCO file names)."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else stem


def _id_key(value: Any) -> str:
    # Ids compare as text, with numbers normalised, so 397133, "397133" and "000000397133" are one image.
    text = str(value.item() if isinstance(value, np.generic) else value).strip()
    return str(int(text)) if text.isdigit() else text


def file_proposal_source(proposals_path: PathLike, images: Sequence[PathLike]) -> ProposalSource:
    """Proposals for ``images`` from a proposal file (Detectron's pickle or our json, see
    :func:`read_proposals`), matched to each image by id = the image's file stem
    (numbers compared as numbers: ``000000397133.jpg`` is id 397133).

    Every image is looked up before anything runs, so a file that lacks one fails at once.

    Raises:
        DetconvertError: unreadable file, two entries with the same id, or an image without an entry
            (the message names the file and the image).
    """
    proposals_path = Path(proposals_path)
    ids, boxes, _ = read_proposals(proposals_path)
    by_id: Dict[str, np.ndarray] = {}
    for image_id, image_boxes in zip(ids, boxes):
        key = _id_key(image_id)
        if key in by_id:
            raise DetconvertError(f"two entries for image id {image_id!r}", proposals_path)
        by_id[key] = image_boxes
    table: Dict[Path, np.ndarray] = {}
    for image in images:
        image = Path(image)
        key = _id_key(image.stem)
        if key not in by_id:
            shown = ", ".join(repr(i) for i in list(ids)[:3]) + (", ..." if len(ids) > 3 else "")
            raise DetconvertError(
                f"no proposals for image {image.name} (looked for id {key!r}; the file has {len(ids)} "
                f"id(s): {shown or 'none'})", proposals_path)
        table[image] = by_id[key]
    return lambda paths, _images: [table[Path(p)] for p in paths]


def rpn_proposal_source(rpn_predictor: Any) -> ProposalSource:
    """Proposals computed by an RPN-only predictor on the same images (``--rpn-weights``)."""
    return lambda _paths, images: proposals_from_rpn(rpn_predictor, images)


def predictor_pipeline(predictor: Any) -> Optional[str]:
    """The ``ArchSpec.pipeline`` of a predictor (``e2e``, ``rpn_only``, ``retinanet``, ``precomputed_proposals``)."""
    return getattr(getattr(predictor, "spec", None), "pipeline", None)


def check_proposal_inputs(predictor: Any, has_proposals: bool, source: Optional[PathLike] = None) -> None:
    """A precomputed-proposal model needs a proposal source; a model with its own RPN (or RetinaNet)
    must not get one.

    Raises:
        DetconvertError: naming ``source`` (the weight file) and the flags to use or drop.
    """
    pipeline = predictor_pipeline(predictor)
    if pipeline == "precomputed_proposals" and not has_proposals:
        raise DetconvertError("this model reads precomputed proposals (it has no RPN): pass --proposals FILE "
                              "or --rpn-weights RPN.pkl", source)
    if has_proposals and pipeline != "precomputed_proposals":
        kind = {"rpn_only": "an RPN-only model (it makes proposals)", "retinanet": "a RetinaNet model",
                "e2e": "an end-to-end model (its own RPN makes the proposals)"}.get(pipeline, "this model")
        raise DetconvertError(f"--proposals / --rpn-weights are for precomputed-proposal (fast_rcnn) models; "
                              f"this is {kind}: drop them", source)
