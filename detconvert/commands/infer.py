"""``detconvert infer`` (and ``tools/infer_simple.py``): detect on images, write pictures and COCO json.

Accepts the flags of both Detectron's and Detectron.pytorch's ``tools/infer_simple.py``. The model
arguments (:func:`add_model_arguments`, :func:`load_predictor`) are shared with ``detconvert eval``.
"""
from __future__ import annotations

import argparse
from typing import Any, List, Optional, Sequence, Tuple

from detconvert.errors import DetconvertError

HELP = ("detect on images or folders (Detectron-style pictures and a COCO results json) or on a video, camera "
        "or stream (--video: a drawn video and JSON lines)")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Weights, config, dataset, device and ``--set`` overrides (Detectron and Detectron.pytorch spellings)."""
    group = parser.add_argument_group("model")
    weights = group.add_mutually_exclusive_group()
    weights.add_argument("--load_detectron", "--load-detectron", dest="weights", metavar="PKL",
                         help="Detectron weight file (model_final.pkl) or model-zoo name")
    weights.add_argument("--load_ckpt", "--load-ckpt", dest="weights", metavar="FILE",
                         help="a converted detconvert checkpoint")
    weights.add_argument("--wts", "--weights", dest="weights", metavar="FILE",
                         help="weights, as Detectron's --wts (any of the above)")
    group.add_argument("--cfg", metavar="YAML",
                       help="Detectron config; default: the cfg embedded in the weights")
    group.add_argument("--dataset", metavar="NAME|FILE",
                       help="class names and category ids: coco*, keypoints_coco*, voc* or a class-list file "
                            "(default: the model's own)")
    group.add_argument("--set", dest="set_cfgs", nargs="+", default=[], metavar="KEY VALUE",
                       help="config overrides as KEY VALUE pairs, e.g. --set TEST.SCALE 600")
    group.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:N (default: cuda when available)")
    group.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=1, metavar="N",
                       help="images per forward pass (default 1)")
    add_precision_argument(group)


def add_precision_argument(parser: Any, what: str = "inference") -> None:
    """``--precision exact|fast`` (default exact), shared by infer, eval, train and the benchmark.

    The value is checked by the library (:func:`detconvert.inference.precision.parse_precision`), so a bad one
    is the usual one-line error with exit code 2; no torch import at parse time.
    """
    parser.add_argument("--precision", default="exact", metavar="exact|fast",
                        help=f"exact (default): Detectron's float32 numerics; fast: {what} with channels-last and "
                             "bfloat16 autocast for convolutions and linear layers (CPU with AVX512-BF16/AMX, "
                             "else float32; CUDA bf16/fp16), post-processing float32 (drift measured in README)")


def checked_precision(args: argparse.Namespace) -> str:
    """``args.precision`` checked (``exact`` / ``fast``), before any image or weight is read."""
    from detconvert.inference.precision import parse_precision

    args.precision = parse_precision(getattr(args, "precision", None)).value
    return args.precision


def override_pairs(flat: Sequence[str]) -> List[Tuple[str, str]]:
    """``[K1, V1, K2, V2]`` -> ``[(K1, V1), (K2, V2)]`` (Detectron's ``cfg_from_list`` input)."""
    if len(flat) % 2:
        raise DetconvertError(f"expects KEY VALUE pairs, got an odd number of words: {' '.join(flat)}", "--set")
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def class_table_from_args(args: argparse.Namespace, predictor: Any):
    """The ``--dataset`` table (checked against the model's class count), else the model's own names."""
    from detconvert.data.classes import get_class_table, table_from_names

    if not args.dataset:
        return table_from_names(predictor.class_names)
    table = get_class_table(args.dataset)
    num_classes = predictor.spec.num_classes
    if table.num_classes != num_classes:
        raise DetconvertError(
            f"dataset has {table.num_classes - 1} classes + background, the model "
            f"{num_classes - 1} + background; pick the matching --dataset",
            args.dataset,
        )
    return table


def _load_dataset(args: argparse.Namespace) -> Optional[str]:
    # load_model takes dataset names (Detectron.pytorch's --dataset); a class-list file only
    # renames classes here and is checked against the model's class count afterwards.
    if args.dataset and args.dataset.lower().startswith(("coco", "keypoints_coco", "voc")):
        return args.dataset
    return None


def load_predictor(args: argparse.Namespace) -> Any:
    """``detconvert.load_model`` from parsed model arguments."""
    if not args.weights:
        raise DetconvertError("no weights given: pass --load_detectron PKL, --load_ckpt FILE or --wts FILE")
    from detconvert.data.classes import get_class_table

    overrides = override_pairs(args.set_cfgs)
    checked_precision(args)
    if args.dataset:
        get_class_table(args.dataset)  # fail early on a bad --dataset, before loading weights
    dataset = _load_dataset(args)
    try:
        from detconvert.inference.predictor import load_model
    except ModuleNotFoundError as exc:
        if exc.name == "detconvert.inference.predictor":
            raise DetconvertError("model loading is not available in this build (detconvert.inference.predictor missing)")
        raise
    return load_model(args.weights, args.cfg, dataset=dataset, device=args.device, overrides=overrides,
                      precision=args.precision)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    group = parser.add_argument_group("input and output")
    group.add_argument("im_or_folder", nargs="*", metavar="IMAGE_OR_FOLDER", help="image files and/or folders")
    group.add_argument("--image_dir", "--image-dir", dest="image_dirs", action="append", default=[],
                       metavar="DIR", help="folder of images (repeatable)")
    group.add_argument("--images", nargs="+", default=[], metavar="IMAGE", help="image files")
    group.add_argument("--image-ext", "--image_ext", dest="image_ext", metavar="EXT",
                       help="only this extension inside folders (default: all image types)")
    group.add_argument("--output_dir", "--output-dir", dest="output_dir", default="infer_outputs", metavar="DIR",
                       help="where pictures and the json go (default: infer_outputs)")
    group.add_argument("--output-ext", "--output_ext", dest="output_ext", default="png",
                       choices=("png", "jpg", "jpeg", "pdf"), help="picture format (default png)")
    group.add_argument("--json", dest="json_path", metavar="FILE",
                       help="COCO results json (default: OUTPUT_DIR/detections_coco.json)")
    group.add_argument("--thresh", type=float, default=0.7, help="score threshold for drawing (default 0.7)")
    group.add_argument("--kp-thresh", "--kp_thresh", dest="kp_thresh", type=float, default=2.0,
                       help="keypoint logit threshold for drawing (default 2)")
    group.add_argument("--always-out", "--always_out", dest="always_out", action="store_true",
                       help="write a picture even when nothing reaches --thresh")
    group.add_argument("--classes", metavar="NAMES",
                       help="comma-separated class names (or indices) to keep, e.g. person,dog")
    group.add_argument("--verbose", action="store_true", help="one summary line per image")
    group.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                       help="no progress bar (it is shown only on a terminal anyway)")
    add_proposal_arguments(parser)
    add_parallel_arguments(parser)
    add_video_arguments(parser)


