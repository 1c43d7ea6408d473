"""``detconvert infer --video``: the shipped shapes model over a synthetic video of moving shapes.

The video (``detconvert.train.shapes.moving_shapes_frames``): image 1 of the demo model's training set (two
circles and a square) with its shapes gliding around a circle of 8 pixels, one turn per 24 frames, fresh
background noise every frame, 128 x 128 at 10 fps, mp4v. Every frame's drawn polygons are the ground truth.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

import detconvert
from detconvert import cli, demo
from detconvert.errors import DetconvertError
from detconvert.inference.video import detect_video
from detconvert.train.shapes import SHAPE_CLASSES, moving_shapes_frames

REPO = Path(__file__).resolve().parent.parent
MODEL = str(demo.SHAPES_MODEL)
NUM_FRAMES, FPS, SIZE = 24, 10.0, 128


def _write_video(path: Path, frames, fourcc: str) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (SIZE, SIZE))
    assert writer.isOpened()
    for image in frames:
        writer.write(image)
    writer.release()


def _read_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (SIZE, SIZE, 3)
        count += 1
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    assert fps == pytest.approx(FPS)
    return count


def _read_lines(path: Path):
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The synthetic video and its per-frame ground-truth masks."""
    root = tmp_path_factory.mktemp("video")
    frames, truth = [], []
    for image, shapes in moving_shapes_frames(NUM_FRAMES):
        frames.append(image)
        truth.append([(s.name, mask_util.decode(mask_util.frPyObjects([list(s.polygon)], SIZE, SIZE))[:, :, 0]
                       .astype(bool)) for s in shapes])
    path = root / "moving_shapes.mp4"
    _write_video(path, frames, "mp4v")
    return root, path, frames, truth


def _best_iou(records, name: str, truth: np.ndarray) -> float:
    best = 0.0
    for r in records:
        if r["score"] < 0.7 or SHAPE_CLASSES[r["category_id"] - 1] != name:
            continue
        mask = mask_util.decode(r["segmentation"]).astype(bool)
        best = max(best, float((mask & truth).sum() / (mask | truth).sum()))
    return best


