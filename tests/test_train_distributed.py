"""Data-parallel training on the CPU: 2 gloo processes (``run_sharded``) train one tiny Mask R-CNN.

Each rank draws its own images (``DistributedAspectRatioGroupedBatchSampler``), DDP averages the
gradients, so after a few steps both ranks hold bit-identical parameters although their losses
differ; only rank 0 writes checkpoints.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from detconvert.config import build_spec, translate_config
from detconvert.modeling.detector import build_model
from detconvert.parallel.distributed import WorkerContext, run_sharded
from detconvert.train.forward import init_for_training
from detconvert.train.shapes import TINY_BODY, TINY_SHAPES_CFG, write_shapes_dataset
from detconvert.train.trainer import TrainOptions, train

ITERS = 3
REPO = Path(__file__).resolve().parents[1]


def _train_rank(context: WorkerContext, job: str) -> dict:
    """One rank's run (module level: spawned processes import it by name)."""
    ann, out = job.split("|")
    result = train(TrainOptions(cfg=TINY_SHAPES_CFG, annotations=ann, body_override=TINY_BODY, output_dir=out,
                                max_iter=ITERS, batch_size=2, overrides=[("TRAIN.USE_FLIPPED", "False")],
                                clip_grad_norm=5.0, seed=3, log_period=0))
    # NumPy, not tensors: torch shares tensors between processes through handles that die with the worker.
    params = {k: v.detach().numpy().copy() for k, v in result.model.state_dict().items()}
    return {"params": params, "losses": [h["total_loss"] for h in result.history],
            "checkpoint": str(result.checkpoint) if result.checkpoint else None}


def _context(context: WorkerContext) -> WorkerContext:
    return context


def test_two_cpu_processes_end_with_identical_parameters(tmp_path):
    ann, _ = write_shapes_dataset(tmp_path / "shapes", num_images=4, seed=0)
    out = tmp_path / "out"
    job = f"{ann}|{out}"
    # One job per rank; each rank's init_fn hands its context to _train_rank.
    ranks = run_sharded(_train_rank, [job, job], num_processes=2, init_fn=_context, timeout_s=300)
    assert len(ranks) == 2
    first, second = ranks
    assert len(first["losses"]) == ITERS and all(np.isfinite(first["losses"] + second["losses"]))
    # Different images per rank: the first losses differ (one image each, out of 4).
    assert first["losses"][0] != second["losses"][0]
    assert first["params"].keys() == second["params"].keys()
    for name, value in first["params"].items():
        assert np.array_equal(value, second["params"][name]), f"{name} differs between the ranks"
    assert first["checkpoint"] == str(out / "ckpt" / f"model_step{ITERS}.pth") and second["checkpoint"] is None
    payload = torch.load(Path(first["checkpoint"]), weights_only=True)
    assert payload["step"] == ITERS
    for name, value in payload["model"].items():
        assert np.array_equal(value.numpy(), first["params"][name])
    assert (out / "model_final.pth").exists()
    # The ranks trained: the parameters moved away from the seeded initialisation.
    spec = build_spec(translate_config(TINY_SHAPES_CFG).cfg)
    initial = build_model(dataclasses.replace(spec, body=dataclasses.replace(spec.body, **TINY_BODY)))
    init_for_training(initial, seed=3)
    start = initial.box_predictor.cls_score.weight.detach().numpy()
    assert np.abs(first["params"]["box_predictor.cls_score.weight"] - start).max() > 1e-6


def test_torchrun_launch_trains_with_one_report_and_one_checkpoint(tmp_path):
    """``torchrun --nproc-per-node 2 tools/train_net_step.py``: the ranks join the launcher's group."""
    ann, _ = write_shapes_dataset(tmp_path / "shapes", num_images=4, seed=0)
    (tmp_path / "tiny.yaml").write_text(TINY_SHAPES_CFG)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(REPO / "tools" / "train_net_step.py"), "--cfg", "tiny.yaml", "--dataset", str(ann), "--bs", "2",
           "--max-iter", "2", "--output_dir", "out", "--log-period", "1", "--set", "SOLVER.BASE_LR", "0.001"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained  2 iterations from step 0") == 1, proc.stdout
    assert proc.stderr.count("iter 2/2") == 1
    assert sorted(p.name for p in (tmp_path / "out" / "ckpt").iterdir()) == ["model_step2.pth"]
    assert torch.load(tmp_path / "out" / "ckpt" / "model_step2.pth", weights_only=True)["step"] == 2
