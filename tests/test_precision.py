"""The precision policy: ``exact`` (default) is the float32 NCHW path, ``fast`` runs the network in bfloat16 and
hands float32 to everything after it, both record themselves; bad values are one line, exit 2.

Cheap by design: the shipped shapes model (128-pixel images) and the tiny training config. The bf16 detection
is monkeypatched where a test needs fast to autocast, so the tests mean the same on CPUs with and without
native bfloat16 (oneDNN then emulates it: slower, same code path).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from detconvert import cli
from detconvert.errors import DetconvertError
from detconvert.inference import pipeline, precision as precision_module
from detconvert.inference.precision import Precision, PrecisionPolicy, parse_precision, resolve_precision
from detconvert.inference.predictor import Predictor


@pytest.fixture
def native_bf16(monkeypatch):
    """fast autocasts to bfloat16 whatever this CPU is."""
    monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: "test")


@pytest.fixture(scope="module")
def shapes_image():
    from detconvert.demo import shapes_demo_image

    return shapes_demo_image()[0]


def _shapes_predictor(precision=None) -> Predictor:
    from detconvert.demo import load_shapes_model

    base = load_shapes_model("cpu")  # a fresh model each time: a policy sets its model's memory format
    kwargs = {} if precision is None else {"precision": precision}
    return Predictor(base.model, base.class_names, base.device, source=base.source, **kwargs)


# --------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, expected", [("exact", Precision.EXACT), ("FAST", Precision.FAST),
                                            (" fast ", Precision.FAST), (None, Precision.EXACT)])
def test_precision_names(text, expected):
    assert parse_precision(text) is expected
    assert parse_precision(text) == expected.value  # a str enum: compares and serialises as its name


@pytest.mark.parametrize("bad", ["half", "fp16", "", "exact,fast"])
def test_unknown_precision_is_one_line_naming_the_flag(bad):
    with pytest.raises(DetconvertError) as info:
        resolve_precision(bad, "cpu")
    message = str(info.value)
    assert message.startswith("--precision: unknown precision") and "exact or fast" in message
    assert "\n" not in message


@pytest.mark.parametrize("argv", [
    ["infer", "--wts", "model.pkl", "--precision", "half", "images"],
    ["eval", "--wts", "model.pkl", "--ann", "a.json", "--image_dir", ".", "--precision", "half"],
    ["train", "--cfg", "c.yaml", "--dataset", "a.json", "--precision", "half"],
])
def test_cli_rejects_a_bad_precision_with_exit_2_before_reading_anything(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"detconvert {argv[0]}: error: --precision: unknown precision 'half' (choose exact or fast)"]


# ----------------------------------------------------------------------------------------------- exact


def test_exact_is_the_default_and_bit_identical_to_plain_nchw_float32(shapes_image):
    default, exact = _shapes_predictor(), _shapes_predictor("exact")
    assert default.precision == exact.precision == "exact"
    assert exact.precision_policy.describe() == {"precision": "exact", "compute_dtype": "float32",
                                                 "layout": "nchw", "device": "cpu"}
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in exact.model.parameters())
    a = default.predict(shapes_image, keep_blobs=True)[0]
    b = exact.predict(shapes_image, keep_blobs=True)[0]
    assert a.extras.keys() == b.extras.keys() and len(a) > 0
    for name in a.extras:
        np.testing.assert_array_equal(a.extras[name], b.extras[name], err_msg=name)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    # ... and the body is exactly the plain float32 NCHW module call, without any policy in between.
    blob = pipeline.make_image_blob(exact.spec, [shapes_image])
    with torch.inference_mode():
        plain = exact.model.features(torch.from_numpy(blob.data))
    for name, value in plain.items():
        np.testing.assert_array_equal(value.numpy(), b.extras[name], err_msg=name)


def test_exact_runs_conv_then_affine_channel_as_detectron_and_fast_folds_them():
    """Folding the frozen AffineChannel into the conv weights is a fused op (the scale multiplies the weights,
    not the sums): fast only. Exact must equal Detectron's Conv -> AffineChannel order bit for bit."""
    from detconvert.modeling.layers import AffineChannel2d, ConvNorm
    from detconvert.spec import NormSpec

    torch.manual_seed(0)
    block = ConvNorm(8, 16, 3, name="res_x", norm=NormSpec(), padding=1, relu=False).eval()
    assert isinstance(block.norm, AffineChannel2d)
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.normal_()
    x = torch.randn(2, 8, 23, 29)
    with torch.inference_mode():
        reference = block.norm(block.conv(x))  # the two ops, one after the other
        for mode, folds in (("exact", False), ("fast", True)):
            policy = resolve_precision(mode, torch.device("cpu"))
            policy.prepare_model(block)
            assert block.fold_affine is folds
            out = block(x.contiguous(memory_format=torch.channels_last) if policy.channels_last else x)
            if folds:
                torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
            else:
                assert torch.equal(out, reference)
        block.fold_affine = True
        folded = block(x)
    assert not torch.equal(folded, reference)  # the fold really changes the rounding: why exact does not fold


