"""A synthetic "shapes" dataset in COCO format: coloured circles, squares and triangles.

Every image is a flat, slightly noisy background with a few non-overlapping filled shapes; each
shape's segmentation is its polygon, and the pixels drawn are that polygon rasterised by pycocotools
(the rasteriser COCO evaluation uses), so the ground-truth masks are exactly the painted pixels.
``cv2.fillPoly`` of the same points paints about a pixel more around the edge (mask IoU 0.91 on
average against the annotation), which would cap mask AP@[.5:.95] near 0.9 for any model. The dataset is deterministic in its seed. It serves the CPU overfitting test and
the tiny model shipped with ``detconvert demo``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Sequence, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util

from detconvert.io.atomic import atomic_write

__all__ = ["SHAPE_CLASSES", "ShapeInstance", "make_shapes_image", "shapes_coco_dict", "write_shapes_dataset",
           "write_keypoint_shapes_dataset", "write_shapes_voc", "moving_shapes_frames"]

#: Category names in category-id order (id = index + 1); contiguous class = id.
SHAPE_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle")
#: Distinct, saturated BGR colours so the shapes stand out from every background.
_COLOURS = ((40, 40, 220), (40, 200, 40), (220, 80, 40), (30, 200, 230), (200, 40, 200), (230, 230, 40))
_CIRCLE_VERTICES = 32


@dataclass(frozen=True)
class ShapeInstance:
    """One drawn shape: its class name and polygon ``[x0, y0, x1, y1, ...]`` in pixels."""

    name: str
    polygon: Tuple[float, ...]

    def box_xywh(self) -> List[float]:
        """COCO ``[x, y, w, h]`` with Detectron's inclusive convention (``x2 = x + w - 1``)."""
        xs, ys = self.polygon[0::2], self.polygon[1::2]
        return [min(xs), min(ys), max(xs) - min(xs) + 1.0, max(ys) - min(ys) + 1.0]


