"""Video and stream inference: :func:`detect_video` yields per-frame detections, :func:`infer_video` writes them.

::

    import detconvert
    from detconvert.inference.video import detect_video

    predictor = detconvert.load_model("model_final.pkl")
    with detect_video(predictor, "traffic.mp4", every=2) as frames:   # or 0 (a camera), "rtsp://..."
        print(frames.info)                                            # fps, size, frame count
        for frame in frames:                                          # FrameResult, in frame order
            print(frame.index, frame.timestamp, len(frame.detections))

**Decoding** runs in a background thread that fills a bounded queue (OpenCV and torch release the GIL), so
the model never waits on the decoder unless decoding is slower than the model; :attr:`VideoRun.stats`
says how long the model side waited. ``every=N`` runs the model on frames 0, N, 2N, ... (the others are
only grabbed, or delivered with the latest detections when ``all_frames=True``, which is what a drawn
output video at the source frame rate needs); ``max_frames`` stops after that many frames of the source;
``batch_size`` frames go through each forward pass.

**A video that ends early.** OpenCV reports a truncated or corrupt file as an early end of stream: when
the container announced more frames than could be decoded, a warning says where decoding stopped and the
results before it stand. A source that opens but yields no frame at all, or that OpenCV cannot open,
is a one-line :class:`~detconvert.errors.DetconvertError`. FFmpeg's own log lines are silenced
(``OPENCV_FFMPEG_LOGLEVEL=-8`` unless set), since these messages replace them.

**Outputs** (:func:`infer_video`): a video drawn as Detectron draws pictures (:mod:`detconvert.inference.vis`),
same frame rate and size as the source, and a JSON-lines file with one line per processed frame
(``{"frame": i, "timestamp": seconds, "detections": [COCO result records with image_id = i]}``). Both
are written to a temp file in the target folder and renamed when the run ends, also on Ctrl-C or a decode
error mid-way (the files then hold every frame processed so far, and the video is checked to read back).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from detconvert.data.classes import ClassTable, table_from_names
from detconvert.errors import DetconvertError, PathLike
from detconvert.io.atomic import discard, publish, temp_beside
from detconvert.inference import vis
from detconvert.inference.results import detections_to_coco, run_metadata, write_run_metadata
from detconvert.inference.runner import filter_classes, resolve_class_filter
from detconvert.structures import Detections

__all__ = ["VideoInfo", "FrameResult", "VideoRun", "VideoSummary", "detect_video", "infer_video", "open_video",
           "parse_source", "VideoFileWriter", "JsonLinesWriter", "VIDEO_FOURCC"]

#: Codec per output extension: codecs the pip OpenCV (headless) build writes without extra libraries.
VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
#: Output frame rate when the source does not say its own (some cameras and streams).
FALLBACK_FPS = 30.0
_END = object()

Log = Callable[[str], None]


def _stderr_warning(message: str) -> None:
    print(f"detconvert: warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class VideoInfo:
    """What the source says about itself.

    Attributes:
        source: as given (path, URL or device index).
        fps: frames per second (0.0 when the source does not say).
        width, height: frame size in pixels.
        frame_count: frames the container announces; None for streams and cameras.
    """

    source: str
    fps: float
    width: int
    height: int
    frame_count: Optional[int]


@dataclass
class FrameResult:
    """One frame of the source and its detections.

    Attributes:
        index: frame number in the source (0-based).
        timestamp: seconds from the start (``index / fps``; the decoder's clock when fps is unknown).
        image: the decoded BGR ``uint8`` frame.
        detections: the model's detections on it (``processed``), else the latest processed frame's.
        processed: whether the model ran on this frame (``every`` and ``all_frames``).
    """

    index: int
    timestamp: float
    image: np.ndarray
    detections: Optional[Detections]
    processed: bool = True


@dataclass
class VideoStats:
    """Counters of a :class:`VideoRun` (seconds are wall-clock, measured by the consumer)."""

    frames_decoded: int = 0  # frames read from the source (grabbed or decoded)
    frames_processed: int = 0  # frames the model ran on
    model_seconds: float = 0.0  # inside predictor.predict
    wait_seconds: float = 0.0  # waiting for the decoder (near 0 when decoding keeps up)
    ended_early: Optional[str] = None  # the warning when the source ended before its announced length


def parse_source(source: Union[str, int, PathLike]) -> Union[int, str]:
    """What ``cv2.VideoCapture`` gets: a camera index for digits, a URL as it is, else an existing file.

    Raises:
        DetconvertError: a missing file or a folder (one line).
    """
    if isinstance(source, int):
        return source
    text = str(source)
    if text.isdigit():
        return int(text)  # a camera index, as cv2.VideoCapture takes it
    if "://" in text:
        return text  # rtsp://, http://, file://: let OpenCV/FFmpeg open it
    path = Path(text)
    if not path.exists():
        raise DetconvertError("no such file (a video file, a camera index or an rtsp:// / http:// URL)", text)
    if path.is_dir():
        raise DetconvertError("is a directory, not a video (use --image_dir for folders of images)", text)
    return text


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own WARN lines while probing backends (V4L2, FFmpeg) are replaced by our one-line error."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging.setLogLevel(level)


def open_video(source: Union[str, int, PathLike]) -> Tuple[Any, VideoInfo]:
    """Open ``source`` with ``cv2.VideoCapture``; returns ``(capture, info)``.

    Raises:
        DetconvertError: a missing file, a folder, or a source OpenCV cannot open (one line).
    """
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # our messages replace FFmpeg's (read at first open)
    target = parse_source(source)
    with _quiet_opencv():
        capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        capture.release()
        if isinstance(target, int):
            why = f"OpenCV cannot open camera {target} (no such device, busy, or no permission)"
        elif "://" in target:
            why = "OpenCV cannot open this stream (unreachable, refused, or a protocol or codec this build lacks)"
        else:
            why = "OpenCV cannot open this file as a video (not a video, truncated, or an unsupported codec)"
        raise DetconvertError(why, str(source))
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    info = VideoInfo(
        source=str(source),
        fps=fps if math.isfinite(fps) and fps > 0 else 0.0,
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        frame_count=count if count > 0 and not isinstance(target, int) else None,
    )
    return capture, info


class _Decoder(threading.Thread):
    """Reads frames into a bounded queue: ``(index, timestamp, frame or None, processed)``, then ``_END``."""

    def __init__(self, capture: Any, info: VideoInfo, every: int, max_frames: Optional[int], all_frames: bool,
                 queue_size: int):
        super().__init__(name="detconvert-video-decoder", daemon=True)
        self.capture, self.info, self.every, self.max_frames, self.all_frames = capture, info, every, max_frames, all_frames
        self.frames: "queue.Queue[Any]" = queue.Queue(maxsize=queue_size)
        self.stop_event = threading.Event()
        self.read = 0
        self.error: Optional[BaseException] = None

    def _put(self, item: Any) -> bool:
        while not self.stop_event.is_set():
            try:
                self.frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            index = 0
            while not self.stop_event.is_set() and (self.max_frames is None or index < self.max_frames):
                wanted = index % self.every == 0
                if wanted or self.all_frames:
                    ok, frame = self.capture.read()
                else:
                    ok, frame = self.capture.grab(), None  # skip the colour conversion of unused frames
                if not ok:
                    break
                self.read = index + 1
                if self.info.fps > 0:
                    stamp = index / self.info.fps
                else:
                    stamp = float(self.capture.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000.0
                if (wanted or self.all_frames) and not self._put((index, stamp, frame, wanted)):
                    return
                index += 1
        except BaseException as exc:  # reported by the consumer, in its thread
            self.error = exc
        finally:
            self._put(_END)


class VideoRun:
    """Iterator of :class:`FrameResult` over a video source (see :func:`detect_video`); a context manager.

    Attributes:
        info: the :class:`VideoInfo` (known as soon as the source is open).
        stats: :class:`VideoStats`, updated while iterating.
    """

    def __init__(self, predictor: Any, source: Union[str, int, PathLike], *, every: int = 1,
                 max_frames: Optional[int] = None, batch_size: int = 1, all_frames: bool = False,
                 queue_size: Optional[int] = None, warn: Optional[Log] = None):
        if every < 1:
            raise DetconvertError(f"must be >= 1, got {every}", "--every")
        if max_frames is not None and max_frames < 1:
            raise DetconvertError(f"must be >= 1, got {max_frames}", "--max-frames")
        if batch_size < 1:
            raise DetconvertError(f"must be >= 1, got {batch_size}", "--batch-size")
        if getattr(predictor, "needs_proposals", False):
            raise DetconvertError("this model reads precomputed proposals (it has no RPN); video needs a model "
                                  "with an RPN", "--video")
        self.predictor, self.every, self.batch_size = predictor, every, batch_size
        self.warn = warn or _stderr_warning
        self.capture, self.info = open_video(source)
        self.stats = VideoStats()
        size = queue_size or max(4, 2 * batch_size * (every if all_frames else 1))
        self._decoder = _Decoder(self.capture, self.info, every, max_frames, all_frames, size)
        self._decoder.start()
        self._ready: List[FrameResult] = []
        self._held: Optional[Detections] = None
        self._done = False
        self._closed = False

    @property
    def expected_frames(self) -> Optional[int]:
        """Frames of the source this run will read (None when the source does not say and no max is set)."""
        counts = [n for n in (self.info.frame_count, self._decoder.max_frames) if n is not None]
        return min(counts) if counts else None

    @property
    def expected_processed(self) -> Optional[int]:
        """Frames the model will run on, when known (for progress bars)."""
        total = self.expected_frames
        return None if total is None else -(-total // self.every)

    def __iter__(self) -> "VideoRun":
        return self

    def __next__(self) -> FrameResult:
        while not self._ready:
            if self._done:
                raise StopIteration
            self._fill()
        return self._ready.pop(0)

    def _next_item(self) -> Any:
        start = time.perf_counter()
        try:
            while True:  # short timeouts keep the wait interruptible by Ctrl-C
                try:
                    return self._decoder.frames.get(timeout=0.1)
                except queue.Empty:
                    continue
        finally:
            self.stats.wait_seconds += time.perf_counter() - start

    def _fill(self) -> None:
        """Read up to ``batch_size`` frames to process (and the skipped ones between), run the model once."""
        pending: List[Tuple[int, float, np.ndarray, bool]] = []
        wanted = 0
        while wanted < self.batch_size:
            item = self._next_item()
            if item is _END:
                self._done = True
                break
            pending.append(item)
            wanted += item[3]
        if pending:
            images = [frame for _, _, frame, is_wanted in pending if is_wanted]
            start = time.perf_counter()
            dets = self.predictor.predict(images) if images else []
            self.stats.model_seconds += time.perf_counter() - start
            results = iter(dets)
            for index, stamp, frame, is_wanted in pending:
                if is_wanted:
                    self._held = next(results)
                self._ready.append(FrameResult(index, stamp, frame, self._held, is_wanted))
            self.stats.frames_processed += len(images)
        self.stats.frames_decoded = self._decoder.read
        if self._done:
            self._finish()

    def _finish(self) -> None:
        decoder = self._decoder
        decoder.join(timeout=5.0)
        if decoder.read == 0:
            why = f" ({type(decoder.error).__name__}: {decoder.error})" if decoder.error is not None else ""
            raise DetconvertError(f"no frame could be decoded (empty, truncated or not a video){why}",
                                  self.info.source)
        if decoder.error is not None:  # the frames before it stand, as for a video that ends early
            self.stats.ended_early = (f"{self.info.source}: decoding failed after {decoder.read} frames "
                                      f"({type(decoder.error).__name__}: {decoder.error}); the results cover "
                                      f"frames 0-{decoder.read - 1}")
            self.warn(self.stats.ended_early)
            return
        count = self.info.frame_count
        stopped_by_us = decoder.max_frames is not None and decoder.read >= decoder.max_frames
        if count is not None and not stopped_by_us and decoder.read < count - max(1, count // 100):
            self.stats.ended_early = (f"{self.info.source}: decoding stopped after {decoder.read} of the {count} "
                                      "frames the container announces (truncated or corrupt video?); the "
                                      f"results cover frames 0-{decoder.read - 1}")
            self.warn(self.stats.ended_early)

    def close(self) -> None:
        """Stop the decoder thread and release the source (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._decoder.stop_event.set()
        self._decoder.join(timeout=5.0)
        if not self._decoder.is_alive():  # never release a capture a stuck read still uses
            self.capture.release()

    def __enter__(self) -> "VideoRun":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort when a caller forgets close()
        with contextlib.suppress(Exception):
            self.close()


def detect_video(
    predictor: Any,
    source: Union[str, int, PathLike],
    *,
    every: int = 1,
    max_frames: Optional[int] = None,
    batch_size: int = 1,
    all_frames: bool = False,
    queue_size: Optional[int] = None,
    warn: Optional[Log] = None,
) -> VideoRun:
    """Detect on a video file, camera or stream; iterate the result for one :class:`FrameResult` per frame.

    Args:
        predictor: a :class:`~detconvert.inference.predictor.Predictor` (anything with ``predict(list of
            BGR arrays)``).
        source: a video file, a camera index (``0`` or ``"0"``) or a URL ``cv2.VideoCapture`` opens
            (``rtsp://``, ``http://``).
        every: run the model on every N-th frame (0, N, 2N, ...).
        max_frames: stop after this many frames of the source (None: until it ends).
        batch_size: frames per forward pass.
        all_frames: also yield the frames between processed ones (``processed=False``, carrying the
            latest detections); otherwise those are only grabbed, not decoded to images.
        queue_size: decoded frames buffered ahead of the model (default ``2 * batch_size`` frames, at least 4).
        warn: receives the early-end warning (default: stderr).

    Returns:
        A :class:`VideoRun` (iterable, ``info`` and ``stats``; use it as a context manager or ``close()``).

    Raises:
        DetconvertError: a source that cannot be opened (one line); while iterating, a source that
            yields no frame at all.
    """
    return VideoRun(predictor, source, every=every, max_frames=max_frames, batch_size=batch_size,
                    all_frames=all_frames, queue_size=queue_size, warn=warn)


# ---------------------------------------------------------------------------------------------------
# atomic outputs


def _count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        count = 0
        while capture.grab():
            count += 1
        return count
    finally:
        capture.release()


class VideoFileWriter:
    """A video written to a temp file beside ``path``; :meth:`finish` checks it reads back, then renames it.

    The codec follows the extension (:data:`VIDEO_FOURCC`: ``mp4v`` for .mp4/.m4v/.mov/.mkv, ``MJPG`` for
    .avi) unless ``fourcc`` is given.
    """

    def __init__(self, path: PathLike, fps: float, size: Tuple[int, int], fourcc: Optional[str] = None):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        code = fourcc or VIDEO_FOURCC.get(suffix)
        if code is None:
            raise DetconvertError(f"unsupported video extension '{suffix or '(none)'}' (use "
                                  f"{', '.join(VIDEO_FOURCC)}, or pass --fourcc)", self.path)
        if len(code) != 4:
            raise DetconvertError(f"a FourCC code has 4 characters, got {code!r}", "--fourcc")
        self.fourcc, self.fps, self.size = code, fps, size
        self.tmp = temp_beside(self.path, suffix)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*code), fps, size)
        self.frames = 0
        if not self.writer.isOpened():
            self.abort()
            raise DetconvertError(f"OpenCV cannot write {code} video here (try .mp4 with mp4v or .avi with MJPG)",
                                  self.path)

    def write(self, image: np.ndarray) -> None:
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size)  # a stream that changes size mid-way: keep the container's
        self.writer.write(image)
        self.frames += 1

    def finish(self) -> Path:
        """Close, check the file decodes to as many frames as written, rename it into place."""
        self.writer.release()
        if self.frames == 0:
            self.abort()
            raise DetconvertError("no frame was written; no video left behind", self.path)
        readable = _count_frames(self.tmp)
        if readable != self.frames:
            self.abort()
            raise DetconvertError(f"the {self.fourcc} video written reads back as {readable} frames, not "
                                  f"{self.frames}; try another --fourcc or extension", self.path)
        return publish(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.release()
        discard(self.tmp)


class JsonLinesWriter:
    """One JSON object per line in a temp file beside ``path`` (flushed per line), renamed by :meth:`finish`."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.tmp = temp_beside(self.path)
        self.handle = open(self.tmp, "w", encoding="utf-8")
        self.lines = 0

    def write(self, record: Dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        self.lines += 1

    def finish(self) -> Path:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        return publish(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.handle.close()
        discard(self.tmp)


# ---------------------------------------------------------------------------------------------------
# the whole run


@dataclass
class VideoSummary:
    """What :func:`infer_video` did."""

    info: VideoInfo
    frames_read: int = 0
    frames_processed: int = 0
    num_detections: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    wait_seconds: float = 0.0
    output_video: Optional[Path] = None
    video_frames: int = 0
    json_lines: Optional[Path] = None
    #: ``<json lines stem>.run.json`` beside them: precision, dtype, layout, device, weights, counts.
    run_metadata_path: Optional[Path] = None
    interrupted: bool = False
    warnings: List[str] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        """Processed frames per wall-clock second (decoding, model, drawing and writing included)."""
        return self.frames_processed / self.seconds if self.seconds > 0 else 0.0

    def format_line(self) -> str:
        outputs = [f"{self.output_video} ({self.video_frames} frames at {self.info.fps or FALLBACK_FPS:g} fps)"
                   if self.output_video else None,
                   f"{self.json_lines} ({self.frames_processed} lines)" if self.json_lines else None]
        written = ", ".join(o for o in outputs if o) or "no output files"
        stop = "interrupted: " if self.interrupted else ""
        return (f"{stop}{self.frames_processed} of {self.frames_read} frames processed in {self.seconds:.1f} s "
                f"({self.frames_per_second:.1f} frames/s), {self.num_detections} detections -> {written}")


def _progress_bar(total: Optional[int], enabled: Optional[bool]):
    from tqdm import tqdm

    enabled = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, disable=not enabled, unit="frame", desc="detconvert video")


def infer_video(
    predictor: Any,
    source: Union[str, int, PathLike],
    *,
    output_video: Optional[PathLike] = None,
    json_lines: Optional[PathLike] = None,
    every: int = 1,
    max_frames: Optional[int] = None,
    batch_size: int = 1,
    thresh: float = 0.7,
    kp_thresh: float = 2.0,
    classes: Optional[Sequence[Union[str, int]]] = None,
    class_table: Optional[ClassTable] = None,
    fourcc: Optional[str] = None,
    progress: Optional[bool] = None,
    warn: Optional[Log] = None,
    on_frame: Optional[Callable[[FrameResult], None]] = None,
) -> VideoSummary:
    """Run :func:`detect_video` and write the drawn video and/or JSON lines; Ctrl-C stops cleanly.

    Args:
        predictor, source, every, max_frames, batch_size: as :func:`detect_video`.
        output_video: the drawn video (every frame of the source up to the last one read, at its frame
            rate and size; frames the model skipped show the latest detections). Written atomically.
        json_lines: one line per processed frame: ``{"frame", "timestamp", "detections"}``, the
            detections as COCO result records (``image_id`` = frame index). Written atomically.
        thresh, kp_thresh: drawing thresholds (the JSON keeps every detection).
        classes: keep only these classes (names or contiguous indices), in both outputs.
        class_table: class names and category ids (default: ``predictor.class_names``).
        fourcc: the output codec (default by extension, :data:`VIDEO_FOURCC`).
        progress: tqdm bar with frames/s and ETA (when the frame count is known); None: only on a terminal.
        warn: warnings (default: stderr).
        on_frame: called with each :class:`FrameResult` after it is written.

    Returns:
        A :class:`VideoSummary`; ``interrupted`` is True after Ctrl-C (``KeyboardInterrupt``), in
        which case the outputs hold every frame handled before it.

    Raises:
        DetconvertError: a source that cannot be opened or yields no frame, an output the codec cannot
            write. An error after some frames were handled leaves valid outputs for those frames.
    """
    warn = warn or _stderr_warning
    table = class_table or table_from_names(predictor.class_names)
    keep = resolve_class_filter(classes, table)
    keypoint_names = table.keypoint_names or vis.COCO_KEYPOINT_NAMES
    if output_video is not None:  # fail on the extension before opening anything
        suffix = Path(output_video).suffix.lower()
        if fourcc is None and suffix not in VIDEO_FOURCC:
            raise DetconvertError(f"unsupported video extension '{suffix or '(none)'}' (use "
                                  f"{', '.join(VIDEO_FOURCC)}, or pass --fourcc)", output_video)
    outputs = [Path(o).resolve() for o in (output_video, json_lines) if o is not None]
    if len(set(outputs)) < len(outputs):
        raise DetconvertError("--output-video and --json-lines name the same file", json_lines)
    if not isinstance(source, int) and Path(str(source)).exists() and Path(str(source)).resolve() in outputs:
        raise DetconvertError("an output would overwrite the source video; pick another name", source)
    warnings: List[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        warn(message)

    start = time.perf_counter()
    run = detect_video(predictor, source, every=every, max_frames=max_frames, batch_size=batch_size,
                       all_frames=output_video is not None, warn=note)
    summary = VideoSummary(info=run.info, warnings=warnings)
    video: Optional[VideoFileWriter] = None
    lines: Optional[JsonLinesWriter] = None
    bar = None
    try:
        if output_video is not None:
            fps = run.info.fps
            if fps <= 0:
                fps = FALLBACK_FPS
                note(f"{run.info.source}: the source does not say its frame rate; the video is written at {fps:g} fps")
            video = VideoFileWriter(output_video, fps, (run.info.width, run.info.height), fourcc)
        if json_lines is not None:
            lines = JsonLinesWriter(json_lines)
        bar = _progress_bar(run.expected_processed, progress)
        held: Optional[Detections] = None  # the latest processed frame's detections (drawn until the next)
        try:
            for frame in run:
                if frame.processed:
                    held = filter_classes(frame.detections, keep)
                    records = detections_to_coco(held, frame.index, table)
                    summary.num_detections += len(records)
                    if lines is not None:
                        lines.write({"frame": frame.index, "timestamp": round(frame.timestamp, 6),
                                     "detections": records})
                    bar.update(1)
                if video is not None:
                    video.write(frame.image if held is None else vis.draw_detections(
                        frame.image, held, table.names, thresh=thresh, kp_thresh=kp_thresh,
                        keypoint_names=keypoint_names))
                if on_frame is not None:
                    on_frame(frame)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            summary.frames_read = run.stats.frames_decoded
            summary.frames_processed = run.stats.frames_processed
            summary.model_seconds, summary.wait_seconds = run.stats.model_seconds, run.stats.wait_seconds
            run.close()
    except BaseException:
        # Keep what was handled so far valid (a decode error mid-way, a second Ctrl-C); nothing handled: no files.
        if bar is not None:
            bar.close()
        _finish_outputs(summary, video, lines, predictor)
        raise
    bar.close()
    _finish_outputs(summary, video, lines, predictor)
    summary.seconds = time.perf_counter() - start
    return summary


def _finish_outputs(summary: VideoSummary, video: Optional[VideoFileWriter], lines: Optional[JsonLinesWriter],
                    predictor: Any = None) -> None:
    """Rename what holds at least one frame into place; remove empty temp files; the JSON lines get their run
    metadata (precision, device, weights) beside them."""
    if video is not None and video.tmp.exists():
        if video.frames:
            summary.output_video = video.finish()
            summary.video_frames = video.frames
        else:
            video.abort()
    if lines is not None and lines.tmp.exists():
        if lines.lines:
            summary.json_lines = lines.finish()
            summary.run_metadata_path = write_run_metadata(summary.json_lines, run_metadata(
                predictor, results=summary.json_lines.name, frames=summary.frames_processed,
                detections=summary.num_detections))
        else:
            lines.abort()
