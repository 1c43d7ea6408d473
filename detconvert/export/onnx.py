"""Detectron model -> ONNX: the dense network part, outputs named as Detectron names the blobs.

The graph takes Detectron's input blob ``images [N, 3, H, W]`` (float32, BGR minus ``PIXEL_MEANS``, no
std; with FPN zero-padded to a multiple of ``FPN.COARSEST_STRIDE``: :func:`detconvert.ops.preprocess`
builds it) and returns

* the feature maps: ``fpn_res2_2_sum`` .. (FPN levels, finest first) or ``res4_5_sum`` (C4);
* the RPN outputs per level: ``rpn_cls_logits_fpn{l}`` (A channels, sigmoid applied by the caller) and
  ``rpn_bbox_pred_fpn{l}`` (4A, anchor-major), or ``rpn_cls_logits`` / ``rpn_bbox_pred`` (C4);
* RetinaNet: ``retnet_cls_pred_fpn{l}`` / ``retnet_bbox_pred_fpn{l}`` logits per level.

Proposal generation, RoIAlign, the RoI heads and post-processing stay in Python (detconvert's
pipeline reproduces Detectron's exactly; ONNX RoiAlign's coordinate conventions differ per opset and
runtime). ``onnx`` and ``onnxscript`` (the exporter of ``torch.onnx.export(dynamo=True)``) are optional
dependencies: ``pip install 'detconvert[onnx]'``; ``onnxruntime`` (also in the extra) checks the graph.
"""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from detconvert.errors import ConfigError, DetconvertError, PathLike
from detconvert.export._common import ExportReport, SourceModel, check_outputs_free
from detconvert.modeling.detector import DetectronModel
from detconvert.modeling.fpn import stage_sum_name

__all__ = ["DenseNetwork", "export_onnx", "onnx_missing", "ONNX_INSTALL_HINT", "ONNX_PARITY_RTOL"]

ONNX_INSTALL_HINT = "pip install 'detconvert[onnx]'  (= onnx onnxscript onnxruntime)"
#: onnxruntime vs PyTorch: max |difference| / max |PyTorch output| per output (float32 through ~50 convs).
ONNX_PARITY_RTOL = 1e-4


class DenseNetwork(nn.Module):
    """The part of a Detectron network that is one dense graph: body, FPN and the RPN / RetinaNet head.

    Forward: ``images [N, 3, H, W]`` -> tuple of tensors named by :attr:`output_names`.
    """

    def __init__(self, model: DetectronModel):
        super().__init__()
        self.model = model
        spec = model.spec
        if model.fpn is not None:
            self.map_names = list(model.fpn.feature_names)
        else:
            self.map_names = [stage_sum_name(spec.body, spec.body.last_stage)]
        self.head_names: List[str] = []
        self.rpn_slice: Optional[Tuple[int, int]] = None
        if model.rpn_head is not None:
            rpn = spec.rpn
            if rpn.kind == "fpn":
                first = rpn.min_level - spec.fpn.min_level
                self.rpn_slice = (first, first + rpn.max_level - rpn.min_level + 1)
                levels = range(rpn.min_level, rpn.max_level + 1)
                self.head_names = [f"rpn_cls_logits_fpn{lvl}" for lvl in levels] + [
                    f"rpn_bbox_pred_fpn{lvl}" for lvl in levels]
            else:
                self.rpn_slice = (len(self.map_names) - 1, len(self.map_names))
                self.head_names = ["rpn_cls_logits", "rpn_bbox_pred"]
        elif model.retinanet_head is not None:
            levels = range(spec.fpn.min_level, spec.fpn.max_level + 1)
            self.head_names = [f"retnet_cls_pred_fpn{lvl}" for lvl in levels] + [
                f"retnet_bbox_pred_fpn{lvl}" for lvl in levels]

    @property
    def output_names(self) -> List[str]:
        return self.map_names + self.head_names

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feats = self.model.features(images)
        maps = self.model.pyramid(feats)
        outputs = list(maps)
        if self.rpn_slice is not None:
            logits, deltas = self.model.rpn_head(maps[self.rpn_slice[0]:self.rpn_slice[1]])
            outputs += list(logits) + list(deltas)
        elif self.model.retinanet_head is not None:
            cls, box = self.model.retinanet_head(maps)
            outputs += list(cls) + list(box)
        return tuple(outputs)


def onnx_missing() -> List[str]:
    """The exporter's packages that are not installed (``onnx``, ``onnxscript``)."""
    return [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]


