#!/usr/bin/env python3
"""Train the tiny shapes Mask R-CNN shipped with ``detconvert demo`` and export it in Detectron's format.

Writes ``detconvert/data/demo/shapes_model_final.pkl`` (``{'blobs', 'cfg'}``, Python-2.7 protocol-2
bytes, as Detectron's ``save_object``), ``shapes_model_spec.json`` (the ArchSpec: the tiny body widths
are beyond Detectron's config keys) and ``shapes_train.log``. Deterministic in its seeds; about
1-2 minutes on 2 CPU cores (the schedule of tests/test_train_overfit.py)::

    python tools/train_demo_model.py
"""
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from detconvert.io.atomic import atomic_write  # noqa: E402
from detconvert.train.shapes import TINY_BODY, TINY_SHAPES_CFG, write_shapes_dataset  # noqa: E402
from detconvert.train.trainer import TrainOptions, export_detectron_pickle, train  # noqa: E402

DEMO_DIR = Path(__file__).resolve().parents[1] / "detconvert" / "data" / "demo"
NUM_IMAGES, DATASET_SEED, MAX_ITER = 4, 0, 250
OVERRIDES = [("SOLVER.BASE_LR", "0.02"), ("SOLVER.STEPS", "[0, 200]"), ("SOLVER.MAX_ITER", str(MAX_ITER)),
             ("TRAIN.USE_FLIPPED", "False")]


def main() -> int:
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
    pkl = export_detectron_pickle(result.model, cfg_text, DEMO_DIR / "shapes_model_final.pkl")
    spec = {"spec": result.model.spec.to_dict(), "class_names": result.class_names,
            "dataset": {"num_images": NUM_IMAGES, "seed": DATASET_SEED}, "iterations": MAX_ITER}
    with atomic_write(DEMO_DIR / "shapes_model_spec.json", "w") as f:
        json.dump(spec, f, indent=1)
    with atomic_write(DEMO_DIR / "shapes_train.log", "w") as f:
        f.write("\n".join(log_lines) + "\n")
    print(f"wrote {pkl} ({pkl.stat().st_size:,} bytes) in {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
