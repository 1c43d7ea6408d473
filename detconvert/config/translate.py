"""Translate any Detectron config (YAML file or text, embedded cfg, ``model_final.pkl``) to ours.

Steps (each recorded in the report):

1. read the source; Detectron.pytorch's extra keys are understood and mapped (:data:`VARIANT_KEYS`);
   a section Detectron does not have (a config from a Detectron fork) is an error;
2. merge onto Detectron's defaults (:mod:`.merge`), apply ``--set`` pairs, run Detectron's
   inference (:mod:`.infer`) -> :attr:`TranslatedConfig.detectron_cfg`, the cfg Detectron itself
   would have run with;
3. translate: ``MODEL.TYPE`` aliases, old function names (``name_compat``), ``add_`` stripped,
   ``MODEL.NUM_CLASSES`` resolved from ``--dataset`` / the weights / the YAML, and
   run-specific keys (weights, datasets, proposal files, output dir, GPU count) moved to
   :attr:`TranslatedConfig.hints` -> :attr:`TranslatedConfig.cfg`.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import yaml

from detconvert.config.defaults import _DEFAULT_TREE, INFERRED_KEYS, default_cfg, flatten, values_equal
from detconvert.config.frozen import FrozenCfg
from detconvert.config.infer import assert_and_infer_cfg
from detconvert.config.merge import Change, decode_value, merge_cfg, merge_from_list
from detconvert.config.modules import MODEL_TYPES, resolve_model_type, resolve_module, valid_names
from detconvert.errors import ConfigError, PathLike

# Run-specific keys: not part of the network. Removed from the translated config, kept as hints.
HINT_KEYS: Dict[str, str] = {
    "TRAIN.WEIGHTS": "training initialisation (ImageNet weights), not the network",
    "TEST.WEIGHTS": "weights to test; may serve as the weights source (--weights)",
    "TRAIN.DATASETS": "training data; --dataset decides NUM_CLASSES",
    "TEST.DATASETS": "evaluation data; --dataset decides NUM_CLASSES",
    "TRAIN.PROPOSAL_FILES": "precomputed proposals of the training run",
    "TEST.PROPOSAL_FILES": "precomputed proposals of the evaluation run",
    "OUTPUT_DIR": "output folder of the Detectron run",
    "ROOT_DIR": "working directory of the Detectron process",
    "DOWNLOAD_CACHE": "Detectron's download cache",
    "NUM_GPUS": "GPU count of the run (scales batch and LR schedule in training)",
}

# Module-name options normalised by modules.resolve_module.
MODULE_KEYS = (
    "MODEL.CONV_BODY",
    "FAST_RCNN.ROI_BOX_HEAD",
    "MRCNN.ROI_MASK_HEAD",
    "KRCNN.ROI_KEYPOINTS_HEAD",
    "RESNETS.TRANS_FUNC",
    "RESNETS.STEM_FUNC",
    "RESNETS.SHORTCUT_FUNC",
)

# Detectron.pytorch (roytseng-tw, lib/core/config.py) keys that Detectron lacks: what each means here.
# "drop": training-only or a PyTorch implementation detail, no effect on Detectron's network.
VARIANT_KEYS: Dict[str, Tuple[str, str]] = {
    "RESNETS.USE_GN": ("gn", "Detectron.pytorch switch for GroupNorm ResNets: the *_gn_* stem/transformation/shortcut"),
    "RESNETS.FREEZE_AT": ("move:TRAIN.FREEZE_AT", "Detectron.pytorch moved TRAIN.FREEZE_AT here"),
    "RESNETS.IMAGENET_PRETRAINED_WEIGHTS": ("hint", "ImageNet initialisation file (training only)"),
    "RESNETS.IMAGENET_PRETRAINED": ("drop", "whether training starts from ImageNet weights"),
    "MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS": ("drop", "whether training starts from ImageNet weights"),
    "MODEL.SHARE_RES5": ("drop", "Detectron.pytorch infers it from the v0upshare mask head"),
    "RPN.CLS_ACTIVATION": ("require:sigmoid", "Detectron's RPN is a sigmoid with A objectness channels"),
    "RPN.OUT_DIM_AS_IN_DIM": ("require:True", "Detectron's RPN conv keeps the input width"),
    "RPN.OUT_DIM": ("drop", "used only when RPN.OUT_DIM_AS_IN_DIM is False"),
    "FPN.RPN_COLLECT_SCALE": ("drop", "inferred per batch by Detectron.pytorch (1 at test time)"),
    "TRAIN.ASPECT_CROPPING": ("drop", "training data augmentation"),
    "TRAIN.ASPECT_HI": ("drop", "training data augmentation"),
    "TRAIN.ASPECT_LO": ("drop", "training data augmentation"),
    "TRAIN.TRIM_HEIGHT": ("drop", "deprecated training option"),
    "TRAIN.TRIM_WIDTH": ("drop", "deprecated training option"),
    "TRAIN.BBOX_NORMALIZE_TARGETS": ("drop", "legacy training target normalisation"),
    "TRAIN.BBOX_INSIDE_WEIGHTS": ("drop", "legacy training target weights"),
    "TRAIN.BBOX_NORMALIZE_MEANS": ("drop", "legacy training target normalisation"),
    "TRAIN.BBOX_NORMALIZE_STDS": ("drop", "legacy training target normalisation"),
    "SOLVER.TYPE": ("drop", "optimizer choice (training only)"),
    "SOLVER.BIAS_DOUBLE_LR": ("drop", "optimizer option (training only)"),
    "SOLVER.BIAS_WEIGHT_DECAY": ("drop", "optimizer option (training only)"),
    "MRCNN.MEMORY_EFFICIENT_LOSS": ("drop", "training loss implementation"),
    "CROP_RESIZE_WITH_MAX_POOL": ("drop", "deprecated RoICrop option (RoIAlign is used)"),
    "POOLING_MODE": ("drop", "deprecated pooling option (the *.ROI_XFORM_METHOD keys decide)"),
    "POOLING_SIZE": ("drop", "deprecated pooling option (the *.ROI_XFORM_RESOLUTION keys decide)"),
    "DATA_DIR": ("drop", "Detectron.pytorch data folder"),
    "CUDA": ("drop", "inferred device flag"),
}

# --dataset name prefixes -> classes including background (Detectron's dataset_catalog names and
# Detectron.pytorch's --dataset values). Longest prefix first.
DATASET_CLASSES: Tuple[Tuple[str, int, str], ...] = (
    ("keypoints_coco", 2, "COCO person keypoints: background + person"),
    ("coco", 81, "COCO: background + 80 classes"),
    ("voc", 21, "PASCAL VOC: background + 20 classes"),
    ("cityscapes", 9, "Cityscapes instance classes: background + 8"),
)

Source = Union[str, PathLike, Mapping[str, Any]]


@dataclass
class TranslatedConfig:
    """Result of :func:`translate_config`.

    Attributes:
        cfg: the translated, inferred config (immutable; attribute or item access).
        detectron_cfg: the config Detectron itself would have run with (defaults + merge + inference,
            names as written): what Detectron embeds in ``model_final.pkl``.
        report: every change, in order.
        hints: run-specific values removed from ``cfg`` (``TEST.WEIGHTS``, ``TRAIN.DATASETS``, ...).
        source: what was read.
        num_classes_source: where ``MODEL.NUM_CLASSES`` came from.
    """

    cfg: FrozenCfg
    detectron_cfg: FrozenCfg
    report: List[Change]
    hints: Dict[str, Any]
    source: str
    num_classes_source: str
    _pre_inference: Dict[str, Any] = field(repr=False, default_factory=dict)

    def report_lines(self) -> List[str]:
        """The report, one line per change."""
        return [c.line() for c in self.report]

    def to_json(self) -> Dict[str, Any]:
        """Report, hints and the resolved spec as JSON-able data."""
        from detconvert.config.build_spec import build_spec

        return {
            "source": self.source,
            "num_classes": int(self.cfg.MODEL.NUM_CLASSES),
            "num_classes_source": self.num_classes_source,
            "report": [c.to_json() for c in self.report],
            "hints": {k: _plain(v) for k, v in self.hints.items()},
            "spec": build_spec(self.cfg, self.source).to_dict(),
        }

    def to_yaml(self) -> str:
        """Our translated YAML: the keys that differ from Detectron's defaults, names normalised.

        ``translate_config(t.to_yaml())`` gives the same ``cfg`` and the same YAML again.
        """
        defaults = flatten(default_cfg())
        pre = flatten(self._pre_inference)
        final = flatten(self.cfg.to_dict())
        # Inferred keys are written only if inference would not reproduce them.
        reset = FrozenCfg(self._pre_inference).to_dict()
        for key in INFERRED_KEYS:
            section, leaf = key.split(".")
            reset[section][leaf] = default_cfg()[section][leaf]
        assert_and_infer_cfg(reset)
        reproduced = flatten(reset)
        diff: Dict[str, Any] = {}
        for key, value in pre.items():
            if key in INFERRED_KEYS and values_equal(reproduced[key], final[key]):
                continue
            if not values_equal(value, defaults[key]):
                diff[key] = value
        tree = _unflatten_in_default_order(diff)
        header = (
            "# Detectron config translated by `detconvert config` (a diff against Detectron's defaults).\n"
            f"# source: {self.source}\n"
        )
        body = yaml.dump(_plain(tree), Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False, width=100)
        return header + (body if tree else "{}\n")


class _ConfigDumper(yaml.SafeDumper):
    """Block-style sections, flow-style lists (``SCALES: [800]``), as Detectron's configs read."""


_ConfigDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _unflatten_in_default_order(flat: Mapping[str, Any]) -> Dict[str, Any]:
    natural = list(flatten(default_cfg()))
    # MODEL first, as in Detectron's own configs; then Detectron's order.
    order = sorted(natural, key=lambda k: (not k.startswith("MODEL."), natural.index(k)))
    tree: Dict[str, Any] = {}
    for key in order:
        if key not in flat:
            continue
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = flat[key]
    return tree


# ---------------------------------------------------------------------------------------------
# Reading the source
# ---------------------------------------------------------------------------------------------


def _parse_yaml_text(text: str, label: str) -> Dict[str, Any]:
    if "!!python/" in text:  # a cfg dump (embedded cfg): Detectron's tagged YAML
        from detconvert.io.cfg_yaml import load_detectron_cfg_text

        return load_detectron_cfg_text(text, label)
    from detconvert.io.cfg_yaml import load_config_yaml

    data = load_config_yaml(text, label)  # PyYAML's safe loader, with size, depth and alias-expansion limits
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"a Detectron config is a mapping of keys, this YAML is a {type(data).__name__}", label)
    return data


def is_cfg_dump(tree: Mapping[str, Any]) -> bool:
    """True for a whole-cfg dump (what ``model_final.pkl`` embeds), False for a user's YAML diff.

    Detectron dumps every key; these top-level ones no user config needs to set.
    """
    return all(key in tree for key in ("ROOT_DIR", "PIXEL_MEANS", "EPS", "RNG_SEED", "EXPECTED_RESULTS_RTOL"))


