"""PASCAL VOC evaluation as Detectron does it (``detectron/datasets/voc_eval.py`` and ``voc_dataset_evaluator.py``).

The rules, all Detectron's (which are py-faster-rcnn's transcription of the VOC devkit):

* ground truth is ``Annotations/<image>.xml`` for each line of ``ImageSets/Main/<split>.txt``
  (:func:`parse_annotation` = ``parse_rec``: ``<object>`` children of the root, integer ``bndbox``);
* detections travel as Detectron's "comp4" result files ``comp4_det_<split>_<class>.txt``, one line
  ``<image> <score:.3f> <x1+1:.1f> <y1+1:.1f> <x2+1:.1f> <y2+1:.1f>`` per box: scores rounded to 3 decimals
  and boxes shifted to the devkit's 1-based pixels (:func:`comp4_lines`). Every path here — a model run, a
  comp4 folder, a COCO-style json — goes through those lines, so all three give the same AP;
* per class, detections are taken by descending score and each is matched to the ground-truth box of
  highest IoU (``+1`` widths, float64); IoU **>** 0.5 with an unmatched non-difficult box is a true
  positive, with an already matched one (a duplicate) or at most 0.5 a false positive; a best match that is
  "difficult" is neither, and difficult boxes do not count as positives (:func:`evaluate_class`);
* AP is :func:`voc_ap`: the VOC2007 11-point metric (``use_07_metric``) for years before 2010, the area
  under the interpolated PR curve otherwise (``voc_dataset_evaluator._do_python_eval``).

Where Detectron leaves a choice open, this module says what it does:

* equal (3-decimal) scores are taken in file order — a stable sort, as the official MATLAB devkit's
  ``sort`` is; Detectron's ``np.argsort(-confidence)`` is unstable, so its order of ties depends on the
  NumPy build and CPU;
* a class with no (non-difficult) ground truth in the split keeps Detectron's AP value (0 with the
  11-point metric; NaN with the area metric when it has detections) but is left out of the mean, and
  said so; Detectron's own mean would include it;
* a class of the dataset that the model has no class for is reported and left out of the mean;
* a class with no detections has AP 0 (Detectron's ``voc_eval`` fails on an empty results file).

Annotation files are untrusted input: a file over :data:`MAX_XML_BYTES` or one with a DTD (where entity
tricks live; VOC files never have one) is refused, and every malformed file is a one-line
:class:`~detconvert.errors.DetconvertError` naming it.
"""
from __future__ import annotations

import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from detconvert.data.classes import VOC_CLASSES, ClassTable, table_from_names, voc_table
from detconvert.errors import DetconvertError, PathLike
from detconvert.io.atomic import atomic_write
from detconvert.inference.results import detections_to_coco, read_results, write_results

Log = Callable[[str], None]

#: Largest annotation file read (VOC's are 1-3 KB); larger ones are refused before parsing.
MAX_XML_BYTES = 1 << 20
#: Detectron's ``ovthresh``: a detection is a true positive when its IoU is strictly above this.
IOU_THRESHOLD = 0.5
#: ``--voc-metric`` values: the VOC2007 11-point metric and the area under the PR curve (VOC2010+).
METRICS = ("07", "area")
METRIC_NAMES = {"07": "VOC07 11-point", "area": "area under the PR curve"}
SUMMARY_NAME = "voc_eval.json"
RESULTS_JSON_NAME = "detections_coco.json"
#: COCO's spellings of six VOC classes, so that a COCO model is evaluated on VOC without a ``--classes-map``.
COCO_TO_VOC_NAMES = {"airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa",
                     "dining table": "diningtable", "potted plant": "pottedplant", "tv": "tvmonitor"}
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")
_YEAR = re.compile(r"VOC(\d{4})")


