"""Write the fuzz seed corpus (``tests/fuzz/corpus/<target>/``): small files in the real formats.

Run once (``python tests/fuzz/make_seeds.py``); the output is committed, so the fuzz smoke needs neither
this script nor ``../shared``. The cfg seeds are trimmed from Detectron's own cfg dumps in
``../shared/reference/cfg_dumps`` (Python-2 and Python-3 ``yaml.dump`` spellings) and configs from
``../shared/detectron_configs``; everything else is generated here, seeded.

Targets (see ``harness.py``): ``weights`` (a weight file for ``load_weights`` + ``inspect_weights``), ``cfg``
(the cfg text a detector pickle embeds), ``config`` (a user's Detectron YAML for ``translate_config``),
``proposals`` (a proposal file, pickle or json, for ``read_proposals``).
"""
from __future__ import annotations

import io
import json
import pickle
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from detconvert.io.py2_pickle_writer import Py2PickleWriter  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"
SHARED = ROOT.parent / "shared"
CFG_DUMP = "12_2017_baselines__e2e_mask_rcnn_R-50-C4_1x"
GN_CFG_DUMP = "04_2018_gn_baselines__e2e_mask_rcnn_R-50-FPN_2x_gn"
# Top-level sections kept in the trimmed cfg dumps: what inspect / translate read, plus the keys that
# make a tree a whole-cfg dump (translate.is_cfg_dump) and both NumPy values (the &id001 dtype anchor).
KEEP = ("BBOX_XFORM_CLIP", "EPS", "EXPECTED_RESULTS_RTOL", "FAST_RCNN", "FPN", "MODEL", "MRCNN", "PIXEL_MEANS",
        "RESNETS", "RNG_SEED", "ROOT_DIR", "RPN")
CONFIGS = ("12_2017_baselines/e2e_mask_rcnn_R-50-FPN_1x.yaml", "12_2017_baselines/retinanet_R-50-FPN_1x.yaml",
           "04_2018_gn_baselines/e2e_mask_rcnn_R-50-FPN_2x_gn.yaml")


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2PickleWriter(buffer).dump(obj)
    return buffer.getvalue()


def tiny_blobs(rng: np.random.Generator, with_momentum: bool = False) -> "OrderedDict[str, np.ndarray]":
    """A few blobs with Detectron names (a conv1 stem, one res2 block, a box head): 1-2 KB."""
    blobs = OrderedDict()
    blobs["conv1_w"] = rng.normal(size=(2, 3, 3, 3)).astype(np.float32)
    blobs["res_conv1_bn_s"] = np.ones(2, np.float32)
    blobs["res_conv1_bn_b"] = np.zeros(2, np.float32)
    blobs["res2_0_branch2a_w"] = rng.normal(size=(2, 2, 1, 1)).astype(np.float32)
    blobs["cls_score_w"] = rng.normal(size=(3, 4)).astype(np.float32)
    blobs["cls_score_b"] = np.zeros(3, np.float32)
    blobs["bbox_pred_w"] = rng.normal(size=(12, 4)).astype(np.float32)
    if with_momentum:
        blobs["conv1_w_momentum"] = np.zeros((2, 3, 3, 3), np.float32)
    return blobs


def trimmed_dump(text: str) -> str:
    """The cfg dump with only the :data:`KEEP` top-level sections (line-based: Detectron's dump indents
    top-level keys by two spaces under ``dictitems:``)."""
    lines = text.splitlines(keepends=True)
    out, keep = [], True
    for line in lines:
        top = line.startswith("  ") and not line.startswith("   ") and not line.startswith("  -")
        if top:
            keep = line.strip().split(":")[0] in KEEP
        if not line.startswith("  ") or keep:
            out.append(line)
    return "".join(out)


