"""Video throughput: frames/s with the decoder overlapped (``detect_video``) vs decoding excluded, same run.

Usage::

    python bench/bench_video.py --model shapes                 # the shipped shapes Mask R-CNN, 128 x 128 video
    python bench/bench_video.py --model r50 --frames 6 --size 320   # Mask R-CNN R-50-FPN (golden weights)

The video is ``detconvert.train.shapes.moving_shapes_frames`` (shapes gliding on a noisy background),
resized to ``--size`` and written as mp4v at 10 fps. For R-50-FPN, ``TEST.SCALE`` / ``TEST.MAX_SIZE`` are set
to ``--size`` so the network runs at that size (Detectron's 800 would upsample the small frames), and the
weights are the golden file of ``tests/conftest.py make_weights`` (needs ``../shared``).

Modes, each warmed up by one frame (excluded) and timed over all ``--frames`` frames; ``--repeats`` rounds
are interleaved (so load from other processes hits every mode alike) and the median is printed:

* ``decode only``: ``cv2.VideoCapture.read`` of every frame, no model.
* ``model only (decoding excluded)``: the frames decoded beforehand into memory, then ``predictor.predict``
  one frame per call.
* ``serial``: read a frame, predict, read the next (the decoder and the model take turns).
* ``overlapped``: ``detect_video(predictor, path)``: the decoder thread fills a bounded queue while the
  model runs; the time the model side waited for frames is printed too.
* ``overlapped + outputs``: ``infer_video`` with ``--output-video`` (Detectron drawing, mp4v) and
  ``--json-lines``: what ``detconvert infer --video`` does.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

R50_CONFIG_ID = "12_2017_baselines__e2e_mask_rcnn_R-50-FPN_1x"


def write_video(path: Path, frames: int, size: int) -> None:
    import cv2

    from detconvert.train.shapes import moving_shapes_frames

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (size, size))
    for image, _ in moving_shapes_frames(frames):
        writer.write(image if image.shape[0] == size else cv2.resize(image, (size, size)))
    writer.release()


def load_predictor(model: str, size: int, weights: Path = None):
    import detconvert

    if model == "shapes":
        from detconvert.demo import SHAPES_MODEL

        overrides = [] if size == 128 else [("TEST.SCALE", str(size)), ("TEST.MAX_SIZE", str(size))]
        return detconvert.load_model(weights or SHAPES_MODEL, device="cpu", overrides=overrides)
    if weights is None:
        from tests.conftest import make_weights

        weights = make_weights(R50_CONFIG_ID)
    return detconvert.load_model(weights, device="cpu",
                                 overrides=[("TEST.SCALE", str(size)), ("TEST.MAX_SIZE", str(size))])


def decode_all(path: Path):
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def time_decode(path: Path) -> float:
    start = time.perf_counter()
    n = len(decode_all(path))
    return n / (time.perf_counter() - start)


def time_model_only(predictor, frames) -> float:
    start = time.perf_counter()
    for frame in frames:
        predictor.predict(frame)
    return len(frames) / (time.perf_counter() - start)


def time_serial(predictor, path: Path) -> float:
    import cv2

    capture = cv2.VideoCapture(str(path))
    start = time.perf_counter()
    n = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        predictor.predict(frame)
        n += 1
    capture.release()
    return n / (time.perf_counter() - start)


def time_overlapped(predictor, path: Path):
    from detconvert.inference.video import detect_video

    start = time.perf_counter()
    with detect_video(predictor, path) as run:
        n = sum(1 for _ in run)
    return n / (time.perf_counter() - start), run.stats.wait_seconds


def time_outputs(predictor, path: Path, out_dir: Path) -> float:
    from detconvert.inference.video import infer_video

    start = time.perf_counter()
    summary = infer_video(predictor, path, output_video=out_dir / "drawn.mp4", json_lines=out_dir / "frames.jsonl",
                          progress=False)
    return summary.frames_processed / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("shapes", "r50"), default="shapes")
    parser.add_argument("--weights", type=Path, help="weights instead of the shipped / golden file")
    parser.add_argument("--frames", type=int, default=48, help="frames of the synthetic video (default 48)")
    parser.add_argument("--size", type=int, default=128, help="frame width and height in pixels (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is printed")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = load_predictor(args.model, args.size, args.weights)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "moving_shapes.mp4"
        write_video(path, args.frames, args.size)
        frames = decode_all(path)
        predictor.predict(frames[0])  # warm-up (allocator, kernels), excluded
        results = {k: [] for k in ("decode", "model", "serial", "overlapped", "wait", "outputs")}
        for _ in range(args.repeats):
            results["decode"].append(time_decode(path))
            results["model"].append(time_model_only(predictor, frames))
            results["serial"].append(time_serial(predictor, path))
            fps, wait = time_overlapped(predictor, path)
            results["overlapped"].append(fps)
            results["wait"].append(wait)
            results["outputs"].append(time_outputs(predictor, path, Path(tmp)))
    med = {k: statistics.median(v) for k, v in results.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.model}: {len(frames)} frames {args.size}x{args.size} mp4v, {args.repeats} rounds (median), "
          f"torch {torch.__version__} {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), load average {load:.1f}")
    print(f"  decode only                    {med['decode']:8.1f} frames/s")
    print(f"  model only (decoding excluded) {med['model']:8.2f} frames/s")
    print(f"  serial (decode, then model)    {med['serial']:8.2f} frames/s")
    print(f"  overlapped (detect_video)      {med['overlapped']:8.2f} frames/s   "
          f"(model waited {med['wait'] * 1000:.0f} ms for frames in all)")
    print(f"  overlapped + drawn video + json lines {med['outputs']:8.2f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
