"""Fill a model from Detectron blobs, exactly once per tensor, and report what was left over.

The rules follow Detectron's ``utils/net.py`` ``initialize_gpu_from_weights_file``: each model
parameter is read under its own name, or, for names containing ``]_`` that the file lacks, under the
part after ``]_``. Everything else in a trained file is either expected (``*_momentum``, blobs
preserved from the ImageNet initialisation: the zero biases of bias-free ResNet convs and
``fc1000_*`` / ``pred_*``; fixed bilinear kernels a model did not consume) or unexpected.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detconvert.errors import MappingError, PathLike
from detconvert.modeling.mapping import blob_table, lookup_name, named_tensors

#: Why a blob the model did not read is still expected in a Detectron file (checked in this order).
LEFTOVER_RULES: Sequence[Tuple[str, str]] = (
    (r".*_momentum$", "momentum"),
    (r"^(fc1000|pred)_[wb]$", "imagenet_classifier"),
    (r"^(kps_score|mask_fcn_logits_up)_[wb]$", "fixed_bilinear"),
)
LEFTOVER_DESCRIPTIONS = {
    "momentum": "SGD momentum of a trainable parameter (training state)",
    "imagenet_classifier": "ImageNet classifier preserved from the initialisation file",
    "fixed_bilinear": "fixed bilinear up-sampling kernel the model does not use",
    "imagenet_zero_bias": "all-zero bias of a bias-free conv, preserved from the ImageNet file",
}


@dataclass
class LoadReport:
    """What :func:`load_detectron_blobs` did.

    Attributes:
        source: the weight file (for messages), or None.
        loaded: model tensor name -> blob name read.
        fallbacks: declared blob name -> name read by the ``]_`` rule (``_[mask]_res5_0_branch2a_w`` ->
            ``res5_0_branch2a_w``).
        expected_leftovers: unread blob -> reason key (see :data:`LEFTOVER_DESCRIPTIONS`).
        unexpected: unread blobs with no reason to be in a Detectron file of this architecture.
    """

    source: Optional[str]
    loaded: Dict[str, str] = field(default_factory=dict)
    fallbacks: Dict[str, str] = field(default_factory=dict)
    expected_leftovers: Dict[str, str] = field(default_factory=dict)
    unexpected: List[str] = field(default_factory=list)

    @property
    def consumed_blobs(self) -> List[str]:
        return sorted(set(self.loaded.values()))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able summary (``--report FILE.json``), with the grouped names as well as the full lists."""
        by_reason: Dict[str, List[str]] = {}
        for blob, reason in sorted(self.expected_leftovers.items()):
            by_reason.setdefault(reason, []).append(blob)
        return {
            "source": self.source,
            "counts": {
                "model_tensors": len(self.loaded),
                "blobs_read": len(self.consumed_blobs),
                "name_fallbacks": len(self.fallbacks),
                "expected_leftovers": len(self.expected_leftovers),
                "unexpected": len(self.unexpected),
            },
            "loaded": dict(self.loaded),
            "fallbacks": dict(self.fallbacks),
            "expected_leftovers": {
                reason: {"description": LEFTOVER_DESCRIPTIONS[reason], "grouped": group_names(blobs), "blobs": blobs}
                for reason, blobs in by_reason.items()
            },
            "unexpected": {"grouped": group_names(self.unexpected), "blobs": list(self.unexpected)},
            "table": self.grouped_rows(),
        }

    def grouped_rows(self) -> List[Dict[str, Any]]:
        """Loaded tensors grouped by module (two levels deep) with their blobs in compact form."""
        groups: Dict[str, List[str]] = {}
        for name, blob in self.loaded.items():
            module = ".".join(name.split(".")[:2])
            groups.setdefault(module, []).append(blob)
        return [{"module": m, "count": len(b), "blobs": group_names(b)} for m, b in groups.items()]

    def format_table(self) -> str:
        """Human-readable report: a compact table like detectron2's, then the leftovers."""
        rows = self.grouped_rows()
        width = max([len(r["module"]) for r in rows] + [6])
        lines = [f"{'module':<{width}}  {'#':>4}  blobs"]
        for r in rows:
            lines.append(f"{r['module']:<{width}}  {r['count']:>4}  {', '.join(r['blobs'])}")
        lines.append(
            f"read {len(self.consumed_blobs)} blobs into {len(self.loaded)} tensors"
            + (f" ({len(self.fallbacks)} via Detectron's ']_' name fallback)" if self.fallbacks else "")
        )
        by_reason: Dict[str, List[str]] = {}
        for blob, reason in self.expected_leftovers.items():
            by_reason.setdefault(reason, []).append(blob)
        for reason, blobs in sorted(by_reason.items()):
            shown = ", ".join(group_names(blobs)[:6])
            lines.append(f"ignored {len(blobs)} {LEFTOVER_DESCRIPTIONS[reason]}: {shown}{' ...' if len(group_names(blobs)) > 6 else ''}")
        if self.unexpected:
            lines.append(f"UNEXPECTED {len(self.unexpected)} blobs not used by this model: {', '.join(group_names(self.unexpected))}")
        return "\n".join(lines)


