"""``detconvert export``: a Detectron model in the formats people use today.

::

    from detconvert.export import export_model
    report = export_model("model_final.pkl", "detectron2", "model_d2.pkl")   # + model_d2.yaml
    print(report.format_text())

Targets (:data:`TARGETS`):

* ``safetensors`` / ``pth``: detconvert's own checkpoint (``detconvert weights``; metadata with the spec,
  class names and conventions), loadable by :func:`detconvert.load_model` without a YAML.
* ``detectron2``: a detectron2 model-zoo style ``.pkl`` loaded by exact names, plus a detectron2 YAML
  (:mod:`detconvert.export.detectron2`).
* ``torchvision``: a ``state_dict`` for ``torchvision.models.detection.{fasterrcnn,maskrcnn,keypointrcnn}_resnet50_fpn``
  (:mod:`detconvert.export.torchvision`).
* ``onnx``: the network part (body, FPN, RPN / RetinaNet head outputs) as an ONNX graph
  (:mod:`detconvert.export.onnx`; needs the optional ``onnx`` extra).

Sources: a Detectron ``model_final.pkl`` (its embedded cfg or ``cfg=``), a model-zoo name, or a
checkpoint written by ``detconvert weights``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

from detconvert.errors import DetconvertError, PathLike
from detconvert.export._common import ExportReport, SourceModel, check_outputs_free

__all__ = ["TARGETS", "ExportReport", "SourceModel", "export_model", "load_source"]

TARGETS = ("safetensors", "pth", "detectron2", "torchvision", "onnx")


def _resolve(source: PathLike) -> Path:
    path = Path(source)
    if path.exists():
        return path
    from detconvert.zoo.download import resolve_weights

    return resolve_weights(str(source))


def load_source(
    source: PathLike,
    cfg: Optional[PathLike] = None,
    *,
    dataset: Optional[str] = None,
    overrides: Sequence[Tuple[str, Any]] = (),
) -> SourceModel:
    """Read a Detectron pickle, zoo name or detconvert checkpoint into a :class:`SourceModel` (CPU).

    Raises:
        DetconvertError: unreadable file, a backbone-only file, a cfg that does not fit the weights.
    """
    from detconvert.io.weights import load_weights
    from detconvert.inference.predictor import build_from_weights

    path = _resolve(source)
    wf = load_weights(path)
    model, _report, names = build_from_weights(wf, cfg, dataset=dataset, overrides=overrides)
    model.eval()
    return SourceModel(model=model, class_names=list(names), path=path, weight_file=wf)


def export_model(
    source: PathLike,
    target: str,
    output: PathLike,
    *,
    cfg: Optional[PathLike] = None,
    dataset: Optional[str] = None,
    overrides: Sequence[Tuple[str, Any]] = (),
    force: bool = False,
    allow_architecture_change: bool = False,
    onnx_image_size: Tuple[int, int] = (800, 1216),
    onnx_opset: Optional[int] = None,
    verify: bool = True,
) -> ExportReport:
    """Export a Detectron model to ``target`` (one of :data:`TARGETS`), atomically.

    Args:
        source: ``model_final.pkl``, a model-zoo name, or a ``detconvert weights`` checkpoint.
        target: ``safetensors``, ``pth``, ``detectron2``, ``torchvision`` or ``onnx``.
        output: the file to write (detectron2 also writes ``output`` with ``.yaml``).
        cfg: Detectron YAML (default: the cfg inside the weights).
        dataset: ``coco*`` / ``keypoints_coco*`` / ``voc*`` / class-list file (class count and names).
        overrides: ``(KEY, VALUE)`` Detectron config overrides.
        force: overwrite existing outputs.
        allow_architecture_change: torchvision only: export an MSRA ResNet (stride on the 1x1 conv) into
            torchvision's ResNet (stride on the 3x3), which changes the network.
        onnx_image_size: ONNX only: ``(H, W)`` of the example input (multiples of 32 for FPN).
        onnx_opset: ONNX only: opset version (default: the exporter's).
        verify: ONNX only: run the exported graph with onnxruntime (when installed) against PyTorch.

    Returns:
        An :class:`ExportReport`.

    Raises:
        DetconvertError: bad source, an output that exists without ``force``, a network the target
            cannot express (one line naming what the target lacks), a missing optional dependency.
    """
    start = time.perf_counter()
    if target not in TARGETS:
        raise DetconvertError(f"unknown export target {target!r} (choose one of {', '.join(TARGETS)})", "--to")
    out = Path(output)
    check_outputs_free([out], force)
    if target in ("safetensors", "pth"):
        report = _export_checkpoint(source, target, out, cfg=cfg, dataset=dataset, overrides=overrides, force=force)
    else:
        src = load_source(source, cfg, dataset=dataset, overrides=overrides)
        if out.resolve() == src.path.resolve():
            raise DetconvertError("output would overwrite the source file; pass another -o", out)
        if target == "detectron2":
            from detconvert.export.detectron2 import export_detectron2

            report = export_detectron2(src, out, force=force)
        elif target == "torchvision":
            from detconvert.export.torchvision import export_torchvision

            report = export_torchvision(src, out, force=force, allow_architecture_change=allow_architecture_change)
        else:
            from detconvert.export.onnx import export_onnx

            report = export_onnx(src, out, force=force, image_size=onnx_image_size, opset=onnx_opset, verify=verify)
    report.seconds = time.perf_counter() - start
    return report


def _export_checkpoint(source, fmt: str, out: Path, *, cfg, dataset, overrides, force: bool) -> ExportReport:
    """safetensors / pth: ``detconvert weights`` does the writing (:func:`detconvert.export.checkpoint.convert_weights`)."""
    from detconvert.export.checkpoint import convert_weights
    from detconvert.io.weights import load_weights
    from detconvert.inference.predictor import is_converted_checkpoint

    path = _resolve(source)
    wf = load_weights(path)
    if is_converted_checkpoint(wf):
        return _rewrite_checkpoint(wf, fmt, out, cfg=cfg, dataset=dataset, overrides=overrides, force=force)
    result = convert_weights(path, cfg, dataset=dataset, output=out, fmt=fmt, force=force, overrides=overrides)
    return ExportReport(
        target=fmt, outputs=[result.output], num_tensors=result.num_tensors,
        notes=[f"a detconvert {result.kind} checkpoint: detconvert.load_model('{result.output}') runs it with "
               "Detectron's numerics; the metadata holds the spec, class names and conventions"],
    )


def _rewrite_checkpoint(wf, fmt: str, out: Path, *, cfg, dataset, overrides, force: bool) -> ExportReport:
    """A detconvert checkpoint in the other format (same tensors, same metadata)."""
    import torch

    from detconvert.export.checkpoint import serialise_state  # the one writer of detconvert checkpoints
    from detconvert.io.atomic import atomic_write

    if cfg is not None or dataset or overrides:
        raise DetconvertError("a detconvert checkpoint is re-written as it is; --cfg/--dataset/--set apply to "
                              "Detectron pickles", wf.path)
    if out.resolve() == Path(wf.path).resolve():
        raise DetconvertError("output would overwrite the source file; pass another -o", out)
    state = {k: torch.from_numpy(v).contiguous() for k, v in wf.blobs.items()}
    metadata = {k: str(v) for k, v in wf.metadata.items()}
    payload = serialise_state(state, metadata, fmt)
    with atomic_write(out, "wb", force=force) as handle:
        handle.write(payload)
    return ExportReport(target=fmt, outputs=[out], num_tensors=len(state),
                        notes=["the same detconvert checkpoint (tensors and metadata) in another format"])

