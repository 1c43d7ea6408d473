"""``run_demo``: the whole reading path on an embedded sample, end to end, in about a second.

1. Write a small Detectron-format detector pickle (``{'blobs': ..., 'cfg': ...}``) in the byte format
   of 2018's files (Python 2.7 ``cPickle`` protocol 2, ``str`` keys and payloads,
   ``numpy.core.multiarray._reconstruct``) from detconvert's own seeded sample recipe: a truncated
   R-50-C4-like inventory (stem, res2, a single-scale RPN, the Fast R-CNN output layers, momentum for
   the trainable output layers, the zero conv biases an ImageNet initialisation leaves behind).
2. Read it back with the restricted reader, inspect it.
3. Convert its float32 blobs to a safetensors file whose metadata records the source SHA-256, the
   converter version and Detectron's numeric conventions, then read that back and check every array.
4. Detect with a real trained model: the tiny shapes Mask R-CNN shipped in ``detconvert/data/demo``
   (trained by ``tools/train_demo_model.py`` with ``detconvert train``'s loop, exported as a Detectron
   ``model_final.pkl``) runs on a generated shapes image and the picture is written.
"""
from __future__ import annotations

import dataclasses
import json
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, List, Optional, Tuple

import numpy as np

from detconvert.errors import PathLike
from detconvert.inspect import Inspection, inspect_weights
from detconvert.io.atomic import atomic_write
from detconvert.io.py2_pickle_writer import Py2PickleWriter
from detconvert.io.weights import load_weights
from detconvert.spec import Conventions

DEMO_SEED = 20180122
PICKLE_NAME = "sample_model_final.pkl"
SAFETENSORS_NAME = "sample_model_final.safetensors"
SHAPES_PICTURE_NAME = "shapes_detections.png"
#: The shipped shapes model (package data): a Detectron pickle whose 'detconvert' entry carries its spec
#: (the tiny body widths no Detectron key says) and class names, so it loads by path everywhere.
SHAPES_MODEL = Path(__file__).resolve().parent / "data" / "demo" / "shapes_model_final.pkl"
SHAPES_THRESH = 0.7  # vis threshold (Detectron's infer_simple default)

# Embedded cfg in the shape of Detectron's Python-2 yaml.dump (AttrDict nodes, python/unicode strings).
SAMPLE_CFG = """!!python/object/new:detectron.utils.collections.AttrDict
dictitems:
  MODEL: !!python/object/new:detectron.utils.collections.AttrDict
    dictitems: {CONV_BODY: !!python/unicode 'ResNet.add_ResNet50_conv4_body', FASTER_RCNN: true,
      MASK_ON: false, KEYPOINTS_ON: false, NUM_CLASSES: 81, RPN_ONLY: false, TYPE: !!python/unicode 'generalized_rcnn'}
    state: {!!python/unicode '__immutable__': true}
  RESNETS: !!python/object/new:detectron.utils.collections.AttrDict
    dictitems: {NUM_GROUPS: 1, STRIDE_1X1: true, TRANS_FUNC: !!python/unicode 'bottleneck_transformation',
      WIDTH_PER_GROUP: 64}
    state: {!!python/unicode '__immutable__': true}
  RPN: !!python/object/new:detectron.utils.collections.AttrDict
    dictitems: {ASPECT_RATIOS: !!python/tuple [0.5, 1, 2], RPN_ON: true, SIZES: !!python/tuple [32, 64, 128, 256, 512]}
    state: {!!python/unicode '__immutable__': true}
  FPN: !!python/object/new:detectron.utils.collections.AttrDict
    dictitems: {FPN_ON: false}
    state: {!!python/unicode '__immutable__': true}
  RETINANET: !!python/object/new:detectron.utils.collections.AttrDict
    dictitems: {RETINANET_ON: false}
    state: {!!python/unicode '__immutable__': true}
state: {!!python/unicode '__immutable__': true}
"""


