"""Solver: LR schedule vs solver.json, Caffe2 SGD step equivalence, no double momentum correction,
resume by parameter name, fine-tune with a fresh optimizer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tests._shared import SHARED, SKIP_REASON

from detconvert.train.solver import SolverConfig, build_optimizer, caffe2_momentum_sgd, lr_at_iter, scale_to_batch_size, set_lr

GOLDEN_CONFIGS = ["mask_fpn", "keypoint_fpn", "mask_c4", "retinanet"]


def _solver_json(key):
    from tests._train_golden import TRAIN_CONFIGS, train_dir

    with open(train_dir() / TRAIN_CONFIGS[key][0] / "solver.json") as f:
        return json.load(f)


@pytest.mark.skipif(SHARED is None, reason=SKIP_REASON)
@pytest.mark.parametrize("key", GOLDEN_CONFIGS)
def test_lr_schedule_and_variants_equal_detectron(key):
    ref = _solver_json(key)
    cfg = SolverConfig.from_detectron(ref["solver_cfg"])
    assert [lr_at_iter(it, cfg) for it, _ in ref["lr_at_iter"]] == [lr for _, lr in ref["lr_at_iter"]]
    for name, variant in ref.get("lr_variants", {}).items():
        s = variant["settings"]
        vcfg = cfg.with_(
            lr_policy=s["LR_POLICY"], lrs=tuple(s["LRS"]), step_size=s["STEP_SIZE"],
            warm_up_iters=s["WARM_UP_ITERS"], warm_up_method=s["WARM_UP_METHOD"],
        )
        assert [lr_at_iter(it, vcfg) for it, _ in variant["lr_at_iter"]] == [lr for _, lr in variant["lr_at_iter"]], name


@pytest.mark.skipif(SHARED is None, reason=SKIP_REASON)
@pytest.mark.parametrize("key", ["mask_fpn", "keypoint_fpn"])
def test_sgd_step_equals_caffe2_update(key):
    """torch SGD with our groups, from Caffe2's momentum blob v (= lr * buffer), lands on Caffe2's
    param and momentum after one MomentumSGDUpdate (bias: 2x LR, no decay; weights: decay 1e-4)."""
    from tests._train_golden import TRAIN_CONFIGS, npz

    ref = _solver_json(key)
    cfg = SolverConfig.from_detectron(ref["solver_cfg"])
    step = ref["sgd_update"]["synthetic_step"]
    z = npz(TRAIN_CONFIGS[key][0], "sgd_step.npz")
    lr = step["lr"]
    model = nn.Module()
    for blob in step["example_params"]:
        model.register_parameter(blob, nn.Parameter(torch.from_numpy(z[f"{blob}@param_before"].copy())))
    opt = build_optimizer(model, cfg, lr=lr)
    for group in opt.param_groups:
        p, blob = group["params"][0], group["name"]
        info = ref["sgd_update"]["per_param"][f"gpu_0/{blob}"]
        assert group["lr_mult"] == info["lr_mult"] and group["weight_decay"] == pytest.approx(info["weight_decay"], rel=1e-6)
        opt.state[p]["momentum_buffer"] = torch.from_numpy(z[f"{blob}@momentum_before"] / np.float32(lr * group["lr_mult"]))
        p.grad = torch.from_numpy(z[f"{blob}@grad"].copy())
    opt.step()
    for group in opt.param_groups:
        p, blob = group["params"][0], group["name"]
        np.testing.assert_allclose(p.detach().numpy(), z[f"{blob}@param_after"], rtol=1e-6, atol=1e-9, err_msg=blob)
        v = opt.state[p]["momentum_buffer"].numpy() * np.float32(lr * group["lr_mult"])
        np.testing.assert_allclose(v, z[f"{blob}@momentum_after"], rtol=1e-5, atol=1e-10, err_msg=blob)


def test_no_double_momentum_correction_across_lr_drop():
    """Lessons L4: 1-D quadratic, 3 steps across a 10x LR drop. Caffe2's update with Detectron's
    momentum correction == plain torch SGD; applying the correction to torch's buffer as well differs."""
    mu, lrs, x0 = 0.9, [0.1, 0.1, 0.01], 3.0

    def grad(x):
        return 2.0 * x  # f(x) = x^2

    # Caffe2 form: v = lr g + mu v; x -= v; at an LR change v *= new/old (SCALE_MOMENTUM).
    x, v, prev = x0, 0.0, lrs[0]
    for lr in lrs:
        if lr != prev:
            v *= lr / prev
        x, v = caffe2_momentum_sgd(np.float64(x), np.float64(grad(x)), np.float64(v), lr, mu)
        prev = lr
    caffe2_x = float(x)

    def torch_run(correct_buffer):
        p = nn.Parameter(torch.tensor([x0], dtype=torch.float64))
        opt = torch.optim.SGD([p], lr=lrs[0], momentum=mu)
        prev = lrs[0]
        for lr in lrs:
            for g in opt.param_groups:
                g["lr"] = lr
            if correct_buffer and lr != prev and opt.state[p]:
                opt.state[p]["momentum_buffer"] *= lr / prev  # Detectron.pytorch's _CorrectMomentum
            opt.zero_grad()
            (p**2).sum().backward()
            opt.step()
            prev = lr
        return float(p)

    assert torch_run(False) == pytest.approx(caffe2_x, abs=1e-7)
    assert abs(torch_run(True) - caffe2_x) > 1e-3
    # set_lr never touches the buffer
    p = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [p], "lr_mult": 2.0, "name": "w"}], lr=0.1, momentum=0.9)
    (p**2).sum().backward()
    opt.step()
    before = opt.state[p]["momentum_buffer"].clone()
    set_lr(opt, 0.01)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02)
    assert torch.equal(opt.state[p]["momentum_buffer"], before)