def test_masks_follow_the_moving_shapes(clip, tmp_path, capsys):
    root, path, _frames, truth = clip
    out_video, out_lines = tmp_path / "drawn.mp4", tmp_path / "frames.jsonl"
    assert cli.main(["infer", "--load_detectron", MODEL, "--video", str(path), "--output-video", str(out_video),
                     "--json-lines", str(out_lines), "--no-progress"]) == 0
    assert f"{NUM_FRAMES} of {NUM_FRAMES} frames processed" in capsys.readouterr().out
    assert _read_frames(out_video) == NUM_FRAMES  # same fps (checked inside), same size, every frame
    lines = _read_lines(out_lines)
    assert [line["frame"] for line in lines] == list(range(NUM_FRAMES))
    assert [line["timestamp"] for line in lines] == pytest.approx([i / FPS for i in range(NUM_FRAMES)])
    assert set(lines[0]["detections"][0]) >= {"image_id", "category_id", "bbox", "score", "segmentation"}
    assert all(r["image_id"] == line["frame"] for line in lines for r in line["detections"])
    for i, line in enumerate(lines):
        half_turn_away = truth[(i + NUM_FRAMES // 2) % NUM_FRAMES]
        for (name, mask), (_, elsewhere) in zip(truth[i], half_turn_away):
            here = _best_iou(line["detections"], name, mask)
            # Follows: it fits this frame's shape, and fits it better than the shape half a turn (16 px) away.
            assert here >= 0.7, f"frame {i} {name}: mask IoU {here:.2f}"
            assert here > _best_iou(line["detections"], name, elsewhere) + 0.2, f"frame {i} {name}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_every_and_max_frames(clip, tmp_path):
    _, path, _, _ = clip
    out_video, out_lines = tmp_path / "every.avi", tmp_path / "every.jsonl"
    assert cli.main(["infer", "--load_detectron", MODEL, "--video", str(path), "--every", "3", "--max-frames", "20",
                     "--batch-size", "2", "--output-video", str(out_video), "--json-lines", str(out_lines)]) == 0
    assert [line["frame"] for line in _read_lines(out_lines)] == [0, 3, 6, 9, 12, 15, 18]
    assert _read_frames(out_video) == 20  # the drawn video keeps every frame read (MJPG for .avi)


def test_library_yields_every_frame_in_order_with_held_detections(clip):
    _, path, _, _ = clip
    predictor = detconvert.load_model(MODEL, device="cpu")
    with detect_video(predictor, path, every=4, max_frames=9, all_frames=True) as run:
        assert (run.info.width, run.info.height, run.info.frame_count) == (SIZE, SIZE, NUM_FRAMES)
        frames = list(run)
    assert [f.index for f in frames] == list(range(9))
    assert [f.processed for f in frames] == [i % 4 == 0 for i in range(9)]
    assert frames[5].detections is frames[4].detections  # held until the next processed frame
    assert run.stats.frames_processed == 3 and run.stats.frames_decoded == 9


def test_truncated_videos(clip, tmp_path, capsys):
    """A truncated mp4 (no index) cannot be opened: one line, exit 2, no output. A truncated AVI decodes up to
    its last good frame: a warning, and outputs that hold exactly those frames."""
    _, path, frames, _ = clip
    cut_mp4 = tmp_path / "cut.mp4"
    cut_mp4.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    outs = tmp_path / "outs"
    assert cli.main(["infer", "--load_detectron", MODEL, "--video", str(cut_mp4), "--output-video",
                     str(outs / "a.mp4"), "--json-lines", str(outs / "a.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(cut_mp4) in err[0] and "cannot open" in err[0]
    assert not outs.exists() or not list(outs.iterdir())

    avi = tmp_path / "full.avi"
    _write_video(avi, frames, "MJPG")
    cut_avi = tmp_path / "cut.avi"
    cut_avi.write_bytes(avi.read_bytes()[: avi.stat().st_size // 2])
    assert cli.main(["infer", "--load_detectron", MODEL, "--video", str(cut_avi), "--output-video",
                     str(outs / "b.mp4"), "--json-lines", str(outs / "b.jsonl")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and f"of the {NUM_FRAMES} frames the container announces" in err[0]
    lines = _read_lines(outs / "b.jsonl")
    assert 0 < len(lines) < NUM_FRAMES and [line["frame"] for line in lines] == list(range(len(lines)))
    assert _read_frames(outs / "b.mp4") == len(lines)
    assert sorted(p.name for p in outs.iterdir()) == ["b.jsonl", "b.mp4", "b.run.json"]  # + run metadata
    assert json.loads((outs / "b.run.json").read_text())["precision"] == "exact"

    with pytest.raises(DetconvertError, match="no such file"):
        detect_video(None, tmp_path / "missing.mp4")
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video\n")
    assert cli.main(["infer", "--load_detectron", MODEL, "--video", str(not_video)]) == 2
    assert "cannot open this file as a video" in capsys.readouterr().err


def test_an_http_stream_and_a_missing_camera(clip, capsys):
    """A URL goes to OpenCV as it is (a loopback HTTP server here); a camera that is not there is one line."""
    import functools
    import http.server
    import threading

    root, path, _, truth = clip

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        predictor = detconvert.load_model(MODEL, device="cpu")
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        with detect_video(predictor, url, max_frames=2) as run:
            frames = list(run)
        assert [f.index for f in frames] == [0, 1]
        names = {predictor.class_names[c] for c, s in zip(frames[0].detections.classes, frames[0].detections.scores)
                 if s >= 0.7}
        assert names == {name for name, _ in truth[0]}
    finally:
        server.shutdown()
        server.server_close()
    assert cli.main(["infer", "--load_detectron", MODEL, "--video", "63"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["detconvert infer: error: 63: OpenCV cannot open camera 63 (no such device, busy, or no permission)"]


def test_bad_flags_are_one_line_errors(clip, tmp_path, capsys):
    _, path, _, _ = clip
    for extra, flag in ((["--every", "0"], "--every"), (["--max-frames", "0"], "--max-frames"),
                        ([str(path)], "--video"), (["--num-processes", "2"], "--video"),
                        (["--output-video", str(tmp_path / "x.gif")], "x.gif"),
                        (["--output-video", str(path)], "overwrite the source"),
                        (["--output-video", str(tmp_path / "o.mp4"), "--json-lines", str(tmp_path / "o.mp4")],
                         "the same file")):
        assert cli.main(["infer", "--load_detectron", MODEL, "--video", str(path), *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err


def test_ctrl_c_keeps_the_outputs_valid(clip, tmp_path):
    """SIGINT mid-run: exit 130, the summary line, and a video and JSON lines holding the frames done so far."""
    _, _, frames, _ = clip
    long_video = tmp_path / "long.mp4"
    _write_video(long_video, frames * 20, "mp4v")  # 480 frames: far more than run before the signal
    out_video, out_lines = tmp_path / "drawn.mp4", tmp_path / "frames.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "detconvert", "infer", "--load_detectron", MODEL, "--video",
                             str(long_video), "--output-video", str(out_video), "--json-lines", str(out_lines)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a suite started in the background (`cmd &` in a script) inherits SIGINT ignored, and
                            # Python then keeps ignoring it: give the child the default a terminal would
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:  # wait for 3 lines in the temp file
            parts = [p for p in tmp_path.iterdir() if p.name.startswith(".frames.jsonl.")]
            if parts and parts[0].read_text().count("\n") >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stdout.startswith("interrupted: "), stdout
    lines = _read_lines(out_lines)
    assert 3 <= len(lines) < 480 and [line["frame"] for line in lines] == list(range(len(lines)))
    assert abs(_read_frames(out_video) - len(lines)) <= 1  # the signal may land between the two writes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


class _FakeCapture:
    """A source that opens and yields ``good`` frames, then fails (``raises``) or ends."""

    def __init__(self, good: int, raises: bool):
        self.good, self.raises, self.index = good, raises, 0

    def isOpened(self):
        return True

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 5.0, cv2.CAP_PROP_FRAME_WIDTH: 8, cv2.CAP_PROP_FRAME_HEIGHT: 6}.get(prop, 0.0)

    def read(self):
        if self.index >= self.good:
            if self.raises:
                raise RuntimeError("bitstream error")
            return False, None
        self.index += 1
        return True, np.full((6, 8, 3), self.index, np.uint8)

    def release(self):
        pass


class _CountingPredictor:
    class_names = ["__background__", "thing"]

    def predict(self, images):
        from detconvert.structures import Detections

        return [Detections(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                           classes=np.zeros(0, np.int64), image_size=image.shape[:2]) for image in images]


def test_a_decoder_failure_keeps_the_frames_before_it(monkeypatch, tmp_path):
    """An exception in the decoder thread after 3 frames: those 3 come out, then one warning; none: one error."""
    import detconvert.inference.video as video

    source = tmp_path / "fake.mp4"
    source.write_bytes(b"\0")
    monkeypatch.setattr(video.cv2, "VideoCapture", lambda target: _FakeCapture(3, raises=True))
    warnings = []
    with detect_video(_CountingPredictor(), source, batch_size=2, warn=warnings.append) as run:
        frames = list(run)
    assert [f.index for f in frames] == [0, 1, 2] and [f.timestamp for f in frames] == [0.0, 0.2, 0.4]
    assert len(warnings) == 1 and "decoding failed after 3 frames (RuntimeError: bitstream error)" in warnings[0]

    monkeypatch.setattr(video.cv2, "VideoCapture", lambda target: _FakeCapture(0, raises=False))
    with pytest.raises(DetconvertError, match="no frame could be decoded"):
        with detect_video(_CountingPredictor(), source) as run:
            list(run)