def write(target: str, name: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    print(f"{target}/{name}: {len(data)} bytes")


def main() -> None:
    rng = np.random.default_rng(2018)
    dumps = {style: (SHARED / "reference" / "cfg_dumps" / f"{CFG_DUMP}{suffix}").read_text()
             for style, suffix in (("py2", ".py2.yaml"), ("py3", ".yaml"))}
    cfg_py2, cfg_py3 = trimmed_dump(dumps["py2"]), trimmed_dump(dumps["py3"])

    # cfg: the embedded text, both spellings, and a GroupNorm FPN model's (py2)
    write("cfg", "dump_py2.yaml", cfg_py2.encode("latin1"))
    write("cfg", "dump_py3.yaml", cfg_py3.encode("utf-8"))
    gn = (SHARED / "reference" / "cfg_dumps" / f"{GN_CFG_DUMP}.py2.yaml").read_text()
    write("cfg", "dump_fpn_gn_py2.yaml", trimmed_dump(gn).encode("latin1"))

    # weights: detector pickles in 2018's Python-2 byte format and as Python 3 pickles them
    blobs = tiny_blobs(rng, with_momentum=True)
    write("weights", "detector_py2.pkl", py2_pickle({"blobs": blobs, "cfg": cfg_py2}))
    write("weights", "detector_py2_nocfg.pkl", py2_pickle({"blobs": tiny_blobs(rng)}))
    # with detconvert's own 'detconvert' entry beside the cfg (what fine-tuned models exported by train carry)
    from detconvert.config import build_spec, translate_config
    from detconvert.io.weights import spec_entry_text

    spec = build_spec(translate_config(cfg_py2, source_name="seed").cfg).to_dict()
    entry = spec_entry_text(spec, ["__background__", "circle", "square"])
    write("weights", "detector_py2_spec_entry.pkl", py2_pickle({"blobs": blobs, "cfg": cfg_py2, "detconvert": entry}))
    write("weights", "detector_py3_proto2.pkl", pickle.dumps({"blobs": dict(blobs), "cfg": cfg_py3}, protocol=2))
    write("weights", "imagenet_py3_proto4.pkl", pickle.dumps(dict(tiny_blobs(rng)), protocol=4))
    odd = OrderedDict(conv1_w=np.asfortranarray(rng.normal(size=(3, 2)).astype(">f4")),
                      f64_b=rng.normal(size=(2,)), scalar=np.array(1.5, np.float32))
    write("weights", "detectron2_py3_proto5.pkl",
          pickle.dumps({"model": odd, "__author__": "fuzz seed", "matching_heuristics": True}, protocol=5))
    write("weights", "detector_py3_proto0.pkl", pickle.dumps({"blobs": {"conv1_w": np.ones((2, 2), np.float32)}},
                                                              protocol=0))

    # config: a user's YAML (Detectron's own configs) and the whole-dump form
    for name in CONFIGS:
        write("config", Path(name).name, (SHARED / "detectron_configs" / name).read_bytes())
    write("config", "dump_py3.yaml", cfg_py3.encode("utf-8"))

    # proposals: rpn_generator's pickle (Python 2 and 3) and the json form
    boxes = [np.sort(rng.uniform(0, 60, size=(n, 4)).astype(np.float32), axis=1) for n in (3, 1, 0)]
    scores = [np.sort(rng.uniform(size=len(b)).astype(np.float32))[::-1].copy() for b in boxes]
    ids = [397133, 37777, 252219]
    write("proposals", "rpn_py2.pkl", py2_pickle({"boxes": boxes, "scores": scores, "ids": ids, "cfg": ""}))
    write("proposals", "rpn_py3.pkl", pickle.dumps({"boxes": boxes, "scores": scores, "ids": ids, "cfg": ""},
                                                   protocol=2))
    write("proposals", "rpn.json", json.dumps({"ids": ids, "boxes": [b.tolist() for b in boxes],
                                               "scores": [s.tolist() for s in scores]}).encode())


if __name__ == "__main__":
    main()
