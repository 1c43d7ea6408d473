"""torch.distributed scale-out: sharding, 2-process gloo runs on CPU, torchrun environment, DDP wrapping.

The spawned processes import the worker functions below by name, so they live at module level.
Every multi-process run is bounded by ``timeout_s`` (collectives and the parent's wait).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detconvert.errors import DetconvertError
from detconvert.parallel import distributed as D

TIMEOUT_S = 120
REPO_ROOT = Path(__file__).resolve().parent.parent


# ---- workers (module level: spawned processes import them) ---------------------------------------------------


def build_tiny_net(context: D.WorkerContext) -> nn.Module:
    """A seeded two-layer conv net: the same weights in every process."""
    torch.manual_seed(1234)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2))
    return net.to(context.device).eval()


def detect_like(net: nn.Module, item: dict) -> dict:
    """A deterministic per-image computation on an image of its own size."""
    generator = torch.Generator().manual_seed(item["seed"])
    image = torch.rand(1, 3, item["height"], item["width"], generator=generator)
    with torch.no_grad():
        features = net(image)
    return {
        "id": item["id"],
        "shape": tuple(features.shape),
        "channel_means": features.mean(dim=(0, 2, 3)).numpy(),
        "argmax": int(features.flatten().argmax()),
    }


def fail_on_item_three(_state, item: int) -> int:
    if item == 3:
        raise ValueError("item 3 is broken")
    return item


def build_ddp_linear(context: D.WorkerContext) -> nn.Module:
    torch.manual_seed(0)
    return D.wrap_ddp(nn.Linear(4, 2), context.device)


def ddp_gradient(model: nn.Module, item: int) -> np.ndarray:
    torch.manual_seed(100 + item)
    x = torch.rand(3, 4)
    model(x).square().sum().backward()
    return model.module.weight.grad.numpy().copy()


# ---- tests ----------------------------------------------------------------------------------------------------


def _items(n: int = 7) -> list:
    rng = np.random.default_rng(5)
    return [
        {"id": f"img{i}", "seed": i, "height": int(rng.integers(16, 48)), "width": int(rng.integers(16, 48))}
        for i in range(n)
    ]


def test_shards_are_contiguous_balanced_and_concatenate_to_the_input():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, world = int(rng.integers(0, 40)), int(rng.integers(1, 9))
        shards = [D.shard(list(range(n)), world, r) for r in range(world)]
        assert [i for s in shards for i in s] == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        D.shard_bounds(3, 2, 2)


def test_two_gloo_processes_equal_the_single_process_run_in_order():
    items = _items(7)  # 7 items over 2 ranks: shards of 4 and 3
    single = D.run_sharded(detect_like, items, num_processes=1, init_fn=build_tiny_net)
    sharded = D.run_sharded(detect_like, items, num_processes=2, init_fn=build_tiny_net, timeout_s=TIMEOUT_S)
    assert [r["id"] for r in sharded] == [it["id"] for it in items]
    assert len({r["shape"] for r in single}) > 1, "images of different sizes"
    for got, want in zip(sharded, single):
        assert got["shape"] == want["shape"] and got["argmax"] == want["argmax"]
        # Processes may use different thread counts: float32 noise only.
        np.testing.assert_allclose(got["channel_means"], want["channel_means"], rtol=1e-5, atol=1e-7)


def test_a_failing_rank_raises_in_the_caller_with_its_traceback():
    with pytest.raises(Exception, match="item 3 is broken"):
        D.run_sharded(fail_on_item_three, list(range(6)), num_processes=2, timeout_s=TIMEOUT_S)


def test_wrap_ddp_averages_gradients_across_two_processes():
    grads = D.run_sharded(ddp_gradient, [0, 1], num_processes=2, init_fn=build_ddp_linear, timeout_s=TIMEOUT_S)
    local = []
    for item in (0, 1):
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        torch.manual_seed(100 + item)
        model(torch.rand(3, 4)).square().sum().backward()
        local.append(model.weight.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=0, atol=0)
    np.testing.assert_allclose(grads[0], (local[0] + local[1]) / 2, rtol=1e-6, atol=1e-7)


def test_wrap_ddp_needs_a_process_group():
    with pytest.raises(RuntimeError, match="process group"):
        D.wrap_ddp(nn.Linear(2, 2), "cpu")


def test_torchrun_environment_single_rank(monkeypatch):
    """The env:// path (what torchrun sets), with a world of one: the group is created and torn down."""
    for name, value in {
        "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(D.find_free_port()),
    }.items():
        monkeypatch.setenv(name, value)
    assert D.torchrun_environment()
    results = D.run_sharded(detect_like, _items(3), num_processes=5, init_fn=build_tiny_net, timeout_s=TIMEOUT_S)
    assert [r["id"] for r in results] == ["img0", "img1", "img2"]
    assert not torch.distributed.is_initialized()


def test_under_torchrun_with_two_processes(tmp_path):
    """The same call under ``torchrun --nproc-per-node 2`` merges both ranks' results in order."""
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(
        """
        import json, sys
        from detconvert.parallel import distributed as D
        from tests.test_distributed_sharding import build_tiny_net, detect_like, _items
        results = D.run_sharded(detect_like, _items(5), init_fn=build_tiny_net, timeout_s=60)
        if D.is_main_process():
            print(json.dumps([[r["id"], r["argmax"]] for r in results]))
        """
    ))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(D.find_free_port()), str(script)]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    net = build_tiny_net(D.WorkerContext(0, 1, 0, torch.device("cpu")))
    want = [[r["id"], r["argmax"]] for r in (detect_like(net, it) for it in _items(5))]
    assert got == want


def test_num_gpus_api():
    from detconvert.commands.infer import add_parallel_arguments  # the CLI defines the flag

    parser = argparse.ArgumentParser()
    add_parallel_arguments(parser)
    assert parser.parse_args(["--num-gpus", "0"]).num_gpus == 0
    assert parser.parse_args([]).num_gpus is None
    assert D.run_on_gpus(fail_on_item_three, [0, 1, 2], num_gpus=0) == [0, 1, 2]
    too_many = (torch.cuda.device_count() if torch.cuda.is_available() else 0) + 1
    with pytest.raises(DetconvertError, match="--num-gpus"):
        D.run_on_gpus(fail_on_item_three, [0], num_gpus=too_many)
    with pytest.raises(TypeError, match="module-level"):
        D.run_sharded(lambda state, item: item, [0, 1], num_processes=2)