def load_detectron_blobs(
    model: nn.Module, blobs: Mapping[str, Any], *, source: Optional[PathLike] = None
) -> LoadReport:
    """Copy Detectron blobs into ``model`` (any module with a mapping table: a whole model or its ``body``).

    Every parameter and persistent buffer is filled exactly once, after all names and shapes have
    been checked: on any error the model is left untouched.

    Args:
        model: the module to fill (see :func:`detconvert.modeling.mapping.blob_table`).
        blobs: blob name -> array (``model_final.pkl['blobs']`` or a bare ImageNet dict).
        source: the weight file, named in errors and in the report.

    Returns:
        A :class:`LoadReport`.

    Raises:
        MappingError: a blob the model needs is missing (with a diagnosis such as "weights have FPN
            blobs, config says C4"), or has the wrong shape (module, blob and both shapes named).
    """
    src = None if source is None else str(source)
    table = blob_table(model)
    tensors = named_tensors(model)
    available = set(blobs)
    report = LoadReport(source=src)
    missing: List[Tuple[str, str]] = []
    wrong_shapes: List[str] = []
    plan: List[Tuple[torch.Tensor, np.ndarray]] = []
    for tname, blob in table.items():
        key, fell_back = lookup_name(blob, available)
        if key not in available:
            missing.append((tname, blob))
            continue
        arr = blobs[key]
        if not isinstance(arr, np.ndarray):
            raise MappingError(f"blob {key} (for {_module_of(tname)}) is a {type(arr).__name__}, not an array", src)
        tensor = tensors[tname]
        if tuple(arr.shape) != tuple(tensor.shape):
            wrong_shapes.append(_shape_message(tname, key, tuple(arr.shape), tuple(tensor.shape)))
            continue
        if fell_back:
            report.fallbacks[blob] = key
        report.loaded[tname] = key
        plan.append((tensor, arr))
    # Missing blobs first: they usually mean another architecture, which also explains bad shapes.
    if missing:
        raise MappingError(_missing_message(model, missing, available), src)
    if wrong_shapes:
        more = f" (and {len(wrong_shapes) - 1} more shape mismatches)" if len(wrong_shapes) > 1 else ""
        raise MappingError(wrong_shapes[0] + more, src)

    with torch.no_grad(), warnings.catch_warnings():
        # Arrays from the restricted unpickler may be read-only views: we only read them.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        for tensor, arr in plan:
            tensor.copy_(torch.from_numpy(np.asarray(arr, dtype=np.float32)))

    consumed = set(report.loaded.values())
    for name in sorted(available - consumed):
        reason = _leftover_reason(name, blobs, consumed, set(table.values()))
        if reason is None:
            report.unexpected.append(name)
        else:
            report.expected_leftovers[name] = reason
    return report