@pytest.mark.skipif(not hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"),
                    reason="PyTorch < 2.9 has only the legacy TF32 switches")
def test_exact_on_cuda_holds_tf32_off_and_restores_the_callers_settings():
    """cuDNN convolutions default to TF32 (a 10-bit mantissa): exact switches it off for the run only."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    policy = PrecisionPolicy(Precision.EXACT, "cuda", torch.float32, channels_last=False)
    saved = conv.fp32_precision, matmul.fp32_precision
    try:
        conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
        with policy.numerics():
            assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
        with resolve_precision("fast", "cpu").numerics():  # fast leaves global settings alone
            assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


# ------------------------------------------------------------------------------------------------ fast


def _float_dtypes(args) -> set:
    out = set()
    for a in args:
        items = a if isinstance(a, (list, tuple)) else [a]
        for t in items:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                out.add(str(t.dtype).replace("torch.", ""))
    return out


def test_fast_runs_the_network_in_bf16_and_everything_after_it_in_float32(native_bf16, shapes_image, monkeypatch):
    predictor = _shapes_predictor("fast")
    assert predictor.precision == "fast" and predictor.precision_policy.compute_dtype == torch.bfloat16
    assert predictor.precision_policy.describe()["layout"] == "channels_last"
    conv = next(m for m in predictor.model.body.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.dtype == torch.float32 and conv.weight.is_contiguous(memory_format=torch.channels_last)

    seen = {}
    post = ("multilevel_roi_align", "generate_proposals", "decode_box_predictions", "box_results_with_nms_and_limit")
    for name in post:
        def spy(*args, _fn=getattr(pipeline, name), _name=name, **kwargs):
            seen.setdefault(_name, set()).update(_float_dtypes(args))
            return _fn(*args, **kwargs)
        monkeypatch.setattr(pipeline, name, spy)
    pasted = []

    def segm_spy(probs, *args, _fn=pipeline.segm_results, **kwargs):
        pasted.append(probs.dtype)
        return _fn(probs, *args, **kwargs)
    monkeypatch.setattr(pipeline, "segm_results", segm_spy)
    conv_out = []
    hook = conv.register_forward_hook(lambda m, i, o: conv_out.append(o.dtype))
    try:
        dets = predictor.predict(shapes_image)[0]
    finally:
        hook.remove()
    assert conv_out == [torch.bfloat16]  # the convolutions did run in bfloat16 ...
    # ... and RoIAlign, proposal generation, box decoding, NMS + score threshold and mask paste got float32
    assert seen == {name: {"float32"} for name in post}
    assert pasted and set(pasted) == {np.dtype(np.float32)}
    assert len(dets) > 0 and dets.boxes.dtype == np.float32 and dets.scores.dtype == np.float32


def test_fast_stays_close_to_exact_on_the_shapes_image(native_bf16, shapes_image):
    """Not a drift measurement (bench/bench_precision.py is): fast must find exact's confident shapes."""
    exact = _shapes_predictor("exact").predict(shapes_image)[0]
    fast = _shapes_predictor("fast").predict(shapes_image)[0]
    confident = exact.scores >= 0.7
    assert confident.sum() > 0
    for box, cls, score in zip(exact.boxes[confident], exact.classes[confident], exact.scores[confident]):
        same = fast.classes == cls
        assert same.any()
        err = np.abs(fast.boxes[same] - box).max(axis=1)
        k = int(np.argmin(err))
        assert err[k] < 2.0 and abs(fast.scores[same][k] - score) < 0.05
    # bfloat16 did change something (else this test would not be testing fast at all)
    assert not (len(exact) == len(fast) and np.array_equal(exact.scores, fast.scores))


def test_fast_without_bf16_warns_once_and_runs_channels_last_float32(monkeypatch, capsys):
    monkeypatch.setattr(precision_module, "cpu_bf16_support", lambda: None)
    monkeypatch.setattr(precision_module, "_warned_no_bf16", False)
    first = resolve_precision("fast", "cpu")
    second = resolve_precision("fast", "cpu")
    assert first == second
    assert first.compute_dtype == torch.float32 and first.channels_last and not first.autocast
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detconvert: warning:") and "no native bfloat16" in err[0]


