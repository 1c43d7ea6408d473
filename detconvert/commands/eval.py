"""``detconvert eval`` (and ``tools/test_net.py``): run a model over a COCO-format dataset and print its AP.

With ``--results FILE`` an existing COCO results json is evaluated instead (no model needed).
With ``--voc VOCdevkit/VOC2007 --split test`` the dataset is a PASCAL VOC year folder, scored with Detectron's
``voc_eval`` (:mod:`detconvert.evaluation.voc`); ``--results`` is then a comp4 folder or a results json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from detconvert.commands.infer import (
    add_model_arguments,
    add_proposal_source_arguments,
    add_parallel_arguments,
    class_table_from_args,
    load_predictor,
    proposal_source_from_args,
    sharded_predict_paths,
)
from detconvert.errors import DetconvertError

HELP = ("evaluate on a COCO-format dataset (image folder + annotation json) with pycocotools, or on a PASCAL VOC "
        "folder (--voc DIR) with Detectron's voc_eval; or --results FILE")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    group = parser.add_argument_group("dataset and results")
    group.add_argument("--annotations", "--ann", dest="annotations", metavar="JSON",
                       help="COCO-format annotation json (or --voc DIR)")
    group.add_argument("--image_dir", "--image-dir", dest="image_dir", metavar="DIR",
                       help="folder holding the annotated images (file_name is relative to it)")
    group.add_argument("--results", metavar="FILE",
                       help="evaluate this COCO results json instead of running a model (with --voc: a json or a "
                            "folder of Detectron's comp4_det_<split>_<class>.txt files)")
    group.add_argument("--output_dir", "--output-dir", dest="output_dir", default="eval_outputs", metavar="DIR",
                       help="where the results json goes (default: eval_outputs)")
    group.add_argument("--json", dest="json_path", metavar="FILE",
                       help="results json path (default: OUTPUT_DIR/detections_coco.json)")
    group.add_argument("--iou-types", "--iou_types", dest="iou_types", nargs="+",
                       choices=("bbox", "segm", "keypoints"),
                       help="what to evaluate (default: everything the results and annotations have)")
    group.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                       help="no progress bar (it is shown only on a terminal anyway)")
    voc = parser.add_argument_group("PASCAL VOC (Detectron's voc_eval: IoU > 0.5, difficult objects ignored)")
    voc.add_argument("--voc", metavar="DIR",
                     help="a VOC year folder (VOCdevkit/VOC2007: Annotations/, ImageSets/Main/, JPEGImages/) "
                          "instead of --annotations")
    voc.add_argument("--split", metavar="NAME", help="image set: ImageSets/Main/NAME.txt (default test)")
    voc.add_argument("--voc-metric", "--voc_metric", dest="voc_metric", choices=("07", "area"),
                     help="07: VOC2007 11-point AP; area: area under the PR curve "
                          "(default: 07 for years before 2010, as Detectron)")
    voc.add_argument("--classes-map", "--classes_map", dest="classes_map", metavar="FILE",
                     help="'model class = VOC class' lines; default: by name (COCO's airplane, tv, ... included)")
    add_proposal_source_arguments(parser)
    add_parallel_arguments(parser)


def _run_voc(args: argparse.Namespace) -> int:
    from detconvert.evaluation.voc import METRIC_NAMES, evaluate_voc, evaluate_voc_results, voc_image_paths

    for flag, value in (("--annotations", args.annotations), ("--image_dir", args.image_dir),
                        ("--json", args.json_path), ("--iou-types", args.iou_types)):
        if value:
            raise DetconvertError("not used with --voc (boxes only; images come from JPEGImages/, results go to "
                                  "--output-dir)", flag)
    split = args.split or "test"
    if args.results:
        if args.weights:
            raise DetconvertError("give either --results or weights, not both", "--results")
        from detconvert.data.classes import get_class_table

        table = get_class_table(args.dataset) if args.dataset else None
        report = evaluate_voc_results(args.voc, split, args.results, metric=args.voc_metric,
                                      classes_map=args.classes_map, class_table=table)
    else:
        predict_paths = sharded_predict_paths(args)
        if predict_paths is not None:
            from detconvert.parallel.distributed import is_main_process, torchrun_environment

            if torchrun_environment() and not is_main_process():
                predict_paths(voc_image_paths(args.voc, split))
                return 0  # our shard is computed; rank 0 evaluates
            args.device = "cpu"
        from_file = None
        if args.proposals:
            from detconvert.inference.proposals import file_proposal_source

            from_file = file_proposal_source(args.proposals, voc_image_paths(args.voc, split))
        predictor = load_predictor(args)
        report = evaluate_voc(
            predictor, args.voc, split, args.output_dir, metric=args.voc_metric, classes_map=args.classes_map,
            class_table=class_table_from_args(args, predictor), batch_size=args.batch_size, progress=args.progress,
            predict_paths=predict_paths, proposals=proposal_source_from_args(args, predictor, from_file),
        )
    where = f" ({report.output_dir})" if report.output_dir else f" ({args.results})"
    print(f"summary: {report.title} mAP {report.mean_ap * 100:.1f} over {len(report.scored)} classes "
          f"({METRIC_NAMES[report.metric]}){where}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.voc:
        return _run_voc(args)
    for flag, value in (("--split", args.split), ("--voc-metric", args.voc_metric),
                        ("--classes-map", args.classes_map)):
        if value:
            raise DetconvertError("only used with --voc DIR", flag)
    if not args.annotations:
        raise DetconvertError("needs --annotations JSON (a COCO-format dataset) or --voc DIR (a PASCAL VOC folder)")
    if args.results and args.weights:
        raise DetconvertError("give either --results or weights, not both", "--results")
    if not args.results and not args.image_dir:
        raise DetconvertError("needs --image_dir DIR (or --results FILE to evaluate an existing json)")
    from detconvert.evaluation.evaluate import evaluate_dataset, evaluate_results_file  # after the argument checks

    if args.results:
        report = evaluate_results_file(args.results, args.annotations, iou_types=args.iou_types)
    else:
        predict_paths = sharded_predict_paths(args)
        if predict_paths is not None:
            from detconvert.parallel.distributed import is_main_process, torchrun_environment

            if torchrun_environment() and not is_main_process():
                from detconvert.evaluation.coco import load_annotations

                entries = load_annotations(args.annotations).dataset["images"]
                predict_paths([Path(args.image_dir) / e["file_name"] for e in sorted(entries, key=lambda e: e["id"])])
                return 0  # our shard is computed; rank 0 evaluates
            args.device = "cpu"  # the workers compute; this process only needs names and the spec
        from_file = None
        if args.proposals:  # a file that lacks an annotated image fails here, before the weights load
            from detconvert.evaluation.coco import load_annotations
            from detconvert.inference.proposals import file_proposal_source

            entries = load_annotations(args.annotations).dataset["images"]
            from_file = file_proposal_source(args.proposals, [Path(args.image_dir) / e["file_name"] for e in entries])
        predictor = load_predictor(args)
        proposals = proposal_source_from_args(args, predictor, from_file)
        report = evaluate_dataset(
            predictor,
            args.image_dir,
            args.annotations,
            args.output_dir,
            json_path=args.json_path,
            iou_types=args.iou_types,
            batch_size=args.batch_size,
            class_table=class_table_from_args(args, predictor),
            progress=args.progress,
            predict_paths=predict_paths,
            proposals=proposals,
        )
    headline = ", ".join(f"{kind} AP {stats['AP'] * 100:.1f}" for kind, stats in report.stats.items())
    print(f"summary: {headline or 'nothing evaluated'}" + (f" ({report.results_path})" if report.results_path else ""))
    return 0
