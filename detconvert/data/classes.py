"""Class tables: names, contiguous indices and dataset category ids, plus COCO's person keypoints.

Detectron numbers classes contiguously (index 0 = ``__background__``, then the dataset's categories in
the order of their ids); COCO's own category ids have gaps (1..90 for 80 classes). Mixing the two is the
classic "AP = 0" bug (detectron2#428, maskrcnn-benchmark#622), so every table here carries both columns
and the conversion is explicit: :meth:`ClassTable.category_id` / :meth:`ClassTable.index_of_category`.

The built-in tables are the ones Detectron ships in ``detectron/datasets/dummy_datasets.py`` (COCO) and
``detectron/utils/keypoints.py`` (person keypoints); VOC is the 20-class PASCAL list.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from detconvert.errors import ConfigError, PathLike

BACKGROUND = "__background__"

# The 80 COCO object categories in Detectron's contiguous order (dummy_datasets.get_coco_dataset).
COCO_CLASSES: Tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# instances_*2017.json category ids of COCO_CLASSES, in the same order (ids 12, 26, 29, 30, 45, 66, 68,
# 69, 71 and 83 are unused by the detection task).
COCO_CATEGORY_IDS: Tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
)

# COCO person keypoints, in the order of the keypoint head's 17 channels (keypoints.get_keypoints).
COCO_KEYPOINT_NAMES: Tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
)

# The skeleton Detectron draws (vis.kp_connections), by keypoint name, in its drawing/colour order.
# vis.py adds two derived links on top: mid-shoulder -> nose and mid-shoulder -> mid-hip.
COCO_KEYPOINT_SKELETON: Tuple[Tuple[str, str], ...] = (
    ("left_eye", "right_eye"), ("left_eye", "nose"), ("right_eye", "nose"), ("right_eye", "right_ear"),
    ("left_eye", "left_ear"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"), ("right_hip", "right_knee"),
    ("right_knee", "right_ankle"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
    ("right_shoulder", "left_shoulder"), ("right_hip", "left_hip"),
)

VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


@dataclass(frozen=True)
class ClassTable:
    """Class names with their contiguous indices and dataset category ids.

    Attributes:
        name: what the table is (``"coco"``, ``"keypoints_coco"``, ``"voc"``, a file name, ...).
        names: class names by contiguous index; index 0 is ``__background__``.
        category_ids: dataset category id by contiguous index (entry 0, background, is 0 and unused).
        keypoint_names: keypoint names when the dataset has keypoints (COCO person), else None.
    """

    name: str
    names: Tuple[str, ...]
    category_ids: Tuple[int, ...]
    keypoint_names: Optional[Tuple[str, ...]] = None

    def __post_init__(self) -> None:
        if len(self.names) != len(self.category_ids):
            raise ValueError("names and category_ids must have the same length")

    @property
    def num_classes(self) -> int:
        """Number of classes including background (Detectron's ``MODEL.NUM_CLASSES``)."""
        return len(self.names)

    def category_id(self, index: int) -> int:
        """Dataset category id of contiguous class ``index`` (1..num_classes-1)."""
        if not 1 <= index < len(self.names):
            raise IndexError(f"class index {index} outside 1..{len(self.names) - 1} of {self.name}")
        return self.category_ids[index]

    def index_of_category(self, category_id: int) -> int:
        """Contiguous index of a dataset category id (inverse of :meth:`category_id`)."""
        try:
            return self.category_ids.index(category_id, 1)
        except ValueError:
            raise KeyError(f"category id {category_id} is not in {self.name}") from None

    def index_of_name(self, class_name: str) -> int:
        """Contiguous index of a class name (``KeyError`` if unknown)."""
        try:
            return self.names.index(class_name, 1)
        except ValueError:
            raise KeyError(class_name) from None

    def contiguous_to_category(self) -> Dict[int, int]:
        """``{contiguous index: category id}`` for every non-background class."""
        return {i: self.category_ids[i] for i in range(1, len(self.names))}


def coco_table() -> ClassTable:
    """COCO detection: 80 classes + background, with COCO's category ids."""
    return ClassTable("coco", (BACKGROUND, *COCO_CLASSES), (0, *COCO_CATEGORY_IDS))


def keypoints_coco_table() -> ClassTable:
    """COCO person keypoints: background + person (category id 1) with the 17 keypoint names."""
    return ClassTable("keypoints_coco", (BACKGROUND, "person"), (0, 1), COCO_KEYPOINT_NAMES)


def voc_table() -> ClassTable:
    """PASCAL VOC: 20 classes + background; category ids equal the contiguous indices."""
    return ClassTable("voc", (BACKGROUND, *VOC_CLASSES), tuple(range(len(VOC_CLASSES) + 1)))


def table_from_names(names: Sequence[str], name: str = "model") -> ClassTable:
    """A table for a model's own class names (index 0 background).

    Names that are exactly COCO's 80 classes (or background + person) get COCO's category ids; anything
    else gets category id = contiguous index.
    """
    names = tuple(names)
    if names and names[0] != BACKGROUND:
        names = (BACKGROUND, *names)
    if names == coco_table().names:
        return coco_table()
    if names == keypoints_coco_table().names:
        return keypoints_coco_table()
    return ClassTable(name, names, tuple(range(len(names))))


_ID_THEN_NAME = re.compile(r"^(\d+)\s+(\S.*)$")


def read_class_file(path: PathLike) -> ClassTable:
    """Read a class-list text file: one class per line, in contiguous order.

    A line is either ``name`` (category id = its contiguous index) or ``<category id> <name>``. Blank lines
    and lines starting with ``#`` are ignored; a first line ``__background__`` is optional.

    Raises:
        ConfigError: the file is missing, empty, or names a class or id twice.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read class list: {exc.strerror or exc}", path) from None
    names, ids = [BACKGROUND], [0]
    for line_no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == BACKGROUND and len(names) == 1:
            continue
        match = _ID_THEN_NAME.match(line)
        class_name, cat_id = (match.group(2).strip(), int(match.group(1))) if match else (line, len(names))
        if class_name in names:
            raise ConfigError(f"line {line_no}: class '{class_name}' is listed twice", path)
        if cat_id in ids[1:]:
            raise ConfigError(f"line {line_no}: category id {cat_id} is used twice", path)
        names.append(class_name)
        ids.append(cat_id)
    if len(names) == 1:
        raise ConfigError("class list is empty (expected one class name per line)", path)
    return ClassTable(path.name, tuple(names), tuple(ids))


def get_class_table(dataset: str) -> ClassTable:
    """The class table for a ``--dataset`` value, as Detectron.pytorch's tools read it.

    ``keypoints_coco*`` -> person keypoints, ``coco*`` -> COCO, ``voc*`` -> PASCAL VOC; any other value
    is read as a class-list file (:func:`read_class_file`).

    Raises:
        ConfigError: neither a known dataset name nor an existing file.
    """
    key = dataset.lower()
    # keypoints_coco* is tested first: Detectron.pytorch's infer_simple checks startswith('coco') and
    # startswith('keypoints_coco') separately, and the keypoint name does not start with 'coco'.
    if key.startswith("keypoints_coco"):
        return keypoints_coco_table()
    if key.startswith("coco"):
        return coco_table()
    if key.startswith("voc"):
        return voc_table()
    if Path(dataset).is_file():
        return read_class_file(dataset)
    raise ConfigError(
        "unknown dataset: expected coco*, keypoints_coco*, voc* or a class-list text file (one name per line)",
        dataset,
    )
