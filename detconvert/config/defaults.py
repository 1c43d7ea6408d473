"""Detectron's default config (``detectron/core/config.py``, the ``__C`` tree), complete and typed.

A Detectron YAML is a *diff* against these values, and they differ from the baseline configs in
ways that matter (``TEST.SCALE`` 600, ``TEST.NMS`` 0.3, RoIAlign sampling ratio 0 here; 800/1333,
0.5 and 2 in the baselines). The key set is the one of Detectron's final release, the version that
wrote the cfg embedded in the model-zoo files (``../shared/reference/cfg_dumps``: 229 leaves).

Types matter: Detectron's merge refuses a value whose type differs from the default's (an ``int``
for a ``float`` key is an error), so every value here has Detectron's type. Python-2 byte strings
(``b''``) are ``str``; ``BBOX_XFORM_CLIP`` (an ``np.float64`` in Detectron) is a ``float``;
``PIXEL_MEANS`` is a float64 ``(1, 1, 3)`` array.

This module is data. :func:`default_cfg` returns a fresh mutable copy; :data:`DEFAULTS` (in
:mod:`detconvert.config`) is the frozen view.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, Tuple, Union

import numpy as np

_DEFAULT_TREE: Dict[str, Any] = {
    "TRAIN": {
        "WEIGHTS": "",
        "DATASETS": (),
        "SCALES": (600,),
        "MAX_SIZE": 1000,
        "IMS_PER_BATCH": 2,
        "BATCH_SIZE_PER_IM": 64,
        "FG_FRACTION": 0.25,
        "FG_THRESH": 0.5,
        "BG_THRESH_HI": 0.5,
        "BG_THRESH_LO": 0.0,
        "USE_FLIPPED": True,
        "BBOX_THRESH": 0.5,
        "SNAPSHOT_ITERS": 20000,
        "PROPOSAL_FILES": (),
        "ASPECT_GROUPING": True,
        "RPN_POSITIVE_OVERLAP": 0.7,
        "RPN_NEGATIVE_OVERLAP": 0.3,
        "RPN_FG_FRACTION": 0.5,
        "RPN_BATCH_SIZE_PER_IM": 256,
        "RPN_NMS_THRESH": 0.7,
        "RPN_PRE_NMS_TOP_N": 12000,
        "RPN_POST_NMS_TOP_N": 2000,
        "RPN_STRADDLE_THRESH": 0,
        "RPN_MIN_SIZE": 0,
        "CROWD_FILTER_THRESH": 0.7,
        "GT_MIN_AREA": -1,
        "FREEZE_CONV_BODY": False,
        "AUTO_RESUME": True,
        "COPY_WEIGHTS": False,
        "FREEZE_AT": 2,
        "GENERATE_PROPOSALS_ON_GPU": False,
    },
    "DATA_LOADER": {
        "NUM_THREADS": 4,
        "MINIBATCH_QUEUE_SIZE": 64,
        "BLOBS_QUEUE_CAPACITY": 8,
    },
    "TEST": {
        "WEIGHTS": "",
        "DATASETS": (),
        "SCALE": 600,
        "MAX_SIZE": 1000,
        "NMS": 0.3,
        "BBOX_REG": True,
        "PROPOSAL_FILES": (),
        "PROPOSAL_LIMIT": 2000,
        "RPN_NMS_THRESH": 0.7,
        "RPN_PRE_NMS_TOP_N": 12000,
        "RPN_POST_NMS_TOP_N": 2000,
        "RPN_MIN_SIZE": 0,
        "DETECTIONS_PER_IM": 100,
        "SCORE_THRESH": 0.05,
        "COMPETITION_MODE": True,
        "FORCE_JSON_DATASET_EVAL": False,
        "PRECOMPUTED_PROPOSALS": True,  # inferred (assert_and_infer_cfg)
        "CLASS_SPECIFIC_AR": False,
        "GENERATE_PROPOSALS_ON_GPU": False,
        "BBOX_AUG": {
            "ENABLED": False,
            "SCORE_HEUR": "UNION",
            "COORD_HEUR": "UNION",
            "H_FLIP": False,
            "SCALES": (),
            "MAX_SIZE": 4000,
            "SCALE_H_FLIP": False,
            "SCALE_SIZE_DEP": False,
            "AREA_TH_LO": 50**2,
            "AREA_TH_HI": 180**2,
            "ASPECT_RATIOS": (),
            "ASPECT_RATIO_H_FLIP": False,
        },
        "MASK_AUG": {
            "ENABLED": False,
            "HEUR": "SOFT_AVG",
            "H_FLIP": False,
            "SCALES": (),
            "MAX_SIZE": 4000,
            "SCALE_H_FLIP": False,
            "SCALE_SIZE_DEP": False,
            "AREA_TH": 180**2,
            "ASPECT_RATIOS": (),
            "ASPECT_RATIO_H_FLIP": False,
        },
        "KPS_AUG": {
            "ENABLED": False,
            "HEUR": "HM_AVG",
            "H_FLIP": False,
            "SCALES": (),
            "MAX_SIZE": 4000,
            "SCALE_H_FLIP": False,
            "SCALE_SIZE_DEP": False,
            "AREA_TH": 180**2,
            "ASPECT_RATIOS": (),
            "ASPECT_RATIO_H_FLIP": False,
        },
        "SOFT_NMS": {"ENABLED": False, "METHOD": "linear", "SIGMA": 0.5},
        "BBOX_VOTE": {"ENABLED": False, "VOTE_TH": 0.8, "SCORING_METHOD": "ID", "SCORING_METHOD_BETA": 1.0},
    },
    "MODEL": {
        "TYPE": "",
        "CONV_BODY": "",
        "NUM_CLASSES": -1,
        "CLS_AGNOSTIC_BBOX_REG": False,
        "BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
        "FASTER_RCNN": False,
        "MASK_ON": False,
        "KEYPOINTS_ON": False,
        "RPN_ONLY": False,
        "EXECUTION_TYPE": "dag",
    },
    "RETINANET": {
        "RETINANET_ON": False,
        "ASPECT_RATIOS": (0.5, 1.0, 2.0),
        "SCALES_PER_OCTAVE": 3,
        "ANCHOR_SCALE": 4,
        "NUM_CONVS": 4,
        "BBOX_REG_WEIGHT": 1.0,
        "BBOX_REG_BETA": 0.11,
        "PRE_NMS_TOP_N": 1000,
        "POSITIVE_OVERLAP": 0.5,
        "NEGATIVE_OVERLAP": 0.4,
        "LOSS_ALPHA": 0.25,
        "LOSS_GAMMA": 2.0,
        "PRIOR_PROB": 0.01,
        "SHARE_CLS_BBOX_TOWER": False,
        "CLASS_SPECIFIC_BBOX": False,
        "SOFTMAX": False,
        "INFERENCE_TH": 0.05,
    },
    "SOLVER": {
        "BASE_LR": 0.001,
        "LR_POLICY": "step",
        "GAMMA": 0.1,
        "STEP_SIZE": 30000,
        "STEPS": [],
        "LRS": [],
        "MAX_ITER": 40000,
        "MOMENTUM": 0.9,
        "WEIGHT_DECAY": 0.0005,
        "WEIGHT_DECAY_GN": 0.0,
        "WARM_UP_ITERS": 500,
        "WARM_UP_FACTOR": 1.0 / 3.0,
        "WARM_UP_METHOD": "linear",
        "SCALE_MOMENTUM": True,
        "SCALE_MOMENTUM_THRESHOLD": 1.1,
        "LOG_LR_CHANGE_THRESHOLD": 1.1,
    },
    "FAST_RCNN": {
        "ROI_BOX_HEAD": "",
        "MLP_HEAD_DIM": 1024,
        "CONV_HEAD_DIM": 256,
        "NUM_STACKED_CONVS": 4,
        "ROI_XFORM_METHOD": "RoIPoolF",
        "ROI_XFORM_SAMPLING_RATIO": 0,
        "ROI_XFORM_RESOLUTION": 14,
    },
    "RPN": {
        "RPN_ON": False,  # inferred (assert_and_infer_cfg)
        "SIZES": (64, 128, 256, 512),
        "STRIDE": 16,
        "ASPECT_RATIOS": (0.5, 1, 2),
    },
    "FPN": {
        "FPN_ON": False,
        "DIM": 256,
        "ZERO_INIT_LATERAL": False,
        "COARSEST_STRIDE": 32,
        "MULTILEVEL_ROIS": False,
        "ROI_CANONICAL_SCALE": 224,
        "ROI_CANONICAL_LEVEL": 4,
        "ROI_MAX_LEVEL": 5,
        "ROI_MIN_LEVEL": 2,
        "MULTILEVEL_RPN": False,
        "RPN_MAX_LEVEL": 6,
        "RPN_MIN_LEVEL": 2,
        "RPN_ASPECT_RATIOS": (0.5, 1, 2),
        "RPN_ANCHOR_START_SIZE": 32,
        "EXTRA_CONV_LEVELS": False,
        "USE_GN": False,
    },
    "MRCNN": {
        "ROI_MASK_HEAD": "",
        "RESOLUTION": 14,
        "ROI_XFORM_METHOD": "RoIAlign",
        "ROI_XFORM_RESOLUTION": 7,
        "ROI_XFORM_SAMPLING_RATIO": 0,
        "DIM_REDUCED": 256,
        "DILATION": 2,
        "UPSAMPLE_RATIO": 1,
        "USE_FC_OUTPUT": False,
        "CONV_INIT": "GaussianFill",
        "CLS_SPECIFIC_MASK": True,
        "WEIGHT_LOSS_MASK": 1.0,
        "THRESH_BINARIZE": 0.5,
    },
    "KRCNN": {
        "ROI_KEYPOINTS_HEAD": "",
        "HEATMAP_SIZE": -1,
        "UP_SCALE": -1,
        "USE_DECONV": False,
        "DECONV_DIM": 256,
        "USE_DECONV_OUTPUT": False,
        "DILATION": 1,
        "DECONV_KERNEL": 4,
        "NUM_KEYPOINTS": -1,
        "NUM_STACKED_CONVS": 8,
        "CONV_HEAD_DIM": 256,
        "CONV_HEAD_KERNEL": 3,
        "CONV_INIT": "GaussianFill",
        "NMS_OKS": False,
        "KEYPOINT_CONFIDENCE": "bbox",
        "ROI_XFORM_METHOD": "RoIAlign",
        "ROI_XFORM_RESOLUTION": 7,
        "ROI_XFORM_SAMPLING_RATIO": 0,
        "MIN_KEYPOINT_COUNT_FOR_VALID_MINIBATCH": 20,
        "INFERENCE_MIN_SIZE": 0,
        "LOSS_WEIGHT": 1.0,
        "NORMALIZE_BY_VISIBLE_KEYPOINTS": True,
    },
    "RFCN": {"PS_GRID_SIZE": 3},
    "RESNETS": {
        "NUM_GROUPS": 1,
        "WIDTH_PER_GROUP": 64,
        "STRIDE_1X1": True,
        "TRANS_FUNC": "bottleneck_transformation",
        "STEM_FUNC": "basic_bn_stem",
        "SHORTCUT_FUNC": "basic_bn_shortcut",
        "RES5_DILATION": 1,
    },
    "GROUP_NORM": {"DIM_PER_GP": -1, "NUM_GROUPS": 32, "EPSILON": 1e-5},
    "NUM_GPUS": 1,
    "USE_NCCL": False,
    "DEDUP_BOXES": 1 / 16.0,
    "BBOX_XFORM_CLIP": math.log(1000.0 / 16.0),
    "PIXEL_MEANS": np.array([[[102.9801, 115.9465, 122.7717]]], dtype=np.float64),
    "RNG_SEED": 3,
    "EPS": 1e-14,
    "ROOT_DIR": "",  # os.getcwd() of the Detectron process: meaningless elsewhere
    "OUTPUT_DIR": "/tmp",
    "MATLAB": "matlab",
    "MEMONGER": True,
    "MEMONGER_SHARE_ACTIVATIONS": False,
    "VIS": False,
    "VIS_TH": 0.9,
    "EXPECTED_RESULTS": [],
    "EXPECTED_RESULTS_RTOL": 0.1,
    "EXPECTED_RESULTS_ATOL": 0.005,
    "EXPECTED_RESULTS_EMAIL": "",
    "EXPECTED_RESULTS_SIGMA_TOL": 4,
    "DOWNLOAD_CACHE": "/tmp/detectron-download-cache",
    "CLUSTER": {"ON_CLUSTER": False},
}

# Keys Detectron silently ignores (``_DEPCRECATED_KEYS`` in core/config.py).
DEPRECATED_KEYS = frozenset(
    {
        "FINAL_MSG",
        "MODEL.DILATION",
        "ROOT_GPU_ID",
        "RPN.ON",
        "TRAIN.BBOX_NORMALIZE_TARGETS_PRECOMPUTED",
        "TRAIN.DROPOUT",
        "USE_GPU_NMS",
        "TEST.NUM_TEST_IMAGES",
    }
)

# Keys Detectron renamed (``_RENAMED_KEYS``): old -> (new, how the value changes). Detectron refuses
# the old key; detconvert applies the rename (see merge._convert_renamed) and reports it.
RenamedKey = Tuple[str, str]
RENAMED_KEYS: Dict[str, RenamedKey] = {
    "MODEL.PS_GRID_SIZE": ("RFCN.PS_GRID_SIZE", "same value"),
    "MODEL.ROI_HEAD": ("FAST_RCNN.ROI_BOX_HEAD", "same value"),
    "MRCNN.MASK_HEAD_NAME": ("MRCNN.ROI_MASK_HEAD", "same value"),
    "TRAIN.DATASET": ("TRAIN.DATASETS", "string 'a:b' -> tuple ('a', 'b')"),
    "TRAIN.PROPOSAL_FILE": ("TRAIN.PROPOSAL_FILES", "string 'a:b' -> tuple ('a', 'b')"),
    "TEST.SCALES": ("TEST.SCALE", "one-element tuple (600,) -> int 600"),
    "TEST.DATASET": ("TEST.DATASETS", "string -> tuple"),
    "TEST.PROPOSAL_FILE": ("TEST.PROPOSAL_FILES", "string -> tuple"),
}

# Module renames Detectron's load_cfg applies to embedded cfg text (``_RENAMED_MODULES``); the
# reader (detconvert.io.cfg_yaml) accepts both AttrDict module paths.
RENAMED_MODULES: Dict[str, str] = {"utils.collections": "detectron.utils.collections"}

# Set by assert_and_infer_cfg, "do not set directly in a config".
INFERRED_KEYS = ("RPN.RPN_ON", "TEST.PRECOMPUTED_PROPOSALS")

# Keys whose value depends on the machine / run that produced a cfg, not on the network.
ENVIRONMENT_KEYS = {
    "ROOT_DIR": "os.getcwd() of the Detectron process that wrote the cfg",
    "NUM_GPUS": "the GPU count of the training run (the embedded cfgs say 1: Detectron rewrites it for testing)",
}


def default_cfg() -> Dict[str, Any]:
    """A fresh, mutable deep copy of Detectron's defaults (nested plain dicts)."""
    return copy.deepcopy(_DEFAULT_TREE)


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{'A': {'B': 1}}`` -> ``{'A.B': 1}`` (leaves only)."""
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, full + "."))
        else:
            out[full] = value
    return out


def all_keys() -> Tuple[str, ...]:
    """Every full key of Detectron's config, sections included (``'TEST'``, ``'TEST.BBOX_AUG'``)."""
    keys = []

    def walk(tree: Dict[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            keys.append(prefix + key)
            if isinstance(value, dict):
                walk(value, prefix + key + ".")

    walk(_DEFAULT_TREE, "")
    return tuple(keys)


def values_equal(a: Any, b: Any) -> bool:
    """Equality for cfg leaves: arrays by value, floats exactly, containers element-wise with types."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and bool(np.all(a == b))
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return a == b


LeafValue = Union[str, int, float, bool, tuple, list, np.ndarray]