def _looks_like_text(source: str) -> bool:
    return "\n" in source or (":" in source and not os.path.exists(source) and not source.endswith((".yaml", ".yml", ".pkl")))


def read_source(source: Source, source_name: Optional[str] = None) -> Tuple[Dict[str, Any], str, Any]:
    """Read a config source.

    Returns:
        ``(tree, label, weight_file)``: the raw config tree, a label for messages, and the
        :class:`~detconvert.io.weights.WeightFile` when the source was a weight file (else None).
    """
    if isinstance(source, Mapping):
        return dict(source), source_name or "<cfg>", None
    if isinstance(source, str) and _looks_like_text(source):
        return _parse_yaml_text(source, source_name or "<yaml text>"), source_name or "<yaml text>", None
    path = Path(source)
    label = source_name or str(path)
    if not path.exists():
        raise ConfigError("no such file", label)
    if path.is_dir():
        raise ConfigError("is a directory, not a config", label)
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head[:1] == b"\x80" or path.suffix in (".pkl", ".pth", ".pt", ".safetensors"):
        from detconvert.io.weights import load_weights

        weight_file = load_weights(path)
        if weight_file.cfg is None:
            why = f" ({weight_file.cfg_error})" if weight_file.cfg_error else ""
            raise ConfigError(f"this weight file carries no Detectron cfg{why}; pass the config YAML instead", label)
        return dict(weight_file.cfg), label, weight_file
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("not a text YAML file (and not a Detectron weight file)", label) from exc
    return _parse_yaml_text(text, label), label, None


