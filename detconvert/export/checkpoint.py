"""``detconvert weights``: a Detectron pickle -> a PyTorch checkpoint with everything needed to run it.

The checkpoint holds the model's ``state_dict`` (PyTorch names of
:class:`~detconvert.modeling.detector.DetectronModel`) and string metadata (:data:`detconvert.inference.predictor.METADATA_KEYS`):
the :class:`~detconvert.spec.ArchSpec` as JSON, class names, Detectron's numeric conventions, the source
file's SHA-256 and name, the cfg text it was built from, and the converter version.
:func:`detconvert.load_model` reads it back without a YAML.

An ImageNet initialisation pickle (``R-50.pkl``: a bare blob dict) becomes a *backbone* checkpoint: the
``state_dict`` of a :class:`~detconvert.modeling.resnet.ResNetBody` (res2..res5), loadable into
``model.body`` of any detector with that body.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from detconvert import __version__
from detconvert.errors import ConfigError, DetconvertError, PathLike, WeightFileError
from detconvert.io.atomic import atomic_write
from detconvert.io.weights import WeightFile, load_weights
from detconvert.modeling.loading import LoadReport, load_detectron_blobs
from detconvert.spec import ArchSpec, Conventions, NormSpec, ResNetSpec

__all__ = ["ConvertResult", "FORMATS", "convert_weights", "default_output_path", "backbone_spec_from_blobs"]

FORMATS = ("safetensors", "pth")
_SUFFIX = {"safetensors": ".safetensors", "pth": ".pth"}


@dataclass
class ConvertResult:
    """What :func:`convert_weights` wrote.

    Attributes:
        output: the checkpoint.
        kind: ``"detector"`` or ``"backbone"``.
        format: ``"safetensors"`` or ``"pth"``.
        spec: the network (for a backbone: a spec whose ``body`` is the backbone; no heads).
        body: the backbone's :class:`ResNetSpec` (both kinds).
        report: how the blobs were read.
        metadata: the string metadata stored in the file.
        num_tensors: tensors written.
        seconds: wall time of the conversion (reading, mapping, writing).
    """

    output: Path
    kind: str
    format: str
    spec: Optional[ArchSpec]
    body: ResNetSpec
    report: LoadReport
    metadata: Dict[str, str]
    num_tensors: int
    seconds: float


def default_output_path(source: PathLike, fmt: str = "safetensors") -> Path:
    """``model_final.pkl`` -> ``model_final.safetensors`` (or ``.pth``) beside it."""
    return Path(source).with_suffix(_SUFFIX[fmt])


def backbone_spec_from_blobs(blobs: Dict[str, Any], source: Optional[PathLike] = None) -> ResNetSpec:
    """The ResNet/ResNeXt body an ImageNet blob dict holds (depth, groups, width, AffineChannel or GN).

    Shapes do not say where a block's stride sits; Detectron's own configs put it on the 1x1 conv for
    the MSRA ResNets and on the 3x3 conv for ResNeXt and GroupNorm models (``RESNETS.STRIDE_1X1``), so
    that is assumed; pass the config to ``detconvert weights --cfg`` to decide it explicitly.
    """
    from detconvert.inspect import read_architecture

    arch = read_architecture(blobs)
    counts = tuple(arch.block_counts or ())
    if not arch.depth or len(counts) != 4:
        raise WeightFileError("not a ResNet/ResNeXt ImageNet file (res2..res5 blobs not found)", source)
    groups = int(arch.num_groups or 1)
    norm = NormSpec(kind="gn" if arch.norm == "gn" else "affine")
    return ResNetSpec(
        depth=int(arch.depth), block_counts=counts, last_stage=5, num_groups=groups,
        width_per_group=int(arch.width_per_group or 64), stride_1x1=(groups == 1 and norm.kind == "affine"),
        norm=norm,
    )


def portable_state_dict(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """``module``'s state on the CPU, every tensor its own contiguous copy (ready to serialise)."""
    # safetensors refuses shared or non-contiguous storage: give every tensor its own contiguous copy.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def serialise_state(state: Dict[str, torch.Tensor], metadata: Dict[str, str], fmt: str) -> bytes:
    """The bytes of a detconvert checkpoint (``safetensors`` or ``pth``) with its metadata."""
    if fmt == "safetensors":
        from safetensors.torch import save

        return save(state, metadata=metadata)
    buffer = io.BytesIO()
    # The layout detconvert.io.weights reads back: tensors under "state_dict", metadata as top-level strings.
    torch.save({"state_dict": state, **metadata}, buffer)
    return buffer.getvalue()