def _leftover_reason(name: str, blobs: Mapping[str, Any], consumed: set, declared: set) -> Optional[str]:
    for pattern, reason in LEFTOVER_RULES:
        if re.match(pattern, name):
            return reason
    # Detectron's add_missing_biases gave every bias-free ImageNet conv a zero `_b`; it is preserved.
    if name.endswith("_b") and name[:-2] + "_w" in consumed and name not in declared:
        arr = blobs[name]
        if isinstance(arr, np.ndarray) and not np.any(arr):
            return "imagenet_zero_bias"
    return None


def _module_of(tensor_name: str) -> str:
    return tensor_name.rsplit(".", 1)[0]


def _shape_message(tname: str, blob: str, file_shape: tuple, model_shape: tuple) -> str:
    msg = (
        f"module {_module_of(tname)}: blob {blob} has shape {_fmt(file_shape)} in the weights, "
        f"the model expects {_fmt(model_shape)}"
    )
    if blob.startswith(("cls_score_", "bbox_pred_", "mask_fcn_logits_", "retnet_cls_pred_")):
        msg += " (MODEL.NUM_CLASSES or the dataset differs between config and weights)"
    elif blob.endswith("branch2b_w"):
        msg += " (RESNETS.NUM_GROUPS / WIDTH_PER_GROUP differ: ResNet vs ResNeXt)"
    return msg


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _missing_message(model: nn.Module, missing: List[Tuple[str, str]], available: set) -> str:
    modules = sorted({".".join(t.split(".")[:2]) for t, _ in missing})
    names = [b for _, b in missing]
    grouped = group_names(names)
    head = f"{len(missing)} blobs needed by {', '.join(modules[:4])}{' ...' if len(modules) > 4 else ''} are missing"
    detail = ", ".join(grouped[:6]) + (" ..." if len(grouped) > 6 else "")
    diagnosis = diagnose_mismatch(model, names, available)
    return f"{head}: {detail}" + (f"; {diagnosis}" if diagnosis else "")


def diagnose_mismatch(model: nn.Module, missing: Iterable[str], available: Iterable[str]) -> str:
    """A one-phrase reason why weights and model disagree, or '' when none is recognised."""
    missing = list(missing)
    have = set(available)
    model_blobs = set(blob_table(model).values())

    def any_prefix(names: Iterable[str], *prefixes: str) -> bool:
        return any(n.startswith(prefixes) for n in names)

    file_fpn = any_prefix(have, "fpn_inner_")
    model_fpn = any_prefix(model_blobs, "fpn_inner_")
    if file_fpn and not model_fpn:
        return "weights have FPN blobs (fpn_inner_*), config says C4 (no FPN)"
    if model_fpn and not file_fpn and any_prefix(have, "res"):
        return "weights have no FPN blobs, config says FPN" + (" (weights look like C4: conv_rpn_w)" if "conv_rpn_w" in have else "")
    if any_prefix(have, "retnet_") and not any_prefix(model_blobs, "retnet_"):
        return "weights are a RetinaNet model, config is not RetinaNet"
    if any_prefix(model_blobs, "retnet_") and not any_prefix(have, "retnet_") and any_prefix(have, "rpn_", "conv_rpn"):
        return "weights are an R-CNN/RPN model, config says RetinaNet"
    file_gn = any(n.endswith("_gn_s") for n in have)
    file_bn = any(n.endswith("_bn_s") for n in have)
    miss_gn = any(n.endswith("_gn_s") for n in missing)
    miss_bn = any(n.endswith("_bn_s") for n in missing)
    if miss_gn and file_bn and not file_gn:
        return "weights have AffineChannel blobs (*_bn_s), config says GroupNorm"
    if miss_bn and file_gn and not file_bn:
        return "weights have GroupNorm blobs (*_gn_s), config says AffineChannel"
    head_prefixes = ("conv_rpn", "rpn_", "fc6_", "cls_score_", "head_conv", "retnet_")
    if not any_prefix(have, *head_prefixes) and any_prefix(have, "res"):
        return "weights hold a backbone only (an ImageNet initialisation file?): load them into model.body"
    if any(n.startswith("res") and "_branch" in n for n in missing):
        for stage in (3, 4):
            want = _num_blocks(model_blobs, stage)
            got = _num_blocks(have, stage)
            if want != got and got:
                return f"weights have {got} res{stage} blocks, config expects {want} (a different ResNet depth)"
    if any_prefix(missing, "conv5_mask", "_[mask]", "_mask_", "mask_fcn") and not any_prefix(have, "conv5_mask", "mask_fcn"):
        return "config has a mask head, weights have no mask blobs"
    if any_prefix(missing, "conv_fcn", "kps_") and not any_prefix(have, "kps_score"):
        return "config has a keypoint head, weights have no keypoint blobs"
    if any_prefix(missing, "conv_rpn", "rpn_") and not any_prefix(have, "conv_rpn", "rpn_"):
        return "config has an RPN, weights have none (a model trained with precomputed proposals?)"
    if any_prefix(missing, "fc6_", "fc7_", "head_conv") and any_prefix(have, "head_conv", "fc6_"):
        return "the box head differs (FAST_RCNN.ROI_BOX_HEAD: 2mlp vs Xconv1fc)"
    if any_prefix(missing, "_[mask]_", "_mask_fcn") and any_prefix(have, "_[mask]_", "_mask_fcn"):
        return "the mask head differs (MRCNN.ROI_MASK_HEAD: GN vs non-GN)"
    return ""