def sample_inventory() -> List[Tuple[str, Tuple[int, ...], str]]:
    """(name, shape, kind) in file order; kind is "param", "preserved" or "momentum"."""
    out: List[Tuple[str, Tuple[int, ...], str]] = [("conv1_w", (64, 3, 7, 7), "param"),
                                                   ("res_conv1_bn_s", (64,), "param"),
                                                   ("res_conv1_bn_b", (64,), "param"),
                                                   ("conv1_b", (64,), "preserved")]
    dim_in = 64
    for block in range(3):  # res2 of ResNet-50 (ResNet.add_stage)
        prefix = f"res2_{block}"
        convs = [("branch2a", (64, dim_in, 1, 1)), ("branch2b", (64, 64, 3, 3)), ("branch2c", (256, 64, 1, 1))]
        if dim_in != 256:
            convs.append(("branch1", (256, dim_in, 1, 1)))
        for branch, shape in convs:
            out += [(f"{prefix}_{branch}_w", shape, "param"), (f"{prefix}_{branch}_bn_s", shape[:1], "param"),
                    (f"{prefix}_{branch}_bn_b", shape[:1], "param"), (f"{prefix}_{branch}_b", shape[:1], "preserved")]
        dim_in = 256
    anchors, classes, dim = 15, 81, 256
    trainable = [("conv_rpn_w", (dim, dim, 3, 3)), ("conv_rpn_b", (dim,)),
                 ("rpn_cls_logits_w", (anchors, dim, 1, 1)), ("rpn_cls_logits_b", (anchors,)),
                 ("rpn_bbox_pred_w", (4 * anchors, dim, 1, 1)), ("rpn_bbox_pred_b", (4 * anchors,)),
                 ("cls_score_w", (classes, dim)), ("cls_score_b", (classes,)),
                 ("bbox_pred_w", (4 * classes, dim)), ("bbox_pred_b", (4 * classes,))]
    out += [(name, shape, "param") for name, shape in trainable]
    # Momentum for the output layers only: keeps the sample small (< 5 MB).
    out += [(f"{name}_momentum", shape, "momentum") for name, shape in trainable if not name.startswith("conv_rpn")]
    return out


def sample_blob(name: str, shape: Tuple[int, ...], kind: str, seed: int = DEMO_SEED) -> np.ndarray:
    """One seeded blob: He-normal weights, U(0.9, 1.1) scales, small biases, zero preserved biases."""
    rng = np.random.default_rng((zlib.crc32(name.encode()) ^ seed) & 0xFFFFFFFF)
    if kind == "preserved":
        return np.zeros(shape, np.float32)
    if kind == "momentum":
        return rng.normal(0.0, 1e-4, shape).astype(np.float32)
    if name.endswith("_bn_s"):
        return rng.uniform(0.9, 1.1, shape).astype(np.float32)
    if name.endswith("_w"):
        fan_in = int(np.prod(shape[1:]))
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
    return rng.normal(0.0, 0.01, shape).astype(np.float32)


def write_sample_pickle(path: PathLike, seed: int = DEMO_SEED) -> Path:
    """Write the sample detector in the Python-2 byte format (atomically) and return its path."""
    blobs = {name: sample_blob(name, shape, kind, seed) for name, shape, kind in sample_inventory()}
    with atomic_write(path, "wb") as handle:
        Py2PickleWriter(handle).dump({"blobs": blobs, "cfg": SAMPLE_CFG})
    return Path(path)


# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` did."""

    output_dir: Path
    pickle_path: Path
    safetensors_path: Path
    inspection: Inspection
    num_converted: int
    num_momentum_dropped: int
    source_sha256: str
    seconds: float
    shapes: Optional["ShapesDemoResult"] = None

    def format_text(self) -> str:
        shapes = [] if self.shapes is None else [self.shapes.format_line()]
        return "\n".join([
            f"wrote    {self.pickle_path} ({self.pickle_path.stat().st_size:,} bytes): a Detectron detector pickle "
            "in 2018's Python-2 byte format, from detconvert's seeded sample recipe",
            f"read     it back with the restricted unpickler (nothing in it was executed); sha256 {self.source_sha256}",
            "inspect  " + self.inspection.format_text().replace("\n", "\n         "),
            f"convert  {self.num_converted} float32 blobs -> {self.safetensors_path} "
            f"({self.safetensors_path.stat().st_size:,} bytes; {self.num_momentum_dropped} momentum blobs left out; "
            "metadata: source sha256, converter version, Detectron conventions)",
            f"verify   read {self.safetensors_path.name} back: all {self.num_converted} arrays identical",
            *shapes,
            f"done in {self.seconds:.2f} s",
        ])


def convert_to_safetensors(pickle_path: Path, out_path: Path) -> Tuple[int, int, str]:
    """float32 blobs of a weight file -> safetensors with provenance metadata; returns counts and sha256."""
    from safetensors.numpy import save

    from detconvert import __version__

    wf = load_weights(pickle_path)
    metadata = {
        "source_file": pickle_path.name,
        "source_sha256": wf.sha256,
        "source_flavour": wf.flavour,
        "converter": f"detconvert {__version__}",
        "conventions": json.dumps(dataclasses.asdict(Conventions())),
    }
    data = save(dict(wf.blobs), metadata=metadata)
    with atomic_write(out_path, "wb") as handle:
        handle.write(data)
    return len(wf.blobs), len(wf.momentum), wf.sha256