def _stderr_warning(message: str) -> None:
    print(f"detconvert: warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# Ground truth


@dataclass(frozen=True)
class VocObject:
    """One ``<object>`` of an annotation file: class name, ``bndbox`` (1-based inclusive pixels), difficult."""

    name: str
    bbox: Tuple[int, int, int, int]
    difficult: bool


class _RefuseDoctype(ET.TreeBuilder):
    # The C parser calls target.doctype() when <!DOCTYPE starts, before any entity of its internal subset is
    # declared, so no entity (internal expansion bombs, external files) is ever defined.
    def doctype(self, name, pubid, system):  # noqa: D401 - ElementTree's hook name
        raise _DoctypeRefused()


class _DoctypeRefused(Exception):
    pass


def parse_annotation(path: PathLike) -> List[VocObject]:
    """Detectron's ``parse_rec``: the ``<object>`` elements of a VOC annotation file.

    ``name`` and ``bndbox`` (integer ``xmin ymin xmax ymax``) are required; ``difficult`` is 0 when absent
    (Detectron reads it unconditionally; VOC files always have it). ``pose`` and ``truncated`` play no part
    in the metric and are not read.

    Raises:
        DetconvertError: missing, too large, not XML, a DTD, or an object without a name or an integer box.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_XML_BYTES + 1)
    except FileNotFoundError:
        raise DetconvertError("annotation file not found", path) from None
    except OSError as exc:
        raise DetconvertError(f"cannot read annotation: {exc.strerror or exc}", path) from None
    if len(data) > MAX_XML_BYTES:
        raise DetconvertError(f"annotation file larger than {MAX_XML_BYTES} bytes; refused", path)
    parser = ET.XMLParser(target=_RefuseDoctype())
    try:
        parser.feed(data)
        root = parser.close()
    except _DoctypeRefused:
        raise DetconvertError("XML with a DTD (<!DOCTYPE>) refused: VOC annotations have none", path) from None
    except ET.ParseError as exc:
        raise DetconvertError(f"not valid XML ({exc})", path) from None
    objects = []
    for n, obj in enumerate(root.findall("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DetconvertError(f"object {n} has no <name>", path)
        box = obj.find("bndbox")
        if box is None:
            raise DetconvertError(f"object {n} ({name}) has no <bndbox>", path)
        coords = []
        for key in ("xmin", "ymin", "xmax", "ymax"):
            text = (box.findtext(key) or "").strip()
            try:
                coords.append(int(text))  # Detectron: int(bbox.find(key).text)
            except ValueError:
                raise DetconvertError(f"object {n} ({name}): <{key}> is {text!r}, expected an integer", path) from None
        difficult_text = (obj.findtext("difficult") or "0").strip()
        try:
            difficult = bool(int(difficult_text))
        except ValueError:
            raise DetconvertError(f"object {n} ({name}): <difficult> is {difficult_text!r}, expected 0 or 1",
                                  path) from None
        objects.append(VocObject(name, tuple(coords), difficult))
    return objects


def write_annotation(path: PathLike, file_name: str, height: int, width: int, objects: Sequence[VocObject]) -> Path:
    """Write a VOC annotation file (atomically): ``filename``, ``size`` and one ``<object>`` per entry, with the
    fields Detectron's ``parse_rec`` reads (``pose`` Unspecified, ``truncated`` 0)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for obj in objects:
        node = ET.SubElement(root, "object")
        for key, value in (("name", obj.name), ("pose", "Unspecified"), ("truncated", "0"),
                           ("difficult", str(int(obj.difficult)))):
            ET.SubElement(node, key).text = value
        box = ET.SubElement(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.bbox):
            ET.SubElement(box, key).text = str(int(value))
    ET.indent(root)
    with atomic_write(path, "wb") as handle:
        handle.write(ET.tostring(root, encoding="utf-8") + b"\n")
    return Path(path)


@dataclass
class VocDataset:
    """One split of a VOC-format year folder (``VOCdevkit/VOC2007``): image names and their objects.

    Attributes:
        root: the year folder (holds ``Annotations/``, ``ImageSets/Main/``, ``JPEGImages/``).
        split: the image set (``test``, ``val``, ...).
        year: the year in the folder name (``VOC2007`` -> 2007), None when it has none.
        image_names: the split's names, in file order.
        objects: image name -> its objects.
    """

    root: Path
    split: str
    year: Optional[int]
    image_names: List[str]
    objects: Dict[str, List[VocObject]]

    @property
    def class_names(self) -> List[str]:
        """The dataset's classes: VOC's 20 (in VOC's order) when every annotated name is one of them, else
        the annotated names, sorted."""
        names = {o.name for objs in self.objects.values() for o in objs}
        if names <= set(VOC_CLASSES):
            return list(VOC_CLASSES)
        return sorted(names)

    def num_positives(self, class_name: str) -> Tuple[int, int]:
        """``(non-difficult, difficult)`` object counts of a class."""
        objs = [o for im in self.image_names for o in self.objects[im] if o.name == class_name]
        difficult = sum(o.difficult for o in objs)
        return len(objs) - difficult, difficult

    def image_path(self, image_name: str) -> Optional[Path]:
        """``JPEGImages/<name>.jpg`` (or another image extension), None when there is none."""
        for ext in _IMAGE_EXTENSIONS:
            path = self.root / "JPEGImages" / f"{image_name}{ext}"
            if path.is_file():
                return path
        return None

    def default_metric(self) -> str:
        """Detectron's choice: ``use_07_metric`` for years before 2010 ("The PASCAL VOC metric changed in 2010")."""
        if self.year is None:
            raise DetconvertError("no VOC year in the folder name (VOC2007, VOC2012, ...) to choose the metric "
                                  "from; pass --voc-metric 07 or --voc-metric area", self.root)
        return "07" if self.year < 2010 else "area"


def read_dataset(root: PathLike, split: str) -> VocDataset:
    """Read ``ImageSets/Main/<split>.txt`` and the annotation file of each of its images.

    Raises:
        DetconvertError: not a VOC year folder, a missing split file, a name listed twice, a bad annotation.
    """
    root = Path(root)
    if not root.is_dir():
        raise DetconvertError("VOC folder not found", root)
    if not (root / "Annotations").is_dir():
        years = sorted(p.name for p in root.iterdir() if p.is_dir() and _YEAR.fullmatch(p.name))
        hint = f"; it holds {', '.join(years)}: pass one of them" if years else " (e.g. VOCdevkit/VOC2007)"
        raise DetconvertError(f"not a VOC year folder: no Annotations/ folder{hint}", root)
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        found = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise DetconvertError(f"split file not found (splits here: {', '.join(found) or 'none'})", split_file)
    try:
        lines = split_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DetconvertError(f"cannot read split file: {exc}", split_file) from None
    names: List[str] = []
    seen = set()
    for line_no, line in enumerate(lines, 1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise DetconvertError(f"line {line_no}: image {name!r} is listed twice", split_file)
        seen.add(name)
        names.append(name)
    if not names:
        raise DetconvertError("the split lists no images", split_file)
    objects = {name: parse_annotation(root / "Annotations" / f"{name}.xml") for name in names}
    match = _YEAR.fullmatch(root.resolve().name)
    return VocDataset(root, split, int(match.group(1)) if match else None, names, objects)


# ---------------------------------------------------------------------------------------------------------
# The metric


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """Detectron's ``voc_ap``: AP from the recall and precision of the detections taken by descending score.

    Args:
        rec: cumulative recall after each detection.
        prec: cumulative precision after each detection.
        use_07_metric: the VOC2007 11-point metric: the mean over ``t`` in ``np.arange(0., 1.1, 0.1)`` of the
            best precision at recall ``>= t`` (those ``t`` are NumPy's, e.g. 0.30000000000000004, so a recall
            of exactly 0.3 does not reach the fourth point). Otherwise the area under the precision envelope,
            summed where recall changes.
    """
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):  # the precision envelope, right to left
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@dataclass
class ClassDetections:
    """One class's detections as a comp4 file holds them (after its rounding).

    Attributes:
        image_names: the image of each detection.
        scores: ``[N]`` float64.
        boxes: ``[N, 4]`` float64 ``x1 y1 x2 y2`` in the devkit's 1-based inclusive pixels.
    """

    image_names: List[str]
    scores: np.ndarray
    boxes: np.ndarray

    @classmethod
    def empty(cls) -> "ClassDetections":
        return cls([], np.zeros(0), np.zeros((0, 4)))

    def __len__(self) -> int:
        return len(self.image_names)


@dataclass
class ClassEvaluation:
    """The AP of one class (Detectron's ``rec, prec, ap``) with its counts.

    Attributes:
        name: the VOC class name.
        ap: Detectron's value (NaN possible with no positives: see the module notes).
        num_positives: non-difficult ground-truth objects (``npos``).
        num_difficult: difficult objects (neither counted nor penalised).
        num_detections: detections in the results.
        true_positives: detections that matched (the last value of ``tp``).
        recall: cumulative recall per detection, by descending score.
        precision: cumulative precision per detection.
    """

    name: str
    ap: float
    num_positives: int
    num_difficult: int
    num_detections: int
    true_positives: int
    recall: np.ndarray
    precision: np.ndarray


def evaluate_class(
    objects: Mapping[str, Sequence[VocObject]],
    image_names: Sequence[str],
    class_name: str,
    detections: ClassDetections,
    use_07_metric: bool,
    iou_threshold: float = IOU_THRESHOLD,
) -> ClassEvaluation:
    """Detectron's ``voc_eval`` for one class, from parsed annotations and detections.

    Args:
        objects: image name -> its ground-truth objects (all classes).
        image_names: the split; detections on other images must have been removed.
        class_name: the class scored.
        detections: the class's detections (:func:`parse_comp4_lines`).
        use_07_metric: the 11-point metric (else the area).
        iou_threshold: ``ovthresh``.
    """
    gt_boxes: Dict[str, np.ndarray] = {}
    gt_difficult: Dict[str, np.ndarray] = {}
    gt_matched: Dict[str, List[bool]] = {}
    npos = 0
    num_difficult = 0
    for name in image_names:
        objs = [o for o in objects[name] if o.name == class_name]
        gt_boxes[name] = np.array([o.bbox for o in objs], dtype=np.float64).reshape(-1, 4)
        gt_difficult[name] = np.array([o.difficult for o in objs], dtype=bool)
        gt_matched[name] = [False] * len(objs)
        npos += int(np.sum(~gt_difficult[name]))
        num_difficult += int(np.sum(gt_difficult[name]))

    # Stable: ties keep file order, as the MATLAB devkit's sort does (see the module notes).
    order = np.argsort(-detections.scores, kind="stable")
    nd = len(order)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d, k in enumerate(order):
        image = detections.image_names[k]
        bb = detections.boxes[k]
        bbgt = gt_boxes[image]
        ovmax = -np.inf
        jmax = -1
        if bbgt.size > 0:
            ixmin = np.maximum(bbgt[:, 0], bb[0])
            iymin = np.maximum(bbgt[:, 1], bb[1])
            ixmax = np.minimum(bbgt[:, 2], bb[2])
            iymax = np.minimum(bbgt[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (bbgt[:, 2] - bbgt[:, 0] + 1.0) * (bbgt[:, 3] - bbgt[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = int(np.argmax(overlaps))
        if ovmax > iou_threshold:
            if not gt_difficult[image][jmax]:
                if not gt_matched[image][jmax]:
                    tp[d] = 1.0
                    gt_matched[image][jmax] = True
                else:
                    fp[d] = 1.0  # a duplicate of a detected object
        else:
            fp[d] = 1.0

    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    with np.errstate(divide="ignore", invalid="ignore"):  # npos == 0: Detectron's NaN/inf recall
        rec = tp / float(npos)
    # avoid dividing by zero when the first detection matches a difficult object (Detectron's comment)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    with np.errstate(invalid="ignore"):
        ap = voc_ap(rec, prec, use_07_metric)
    return ClassEvaluation(class_name, ap, npos, num_difficult, nd, int(tp[-1]) if nd else 0, rec, prec)


# ---------------------------------------------------------------------------------------------------------
# comp4 result files


def comp4_file_name(split: str, class_name: str) -> str:
    """``comp4_det_<split>_<class>.txt`` (Detectron's name without its per-run salt)."""
    return f"comp4_det_{split}_{class_name}.txt"


def comp4_lines(image_name: str, boxes: np.ndarray, scores: np.ndarray) -> List[str]:
    """Detectron's ``_write_voc_results_files`` lines for one image and class.

    Args:
        image_name: the split's name of the image.
        boxes: ``[N, 4]`` ``x1 y1 x2 y2`` in 0-based image pixels (what the model returns). Detectron's boxes are
            float32 and ``dets[k, 0] + 1`` stays float32; so it does here.
        scores: ``[N]``.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) + np.float32(1)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    return [f"{image_name} {float(s):.3f} {float(b[0]):.1f} {float(b[1]):.1f} {float(b[2]):.1f} {float(b[3]):.1f}\n"
            for b, s in zip(boxes, scores)]


def parse_comp4_lines(lines: Sequence[str], source: PathLike) -> ClassDetections:
    """Read comp4 lines (``<image> <score> <x1> <y1> <x2> <y2>``); blank lines are skipped.

    Raises:
        DetconvertError: a line without six fields or with a field that is not a number.
    """
    names: List[str] = []
    values: List[List[float]] = []
    for line_no, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise DetconvertError(f"line {line_no}: expected '<image> <score> <x1> <y1> <x2> <y2>', got "
                                  f"{len(fields)} fields", source)
        try:
            numbers = [float(v) for v in fields[1:]]
        except ValueError:
            raise DetconvertError(f"line {line_no}: score and box must be numbers: {line.strip()[:80]!r}",
                                  source) from None
        if not all(math.isfinite(v) for v in numbers):
            raise DetconvertError(f"line {line_no}: score and box must be finite: {line.strip()[:80]!r}", source)
        names.append(fields[0])
        values.append(numbers)
    if not names:
        return ClassDetections.empty()
    array = np.array(values, dtype=np.float64)
    return ClassDetections(names, array[:, 0], array[:, 1:5])


def find_comp4_files(folder: PathLike, split: str) -> Dict[str, Path]:
    """class name -> its file in ``folder``: ``comp4_det_<split>_<class>.txt``, or Detectron's salted
    ``comp4_<uuid>_det_<split>_<class>.txt`` (what its ``output_dir`` keeps).

    Raises:
        DetconvertError: not a folder, no file for the split, or two files for one class.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DetconvertError("results folder not found", folder)
    marker = f"_det_{split}_"
    found: Dict[str, Path] = {}
    for path in sorted(folder.glob(f"comp4*{marker}*.txt")):
        class_name = path.name[path.name.index(marker) + len(marker):-len(".txt")]
        if class_name in found:
            raise DetconvertError(f"two result files for class {class_name!r}: {found[class_name].name} and "
                                  f"{path.name} (results of two runs?)", folder)
        found[class_name] = path
    if not found:
        other = sorted({p.name.split("_det_", 1)[1].rsplit("_", 1)[0] for p in folder.glob("comp4*_det_*_*.txt")})
        hint = f" (files for split {', '.join(other)} are there)" if other else ""
        raise DetconvertError(f"no comp4_det_{split}_<class>.txt result files{hint}", folder)
    return found


def _read_text_lines(path: Path) -> List[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DetconvertError(f"cannot read results: {exc}", path) from None


# ---------------------------------------------------------------------------------------------------------
# Class names: model (or results) classes -> the dataset's VOC class names


def read_classes_map(path: PathLike) -> Dict[str, str]:
    """A ``--classes-map`` file: one ``model class = VOC class`` per line (``#`` comments, blank lines ignored).

    Model classes not listed are not evaluated.

    Raises:
        DetconvertError: unreadable, a line without ``=``, a class listed twice, a VOC class mapped twice.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DetconvertError(f"cannot read classes map: {getattr(exc, 'strerror', None) or exc}", path) from None
    mapping: Dict[str, str] = {}
    for line_no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        source, sep, target = (part.strip() for part in line.partition("="))
        if not sep or not source or not target:
            raise DetconvertError(f"line {line_no}: expected 'model class = VOC class', got {line[:80]!r}", path)
        if source in mapping:
            raise DetconvertError(f"line {line_no}: model class {source!r} is mapped twice", path)
        if target in mapping.values():
            raise DetconvertError(f"line {line_no}: VOC class {target!r} is mapped from two model classes", path)
        mapping[source] = target
    if not mapping:
        raise DetconvertError("classes map is empty (expected 'model class = VOC class' lines)", path)
    return mapping


@dataclass
class ClassMapping:
    """Which model (or results) class is scored as which dataset class.

    Attributes:
        to_dataset: model class name -> dataset class name, for the classes evaluated.
        evaluated: dataset classes scored, in the dataset's order.
        missing: dataset classes no model class maps to (reported, not in the mean).
        unused: model classes not scored (no dataset class of that name, or left out of the map).
    """

    to_dataset: Dict[str, str]
    evaluated: List[str]
    missing: List[str]
    unused: List[str]


def map_classes(model_classes: Sequence[str], dataset_classes: Sequence[str],
                classes_map: Optional[Mapping[str, str]] = None, source: Optional[PathLike] = None) -> ClassMapping:
    """Map model class names to dataset class names.

    Without ``classes_map`` a model class is scored as the dataset class of the same name, or of its VOC name
    for COCO's six spellings (``airplane`` -> ``aeroplane``, ``tv`` -> ``tvmonitor``, ...). With one, exactly
    its entries are used, and their targets count as dataset classes even when the split has no object of
    them (they are then reported as having no ground truth).

    Raises:
        DetconvertError: a map entry names a class the model does not have.
    """
    model_classes = [c for c in model_classes if c != "__background__"]
    dataset = list(dataset_classes)
    to_dataset: Dict[str, str] = {}
    if classes_map is not None:
        unknown = [m for m in classes_map if m not in model_classes]
        if unknown:
            raise DetconvertError(f"{', '.join(map(repr, unknown))} not among the model's classes "
                                  f"({', '.join(model_classes[:30])})", source or "--classes-map")
        to_dataset = dict(classes_map)
        dataset += [t for t in to_dataset.values() if t not in dataset]
    else:
        for name in model_classes:
            if name in dataset:
                to_dataset[name] = name
        for name in model_classes:
            alias = COCO_TO_VOC_NAMES.get(name)
            if name not in to_dataset and alias in dataset and alias not in to_dataset.values():
                to_dataset[name] = alias
    targets = set(to_dataset.values())
    return ClassMapping(
        to_dataset=to_dataset,
        evaluated=[c for c in dataset if c in targets],
        missing=[c for c in dataset if c not in targets],
        unused=[c for c in model_classes if c not in to_dataset],
    )


# ---------------------------------------------------------------------------------------------------------
# Reports


@dataclass
class VocReport:
    """What a VOC evaluation found.

    Attributes:
        split: the image set; year: the folder's year (or None); metric: ``"07"`` or ``"area"``.
        classes: one :class:`ClassEvaluation` per evaluated class, in the dataset's order.
        missing: dataset class -> its objects (difficult included), for classes that have objects in the split
            and that no model class maps to.
        unused: model / results classes not scored.
        mean_ap: the mean AP over the evaluated classes that have ground truth (NaN if none has).
        num_images: images in the split; num_images_read: of them, with an image read (model runs).
        output_dir: where comp4 files and the summary went (model runs), else None.
        notes: what else a user should know (written to the summary too).
    """

    split: str
    year: Optional[int]
    metric: str
    classes: List[ClassEvaluation]
    missing: Dict[str, int]
    unused: List[str]
    num_images: int
    num_images_read: Optional[int] = None
    output_dir: Optional[Path] = None
    notes: List[str] = field(default_factory=list)

    @property
    def scored(self) -> List[ClassEvaluation]:
        """The classes in the mean: those with at least one non-difficult object."""
        return [c for c in self.classes if c.num_positives > 0]

    @property
    def mean_ap(self) -> float:
        scored = self.scored
        return float(np.mean([c.ap for c in scored])) if scored else float("nan")

    @property
    def title(self) -> str:
        year = f"VOC{self.year} " if self.year is not None else ""
        return f"{year}{self.split}"

    def format_table(self) -> str:
        """Per-class AP (Detectron prints ``AP for <cls> = {:.4f}``) and the mean, as text."""
        width = max([5, *(len(c.name) for c in self.classes), *(len(m) for m in self.missing)])
        lines = [f"{'class':<{width}}  {'GT':>6}  {'diff':>5}  {'dets':>7}  {'TP':>6}  {'AP':>6}"]
        for c in self.classes:
            ap = f"{c.ap:.4f}" if c.num_positives else "   n/a"
            lines.append(f"{c.name:<{width}}  {c.num_positives:>6}  {c.num_difficult:>5}  {c.num_detections:>7}  "
                         f"{c.true_positives:>6}  {ap:>6}")
        for name, count in self.missing.items():
            lines.append(f"{name:<{width}}  {count:>6}  {'':>5}  {'-':>7}  {'-':>6}  {'absent':>6}")
        lines.append(f"mAP = {self.mean_ap:.4f} over {len(self.scored)} classes "
                     f"({METRIC_NAMES[self.metric]}, {self.title}, {self.num_images} images, IoU > {IOU_THRESHOLD})")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        def number(v: float) -> Optional[float]:
            return None if math.isnan(v) else float(v)

        return {
            "split": self.split, "year": self.year, "metric": self.metric, "iou_threshold": IOU_THRESHOLD,
            "num_images": self.num_images, "num_images_read": self.num_images_read,
            "mAP": number(self.mean_ap), "num_classes_in_mean": len(self.scored),
            "classes": {c.name: {"ap": number(c.ap), "num_positives": c.num_positives,
                                 "num_difficult": c.num_difficult, "num_detections": c.num_detections,
                                 "true_positives": c.true_positives} for c in self.classes},
            "missing_classes": self.missing, "unused_classes": self.unused, "notes": self.notes,
        }


def _resolve_metric(dataset: VocDataset, metric: Optional[str]) -> str:
    if metric is None:
        return dataset.default_metric()
    if metric not in METRICS:
        raise DetconvertError(f"unknown VOC metric {metric!r}: expected 07 or area", "--voc-metric")
    return metric


def evaluate_class_detections(
    dataset: VocDataset,
    detections: Mapping[str, ClassDetections],
    mapping: ClassMapping,
    metric: str,
    *,
    warn: Optional[Log] = None,
) -> VocReport:
    """Score the detections of each evaluated dataset class (keys of ``detections`` are dataset class names).

    Detections on images outside the split are dropped with a warning (Detectron fails on them).

    Raises:
        DetconvertError: there are detections and none is on an image of the split.
    """
    warn = warn or _stderr_warning
    split_names = set(dataset.image_names)
    total = sum(len(d) for d in detections.values())
    outside: Dict[str, int] = {}
    kept: Dict[str, ClassDetections] = {}
    for name, dets in detections.items():
        inside = [i for i, im in enumerate(dets.image_names) if im in split_names]
        for i in set(range(len(dets))) - set(inside):
            outside[dets.image_names[i]] = outside.get(dets.image_names[i], 0) + 1
        kept[name] = ClassDetections([dets.image_names[i] for i in inside], dets.scores[inside],
                                     dets.boxes[inside].reshape(-1, 4))
    notes: List[str] = []
    if outside:
        if sum(outside.values()) == total:
            example = sorted(outside)[0]
            raise DetconvertError(f"none of the {total} detections is on an image of split {dataset.split!r} "
                                  f"(e.g. {example!r}; the split has e.g. {dataset.image_names[0]!r})")
        notes.append(f"{sum(outside.values())} detections on {len(outside)} images outside split "
                     f"{dataset.split!r} ignored (e.g. {sorted(outside)[0]!r})")
    use_07 = metric == "07"
    classes = [evaluate_class(dataset.objects, dataset.image_names, name,
                              kept.get(name, ClassDetections.empty()), use_07) for name in mapping.evaluated]
    # Dataset classes without objects in the split (VOC's 20 on a subset) have nothing to miss: not reported.
    missing = {name: count for name in mapping.missing if (count := sum(dataset.num_positives(name))) > 0}
    no_gt = [c.name for c in classes if c.num_positives == 0]
    if no_gt:
        notes.append(f"no ground truth in split {dataset.split!r} for {', '.join(no_gt)}: left out of the mean "
                     "(Detectron would average in their AP: 0 with the 11-point metric, NaN with the area)")
    if missing:
        counted = ", ".join(f"{name} ({count})" for name, count in missing.items())
        notes.append(f"the model has no class for {counted} [class (objects)]: left out of the mean")
    if mapping.unused:
        shown = ", ".join(mapping.unused[:10]) + (", ..." if len(mapping.unused) > 10 else "")
        notes.append(f"{len(mapping.unused)} model classes map to no class of the dataset (by name or by the "
                     f"classes map), not evaluated: {shown}")
    for note in notes:
        warn(note)
    return VocReport(dataset.split, dataset.year, metric, classes, missing, list(mapping.unused),
                     len(dataset.image_names), notes=notes)


def _write_summary(report: VocReport, path: Path) -> None:
    with atomic_write(path, "w") as handle:
        json.dump(report.to_dict(), handle, indent=1)


# ---------------------------------------------------------------------------------------------------------
# Entry points: a results folder / json, or a model run


def evaluate_voc_results(
    voc_dir: PathLike,
    split: str,
    results: PathLike,
    *,
    metric: Optional[str] = None,
    classes_map: Optional[PathLike] = None,
    class_table: Optional[ClassTable] = None,
    log: Optional[Log] = print,
    warn: Optional[Log] = None,
) -> VocReport:
    """Evaluate existing results: a folder of comp4 files (Detectron's ``output_dir``, or a devkit's
    ``results/VOC2007/Main``) or a COCO-style results json (``detconvert infer``'s).

    Args:
        voc_dir: the VOC year folder.
        split: the image set.
        results: the folder or the json.
        metric: ``"07"`` or ``"area"``; default: the year's (:meth:`VocDataset.default_metric`).
        classes_map: a ``--classes-map`` file (:func:`read_classes_map`).
        class_table: json only: names of its ``category_id`` values (default: VOC's, ids 1-20). A json's
            record names its image by ``file_name`` (``detconvert infer``'s), else by ``image_id``: the image name, or
            its number when the split's names are numbers (``000001`` -> 1).
        log: receives the table (None: silent); warn: warnings (default: stderr).

    Raises:
        DetconvertError: bad devkit, results or map.
    """
    dataset = read_dataset(voc_dir, split)
    metric = _resolve_metric(dataset, metric)
    user_map = read_classes_map(classes_map) if classes_map else None
    results = Path(results)
    if results.is_dir():
        files = find_comp4_files(results, split)
        mapping = map_classes(list(files), dataset.class_names, user_map, classes_map)
        detections = {mapping.to_dataset[name]: parse_comp4_lines(_read_text_lines(path), path)
                      for name, path in files.items() if name in mapping.to_dataset}
    else:
        table = class_table or voc_table()
        mapping = map_classes(table.names, dataset.class_names, user_map, classes_map)
        detections = _json_detections(results, dataset, table, mapping)
    _check_anything_evaluated(mapping, dataset, results)
    report = evaluate_class_detections(dataset, detections, mapping, metric, warn=warn)
    if log is not None:
        log(report.format_table())
    return report


def _check_anything_evaluated(mapping: ClassMapping, dataset: VocDataset, source: PathLike) -> None:
    if not mapping.evaluated:
        raise DetconvertError(
            f"no class of the results is a class of the dataset ({', '.join(dataset.class_names[:20])}); "
            "pass --classes-map FILE ('model class = VOC class' lines), or --dataset for a json's category ids",
            source)


def _numeric_names(dataset: VocDataset) -> bool:
    """True when every image name is a number and no two are the same number (``000001`` -> image id 1)."""
    names = dataset.image_names
    return all(n.isdigit() for n in names) and len({int(n) for n in names}) == len(names)


def _json_image_names(dataset: VocDataset) -> Dict[Any, str]:
    names: Dict[Any, str] = {name: name for name in dataset.image_names}
    if _numeric_names(dataset):
        names.update({int(n): n for n in dataset.image_names})  # detconvert infer's ids for numeric names
    return names


def _record_image_name(record: Dict[str, Any], image_names: Dict[Any, str]) -> str:
    """The VOC image a results record is about: its ``file_name`` (``detconvert infer`` writes one; the only
    way to name ``2008_000123.jpg``, whose id is a position in the run) when that is an image of the split,
    else its ``image_id`` (a name, or the number of a numeric name)."""
    file_name = record.get("file_name")
    if isinstance(file_name, str):
        stem = Path(file_name).stem
        if stem in image_names:
            return stem
    image_id = record["image_id"]
    return image_names.get(image_id, str(image_id)) if isinstance(image_id, (int, str)) else str(image_id)


def _json_detections(path: Path, dataset: VocDataset, table: ClassTable,
                     mapping: ClassMapping) -> Dict[str, ClassDetections]:
    from detconvert.inference.results import xywh_to_xyxy

    records = read_results(path)
    image_names = _json_image_names(dataset)
    per_class: Dict[str, List[str]] = {name: [] for name in mapping.evaluated}
    unknown_ids: Dict[Any, int] = {}
    for n, record in enumerate(records):
        if "bbox" not in record:
            raise DetconvertError(f"entry {n} has no bbox", path)
        try:
            class_name = table.names[table.index_of_category(int(record["category_id"]))]
        except (KeyError, TypeError, ValueError):
            unknown_ids[record["category_id"]] = unknown_ids.get(record["category_id"], 0) + 1
            continue
        target = mapping.to_dataset.get(class_name)
        if target is None:
            continue
        name = _record_image_name(record, image_names)  # unknown images are dropped (and said) later
        try:
            # The json holds float(float32) values: back to float32 so the lines equal a model run's.
            xyxy = xywh_to_xyxy(np.asarray(record["bbox"], dtype=np.float64)).astype(np.float32)
            score = np.float32(record["score"])
        except (TypeError, ValueError):
            raise DetconvertError(f"entry {n}: bbox must be 4 numbers and score a number", path) from None
        per_class[target] += comp4_lines(name, xyxy, np.array([score]))
    if unknown_ids:
        shown = ", ".join(f"{k} ({v})" for k, v in sorted(unknown_ids.items(), key=str)[:10])
        raise DetconvertError(f"category ids not in the {table.name} class table: {shown} [id (detections)]; "
                              "pass --dataset (coco, voc or a class-list file) to name them", path)
    return {name: parse_comp4_lines(lines, path) for name, lines in per_class.items()}


def voc_image_paths(voc_dir: PathLike, split: str) -> List[Path]:
    """The split's images (``JPEGImages/<name>.jpg``) in split order; missing ones are skipped.

    Workers of a sharded run (``--num-processes``, torchrun) detect on these.
    """
    dataset = read_dataset(voc_dir, split)
    return [p for p in (dataset.image_path(n) for n in dataset.image_names) if p is not None]


def evaluate_voc(
    predictor: Any,
    voc_dir: PathLike,
    split: str,
    output_dir: PathLike,
    *,
    metric: Optional[str] = None,
    classes_map: Optional[PathLike] = None,
    class_table: Optional[ClassTable] = None,
    batch_size: int = 1,
    progress: Optional[bool] = None,
    log: Optional[Log] = print,
    warn: Optional[Log] = None,
    predict_paths: Optional[Callable[[List[Path]], List[Any]]] = None,
    proposals: Optional[Callable[[List[Path], List[np.ndarray]], List[np.ndarray]]] = None,
) -> VocReport:
    """Detect on every image of a VOC split, write Detectron's comp4 files, and score them.

    Writes (each atomically) ``comp4_det_<split>_<class>.txt`` for every evaluated class, ``voc_eval.json``
    (per-class AP, counts, mAP, notes) and the COCO-style ``detections_coco.json`` into ``output_dir`` (image
    id = the number of a numeric name, else the position in the split; each record's ``file_name`` says which
    image, as ``detconvert infer`` writes it, so ``eval --voc --results`` reads it back for any names).

    Args:
        predictor: a :class:`detconvert.inference.predictor.Predictor`.
        voc_dir: the VOC year folder (``VOCdevkit/VOC2007``).
        split: the image set (``ImageSets/Main/<split>.txt``).
        output_dir: where the files go.
        metric: ``"07"`` or ``"area"``; default: the year's.
        classes_map: a ``--classes-map`` file; default: by name (COCO's spellings of VOC classes included).
        class_table: the model's class names (default: ``predictor.class_names``).
        batch_size: images per ``predict`` call.
        progress: tqdm bar; None = only on a terminal.
        log: receives the table (None: silent); warn: warnings (default: stderr).
        predict_paths: detect all images at once from their paths on several processes instead.
        proposals: for precomputed-proposal models, ``proposals(paths, images) -> boxes per image``.

    Raises:
        DetconvertError: a bad devkit or map, no readable image, nothing to evaluate.
    """
    from detconvert.inference.runner import _progress, assign_image_ids, read_image

    warn_ = warn or _stderr_warning
    if batch_size < 1:
        raise DetconvertError("must be at least 1", "--batch-size")
    dataset = read_dataset(voc_dir, split)
    metric = _resolve_metric(dataset, metric)
    table = class_table or table_from_names(predictor.class_names)
    mapping = map_classes(table.names, dataset.class_names,
                          read_classes_map(classes_map) if classes_map else None, classes_map)
    _check_anything_evaluated(mapping, dataset, "the model")
    index_to_class = {i: mapping.to_dataset[n] for i, n in enumerate(table.names) if n in mapping.to_dataset}

    lines: Dict[str, List[str]] = {name: [] for name in mapping.evaluated}
    coco_records: List[dict] = []
    # detconvert infer's ids: the numbers of numeric names, else positions in the split (file_name says which)
    image_ids = dict(zip(dataset.image_names, assign_image_ids([Path(f"{n}.jpg") for n in dataset.image_names])))
    read = 0
    batch: List[Tuple[str, Path, Optional[np.ndarray]]] = []

    def run_batch() -> None:
        if predict_paths is not None:
            all_dets = predict_paths([path for _, path, _ in batch])
        else:
            images = [image for _, _, image in batch]
            given = proposals([path for _, path, _ in batch], images) if proposals is not None else None
            all_dets = predictor.predict(images, proposals=given) if given is not None else predictor.predict(images)
        for (name, _, _), dets in zip(batch, all_dets):
            if dets.is_proposals:
                raise DetconvertError("an RPN-only model gives proposals, not detections; VOC evaluation needs a "
                                      "detector", "the model")
            for index, class_name in index_to_class.items():
                keep = np.flatnonzero(dets.classes == index)  # Detectron's cls_boxes[j] rows, in their order
                lines[class_name] += comp4_lines(name, dets.boxes[keep], dets.scores[keep])
            records = detections_to_coco(dets, image_ids[name], table)
            for record in records:
                record["file_name"] = f"{name}.jpg"  # as detconvert infer writes: names what the id stands for
            coco_records.extend(records)

    for name in _progress(dataset.image_names, len(dataset.image_names), progress):
        path = dataset.image_path(name)
        image = None
        if path is not None and predict_paths is None:
            image = read_image(path)
        if path is None or (image is None and predict_paths is None):
            warn_(f"{path or dataset.root / 'JPEGImages' / (name + '.jpg')}: missing or unreadable; skipped "
                  "(its objects count as missed)")
            continue
        batch.append((name, path, image))
        read += 1
        if predict_paths is None and len(batch) == batch_size:
            run_batch()
            batch = []
    if batch:
        run_batch()  # a sharded run detects on all paths in one call
    if read == 0:
        raise DetconvertError(f"none of the {len(dataset.image_names)} images of split {split!r} could be read",
                              dataset.root / "JPEGImages")

    out = Path(output_dir)
    for class_name, class_lines in lines.items():
        with atomic_write(out / comp4_file_name(split, class_name), "w") as handle:
            handle.writelines(class_lines)
    write_results(coco_records, out / RESULTS_JSON_NAME)
    detections = {name: parse_comp4_lines(class_lines, out / comp4_file_name(split, name))
                  for name, class_lines in lines.items()}
    report = evaluate_class_detections(dataset, detections, mapping, metric, warn=warn)
    report.num_images_read = read
    report.output_dir = out
    _write_summary(report, out / SUMMARY_NAME)
    if log is not None:
        log(f"wrote {sum(map(len, lines.values()))} detections on {read} images as comp4 files to {out}")
        log(report.format_table())
    return report