def convert_weights(
    source: PathLike,
    cfg: Optional[PathLike] = None,
    *,
    dataset: Optional[str] = None,
    output: Optional[PathLike] = None,
    fmt: str = "safetensors",
    force: bool = False,
    overrides: Sequence[Tuple[str, Any]] = (),
) -> ConvertResult:
    """Convert a Detectron weight file into a PyTorch checkpoint (atomically).

    Args:
        source: ``model_final.pkl`` (detector) or an ImageNet pickle (backbone), or a model-zoo name.
        cfg: Detectron YAML; default: the cfg embedded in the detector file.
        dataset: ``coco*`` / ``keypoints_coco*`` / ``voc*`` / class-list file (class count and names).
        output: checkpoint path (default: beside the source, ``.safetensors`` / ``.pth``).
        fmt: ``"safetensors"`` (default) or ``"pth"``.
        force: overwrite an existing output.
        overrides: ``(KEY, VALUE)`` config overrides, stored with the checkpoint.

    Returns:
        A :class:`ConvertResult`.

    Raises:
        DetconvertError: unreadable source, cfg/weights mismatch (naming the module and blob), output
            exists without ``force``, unknown format.
    """
    from detconvert.inference.predictor import CHECKPOINT_FORMAT, build_from_weights

    start = time.perf_counter()
    if fmt not in FORMATS:
        raise DetconvertError(f"unknown format '{fmt}' (choose {' or '.join(FORMATS)})", "--format")
    src = Path(source)
    if not src.exists():
        from detconvert.zoo.download import resolve_weights

        src = resolve_weights(str(source))
    out = Path(output) if output is not None else default_output_path(src, fmt)
    if out.exists() and not force:
        raise DetconvertError("exists; pass --force to overwrite", out)
    if out.resolve() == src.resolve():
        raise DetconvertError("output would overwrite the source file; pass another -o", out)
    wf: WeightFile = load_weights(src)

    metadata: Dict[str, str] = {
        "format": CHECKPOINT_FORMAT,
        "converter_version": __version__,
        "source_sha256": wf.sha256,
        "source_name": src.name,
        # The blobs are copied bit for bit as float32: the weights of Detectron's exact numerics. Inference
        # picks its own precision (load_model(precision=...)); this records what the file holds.
        "precision": json.dumps({"precision": "exact", "compute_dtype": "float32"}),
    }
    if wf.flavour == "detectron_imagenet":
        spec = None
        if cfg is not None:
            from detconvert.inference.predictor import spec_from_cfg

            spec = spec_from_cfg(cfg, dataset=dataset, overrides=overrides)
            body = replace(spec.body, last_stage=5)  # the ImageNet file holds res5 whatever the config
        else:
            body = backbone_spec_from_blobs(wf.blobs, src)
        from detconvert.modeling.resnet import ResNetBody

        module = ResNetBody(body)
        report = load_detectron_blobs(module, wf.blobs, source=src)
        kind = "backbone"
        metadata.update(kind=kind, body=json.dumps(_asdict(body)), conventions=json.dumps(
            _asdict(spec.conventions if spec is not None else Conventions())))
    elif wf.flavour == "detectron_detector":
        model, report, names = build_from_weights(wf, cfg, dataset=dataset, overrides=overrides)
        spec = model.spec
        body = spec.body
        module = model
        kind = "detector"
        cfg_text = Path(cfg).read_text() if cfg is not None else (wf.cfg_text or "")
        metadata.update(
            kind=kind,
            spec=json.dumps(spec.to_dict()),
            class_names=json.dumps(names),
            conventions=json.dumps(spec.to_dict()["conventions"]),
            cfg=cfg_text,
            overrides=json.dumps([[str(k), str(v)] for k, v in overrides]),
        )
        if dataset:
            metadata["dataset"] = str(dataset)
    else:
        raise WeightFileError(
            f"a {wf.flavour} file: 'detconvert weights' converts Detectron pickles (model_final.pkl or an "
            "ImageNet R-50.pkl)", src)

    state = portable_state_dict(module)
    payload = serialise_state(state, metadata, fmt)
    with atomic_write(out, "wb", force=force) as handle:
        handle.write(payload)
    return ConvertResult(
        output=out, kind=kind, format=fmt, spec=spec, body=body, report=report, metadata=metadata,
        num_tensors=len(state), seconds=time.perf_counter() - start,
    )


def _asdict(obj: Any) -> Dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj)


def load_backbone(body: torch.nn.Module, checkpoint: PathLike) -> List[str]:
    """Initialise ``body`` (a :class:`ResNetBody`, e.g. ``model.body``) from a backbone checkpoint.

    Returns:
        Names of the body's tensors the checkpoint did not provide (e.g. nothing for res2..res5 of a
        conv5 body; the stage a C4 body lacks is simply not read).

    Raises:
        DetconvertError: not a detconvert backbone checkpoint, or a tensor of the wrong shape.
    """
    wf = load_weights(checkpoint)
    if wf.metadata.get("kind") != "backbone":
        raise WeightFileError("not a backbone checkpoint written by 'detconvert weights'", checkpoint)
    own = body.state_dict()
    state = {}
    for name, value in wf.blobs.items():
        if name not in own:
            continue
        if tuple(own[name].shape) != tuple(value.shape):
            raise ConfigError(f"tensor {name}: checkpoint {tuple(value.shape)}, model {tuple(own[name].shape)}",
                              checkpoint)
        state[name] = torch.from_numpy(value)
    body.load_state_dict(state, strict=False)
    return sorted(set(own) - set(state))