def run_demo(output_dir: PathLike = "detconvert-demo") -> DemoResult:
    """Write the sample Detectron pickle, read and inspect it, convert it to safetensors, verify.

    Args:
        output_dir: folder for ``sample_model_final.pkl`` and ``sample_model_final.safetensors``
            (created if needed; the two files are replaced atomically).

    Returns:
        A :class:`DemoResult` (``format_text()`` is what ``detconvert demo`` prints).
    """
    start = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pickle_path = write_sample_pickle(out / PICKLE_NAME)
    inspection = inspect_weights(load_weights(pickle_path), with_sha256=True)
    safetensors_path = out / SAFETENSORS_NAME
    converted, dropped, sha = convert_to_safetensors(pickle_path, safetensors_path)
    source, result = load_weights(pickle_path), load_weights(safetensors_path)
    if sorted(source.blobs) != sorted(result.blobs) or not all(  # safetensors stores names sorted
            np.array_equal(source.blobs[k], result.blobs[k]) for k in source.blobs):
        raise AssertionError("the converted safetensors file does not hold the source's arrays")  # a bug, not input
    if result.metadata.get("source_sha256") != sha:
        raise AssertionError("the converted file's metadata lost the source sha256")
    shapes = run_shapes_demo(out) if SHAPES_MODEL.exists() else None
    return DemoResult(out, pickle_path, safetensors_path, inspection, converted, dropped, sha,
                      time.perf_counter() - start, shapes)


# ---------------------------------------------------------------------------------------------------
# The shipped shapes model


@dataclass(frozen=True)
class ShapesDemoResult:
    """What :func:`run_shapes_demo` did: the picture, the detections and the shapes actually drawn."""

    picture_path: Path
    detections: Any  # detconvert.structures.Detections
    class_names: Tuple[str, ...]
    drawn: Tuple[Any, ...]  # detconvert.train.shapes.ShapeInstance
    model_path: Path

    def format_line(self) -> str:
        keep = self.detections.scores >= SHAPES_THRESH
        found = ", ".join(f"{self.class_names[c]} {s:.2f}" for c, s in
                          zip(self.detections.classes[keep], self.detections.scores[keep]))
        drawn = ", ".join(sorted(d.name for d in self.drawn))
        return (f"detect   {self.model_path.name} (tiny Mask R-CNN trained on synthetic shapes) on a generated "
                f"image with {drawn}: {found or 'nothing'} -> {self.picture_path}")


def load_shapes_model(device: str = "cpu"):
    """The shipped shapes Mask R-CNN as a :class:`~detconvert.inference.predictor.Predictor`.

    Nothing private: :func:`detconvert.load_model` reads it by path like any model. Its tiny body's widths
    (``stem_out_dim``, ``res2_out_dim``, one block per stage) are not expressible as Detectron keys, so
    the pickle carries detconvert's spec and class names in its ``'detconvert'`` entry beside the cfg.
    """
    from detconvert.inference.predictor import load_model

    return load_model(SHAPES_MODEL, device=device)


def shapes_demo_image() -> Tuple[np.ndarray, List[Any]]:
    """The first image of the demo model's training set, regenerated from its seed (nothing bundled)."""
    from detconvert.train.shapes import make_shapes_image

    training = (load_weights(SHAPES_MODEL).stored_spec or {}).get("training", {})
    rng = np.random.RandomState(training.get("dataset", {}).get("seed", 0))
    return make_shapes_image(rng, size=128)


def run_shapes_demo(output_dir: PathLike) -> ShapesDemoResult:
    """Detect on a generated shapes image with the shipped model and write the picture."""
    from detconvert.inference.vis import draw_detections, write_picture

    predictor = load_shapes_model("cpu")
    image, drawn = shapes_demo_image()
    dets = predictor.predict(image)[0]
    picture = draw_detections(image, dets, predictor.class_names, thresh=SHAPES_THRESH)
    path = write_picture(picture, Path(output_dir) / SHAPES_PICTURE_NAME)
    return ShapesDemoResult(Path(path), dets, tuple(predictor.class_names), tuple(drawn), SHAPES_MODEL)