def add_proposal_source_arguments(parser: argparse.ArgumentParser, title: str = "proposals (fast_rcnn models)"):
    """``--proposals FILE`` | ``--rpn-weights RPN.pkl`` (shared by ``infer`` and ``eval``); returns the group."""
    group = parser.add_argument_group(title)
    source = group.add_mutually_exclusive_group()
    source.add_argument("--proposals", metavar="FILE",
                        help="precomputed-proposal models: Detectron's proposal pickle or a detconvert proposal "
                             "json; entries are matched to images by id = image file stem")
    source.add_argument("--rpn-weights", "--rpn_weights", dest="rpn_weights", metavar="RPN.pkl",
                        help="precomputed-proposal models: an RPN-only Detectron weight file whose proposals "
                             "feed the model (same --set overrides and --device)")
    return group


def add_proposal_arguments(parser: argparse.ArgumentParser) -> None:
    """Proposal inputs of precomputed-proposal models and the proposal output of RPN-only models."""
    from detconvert.inference.vis import PROPOSALS_DRAWN  # vis imports cv2 only when it draws

    group = add_proposal_source_arguments(parser, "proposals (fast_rcnn / RPN-only models)")
    group.add_argument("--proposals-out", "--proposals_out", dest="proposals_out", metavar="FILE",
                       help="RPN-only models: proposal file to write (Detectron pickle, or json for *.json; "
                            "default OUTPUT_DIR/proposals.pkl)")
    group.add_argument("--proposals-drawn", "--proposals_drawn", dest="proposals_drawn", type=int,
                       default=PROPOSALS_DRAWN, metavar="N",
                       help=f"RPN-only models: highest-scoring proposals drawn per picture (default {PROPOSALS_DRAWN})")