def _polygon(name: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if name == "circle":
        t = np.linspace(0, 2 * math.pi, _CIRCLE_VERTICES, endpoint=False)
    elif name == "square":
        t = angle + np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
    else:
        t = angle + np.array([0.0, 2.0 / 3.0, 4.0 / 3.0]) * math.pi - math.pi / 2
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def make_shapes_image(
    rng: np.random.RandomState, size: int = 128, max_shapes: int = 3, min_radius: float = 10.0, max_radius: float = 26.0
) -> Tuple[np.ndarray, List[ShapeInstance]]:
    """Draw one image.

    Args:
        rng: the random state (all randomness comes from it).
        size: image height and width.
        max_shapes: 1..max_shapes shapes; placements overlapping an earlier shape are retried.
        min_radius: smallest circumradius in pixels.
        max_radius: largest circumradius in pixels.

    Returns:
        ``(image, shapes)``: a BGR ``uint8`` ``size x size x 3`` image and the drawn shapes.
    """
    background = rng.randint(150, 256, size=3)
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = background
    noise = rng.randint(-12, 13, size=(size, size, 3))
    image = np.clip(image.astype(np.int32) + noise, 0, 255).astype(np.uint8)
    shapes: List[ShapeInstance] = []
    placed: List[Tuple[float, float, float]] = []
    count = rng.randint(1, max_shapes + 1)
    for _ in range(count):
        for _attempt in range(30):
            name = SHAPE_CLASSES[rng.randint(len(SHAPE_CLASSES))]
            r = rng.uniform(min_radius, max_radius)
            cx = rng.uniform(r + 2, size - r - 3)
            cy = rng.uniform(r + 2, size - r - 3)
            if all(math.hypot(cx - px, cy - py) > r + pr + 4 for px, py, pr in placed):
                break
        else:
            continue
        poly = _polygon(name, cx, cy, r, rng.uniform(0, math.pi / 2))
        colour = _COLOURS[rng.randint(len(_COLOURS))]
        shape = ShapeInstance(name, tuple(float(round(v, 2)) for v in np.round(poly).reshape(-1)))
        inside = mask_util.decode(mask_util.frPyObjects([list(shape.polygon)], size, size))[:, :, 0].astype(bool)
        image[inside] = colour
        placed.append((cx, cy, r))
        shapes.append(shape)
    return image, shapes


def shapes_coco_dict(file_names: Sequence[str], shapes_per_image: Sequence[Sequence[ShapeInstance]], size: int) -> Dict[str, Any]:
    """The COCO-format annotation dict of a set of drawn images (image ids from 1)."""
    images, annotations = [], []
    for image_id, (file_name, shapes) in enumerate(zip(file_names, shapes_per_image), start=1):
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
        for shape in shapes:
            rle = mask_util.frPyObjects([list(shape.polygon)], size, size)
            area = float(mask_util.area(mask_util.merge(rle)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": SHAPE_CLASSES.index(shape.name) + 1,
                    "bbox": shape.box_xywh(),
                    "area": area,
                    "segmentation": [list(shape.polygon)],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SHAPE_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_shapes_dataset(
    out_dir: Union[str, Path], num_images: int = 8, seed: int = 0, size: int = 128, max_shapes: int = 3,
    min_radius: float = 10.0, max_radius: float = 26.0,
) -> Tuple[Path, Path]:
    """Write ``num_images`` PNG images and ``annotations.json`` under ``out_dir``.

    Args:
        out_dir: destination folder (created).
        num_images: how many images.
        seed: the dataset's seed.
        size: image side in pixels.
        max_shapes: most shapes per image.
        min_radius: smallest circumradius in pixels.
        max_radius: largest circumradius in pixels.

    Returns:
        ``(annotation file, image folder)``.
    """
    out = Path(out_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    names, all_shapes = [], []
    for i in range(num_images):
        image, shapes = make_shapes_image(rng, size=size, max_shapes=max_shapes, min_radius=min_radius,
                                          max_radius=max_radius)
        name = f"shapes_{i:04d}.png"
        ok, encoded = cv2.imencode(".png", image)
        if not ok:  # pragma: no cover - PNG encoding of a uint8 image cannot fail
            raise RuntimeError("PNG encoding failed")
        with atomic_write(image_dir / name, "wb", True) as f:
            f.write(encoded.tobytes())
        names.append(name)
        all_shapes.append(shapes)
    ann = out / "annotations.json"
    with atomic_write(ann, "w", True) as f:
        json.dump(shapes_coco_dict(names, all_shapes, size), f)
    return ann, image_dir


#: GN ResNet body, 32-wide FPN and 2-MLP box head shared by the tiny Mask and Keypoint R-CNN configs.
_TINY_GN_FPN_BODY_AND_BOX_HEAD = """\
RESNETS:
  STRIDE_1X1: False
  TRANS_FUNC: bottleneck_gn_transformation
  STEM_FUNC: basic_gn_stem
  SHORTCUT_FUNC: basic_gn_shortcut
  WIDTH_PER_GROUP: 8
GROUP_NORM:
  NUM_GROUPS: 4
FPN:
  FPN_ON: True
  MULTILEVEL_ROIS: True
  MULTILEVEL_RPN: True
  DIM: 32
  RPN_ANCHOR_START_SIZE: 16
FAST_RCNN:
  ROI_BOX_HEAD: fast_rcnn_heads.add_roi_2mlp_head
  ROI_XFORM_METHOD: RoIAlign
  ROI_XFORM_RESOLUTION: 7
  ROI_XFORM_SAMPLING_RATIO: 2
  MLP_HEAD_DIM: 64
"""

#: Solver, training and test sizes shared by the tiny Mask and Keypoint R-CNN configs below.
_TINY_RCNN_SCHEDULE = """\
SOLVER:
  WEIGHT_DECAY: 0.0001
  LR_POLICY: steps_with_decay
  BASE_LR: 0.02
  GAMMA: 0.1
  MAX_ITER: 300
  STEPS: [0, 240]
  WARM_UP_ITERS: 30
  WARM_UP_FACTOR: 0.1
TRAIN:
  SCALES: (128,)
  MAX_SIZE: 128
  IMS_PER_BATCH: 2
  BATCH_SIZE_PER_IM: 64
  RPN_BATCH_SIZE_PER_IM: 64
  RPN_PRE_NMS_TOP_N: 1000
  RPN_POST_NMS_TOP_N: 200
  FREEZE_AT: 0
TEST:
  SCALE: 128
  MAX_SIZE: 128
  NMS: 0.5
  RPN_PRE_NMS_TOP_N: 1000
  RPN_POST_NMS_TOP_N: 200
  DETECTIONS_PER_IM: 20
"""

#: A TINY Detectron-architecture Mask R-CNN for the shapes (R-50-FPN layout, GN body, narrow widths):
#: every key is Detectron's; only the body widths and block counts below (:data:`TINY_BODY`) are
#: beyond what a Detectron config can say.
TINY_SHAPES_CFG = """\
MODEL:
  TYPE: generalized_rcnn
  CONV_BODY: FPN.add_fpn_ResNet50_conv5_body
  NUM_CLASSES: 4
  FASTER_RCNN: True
  MASK_ON: True
""" + _TINY_GN_FPN_BODY_AND_BOX_HEAD + """\
MRCNN:
  ROI_MASK_HEAD: mask_rcnn_heads.mask_rcnn_fcn_head_v1up
  RESOLUTION: 14
  ROI_XFORM_METHOD: RoIAlign
  ROI_XFORM_RESOLUTION: 7
  ROI_XFORM_SAMPLING_RATIO: 2
  DIM_REDUCED: 32
  DILATION: 1
  CONV_INIT: MSRAFill
""" + _TINY_RCNN_SCHEDULE

#: Body fields of the tiny model (1 block per stage, 16-wide stem, res2..res5 32/64/128/256 wide).
TINY_BODY = {"block_counts": (1, 1, 1, 1), "stem_out_dim": 16, "res2_out_dim": 32}

#: A TINY RetinaNet for the shapes (Detectron's retinanet_R-50-FPN layout: P3-P7, 9 anchors per cell,
#: sigmoid focal loss) with the narrow body of :data:`TINY_BODY` and one conv per head tower.
TINY_RETINANET_CFG = """\
MODEL:
  TYPE: retinanet
  CONV_BODY: FPN.add_fpn_ResNet50_conv5_body
  NUM_CLASSES: 4
RESNETS:
  STRIDE_1X1: False
  TRANS_FUNC: bottleneck_gn_transformation
  STEM_FUNC: basic_gn_stem
  SHORTCUT_FUNC: basic_gn_shortcut
  WIDTH_PER_GROUP: 8
GROUP_NORM:
  NUM_GROUPS: 4
FPN:
  FPN_ON: True
  MULTILEVEL_RPN: True
  RPN_MAX_LEVEL: 7
  RPN_MIN_LEVEL: 3
  COARSEST_STRIDE: 128
  EXTRA_CONV_LEVELS: True
  DIM: 32
RETINANET:
  RETINANET_ON: True
  NUM_CONVS: 1
  ASPECT_RATIOS: (1.0, 2.0, 0.5)
  SCALES_PER_OCTAVE: 3
  ANCHOR_SCALE: 4
  LOSS_GAMMA: 2.0
  LOSS_ALPHA: 0.25
SOLVER:
  WEIGHT_DECAY: 0.0001
  LR_POLICY: steps_with_decay
  BASE_LR: 0.01
  GAMMA: 0.1
  MAX_ITER: 300
  STEPS: [0, 240]
  WARM_UP_ITERS: 30
  WARM_UP_FACTOR: 0.1
TRAIN:
  SCALES: (128,)
  MAX_SIZE: 128
  IMS_PER_BATCH: 2
  RPN_STRADDLE_THRESH: -1
  FREEZE_AT: 0
TEST:
  SCALE: 128
  MAX_SIZE: 128
  NMS: 0.5
  DETECTIONS_PER_IM: 20
"""

#: A TINY Keypoint R-CNN (Detectron's e2e_keypoint_rcnn_R-50-FPN layout, v1convX pose head with two
#: 32-wide convs) for :func:`write_keypoint_shapes_dataset`: one class, a keypoint per triangle corner.
TINY_KEYPOINT_CFG = """\
MODEL:
  TYPE: generalized_rcnn
  CONV_BODY: FPN.add_fpn_ResNet50_conv5_body
  NUM_CLASSES: 2
  FASTER_RCNN: True
  KEYPOINTS_ON: True
""" + _TINY_GN_FPN_BODY_AND_BOX_HEAD + """\
KRCNN:
  ROI_KEYPOINTS_HEAD: keypoint_rcnn_heads.add_roi_pose_head_v1convX
  NUM_STACKED_CONVS: 2
  NUM_KEYPOINTS: 3
  USE_DECONV_OUTPUT: True
  CONV_INIT: MSRAFill
  CONV_HEAD_DIM: 32
  UP_SCALE: 2
  HEATMAP_SIZE: 28
  ROI_XFORM_METHOD: RoIAlign
  ROI_XFORM_RESOLUTION: 7
  ROI_XFORM_SAMPLING_RATIO: 2
  MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH: 1
""" + _TINY_RCNN_SCHEDULE

#: Keypoint names of :func:`write_keypoint_shapes_dataset` (a triangle's corners in drawing order).
TRIANGLE_KEYPOINTS: Tuple[str, ...] = ("apex", "corner_b", "corner_c")


def write_keypoint_shapes_dataset(out_dir: Union[str, Path], num_images: int = 4, seed: int = 0, size: int = 128) -> Tuple[Path, Path]:
    """A keypoint dataset from the shapes: every triangle is a ``person`` whose keypoints are its corners.

    Detectron reads keypoint names from the ``person`` category (``JsonDataset._init_keypoints``),
    hence the name. Circles and squares stay unannotated (background); every image has a triangle.

    Returns:
        ``(annotation file, image folder)``.
    """
    out = Path(out_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    images, annotations = [], []
    while len(images) < num_images:
        image, shapes = make_shapes_image(rng, size=size)
        triangles = [s for s in shapes if s.name == "triangle"]
        if not triangles:
            continue
        image_id = len(images) + 1
        name = f"keypoints_{image_id:04d}.png"
        ok, encoded = cv2.imencode(".png", image)
        if not ok:  # pragma: no cover - PNG encoding of a uint8 image cannot fail
            raise RuntimeError("PNG encoding failed")
        with atomic_write(image_dir / name, "wb", True) as f:
            f.write(encoded.tobytes())
        images.append({"id": image_id, "file_name": name, "height": size, "width": size})
        for shape in triangles:
            rle = mask_util.frPyObjects([list(shape.polygon)], size, size)
            keypoints = []
            for x, y in zip(shape.polygon[0::2], shape.polygon[1::2]):
                keypoints += [x, y, 2]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": shape.box_xywh(), "area": float(mask_util.area(mask_util.merge(rle))),
                                "segmentation": [list(shape.polygon)], "iscrowd": 0,
                                "keypoints": keypoints, "num_keypoints": len(TRIANGLE_KEYPOINTS)})
    categories = [{"id": 1, "name": "person", "supercategory": "shape", "keypoints": list(TRIANGLE_KEYPOINTS),
                   "skeleton": [[1, 2], [2, 3], [3, 1]]}]
    ann = out / "annotations.json"
    with atomic_write(ann, "w", True) as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return ann, image_dir


def write_shapes_voc(
    out_dir: Union[str, Path], num_images: int = 8, seed: int = 0, size: int = 128, split: str = "test",
    year: int = 2007, jpeg_quality: int = 95, min_radius: float = 10.0, max_radius: float = 26.0,
) -> Path:
    """Write shapes images as a PASCAL VOC year folder: ``VOC<year>/JPEGImages/<name>.jpg``,
    ``Annotations/<name>.xml`` (``bndbox`` = the polygon's box in the devkit's 1-based pixels) and
    ``ImageSets/Main/<split>.txt``; names are ``000001``, ``000002``, ... as VOC2007's. The shapes drawn are
    those of :func:`write_shapes_dataset` for the same seed and radii (``seed=0, num_images=4`` are the shipped
    demo model's training images), saved as JPEG.

    Returns:
        The year folder (what ``detconvert eval --voc`` takes).
    """
    from detconvert.evaluation.voc import VocObject, write_annotation

    root = Path(out_dir) / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    names = []
    for i in range(num_images):
        image, shapes = make_shapes_image(rng, size=size, min_radius=min_radius, max_radius=max_radius)
        name = f"{i + 1:06d}"
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:  # pragma: no cover - JPEG encoding of a uint8 image cannot fail
            raise RuntimeError("JPEG encoding failed")
        with atomic_write(root / "JPEGImages" / f"{name}.jpg", "wb", True) as f:
            f.write(encoded.tobytes())
        objects = []
        for shape in shapes:
            xs, ys = shape.polygon[0::2], shape.polygon[1::2]
            box = (int(min(xs)) + 1, int(min(ys)) + 1, int(max(xs)) + 1, int(max(ys)) + 1)  # 0-based -> VOC's 1-based
            objects.append(VocObject(shape.name, box, False))
        write_annotation(root / "Annotations" / f"{name}.xml", f"{name}.jpg", size, size, objects)
        names.append(name)
    with atomic_write(root / "ImageSets" / "Main" / f"{split}.txt", "w", True) as f:
        f.write("".join(n + "\n" for n in names))
    return root


def moving_shapes_frames(
    num_frames: int, radius: float = 8.0, period: int = 24, seed: int = 0, image_index: int = 1, size: int = 128,
) -> Iterator[Tuple[np.ndarray, List[ShapeInstance]]]:
    """Frames of a synthetic video: the shapes of one :func:`write_shapes_dataset` image gliding around a circle.

    The scene is image ``image_index`` of ``write_shapes_dataset(seed=seed, size=size)`` (by default image 1
    of seed 0, one of the shipped demo model's four training images: two circles and a square); its shapes
    move together along a circle of ``radius`` pixels, one turn per ``period`` frames (clamped so that they
    stay inside the frame), over the image's background colour with its noise redrawn every frame. Pixels
    are painted as :func:`make_shapes_image` paints them (pycocotools' rasterisation of the polygon), so
    each frame's :class:`ShapeInstance` polygons are its exact ground-truth masks.

    Yields:
        ``(image, shapes)`` per frame: a BGR ``uint8`` ``size x size x 3`` image and its shapes.
    """
    rng = np.random.RandomState(seed)
    for _ in range(image_index + 1):
        scene, shapes = make_shapes_image(rng, size=size)
    masks = [mask_util.decode(mask_util.frPyObjects([list(s.polygon)], size, size))[:, :, 0].astype(bool)
             for s in shapes]
    colours = [scene[m][0] for m in masks]  # shapes are painted flat (no noise inside)
    background = np.median(scene[~np.any(masks, axis=0)], axis=0).astype(np.int32)  # noise is symmetric
    xs = [v for s in shapes for v in s.polygon[0::2]]
    ys = [v for s in shapes for v in s.polygon[1::2]]
    noise = np.random.RandomState(seed + 1)
    for index in range(num_frames):
        angle = 2 * math.pi * index / period
        dx = int(np.clip(round(radius * math.cos(angle)), -min(xs), size - 1 - max(xs)))
        dy = int(np.clip(round(radius * math.sin(angle)), -min(ys), size - 1 - max(ys)))
        image = np.clip(background + noise.randint(-12, 13, size=(size, size, 3)), 0, 255).astype(np.uint8)
        moved = []
        for shape, colour in zip(shapes, colours):
            polygon = tuple(float(v + (dx if k % 2 == 0 else dy)) for k, v in enumerate(shape.polygon))
            inside = mask_util.decode(mask_util.frPyObjects([list(polygon)], size, size))[:, :, 0].astype(bool)
            image[inside] = colour
            moved.append(ShapeInstance(shape.name, polygon))
        yield image, moved