def test_bias_double_lr_and_gn_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4))
    cfg = SolverConfig(base_lr=0.02, weight_decay=1e-4, weight_decay_gn=0.0, warm_up_iters=0)
    opt = build_optimizer(model, cfg)
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["0.weight"]["lr"] == pytest.approx(0.02) and groups["0.weight"]["weight_decay"] == 1e-4
    assert groups["0.bias"]["lr"] == pytest.approx(0.04) and groups["0.bias"]["weight_decay"] == 0.0
    assert groups["1.weight"]["weight_decay"] == 0.0 and groups["1.bias"]["weight_decay"] == 0.0


def test_lr_scaled_to_actual_batch():
    """Detectron.pytorch: LR follows batch_size (gradients summed over iter_size), steps follow the effective batch."""
    cfg = SolverConfig(base_lr=0.02, steps=(0, 60000, 80000), max_iter=90000)
    scaled = scale_to_batch_size(cfg, original_batch_size=16, batch_size=4, iter_size=2)
    assert scaled.base_lr == pytest.approx(0.005)
    assert scaled.steps == (0, 120000, 160000) and scaled.max_iter == 180000


class _Net(nn.Module):
    """Two named submodules whose construction order can be swapped."""

    def __init__(self, swapped: bool = False):
        super().__init__()
        if swapped:
            self.head = nn.Linear(3, 2)
            self.body = nn.Linear(4, 3)
        else:
            self.body = nn.Linear(4, 3)
            self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def _train(model, opt, cfg, steps, start=0):
    torch.manual_seed(0)
    for it in range(start, start + steps):
        set_lr(opt, lr_at_iter(it, cfg))
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()


def test_resume_restores_step_lr_and_momentum_by_name_even_if_construction_order_changes(tmp_path):
    from detconvert.train.checkpoint import resume, save_checkpoint

    cfg = SolverConfig(base_lr=0.1, lr_policy="steps_with_decay", steps=(0, 3), max_iter=10, warm_up_iters=2)
    torch.manual_seed(1)
    model = _Net()
    opt = build_optimizer(model, cfg)
    _train(model, opt, cfg, 4)
    save_checkpoint(tmp_path / "ckpt.pth", model, opt, step=4, solver=cfg)

    other = _Net(swapped=True)
    assert [n for n, _ in other.named_parameters()] != [n for n, _ in model.named_parameters()]
    other_opt = build_optimizer(other, cfg)
    step = resume(tmp_path / "ckpt.pth", other, other_opt, cfg)
    assert step == 4
    for g in other_opt.param_groups:
        assert g["lr"] == pytest.approx(lr_at_iter(4, cfg) * g["lr_mult"])
    saved = {g["name"]: opt.state[g["params"][0]]["momentum_buffer"] for g in opt.param_groups}
    for g in other_opt.param_groups:
        assert torch.equal(other_opt.state[g["params"][0]]["momentum_buffer"], saved[g["name"]]), g["name"]
    # Continuing from the resumed state equals continuing the original run.
    _train(model, opt, cfg, 2, start=4)
    _train(other, other_opt, cfg, 2, start=4)
    for (n, a) in model.named_parameters():
        assert torch.allclose(a, dict(other.named_parameters())[n], atol=1e-7), n


def test_finetune_load_uses_new_lr_and_no_momentum(tmp_path):
    from detconvert.train.checkpoint import load_weights_for_finetune, save_checkpoint

    old = SolverConfig(base_lr=0.1, warm_up_iters=0)
    model = _Net()
    opt = build_optimizer(model, old)
    _train(model, opt, old, 3)
    save_checkpoint(tmp_path / "ckpt.pth", model, opt, step=3, solver=old)

    new = SolverConfig(base_lr=0.0025, warm_up_iters=0)
    fresh = _Net()
    load_weights_for_finetune(tmp_path / "ckpt.pth", fresh)
    fresh_opt = build_optimizer(fresh, new)
    assert all(g["lr"] == pytest.approx(0.0025 * g["lr_mult"]) for g in fresh_opt.param_groups)
    assert not any(fresh_opt.state[g["params"][0]] for g in fresh_opt.param_groups)
    assert torch.equal(fresh.body.weight, model.body.weight)


def test_bad_checkpoint_is_a_one_line_error(tmp_path):
    from detconvert.errors import DetconvertError
    from detconvert.train.checkpoint import load_checkpoint

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DetconvertError) as err:
        load_checkpoint(bad)
    assert "bad.pth" in str(err.value.source) and "\n" not in str(err.value)