# ---------------------------------------------------------------------------------------------
# Detectron.pytorch keys and forks
# ---------------------------------------------------------------------------------------------


def _pop_variant_keys(tree: Dict[str, Any], label: str, report: List[Change], hints: Dict[str, Any]) -> Dict[str, Any]:
    """Remove Detectron.pytorch keys from ``tree``; returns the Detectron keys they imply."""
    implied: Dict[str, Any] = {}
    for full_key, (action, reason) in VARIANT_KEYS.items():
        parts = full_key.split(".")
        node: Any = tree
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            continue
        value = node.pop(parts[-1])
        decoded = decode_value(value)
        if action == "gn":
            if decoded:
                implied.update(
                    {
                        "RESNETS.TRANS_FUNC": "bottleneck_gn_transformation",
                        "RESNETS.STEM_FUNC": "basic_gn_stem",
                        "RESNETS.SHORTCUT_FUNC": "basic_gn_shortcut",
                    }
                )
            report.append(Change("variant", full_key, value, None, reason))
        elif action.startswith("move:"):
            implied[action[5:]] = decoded
            report.append(Change("variant", full_key, value, action[5:], reason))
        elif action.startswith("require:"):
            wanted = action[len("require:"):]
            if str(decoded) != wanted:
                raise ConfigError(f"key {full_key} is {decoded!r}: not a Detectron network ({reason})", label)
            report.append(Change("variant", full_key, value, None, f"Detectron.pytorch key; {reason}"))
        elif action == "hint":
            hints[full_key] = decoded
            report.append(Change("hint", full_key, value, None, reason))
        else:
            report.append(Change("variant", full_key, value, None, f"Detectron.pytorch key, ignored: {reason}"))
    # A top-level section Detectron does not have: a fork's config (DensePose, Mask^X, ...).
    for key, value in tree.items():
        if isinstance(value, dict) and key not in _DEFAULT_TREE:
            raise ConfigError(
                f"section {key} is not part of Detectron's config: this config is from a Detectron fork "
                "with extra sections, which detconvert does not support",
                label,
            )
    return implied


# ---------------------------------------------------------------------------------------------
# NUM_CLASSES
# ---------------------------------------------------------------------------------------------


def num_classes_from_dataset(dataset: Union[str, PathLike]) -> Tuple[int, str]:
    """Classes (background included) for a ``--dataset`` name or a class-list file.

    A class-list file has one class name per line (blank lines and ``#`` comments skipped);
    background is added unless the first name is ``__background__`` / ``background``.
    """
    path = Path(dataset)
    if path.is_file():
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
        if not names:
            raise ConfigError("the class-list file names no classes", path)
        has_bg = names[0].lower() in ("__background__", "background")
        count = len(names) if has_bg else len(names) + 1
        return count, f"class list {path} ({len(names) - has_bg} classes + background)"
    name = str(dataset).lower()
    for prefix, count, what in DATASET_CLASSES:
        if name.startswith(prefix):
            return count, f"--dataset {dataset} ({what})"
    accepted = ", ".join(f"{p}*" for p, _, _ in DATASET_CLASSES)
    raise ConfigError(f"unknown dataset {dataset!r}: expected {accepted} or a class-list file", "--dataset")