def _num_blocks(names: Iterable[str], stage: int) -> int:
    blocks = {int(m.group(1)) for n in names if (m := re.match(rf"res{stage}_(\d+)_branch", n))}
    return max(blocks) + 1 if blocks else 0


# --------------------------------------------------------------------------------------------- #
# Compact grouping of names: res2_0_branch2a_w, res2_1_branch2a_w, ... -> res2_{0,1}_branch2a_w
# --------------------------------------------------------------------------------------------- #

_TOKEN = re.compile(r"\d+|[A-Za-z]+|[^A-Za-z\d]")


def _natural(token: str) -> Tuple[int, Any]:
    return (0, int(token)) if token.isdigit() else (1, token)


def group_names(names: Iterable[str]) -> List[str]:
    """Group names that differ in one token at a time into brace patterns, as compactly as exact.

    Only exact Cartesian products are merged, so every pattern expands back to exactly its names:
    ``res2_{0,1,2}_branch2{a,b,c}_w`` stands for nine blobs. Runs of 4+ consecutive integers are
    written ``{0..22}``.
    """
    items = [tuple((t,) for t in _TOKEN.findall(n)) for n in sorted(set(names))]
    changed = True
    while changed:
        changed = False
        max_len = max((len(i) for i in items), default=0)
        for pos in range(max_len - 1, -1, -1):
            buckets: Dict[Any, List[tuple]] = {}
            for it in items:
                key = (len(it), it[:pos], it[pos + 1:]) if pos < len(it) else ("whole", it)
                buckets.setdefault(key, []).append(it)
            merged = []
            for key, group in buckets.items():
                if key[0] == "whole" or len(group) == 1:
                    merged.extend(group)
                    continue
                alts = tuple(sorted({a for g in group for a in g[pos]}, key=_natural))
                merged.append(group[0][:pos] + (alts,) + group[0][pos + 1:])
                changed = True
            items = merged
    return sorted(("".join(_render(alts) for alts in it) for it in items), key=lambda s: s.lower())


def _render(alts: tuple) -> str:
    if len(alts) == 1:
        return alts[0]
    if len(alts) >= 4 and all(a.isdigit() for a in alts):
        nums = [int(a) for a in alts]
        if nums == list(range(nums[0], nums[0] + len(nums))):
            return "{%d..%d}" % (nums[0], nums[-1])
    return "{" + ",".join(alts) + "}"