def proposal_source_from_args(args: argparse.Namespace, predictor: Any, from_file: Any = None):
    """The library's proposal source for ``--proposals`` (``from_file``, already read) or ``--rpn-weights``
    (None without either).

    The model's needs are checked first, so a wrong pairing fails before an RPN file is read.
    """
    from detconvert.inference.proposals import check_proposal_inputs, rpn_proposal_source

    check_proposal_inputs(predictor, bool(args.proposals or args.rpn_weights), getattr(predictor, "source", None))
    if from_file is not None:
        return from_file
    if args.rpn_weights:
        from detconvert.inference.predictor import load_model

        rpn = load_model(args.rpn_weights, device=args.device or predictor.device,
                         overrides=override_pairs(args.set_cfgs), precision=predictor.precision)
        if rpn.spec.pipeline != "rpn_only":
            raise DetconvertError(f"not an RPN-only weight file (it is a {rpn.spec.pipeline} model); "
                                  "--rpn-weights takes e.g. an rpn_R-50-FPN model_final.pkl", args.rpn_weights)
        return rpn_proposal_source(rpn)
    return None


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """``--num-gpus N`` (one process per GPU; torchrun also works) and ``--num-processes N`` (CPU).

    Defined here, not in :mod:`detconvert.parallel.distributed`: that module imports torch, which
    ``--help`` must not pay for.
    """
    group = parser.add_argument_group("scale-out")
    group.add_argument(
        "--num-gpus", type=int, default=None, metavar="N",
        help="processes, one per GPU, each on a shard of the inputs (0 = CPU; default: 1 if CUDA is "
        "available, else 0); under torchrun the launcher's processes are used",
    )
    group.add_argument("--num-processes", "--num_processes", dest="num_processes", type=int, default=1,
                       metavar="N", help="CPU worker processes (gloo) when no GPU is used (default 1)")


def sharded_predict_paths(args: argparse.Namespace):
    """A ``predict_paths`` function for the library when more than one process is asked for, else None.

    Raises:
        DetconvertError: a bad ``--num-processes``, or proposals asked for together with several processes.
    """
    if args.num_processes < 1:
        raise DetconvertError(f"must be >= 1, got {args.num_processes}", "--num-processes")
    from detconvert.parallel.distributed import torchrun_environment
    from detconvert.inference.sharded import ModelLoader, predict_paths

    checked_precision(args)
    if not (args.num_gpus or args.num_processes > 1 or torchrun_environment()):
        return None
    if args.proposals or args.rpn_weights:
        raise DetconvertError("precomputed proposals run in one process; drop --num-processes / --num-gpus",
                              "--proposals" if args.proposals else "--rpn-weights")
    loader = ModelLoader(str(args.weights), args.cfg, _load_dataset(args), tuple(override_pairs(args.set_cfgs)),
                         precision=str(args.precision))
    return lambda paths: predict_paths(loader, paths, num_gpus=args.num_gpus, num_processes=args.num_processes)


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """``--video SRC`` and its outputs (:func:`detconvert.inference.video.infer_video`)."""
    group = parser.add_argument_group("video and streams (instead of images)")
    group.add_argument("--video", metavar="SRC",
                       help="a video file, a camera index (0) or a stream URL (rtsp://, http://) that "
                            "cv2.VideoCapture opens; decoded in a background thread")
    group.add_argument("--output-video", "--output_video", dest="output_video", metavar="OUT.mp4",
                       help="the video drawn Detectron-style, same fps and size (codec by extension: mp4v for "
                            ".mp4/.m4v/.mov/.mkv, MJPG for .avi); written to a temp file, renamed at the end")
    group.add_argument("--json-lines", "--json_lines", dest="json_lines", metavar="FILE",
                       help="one JSON line per processed frame: frame index, timestamp (s), detections in the "
                            "COCO result fields (image_id = frame index)")
    group.add_argument("--every", type=int, default=1, metavar="N",
                       help="run the model on every N-th frame (default 1); the drawn video keeps every frame, "
                            "showing the latest detections")
    group.add_argument("--max-frames", "--max_frames", dest="max_frames", type=int, metavar="N",
                       help="stop after N frames of the source")
    group.add_argument("--fourcc", metavar="CODE", help="codec of --output-video, e.g. mp4v, MJPG, XVID")