def num_classes_from_weights(weights: Any, cfg: Mapping[str, Any]) -> Optional[Tuple[int, str]]:
    """Classes implied by weights: ``cls_score_w`` rows, or RetinaNet's ``retnet_cls_pred_fpn3_w``.

    ``weights`` is a :class:`~detconvert.io.weights.WeightFile`, a blob dict, or an embedded cfg dict.
    """
    if weights is None:
        return None
    blobs = getattr(weights, "blobs", None)
    if blobs is None and isinstance(weights, Mapping):
        if "MODEL" in weights and isinstance(weights["MODEL"], Mapping):  # a cfg
            n = weights["MODEL"].get("NUM_CLASSES", -1)
            return (int(n), "the weights' embedded cfg") if n and n > 0 else None
        blobs = weights
    where = getattr(weights, "path", None) or "the weights"
    if blobs is not None:
        for name in ("cls_score_w", "cls_score_b"):
            if name in blobs:
                return int(np.shape(blobs[name])[0]), f"{where}: {name} has {np.shape(blobs[name])[0]} rows"
        if "retnet_cls_pred_fpn3_w" in blobs:
            rows = int(np.shape(blobs["retnet_cls_pred_fpn3_w"])[0])
            r = cfg["RETINANET"]
            anchors = r["SCALES_PER_OCTAVE"] * len(r["ASPECT_RATIOS"])
            # RetinaNet's sigmoid classifier has no background channel (retinanet_heads: num_classes - 1)
            per_anchor = rows // anchors
            count = per_anchor if r["SOFTMAX"] else per_anchor + 1
            return count, f"{where}: retnet_cls_pred_fpn3_w has {rows} rows = {anchors} anchors x {per_anchor}"
    wcfg = getattr(weights, "cfg", None)
    if isinstance(wcfg, Mapping):
        return num_classes_from_weights(wcfg, cfg)
    return None


def _resolve_num_classes(
    merged: Dict[str, Any], dataset: Any, weights: Any, label: str, report: List[Change]
) -> str:
    yaml_n = int(merged["MODEL"]["NUM_CLASSES"])
    from_dataset = num_classes_from_dataset(dataset) if dataset is not None else None
    from_weights = num_classes_from_weights(weights, merged)
    if from_dataset and from_weights and from_dataset[0] != from_weights[0]:
        raise ConfigError(
            f"key MODEL.NUM_CLASSES: {from_dataset[1]} gives {from_dataset[0]} classes but {from_weights[1]} "
            f"gives {from_weights[0]}",
            label,
        )
    if from_weights and yaml_n > 0 and from_weights[0] != yaml_n and not from_dataset:
        raise ConfigError(
            f"key MODEL.NUM_CLASSES: the config says {yaml_n} but {from_weights[1]} ({from_weights[0]} classes); "
            "weights and config are of different models",
            label,
        )
    chosen = from_dataset or from_weights
    if chosen is None:
        return "the config" if yaml_n > 0 else "unset"
    if chosen[0] != yaml_n:
        merged["MODEL"]["NUM_CLASSES"] = chosen[0]
        report.append(Change("num_classes", "MODEL.NUM_CLASSES", yaml_n, chosen[0], f"from {chosen[1]}"))
    return chosen[1]


# ---------------------------------------------------------------------------------------------
# The translation
# ---------------------------------------------------------------------------------------------


