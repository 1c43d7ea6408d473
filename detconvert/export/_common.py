"""Pieces every export target shares: the loaded source model, the report, name-rule tables.

A *name-rule table* is data: ``(regex on a Detectron module blob, target module path template)``.
A Detectron tensor blob is first split into its module blob and the tensor kind by the suffix
Caffe2's helpers gave it (``detectron/modeling/detector.py``: ``Conv``/``FC`` -> ``_w``/``_b``,
``AffineChannel`` -> ``_bn_s``/``_bn_b``, ``SpatialGN`` -> ``_gn_s``/``_gn_b``); the module blob is
then looked up in the table of the target framework.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from detconvert.errors import MappingError, PathLike
from detconvert.io.weights import WeightFile

if TYPE_CHECKING:  # annotations only: `detconvert export --help` reads TARGETS without importing torch
    from detconvert.modeling.detector import DetectronModel

#: Tensor-name suffix -> (kind, is the tensor of a norm layer). Checked in this order, longest first,
#: so that ``_bn_b`` is not read as a conv bias ``_b``.
BLOB_SUFFIX_KINDS: Tuple[Tuple[str, str], ...] = (
    ("_bn_s", "norm_weight"),  # AffineChannel scale (folded BN)
    ("_bn_b", "norm_bias"),
    ("_gn_s", "norm_weight"),  # SpatialGN gamma
    ("_gn_b", "norm_bias"),
    ("_w", "weight"),
    ("_b", "bias"),
)

#: One rule: (full-match regex on the module blob, template of the target module path). Templates are
#: ``str.format`` strings over the regex's named groups plus the derived fields of :func:`derived_fields`.
NameRule = Tuple[str, str]


@dataclass
class SourceModel:
    """A Detectron network with its weights, ready to be exported.

    Attributes:
        model: the :class:`~detconvert.modeling.detector.DetectronModel` (CPU, eval mode).
        class_names: index 0 ``__background__``.
        path: the weight file it came from.
        weight_file: that file as read (``flavour``, ``metadata``, ``sha256``).
    """

    model: DetectronModel
    class_names: List[str]
    path: Path
    weight_file: Optional[WeightFile] = None


@dataclass
class ExportReport:
    """What an export wrote and what a user of the target must know.

    Attributes:
        target: ``safetensors``, ``pth``, ``detectron2``, ``torchvision`` or ``onnx``.
        outputs: files written (e.g. the detectron2 ``.pkl`` and its ``.yaml``).
        num_tensors: tensors (or graph initialisers) written.
        notes: how to use the output and which numerics differ from Detectron in the target.
        warnings: things that change the network (printed loudly by the CLI).
        dropped: Detectron blob -> why the target has no tensor for it.
        seconds: wall time.
        details: target-specific data (e.g. ``builder_kwargs`` for torchvision, the ONNX output names).
    """

    target: str
    outputs: List[Path]
    num_tensors: int = 0
    notes: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    dropped: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    details: Dict[str, object] = field(default_factory=dict)

    def format_text(self) -> str:
        """Human-readable summary (what the CLI prints)."""
        lines = []
        for w in self.warnings:
            lines.append(f"WARNING: {w}")
        for name, why in self.dropped.items():
            lines.append(f"dropped  {name}: {why}")
        for n in self.notes:
            lines.append(f"note     {n}")
        written = ", ".join(str(p) for p in self.outputs)
        lines.append(f"wrote {written} ({self.target}, {self.num_tensors} tensors) in {self.seconds:.1f} s")
        return "\n".join(lines)


def split_blob(blob: str) -> Tuple[str, str]:
    """``res2_0_branch2a_bn_s`` -> ``("res2_0_branch2a", "norm_weight")``; ``fc6_w`` -> ``("fc6", "weight")``."""
    for suffix, kind in BLOB_SUFFIX_KINDS:
        if blob.endswith(suffix):
            return blob[: -len(suffix)], kind
    raise MappingError(f"blob {blob!r} has none of the Caffe2 tensor suffixes {[s for s, _ in BLOB_SUFFIX_KINDS]}")


def derived_fields(groups: Mapping[str, Optional[str]]) -> Dict[str, object]:
    """Fields templates may use besides the regex groups.

    ``seq``: index in an ``nn.Sequential`` that interleaves conv and ReLU (``2 * i``: detectron2's
    RetinaNet ``cls_subnet``, torchvision's ``keypoint_head``), from group ``i`` (0-based) or ``n`` (1-based);
    ``layer``: torchvision's ``layer1..4`` for Detectron's ``res2..5``; ``level``: FPN list index
    (``stage - 2``, finest first); ``n0``: 1-based ``n`` made 0-based.
    """
    out: Dict[str, object] = {k: v for k, v in groups.items() if v is not None}
    if "i" in out:
        out["seq"] = 2 * int(out["i"])
    if "n" in out:
        out["n0"] = int(out["n"]) - 1
        out["seq"] = 2 * (int(out["n"]) - 1)
    if "stage" in out:
        out["layer"] = int(out["stage"]) - 1
        out["level"] = int(out["stage"]) - 2
    return out


def lookup(rules: Sequence[NameRule], module_blob: str, extra: Mapping[str, object]) -> Optional[str]:
    """The target module path of ``module_blob`` by the first matching rule, or None."""
    for pattern, template in rules:
        m = re.fullmatch(pattern, module_blob)
        if m is not None:
            return template.format(**derived_fields(m.groupdict()), **extra)
    return None


def detectron_blobs(model: DetectronModel) -> Dict[str, np.ndarray]:
    """Detectron blob name -> float32 array of every tensor of ``model`` (through its mapping table)."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    return {blob: tensors[name].detach().cpu().float().numpy().copy() for name, blob in model.blob_table().items()}


def affine_scale_blobs(model: DetectronModel) -> Set[str]:
    """Blobs that are the scale of an AffineChannel (folded BN): those become FrozenBatchNorm2d layers."""
    from detconvert.modeling.layers import AffineChannel2d

    table = model.blob_table()
    out = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, AffineChannel2d):
            key = f"{mod_name}.weight"
            if key in table:  # a shared module is listed once, under its first path
                out.add(table[key])
    return out


def check_outputs_free(paths: Sequence[PathLike], force: bool) -> None:
    """Fail before any work if an output exists and ``force`` is off (nothing is written either way)."""
    from detconvert.errors import DetconvertError

    if force:
        return
    for p in paths:
        if Path(p).exists():
            raise DetconvertError("exists; pass --force to overwrite", p)


Transform = Callable[[np.ndarray], np.ndarray]
