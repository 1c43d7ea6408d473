"""``load_model`` / :class:`Predictor`: a Detectron weight file (or a converted checkpoint) ready to predict.

::

    import detconvert
    predictor = detconvert.load_model("model_final.pkl")          # the embedded cfg decides the network
    dets = predictor.predict(["coffee.png"])[0]                   # boxes, scores, classes, masks (RLE) ...

Sources accepted by :func:`load_model`:

* a Detectron ``model_final.pkl`` (its embedded cfg, or ``cfg=`` a Detectron YAML); when the pickle carries
  detconvert's ``'detconvert'`` entry (see :mod:`detconvert.io.weights`) its stored spec and class names
  describe the network, so bodies no Detectron key can say (the shipped shapes model) load by path;
* a checkpoint written by ``detconvert weights`` (safetensors or pth; its metadata holds the spec, the
  class names and the cfg, so no YAML is needed);
* a model-zoo name (fetched to the cache by :func:`detconvert.zoo.download.resolve_weights`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from detconvert.errors import ConfigError, DetconvertError, MappingError, PathLike, WeightFileError
from detconvert.inference.precision import Precision, PrecisionPolicy, resolve_precision
from detconvert.io.weights import WeightFile, load_weights
from detconvert.modeling.detector import DetectronModel, build_model
from detconvert.modeling.loading import LoadReport, load_detectron_blobs
from detconvert.spec import ArchSpec
from detconvert.structures import Detections

__all__ = ["Predictor", "load_model", "default_class_names", "CHECKPOINT_FORMAT", "METADATA_KEYS"]

#: ``metadata["format"]`` of checkpoints written by ``detconvert weights``.
CHECKPOINT_FORMAT = "detconvert"
#: Metadata keys of a converted checkpoint (all values are strings; JSON where structured).
METADATA_KEYS = ("format", "kind", "converter_version", "spec", "class_names", "conventions", "source_sha256",
                 "source_name", "cfg", "precision")

ImageLike = Union[np.ndarray, str, Path]


def default_class_names(num_classes: int, dataset: Optional[str] = None) -> List[str]:
    """Class names, index 0 ``__background__``.

    ``dataset`` (``coco*``, ``keypoints_coco*``, ``voc*`` or a class-list file) wins; otherwise COCO's
    names for 81 classes, background + person for 2, else ``class_1`` ...
    """
    from detconvert.data import classes

    if dataset:
        return list(classes.get_class_table(dataset).names)
    if num_classes == 81:
        return list(classes.coco_table().names)
    if num_classes == 2:
        return list(classes.keypoints_coco_table().names)
    if num_classes == 21:
        return list(classes.voc_table().names)
    return [classes.BACKGROUND] + [f"class_{i}" for i in range(1, max(num_classes, 1))]


def _pick_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    if device is None or str(device) == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DetconvertError(f"not a device name ({exc}); use cpu, cuda or cuda:N", "--device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DetconvertError("CUDA was asked for but no CUDA device is available", "--device")
    return dev


class Predictor:
    """A loaded Detectron network plus Detectron's test path.

    Attributes:
        model: the :class:`~detconvert.modeling.detector.DetectronModel` (eval mode, on :attr:`device`).
        spec: its :class:`~detconvert.spec.ArchSpec`.
        class_names: index 0 ``__background__``.
        device: where it runs.
        load_report: what loading the weights did (None for converted checkpoints loaded by name).
        source: the weight file.
        precision: ``Precision.EXACT`` (``== "exact"``, the default) or ``Precision.FAST``; chosen once here,
            and the model is put in its memory format in place (channels-last in fast, NCHW in exact): give
            two predictors of different precisions two models.
        precision_policy: what that precision runs as on :attr:`device` (dtype, layout, backend);
            ``precision_policy.describe()`` is the run metadata written beside results.
    """

    def __init__(
        self,
        model: DetectronModel,
        class_names: Sequence[str],
        device: torch.device,
        *,
        load_report: Optional[LoadReport] = None,
        source: Optional[Path] = None,
        precision: Union[str, Precision, PrecisionPolicy, None] = "exact",
    ):
        self.precision_policy = resolve_precision(precision, device)
        self.precision_policy.prepare_model(model)
        self.model = model
        self.spec: ArchSpec = model.spec
        self.class_names = list(class_names)
        self.device = device
        self.load_report = load_report
        self.source = source

    @property
    def precision(self) -> Precision:
        """``exact`` or ``fast`` (a ``str`` enum)."""
        return self.precision_policy.precision

    @property
    def needs_proposals(self) -> bool:
        """True for precomputed-proposal models (``predict`` then needs ``proposals=``)."""
        return self.spec.pipeline == "precomputed_proposals"

    def predict(
        self,
        images: Union[ImageLike, Sequence[ImageLike]],
        keep_blobs: bool = False,
        *,
        proposals: Optional[Sequence[np.ndarray]] = None,
        on_pass: Optional[Callable[[int, int, str], None]] = None,
    ) -> List[Detections]:
        """Detect on a batch of images (one forward pass for all of them).

        When the config asks for test-time augmentation (``TEST.BBOX_AUG`` / ``MASK_AUG`` / ``KPS_AUG``)
        each image runs alone through Detectron's augmented passes (:mod:`detconvert.inference.tta`);
        ``--set TEST.BBOX_AUG.ENABLED False`` (and the other two) at load time turns it off.

        Args:
            images: BGR ``uint8`` ``H x W x 3`` arrays (as ``cv2.imread`` returns) and/or image paths;
                a single array or path is a batch of one.
            keep_blobs: put the intermediate blobs, named as Detectron names them, in each result's
                ``extras`` (the blobs of the whole batch: column 0 of RoI blobs is the image index).
            proposals: precomputed-proposal models only: one ``[R, 4]`` box array per image
                (original-image pixels, best first).
            on_pass: test-time augmentation only: called as ``on_pass(done, total, what)`` after each
                network pass of an image (progress on long images).

        Returns:
            One :class:`~detconvert.structures.Detections` per image, in original-image pixels.

        Raises:
            DetconvertError: an unreadable image path, a non-BGR array, missing proposals, ``keep_blobs``
                with test-time augmentation.
        """
        from detconvert.inference.pipeline import run_pipeline
        from detconvert.inference.tta import run_augmented, uses_augmentation

        if isinstance(images, (np.ndarray, str, Path)):
            images = [images]
        arrays = [self._as_image(im) for im in images]
        if not arrays:
            return []
        if self.needs_proposals and (proposals is None or len(proposals) != len(arrays)):
            raise DetconvertError(
                "this model reads precomputed proposals (it has no RPN): pass proposals=[boxes per image]",
                "predict",
            )
        if uses_augmentation(self.spec):
            if keep_blobs:
                raise DetconvertError("blobs are kept for one network pass, and test-time augmentation runs many: "
                                      "load with --set TEST.BBOX_AUG.ENABLED False (and MASK_AUG / KPS_AUG) to keep them",
                                      "keep_blobs")
            return [
                run_augmented(self.model, image, policy=self.precision_policy, device=self.device,
                              proposals=None if proposals is None else proposals[i], on_pass=on_pass)
                for i, image in enumerate(arrays)
            ]
        out = run_pipeline(self.model, arrays, proposals=proposals, keep_blobs=keep_blobs, device=self.device,
                           precision=self.precision_policy)
        if keep_blobs:
            for d in out.detections:
                d.extras = out.blobs
        return out.detections

    @staticmethod
    def _as_image(image: ImageLike) -> np.ndarray:
        if isinstance(image, (str, Path)):
            array = cv2.imread(str(image), cv2.IMREAD_COLOR)
            if array is None:
                raise DetconvertError("not an image OpenCV can read", image)
            return array
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3:
            raise DetconvertError(f"expected an H x W x 3 BGR image, got shape {tuple(array.shape)}", "predict")
        if array.dtype != np.uint8:
            raise DetconvertError(f"expected a uint8 BGR image (cv2.imread), got {array.dtype}", "predict")
        return array

    def __repr__(self) -> str:
        return (f"Predictor({self.spec.conv_body_name or self.spec.meta_arch}, pipeline={self.spec.pipeline}, "
                f"classes={self.spec.num_classes}, device={self.device}, precision={self.precision})")


def is_converted_checkpoint(wf: WeightFile) -> bool:
    """True for files written by ``detconvert weights`` (metadata ``format == "detconvert"``)."""
    return wf.flavour in ("safetensors", "torch") and wf.metadata.get("format") == CHECKPOINT_FORMAT


def spec_from_cfg(
    cfg_source: Any,
    *,
    dataset: Optional[str] = None,
    weights: Any = None,
    overrides: Sequence[Tuple[str, Any]] = (),
    source_name: Optional[str] = None,
) -> ArchSpec:
    """Translate a Detectron config (path, text or embedded dict) and build its :class:`ArchSpec`."""
    from detconvert.config import build_spec, translate_config

    translated = translate_config(cfg_source, dataset=dataset, weights_cfg_or_blobs=weights,
                                  overrides=list(overrides), source_name=source_name)
    return build_spec(translated.cfg, translated.source)


#: Body fields no Detectron config key can say (a detconvert-trained narrow body): with ``--set`` overrides on a
#: pickle that stores its spec, the embedded cfg decides everything else and these come from the stored spec.
BODY_FIELDS_BEYOND_CFG = ("block_counts", "stem_out_dim", "res2_out_dim")


def stored_spec(wf: WeightFile) -> Optional[ArchSpec]:
    """The :class:`ArchSpec` of a detector pickle's ``'detconvert'`` entry (None without one)."""
    if wf.stored_spec is None:
        return None
    try:
        return ArchSpec.from_dict(wf.stored_spec["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightFileError(f"its 'detconvert' entry does not describe a network ({type(exc).__name__}: {exc})",
                              wf.path) from None


def _detector_spec(wf: WeightFile, cfg: Optional[PathLike], dataset, overrides) -> ArchSpec:
    if cfg is not None:  # an explicit config wins over anything the file says about itself
        return spec_from_cfg(cfg, dataset=dataset, weights=wf, overrides=overrides)
    stored = stored_spec(wf)
    if stored is not None and not overrides and not dataset:
        return stored
    if wf.cfg is None:
        why = f" ({wf.cfg_error})" if wf.cfg_error else ""
        raise ConfigError(f"the weight file has no usable embedded cfg{why}; pass the Detectron YAML with --cfg",
                          wf.path)
    spec = spec_from_cfg(wf.cfg, dataset=dataset, weights=wf, overrides=overrides,
                         source_name=f"{wf.path} (embedded cfg)")
    if stored is not None:
        body = {name: getattr(stored.body, name) for name in BODY_FIELDS_BEYOND_CFG}
        spec = dataclasses.replace(spec, body=dataclasses.replace(spec.body, **body))
    return spec


def _checkpoint_spec(wf: WeightFile, cfg, dataset, overrides) -> ArchSpec:
    meta = wf.metadata
    if meta.get("kind") == "backbone":
        raise WeightFileError("a backbone-only checkpoint (converted ImageNet weights) has no detection heads; "
                              "use it to initialise a model's body", wf.path)
    if cfg is None and not overrides and not dataset:
        return ArchSpec.from_dict(json.loads(meta["spec"]))
    source = cfg if cfg is not None else meta.get("cfg")
    if not source:
        raise ConfigError("the checkpoint stores no cfg to apply overrides to; pass --cfg", wf.path)
    if cfg is None:  # the stored cfg plus the overrides it was converted with, then the new ones
        overrides = [tuple(pair) for pair in json.loads(meta.get("overrides", "[]"))] + list(overrides)
        dataset = dataset or meta.get("dataset")
    return spec_from_cfg(source, dataset=dataset, overrides=overrides,
                         source_name=str(cfg) if cfg is not None else f"{wf.path} (stored cfg)")


def build_from_weights(
    wf: WeightFile,
    cfg: Optional[PathLike] = None,
    *,
    dataset: Optional[str] = None,
    overrides: Sequence[Tuple[str, Any]] = (),
) -> Tuple[DetectronModel, Optional[LoadReport], List[str]]:
    """The model described by ``wf`` (+ ``cfg``), weights loaded, on the CPU.

    Returns:
        ``(model, load report or None for converted checkpoints, class names)``.
    """
    if wf.flavour == "detectron_imagenet":
        raise WeightFileError(
            "an ImageNet backbone file has no detection heads; convert it with 'detconvert weights' to "
            "initialise a model's body", wf.path)
    if is_converted_checkpoint(wf):
        spec = _checkpoint_spec(wf, cfg, dataset, overrides)
        model = build_model(spec)
        state = {k: torch.from_numpy(v) for k, v in wf.blobs.items()}
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise MappingError(
                f"checkpoint does not fit the network: {len(result.missing_keys)} tensors missing "
                f"({', '.join(result.missing_keys[:3])}), {len(result.unexpected_keys)} unexpected "
                f"({', '.join(result.unexpected_keys[:3])})", wf.path)
        names = json.loads(wf.metadata["class_names"]) if "class_names" in wf.metadata else None
        if dataset or not names or len(names) != spec.num_classes:
            names = default_class_names(spec.num_classes, dataset)
        return model, None, names
    if wf.flavour != "detectron_detector":
        raise WeightFileError(
            f"a {wf.flavour} file that detconvert did not write: load_model reads Detectron model_final.pkl "
            "files and 'detconvert weights' checkpoints", wf.path)
    spec = _detector_spec(wf, cfg, dataset, overrides)
    model = build_model(spec)
    report = load_detectron_blobs(model, wf.blobs, source=wf.path)
    names = wf.stored_spec["class_names"] if wf.stored_spec is not None else None
    if dataset or not names or len(names) != spec.num_classes:
        names = default_class_names(spec.num_classes, dataset)
    return model, report, list(names)


def load_model(
    weights: Union[PathLike, WeightFile],
    cfg: Optional[PathLike] = None,
    *,
    dataset: Optional[str] = None,
    device: Optional[Union[str, torch.device]] = None,
    overrides: Sequence[Tuple[str, Any]] = (),
    precision: Union[str, Precision, None] = "exact",
) -> Predictor:
    """Load a Detectron network ready for :meth:`Predictor.predict`.

    Args:
        weights: ``model_final.pkl``, a ``detconvert weights`` checkpoint, a model-zoo name, or an
            already read :class:`~detconvert.io.weights.WeightFile`.
        cfg: a Detectron YAML; default: the cfg embedded in the weights (or stored in the checkpoint).
        dataset: ``coco*`` / ``keypoints_coco*`` / ``voc*`` / a class-list file: decides
            ``MODEL.NUM_CLASSES`` when the cfg does not and the class names.
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: CUDA when available).
        overrides: ``(KEY, VALUE)`` config overrides (Detectron's ``--set``), e.g. ``[("TEST.SCALE", "600")]``.
        precision: ``"exact"`` (default: Detectron's float32 numerics, NCHW on the CPU, no TF32 on CUDA) or
            ``"fast"`` (channels-last, bfloat16 / float16 autocast for convolutions and linear layers, the
            post-processing in float32); see :mod:`detconvert.inference.precision`.

    Returns:
        A :class:`Predictor`.

    Raises:
        DetconvertError: unreadable weights, a cfg that does not fit the weights (one line naming the
            file and the mismatch), a bad device, an unknown precision.
    """
    dev = _pick_device(device)
    policy = resolve_precision(precision, dev)  # a bad value fails before the weights are read
    if isinstance(weights, WeightFile):
        wf = weights
    else:
        path = Path(weights)
        if not path.exists():
            from detconvert.zoo.download import resolve_weights

            path = resolve_weights(str(weights))
        wf = load_weights(path)
    model, report, names = build_from_weights(wf, cfg, dataset=dataset, overrides=overrides)
    # Exact by default: NCHW float32, the layout whose CPU kernels reproduce Detectron's blobs (channels-last
    # changes GroupNorm's and the convolutions' summation order: scores 1e-4 off, RoIs swapped after top-N).
    # Predictor puts the model in the policy's layout (channels-last in fast).
    model.to(dev).eval()
    return Predictor(model, names, dev, load_report=report, source=wf.path, precision=policy)