def _get(tree: Dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def _set(tree: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _pop(tree: Dict[str, Any], key: str) -> Any:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node[part]
    return node.pop(parts[-1])


def _normalise_names(merged: Dict[str, Any], label: str, report: List[Change]) -> None:
    model_type = merged["MODEL"]["TYPE"]
    if model_type == "" and merged["RETINANET"]["RETINANET_ON"]:
        merged["MODEL"]["TYPE"] = "retinanet"
        report.append(Change("inferred", "MODEL.TYPE", "", "retinanet", "RETINANET.RETINANET_ON"))
    elif model_type == "":
        merged["MODEL"]["TYPE"] = "generalized_rcnn"
        report.append(Change("inferred", "MODEL.TYPE", "", "generalized_rcnn", "unset; Detectron's generic builder"))
    else:
        try:
            canonical, reason = resolve_model_type(model_type)
        except KeyError:
            raise ConfigError(
                f"key MODEL.TYPE: unknown model type {model_type!r} (Detectron's model_builder has "
                f"{', '.join(MODEL_TYPES)} and the deprecated aliases)",
                label,
            ) from None
        if canonical != model_type:
            merged["MODEL"]["TYPE"] = canonical
            report.append(Change("alias", "MODEL.TYPE", model_type, canonical, f"model_builder.{model_type}: {reason}"))
    for key in MODULE_KEYS:
        name = _get(merged, key)
        try:
            _, translated, steps = resolve_module(key, name)
        except KeyError:
            raise ConfigError(
                f"key {key}: unknown module name {name!r}; valid: {', '.join(valid_names(key))}", label
            ) from None
        for kind, before, after, reason in steps:
            report.append(Change(kind, key, before, after, reason))
        if translated != name:
            _set(merged, key, translated)


def translate_config(
    source: Source,
    *,
    dataset: Optional[Union[str, PathLike]] = None,
    weights_cfg_or_blobs: Any = None,
    overrides: Sequence[Tuple[str, Any]] = (),
    source_name: Optional[str] = None,
) -> TranslatedConfig:
    """Translate a Detectron config.

    Args:
        source: a YAML path, YAML text, a parsed embedded-cfg dict, or a ``model_final.pkl`` path
            (its embedded cfg; its blobs then also serve as the weights).
        dataset: ``coco*`` / ``keypoints_coco*`` / ``voc*`` / ``cityscapes*`` or a class-list file:
            decides ``MODEL.NUM_CLASSES``.
        weights_cfg_or_blobs: weights to check ``NUM_CLASSES`` against: a weight-file path, a
            :class:`~detconvert.io.weights.WeightFile`, a blob dict, or an embedded cfg dict.
        overrides: ``(KEY, VALUE)`` pairs applied after the file, as Detectron's ``merge_cfg_from_list``.
        source_name: label for messages (defaults to the path).

    Returns:
        A :class:`TranslatedConfig`.

    Raises:
        ConfigError: unknown key (with the nearest valid key), wrong type, unknown module name,
            contradicting NUM_CLASSES, a section from a Detectron fork.
    """
    raw, label, weight_file = read_source(source, source_name)
    report: List[Change] = []
    hints: Dict[str, Any] = {}
    implied = _pop_variant_keys(raw, label, report, hints)

    merged = default_cfg()
    report.extend(merge_cfg(merged, raw, label, drop_unknown=is_cfg_dump(raw)))
    for key, value in implied.items():
        _set(merged, key, value)
    report.extend(merge_from_list(merged, list(overrides)))

    detectron = FrozenCfg(merged).to_dict()
    assert_and_infer_cfg(detectron)
    detectron_cfg = FrozenCfg(detectron)

    work = FrozenCfg(merged).to_dict()
    _normalise_names(work, label, report)
    if weights_cfg_or_blobs is not None and isinstance(weights_cfg_or_blobs, (str, os.PathLike)):
        from detconvert.io.weights import load_weights

        weights_cfg_or_blobs = load_weights(weights_cfg_or_blobs)
    weights = weights_cfg_or_blobs if weights_cfg_or_blobs is not None else weight_file
    num_classes_source = _resolve_num_classes(work, dataset, weights, label, report)

    defaults_flat = flatten(default_cfg())
    for key, reason in HINT_KEYS.items():
        value = _pop(work, key)
        if not values_equal(value, defaults_flat[key]):
            hints[key] = value
            report.append(Change("hint", key, value, None, f"removed from the network config, kept as a hint: {reason}"))

    final = FrozenCfg(work).to_dict()
    report.extend(assert_and_infer_cfg(final))
    return TranslatedConfig(
        cfg=FrozenCfg(final),
        detectron_cfg=detectron_cfg,
        report=report,
        hints=hints,
        source=label,
        num_classes_source=num_classes_source,
        _pre_inference=work,
    )


def translated_dump(translated: TranslatedConfig) -> str:
    """JSON text of :meth:`TranslatedConfig.to_json` (for ``--json``)."""
    buffer = io.StringIO()
    json.dump(translated.to_json(), buffer, indent=2, sort_keys=False)
    return buffer.getvalue() + "\n"


__all__ = ["TranslatedConfig", "translate_config", "read_source", "HINT_KEYS", "VARIANT_KEYS"]