def test_bf16_detection_honours_an_isa_cap(monkeypatch):
    """``DNNL_MAX_CPU_ISA=AVX2`` (how the tests emulate an AMD/AVX2 CPU) leaves oneDNN without bf16 kernels."""
    monkeypatch.setattr(precision_module, "_cpu_flags", lambda: {"avx512_bf16", "amx_bf16", "amx_tile"})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert precision_module.cpu_bf16_support() == "AMX"
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert precision_module.cpu_bf16_support() is None
    monkeypatch.delenv("DNNL_MAX_CPU_ISA")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert precision_module.cpu_bf16_support() is None
    monkeypatch.setattr(precision_module, "_cpu_flags", lambda: {"avx512f"})
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert precision_module.cpu_bf16_support() is None


# -------------------------------------------------------------------------------------------- records


def test_infer_and_eval_record_the_precision_beside_a_plain_results_list(native_bf16, tmp_path):
    from detconvert.evaluation.evaluate import evaluate_dataset
    from detconvert.inference.results import run_metadata_path
    from detconvert.inference.runner import infer_images
    from detconvert.train.shapes import write_shapes_dataset

    ann, image_dir = write_shapes_dataset(tmp_path / "val", num_images=2, seed=5)
    predictor = _shapes_predictor("fast")
    summary = infer_images(predictor, image_dir, tmp_path / "infer", progress=False)
    assert isinstance(json.loads(summary.json_path.read_text()), list)  # what pycocotools' loadRes reads
    assert summary.run_metadata_path == run_metadata_path(summary.json_path) == tmp_path / "infer" / \
        "detections_coco.run.json"
    meta = json.loads(summary.run_metadata_path.read_text())
    assert meta["precision"] == "fast" and meta["compute_dtype"] == "bfloat16" and meta["layout"] == "channels_last"
    assert meta["detections"] == summary.num_detections and meta["images"] == 2

    report = evaluate_dataset(_shapes_predictor(), image_dir, ann, tmp_path / "eval", log=None, progress=False)
    meta = json.loads(report.run_metadata_path.read_text())
    assert meta["precision"] == "exact" and meta["compute_dtype"] == "float32" and meta["layout"] == "nchw"
    assert meta["stats"]["bbox"]["AP"] == pytest.approx(report.stats["bbox"]["AP"])


def test_fast_training_autocasts_keeps_float32_losses_and_records_itself(native_bf16, tmp_path, monkeypatch):
    from detconvert.io.weights import load_weights
    from detconvert.train.checkpoint import load_checkpoint
    from detconvert.train.forward import training_losses
    from detconvert.train.shapes import TINY_BODY, TINY_SHAPES_CFG, write_shapes_dataset
    from detconvert.train.trainer import TrainOptions, train

    losses_seen = []
    import detconvert.train.trainer as trainer_module

    def spy(*args, **kwargs):
        out = training_losses(*args, **kwargs)
        losses_seen.append({k: v.dtype for k, v in out.items()})
        return out

    ann, _ = write_shapes_dataset(tmp_path / "shapes", num_images=2, seed=0)
    options = TrainOptions(cfg=TINY_SHAPES_CFG, annotations=ann, output_dir=tmp_path / "out", max_iter=2,
                           body_override=TINY_BODY, log_period=0, precision="fast",
                           overrides=[("SOLVER.BASE_LR", "0.001")])
    monkeypatch.setattr(trainer_module, "training_losses", spy)
    result = train(options)
    assert len(result.history) == 2 and all(np.isfinite(h["total_loss"]) for h in result.history)
    assert losses_seen and all(d == torch.float32 for step in losses_seen for d in step.values())
    assert result.precision["precision"] == "fast" and result.precision["compute_dtype"] == "bfloat16"
    assert load_checkpoint(result.checkpoint)["extra"]["precision"] == result.precision
    meta = load_weights(result.model_final).metadata
    assert json.loads(meta["precision"]) == result.precision
    # The trained model runs exact afterwards: NCHW again.
    predictor = Predictor(result.model, result.class_names, torch.device("cpu"))
    assert all(p.is_contiguous() for p in predictor.model.parameters())


def test_a_predictor_takes_an_already_resolved_policy(native_bf16):
    policy = resolve_precision("fast", "cpu")
    predictor = _shapes_predictor(policy)
    assert predictor.precision_policy is policy
    assert dataclasses.asdict(policy)["precision"] == "fast"
