"""Warm CPU seconds per image: detconvert's Mask R-CNN R-50-FPN, exact and fast, vs torchvision's, same run.

Usage::

    python bench/bench_infer.py [--weights model_final.pkl] [--repeats 5] [--batch-repeats 2] [--threads N]
    python bench/bench_infer.py --precision exact     # one detconvert precision only (default: both)
    python bench/bench_infer.py --convert-only        # conversion time and peak RSS only

* detconvert: ``load_model(<golden weights>, precision=exact|fast).predict(coffee.png)`` -- everything
  included: reading the BGR array into the blob (mean subtraction, resize, padding), backbone, RPN +
  proposals, heads, box post-processing, mask paste and COCO RLE of the 100 masks. ``exact`` is the
  default (float32, NCHW); ``fast`` is channels-last with bfloat16 autocast for convolutions and linear
  layers where the CPU has AVX512-BF16 / AMX (else channels-last float32; the line says which).
* torchvision: ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0,
  box_detections_per_img=100)`` forced to the same work (100 detections with masks) on the same image
  (RGB float tensor /255 prepared outside the timing, its own transform resizes to 800x1200); mask
  paste included (its ``postprocess``), no RLE.
* All are warmed up by one image (excluded), then the median of ``--repeats`` timed runs is reported,
  interleaved so that load from other processes on the machine hits them alike; then images/s with a
  batch of 4 copies of the image in one call (median of ``--batch-repeats``), and the peak RSS of the
  process (``ru_maxrss``: all models loaded, the largest batch run).

Conversion: ``detconvert weights`` on the same file in a subprocess (wall time, peak RSS via
``resource.getrusage(RUSAGE_CHILDREN)``).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG_ID = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"


def _default_weights() -> Path:
    from tests.conftest import make_weights

    return make_weights(CONFIG_ID)


def bench_conversion(weights: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.safetensors"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "detconvert", "weights", str(weights), "-o", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"conversion: {seconds:.1f} s wall (process start included), peak RSS {peak_mb:.0f} MB, "
              f"{weights.stat().st_size / 1e6:.0f} MB pickle -> {out.stat().st_size / 1e6:.0f} MB safetensors")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="Mask R-CNN R-50-FPN model_final.pkl (default: the golden)")
    parser.add_argument("--image", type=Path, help="image (default: ../shared/reference/images/coffee.png)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-repeats", type=int, default=2, help="timed batch-of-4 runs (default 2)")
    parser.add_argument("--batch", type=int, default=4, help="images per call for the throughput line (default 4)")
    parser.add_argument("--precision", default="both", metavar="exact|fast",
                        help="time only this detconvert precision (default: both, exact and fast)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--convert-only", action="store_true")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip the FLOP count and the conv-throughput floor")
    args = parser.parse_args()
    weights = args.weights or _default_weights()
    if args.convert_only:
        bench_conversion(weights)
        return 0

    import cv2
    import numpy as np
    import torch
    import torchvision

    import detconvert
    from tests._shared import REFERENCE

    if args.threads:
        torch.set_num_threads(args.threads)
    image_path = args.image or (REFERENCE / "images" / "coffee.png")
    image = cv2.imread(str(image_path))

    from detconvert.inference.precision import parse_precision

    precisions = ["exact", "fast"] if args.precision == "both" else [parse_precision(args.precision).value]
    ours = {p: detconvert.load_model(weights, device="cpu", precision=p) for p in precisions}

    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, box_detections_per_img=100
    ).eval()
    tv_input = [torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255.0]

    def ours_runner(predictor, n):
        return lambda: len(predictor.predict([image] * n)[0])

    def tv_runner(n):
        def run() -> int:
            with torch.inference_mode():
                return int(tv(tv_input * n)[0]["masks"].shape[0])
        return run

    contenders = {f"detconvert {p}": ours_runner(m, 1) for p, m in ours.items()}
    contenders["torchvision"] = tv_runner(1)
    counts = {name: run() for name, run in contenders.items()}  # warm-up (excluded)
    times = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    batched = {f"detconvert {p}": ours_runner(m, args.batch) for p, m in ours.items()}
    batched["torchvision"] = tv_runner(args.batch)
    batch_times = {name: [] for name in batched}
    for _ in range(args.batch_repeats):
        for name, run in batched.items():
            start = time.perf_counter()
            run()
            batch_times[name].append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median = {name: statistics.median(t) for name, t in times.items()}
    from detconvert.inference.precision import cpu_bf16_support

    print(f"image {image_path.name} {image.shape[1]}x{image.shape[0]}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CPU bf16: {cpu_bf16_support() or 'none'}; median of {args.repeats} "
          f"warm runs, batch {args.batch}: median of {args.batch_repeats}")
    for name in contenders:
        what = "detections with masks + RLE" if name.startswith("detconvert") else "detections with masks"
        policy = f" [{ours[name.split()[1]].precision_policy}]" if name.startswith("detconvert") else ""
        per_image = statistics.median(batch_times[name]) / args.batch
        print(f"{name:<18} {median[name]:.2f} s/image, ratio {median[name] / median['torchvision']:.2f} vs "
              f"torchvision; batch {args.batch}: {per_image:.2f} s/image = {1 / per_image:.3f} images/s ({counts[name]} {what})"
              f"{policy} "
              f"runs {', '.join(f'{t:.2f}' for t in times[name])}")
    print(f"peak RSS of the process (all {len(contenders)} models loaded, batch {args.batch} run): {peak_mb:.0f} MB")
    if args.floor and "exact" in ours:
        report_floor(contenders["detconvert exact"], median["detconvert exact"], median["torchvision"])
    return 0


def report_floor(run_ours, seconds_ours: float, seconds_tv: float) -> None:
    """How close the run is to the machine: FLOPs per image against a measured conv throughput.

    The floor is the time the image's multiply-adds would take at the throughput of one large
    3x3 convolution (256 -> 256 on 100 RoIs of 14x14, the mask head's), i.e. what oneDNN reaches
    on this CPU at float32; no exact-numerics implementation of the same network goes below it.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        run_ours()
    flops = sum(event.flops for event in prof.key_averages() if event.flops)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval()
    x = torch.randn(100, 256, 14, 14).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv(x)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - start)
    conv_flops = 2 * 100 * 14 * 14 * 256 * 256 * 9
    throughput = conv_flops / min(times)
    floor = flops / throughput
    print(f"work: {flops / 1e9:.0f} GFLOP per image; conv throughput {throughput / 1e9:.0f} GFLOP/s -> floor "
          f"{floor:.2f} s/image = ratio {floor / seconds_tv:.2f} vs torchvision "
          f"(detconvert at {floor / seconds_ours:.0%} of it)")


if __name__ == "__main__":
    sys.exit(main())
