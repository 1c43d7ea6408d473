#!/usr/bin/env python3
"""Train the tiny shapes Mask R-CNN shipped with ``detconvert demo`` and export it in Detectron's format.

Writes ``detconvert/data/demo/shapes_model_final.pkl`` (``{'blobs', 'cfg', 'detconvert'}``, Python-2.7
protocol-2 bytes, as Detectron's ``save_object``; the ``'detconvert'`` entry holds the ArchSpec, since
the tiny body widths are beyond Detectron's config keys, the class names and the training provenance,
so every command loads the file by path) and ``shapes_train.log``. Deterministic in its seeds; about
1-2 minutes on 2 CPU cores (the schedule of tests/test_train_overfit.py)::

    python tools/train_demo_model.py

``--repack`` rewrites the shipped file's container without retraining (the same blobs, byte for byte
the same arrays; the entry is taken from the file itself or from a ``shapes_model_spec.json`` of
detconvert <= 0.1 beside it), then checks that ``detconvert.load_model`` reads it by path.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from detconvert.io.atomic import atomic_write  # noqa: E402
from detconvert.io.py2_pickle_writer import Py2PickleWriter  # noqa: E402
from detconvert.io.weights import SPEC_KEY, load_weights, spec_entry_text  # noqa: E402
from detconvert.train.shapes import TINY_BODY, TINY_SHAPES_CFG, write_shapes_dataset  # noqa: E402
from detconvert.train.trainer import TrainOptions, export_detectron_pickle, train  # noqa: E402

DEMO_DIR = Path(__file__).resolve().parents[1] / "detconvert" / "data" / "demo"
PKL = DEMO_DIR / "shapes_model_final.pkl"
LEGACY_SPEC_JSON = DEMO_DIR / "shapes_model_spec.json"  # where the spec lived before the 'detconvert' entry
NUM_IMAGES, DATASET_SEED, MAX_ITER = 4, 0, 250
OVERRIDES = [("SOLVER.BASE_LR", "0.02"), ("SOLVER.STEPS", "[0, 200]"), ("SOLVER.MAX_ITER", str(MAX_ITER)),
             ("TRAIN.USE_FLIPPED", "False")]
TRAINING = {"dataset": {"num_images": NUM_IMAGES, "seed": DATASET_SEED}, "iterations": MAX_ITER}


def train_and_export() -> int:
    torch.set_num_threads(2)
    log_lines = []

    def log(line: str) -> None:
        print(line, flush=True)
        log_lines.append(line)

    with tempfile.TemporaryDirectory() as tmp:
        ann, _ = write_shapes_dataset(Path(tmp) / "shapes", num_images=NUM_IMAGES, seed=DATASET_SEED)
        result = train(TrainOptions(cfg=TINY_SHAPES_CFG, annotations=ann, body_override=TINY_BODY, no_save=True,
                                    overrides=OVERRIDES, clip_grad_norm=5.0, seed=3, log_period=50, log=log))
    cfg_text = TINY_SHAPES_CFG + "".join(f"# --set {k} {v}\n" for k, v in OVERRIDES)
    pkl = export_detectron_pickle(result.model, cfg_text, PKL, class_names=result.class_names, training=TRAINING)
    with atomic_write(DEMO_DIR / "shapes_train.log", "w") as f:
        f.write("\n".join(log_lines) + "\n")
    print(f"wrote {pkl} ({pkl.stat().st_size:,} bytes) in {result.seconds:.0f} s")
    return 0


def repack() -> int:
    import detconvert

    wf = load_weights(PKL)
    if wf.stored_spec is not None:
        entry = dict(wf.stored_spec)
    else:
        legacy = json.loads(LEGACY_SPEC_JSON.read_text())
        entry = {"spec": legacy["spec"], "class_names": legacy["class_names"],
                 "training": {"dataset": legacy["dataset"], "iterations": legacy["iterations"]}}
    extra = {k: v for k, v in entry.items() if k not in ("format", "version", "spec", "class_names")}
    container = {"blobs": dict(wf.blobs), "cfg": wf.cfg_text,
                 SPEC_KEY: spec_entry_text(entry["spec"], entry["class_names"], **extra)}
    with atomic_write(PKL, "wb") as handle:
        Py2PickleWriter(handle).dump(container)
    again = load_weights(PKL)
    assert list(again.blobs) == list(wf.blobs) and all(np.array_equal(again.blobs[k], v) for k, v in wf.blobs.items())
    predictor = detconvert.load_model(PKL, device="cpu")
    print(f"repacked {PKL} ({PKL.stat().st_size:,} bytes): {len(again.blobs)} blobs unchanged, "
          f"'{SPEC_KEY}' entry added; load_model -> {predictor!r}, classes {predictor.class_names}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repack", action="store_true", help="rewrite the shipped file's container, no training")
    return repack() if parser.parse_args().repack else train_and_export()


if __name__ == "__main__":
    sys.exit(main())
