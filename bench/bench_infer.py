"""Warm CPU seconds per image: detconvert's Mask R-CNN R-50-FPN vs torchvision's, same image, same run.

Usage::

    python bench/bench_infer.py [--weights model_final.pkl] [--repeats 5] [--threads N]
    python bench/bench_infer.py --convert-only        # conversion time and peak RSS only

* detconvert: ``load_model(<golden weights>).predict(coffee.png)`` -- everything included: reading the
  BGR array into the blob (mean subtraction, resize, padding), backbone, RPN + proposals, heads, box
  post-processing, mask paste and COCO RLE of the 100 masks.
* torchvision: ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0,
  box_detections_per_img=100)`` forced to the same work (100 detections with masks) on the same image
  (RGB float tensor /255 prepared outside the timing, its own transform resizes to 800x1200); mask
  paste included (its ``postprocess``), no RLE.
* Both are warmed up by one image (excluded), then the median of ``--repeats`` timed runs is reported,
  interleaved so that load from other processes on the machine hits both alike.

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

    ours = detconvert.load_model(weights, device="cpu")

    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, box_detections_per_img=100
    ).eval()
    tv_input = [torch.from_numpy(image[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255.0]

    def run_ours() -> int:
        dets = ours.predict([image])[0]
        return len(dets)

    def run_tv() -> int:
        with torch.inference_mode():
            return int(tv(tv_input)[0]["masks"].shape[0])

    n_ours, n_tv = run_ours(), run_tv()  # warm-up (excluded)
    t_ours, t_tv = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run_ours()
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        run_tv()
        t_tv.append(time.perf_counter() - start)
    m_ours, m_tv = statistics.median(t_ours), statistics.median(t_tv)
    print(f"image {image_path.name} {image.shape[1]}x{image.shape[0]}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} warm runs")
    print(f"detconvert  Mask R-CNN R-50-FPN: {m_ours:.2f} s/image ({n_ours} detections with masks + RLE) "
          f"runs {', '.join(f'{t:.2f}' for t in t_ours)}")
    print(f"torchvision maskrcnn_resnet50_fpn: {m_tv:.2f} s/image ({n_tv} detections with masks) "
          f"runs {', '.join(f'{t:.2f}' for t in t_tv)}")
    print(f"ratio detconvert / torchvision: {m_ours / m_tv:.2f}")
    if args.floor:
        report_floor(run_ours, m_ours, m_tv)
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