def export_onnx(
    src: SourceModel,
    output: PathLike,
    *,
    force: bool = False,
    image_size: Tuple[int, int] = (800, 1216),
    opset: Optional[int] = None,
    verify: bool = True,
) -> ExportReport:
    """Export :class:`DenseNetwork` of ``src`` to ``output`` (``.onnx``).

    Batch, height and width are dynamic (height and width multiples of ``FPN.COARSEST_STRIDE`` with
    FPN); ``image_size`` is the example input the graph is traced with.

    Raises:
        DetconvertError: ``onnx``/``onnxscript`` missing (names the pip command), an image size that is not
            a multiple of the coarsest stride, an output that exists without ``force``, an exporter failure.
    """
    start = time.perf_counter()
    out = Path(output)
    check_outputs_free([out], force)
    missing = onnx_missing()
    if missing:
        raise DetconvertError(f"ONNX export needs {' and '.join(missing)} (optional dependencies): {ONNX_INSTALL_HINT}",
                              "--to onnx")
    spec = src.model.spec
    stride = spec.fpn.coarsest_stride if spec.fpn is not None else 1
    h, w = image_size
    if h % stride or w % stride:
        raise ConfigError(f"ONNX example size {h}x{w}: FPN inputs are padded to multiples of {stride}", "--onnx-size")
    network = DenseNetwork(src.model).eval()
    # torch.export specialises a dimension traced at size 1: trace with at least 2 strides per side.
    h, w = max(h, 2 * stride), max(w, 2 * stride)
    example = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 50.0
    batch = torch.export.Dim("batch", min=1, max=64)
    if stride > 1:
        dyn_h = stride * torch.export.Dim("h_blocks", min=1, max=4096 // stride)
        dyn_w = stride * torch.export.Dim("w_blocks", min=1, max=4096 // stride)
    else:
        dyn_h = torch.export.Dim("height", min=32, max=4096)
        dyn_w = torch.export.Dim("width", min=32, max=4096)
    kwargs = dict(input_names=["images"], output_names=network.output_names, dynamo=True, verbose=False,
                  dynamic_shapes={"images": {0: batch, 2: dyn_h, 3: dyn_w}}, external_data=False)
    if opset is not None:
        kwargs["opset_version"] = opset
    import logging
    import warnings as _warnings

    from detconvert.io.atomic import discard, publish, temp_beside

    tmp = temp_beside(out)  # a name of its own: two exports to one path never share a temp file
    try:
        with torch.no_grad(), _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            logging.getLogger("torch").setLevel(logging.ERROR)
            program = torch.onnx.export(network, (example,), **kwargs)
        program.save(str(tmp))
        notes, details = [], {"outputs": network.output_names, "input": "images [N, 3, H, W] float32 BGR minus "
                              f"PIXEL_MEANS {list(spec.conventions.pixel_means)}, padded to /{stride}"}
        if verify:
            diffs = _verify(tmp, network, example, network.output_names)
            if diffs is None:
                notes.append("onnxruntime is not installed: the graph was not checked against PyTorch "
                             f"({ONNX_INSTALL_HINT})")
            else:
                worst = max(diffs.values())
                details["max_relative_difference"] = worst
                if worst > ONNX_PARITY_RTOL:
                    raise DetconvertError(f"the exported graph disagrees with PyTorch (max relative difference "
                                          f"{worst:.2e} > {ONNX_PARITY_RTOL:g})", out)
                notes.append(f"checked with onnxruntime on a {h}x{w} input: max relative difference {worst:.1e} "
                             f"over {len(diffs)} outputs")
        if out.exists() and not force:
            raise DetconvertError("exists; pass --force to overwrite", out)
        publish(tmp, out)
    except DetconvertError:
        discard(tmp)
        raise
    except Exception as exc:  # the exporter's own errors: one line, nothing left behind
        discard(tmp)
        raise DetconvertError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                              out) from exc
    except BaseException:  # Ctrl-C: nothing left behind either
        discard(tmp)
        raise
    import onnx

    num_tensors = len(onnx.load(str(out), load_external_data=False).graph.initializer)
    notes += [f"outputs: {', '.join(network.output_names)}",
              "pre-processing, proposals, RoIAlign, the RoI heads and post-processing are not in the graph: "
              "run them with detconvert (Detectron's numerics)"]
    return ExportReport(target="onnx", outputs=[out], num_tensors=num_tensors, notes=notes,
                        seconds=time.perf_counter() - start, details=details)


def _verify(path: Path, network: DenseNetwork, example: torch.Tensor, names: List[str]):
    """Relative max difference per output between onnxruntime and PyTorch, or None without onnxruntime."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(names, {"images": example.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in network(example)]
    return {n: float(np.abs(g - e).max() / max(float(np.abs(e).max()), 1e-12)) for n, g, e in zip(names, got, want)}