def run_video(args: argparse.Namespace) -> int:
    """``infer --video``: one library call (:func:`detconvert.inference.video.infer_video`); exit 130 after Ctrl-C."""
    if [*args.im_or_folder, *args.image_dirs, *args.images]:
        raise DetconvertError("give images or --video, not both", "--video")
    if args.proposals or args.rpn_weights or args.proposals_out:
        raise DetconvertError("video runs models with their own RPN; precomputed proposals are for image folders",
                              "--video")
    if args.num_gpus or args.num_processes != 1:
        raise DetconvertError("video runs in one process (frames arrive in order); drop --num-processes / "
                              "--num-gpus", "--video")
    for flag, value in (("--every", args.every), ("--max-frames", args.max_frames), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise DetconvertError(f"must be >= 1, got {value}", flag)
    from detconvert.inference.video import infer_video, parse_source

    parse_source(args.video)  # a missing file fails before the weights load
    predictor = load_predictor(args)
    summary = infer_video(
        predictor, args.video, output_video=args.output_video, json_lines=args.json_lines, every=args.every,
        max_frames=args.max_frames, batch_size=args.batch_size, thresh=args.thresh, kp_thresh=args.kp_thresh,
        classes=[c for c in args.classes.split(",") if c.strip()] if args.classes else None,
        class_table=class_table_from_args(args, predictor), fourcc=args.fourcc, progress=args.progress,
    )
    print(summary.format_line())
    return 130 if summary.interrupted else 0


def run(args: argparse.Namespace) -> int:
    if args.video is not None:
        return run_video(args)
    checked_precision(args)
    inputs = [*args.im_or_folder, *args.image_dirs, *args.images]
    if not inputs:
        raise DetconvertError("no images given: pass IMAGE_OR_FOLDER, --image_dir DIR, --images FILE ... or --video SRC")
    if args.proposals_drawn < 0:
        raise DetconvertError(f"must be >= 0, got {args.proposals_drawn}", "--proposals-drawn")
    from detconvert.inference.runner import collect_images, infer_images  # cv2, torch: after the argument checks

    images = collect_images(inputs, args.image_ext)  # missing paths and empty folders fail before the weights load
    predict_paths = sharded_predict_paths(args)
    if predict_paths is not None:
        from detconvert.parallel.distributed import is_main_process, torchrun_environment

        if torchrun_environment() and not is_main_process():
            predict_paths(collect_images(inputs, args.image_ext))  # compute our shard; rank 0 writes
            return 0
        args.device = "cpu"  # the workers compute; this process only needs names and the spec
    from_file = None
    if args.proposals:  # a file that lacks an image fails here, before the weights load
        from detconvert.inference.proposals import file_proposal_source

        from_file = file_proposal_source(args.proposals, images)
    predictor = load_predictor(args)
    proposals = proposal_source_from_args(args, predictor, from_file)
    summary = infer_images(
        predictor,
        inputs,
        args.output_dir,
        ext=args.output_ext,
        thresh=args.thresh,
        kp_thresh=args.kp_thresh,
        always_out=args.always_out,
        classes=[c for c in args.classes.split(",") if c.strip()] if args.classes else None,
        json_path=args.json_path,
        verbose=args.verbose,
        progress=args.progress,
        batch_size=args.batch_size,
        image_ext=args.image_ext,
        class_table=class_table_from_args(args, predictor),
        predict_paths=predict_paths,
        proposals=proposals,
        proposals_out=args.proposals_out,
        proposals_drawn=args.proposals_drawn,
    )
    skipped = f", {len(summary.skipped)} skipped" if summary.skipped else ""
    written = (f"{summary.num_proposals} proposals in {summary.proposals_path}" if summary.proposals_path
               else f"{summary.num_detections} detections in {summary.json_path}")
    print(f"{len(summary.images)} images{skipped}: {len(summary.pictures)} pictures in {args.output_dir}, {written}")
    return 0
