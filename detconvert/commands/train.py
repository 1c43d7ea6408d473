"""``detconvert train`` (and ``tools/train_net_step.py``): train or fine-tune a Detectron R-CNN.

Flags follow Detectron.pytorch's ``tools/train_net_step.py``; the work is :func:`detconvert.train.trainer.train`.
"""
from __future__ import annotations

import argparse

from detconvert.commands.infer import add_precision_argument, checked_precision, override_pairs
from detconvert.errors import DetconvertError

HELP = "train or fine-tune a Detectron e2e R-CNN on a COCO-format dataset (Detectron's targets, losses, solver)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg", metavar="YAML",
                        help="Detectron config (default with --load_detectron: the cfg embedded in that file)")
    parser.add_argument("--dataset", required=True, metavar="JSON",
                        help="COCO-format annotations; images in --image-dir (default: images/ beside the json)")
    parser.add_argument("--image-dir", "--image_dir", dest="image_dir", metavar="DIR")
    parser.add_argument("--load_detectron", "--load-detectron", metavar="PKL",
                        help="fine-tune from a Detectron model_final.pkl (fresh optimizer, the config's LR)")
    parser.add_argument("--load_ckpt", "--load-ckpt", metavar="PTH",
                        help="a detconvert training checkpoint: fine-tune from it, or continue it with --resume")
    parser.add_argument("--resume", action="store_true",
                        help="continue --load_ckpt's run: step, schedule LR and momentum restored by name")
    parser.add_argument("--bs", type=int, metavar="N", help="images per step (LR and schedule scaled as Detectron.pytorch)")
    parser.add_argument("--nw", type=int, default=0, metavar="N", help="data loader workers (default 0)")
    parser.add_argument("--iter_size", "--iter-size", dest="iter_size", type=int, default=1, metavar="N",
                        help="micro-batches whose gradients are summed per step (default 1)")
    parser.add_argument("--set", dest="set_cfgs", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides, e.g. --set SOLVER.BASE_LR 0.005")
    parser.add_argument("--use_tfboard", "--use-tfboard", action="store_true", help="TensorBoard scalars in OUTPUT_DIR/tb")
    parser.add_argument("--no_save", "--no-save", action="store_true", help="write no checkpoint")
    parser.add_argument("--keep-classes", "--keep_classes", dest="keep_classes", metavar="A,B,...",
                        help="keep these classes of the --load_detectron model (its classifier rows)")
    parser.add_argument("--source-classes", "--source_classes", dest="source_classes", metavar="NAME|FILE",
                        help="class names of the --load_detectron model: coco*, keypoints_coco*, voc* or a class-list "
                             "file (default: COCO's for 81 classes, else class_N)")
    parser.add_argument("--num-classes", "--num_classes", dest="num_classes", type=int, metavar="N",
                        help="re-initialise the class layers for N classes (background included)")
    parser.add_argument("--max-iter", "--max_iter", dest="max_iter", type=int, metavar="N", help="override SOLVER.MAX_ITER")
    parser.add_argument("--output_dir", "--output-dir", dest="output_dir", default="detconvert-train", metavar="DIR",
                        help="checkpoints go to DIR/ckpt (default ./detconvert-train)")
    parser.add_argument("--device", default="cpu", metavar="DEV", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--seed", type=int, default=3, help="seed of init, sampler and target sampling (default 3, Detectron's RNG_SEED)")
    parser.add_argument("--log-period", "--log_period", dest="log_period", type=int, default=20, metavar="N",
                        help="progress line every N iterations (default 20)")
    add_precision_argument(parser, "training (autocast; targets and losses float32)")
    parser.add_argument("--checkpoint-period", "--checkpoint_period", dest="checkpoint_period", type=int, default=0,
                        metavar="N", help="checkpoint every N iterations (default: only at the end)")


def run(args: argparse.Namespace) -> int:
    if args.iter_size < 1:
        raise DetconvertError(f"must be >= 1, got {args.iter_size}", "--iter_size")
    from detconvert.train.trainer import TrainOptions, train_launched  # torch: after the argument checks

    keep = [c.strip() for c in args.keep_classes.split(",") if c.strip()] if args.keep_classes else []
    options = TrainOptions(
        cfg=args.cfg, annotations=args.dataset, image_dir=args.image_dir, output_dir=args.output_dir,
        load_detectron=args.load_detectron, load_ckpt=args.load_ckpt, resume=args.resume, batch_size=args.bs,
        num_workers=args.nw, iter_size=args.iter_size, overrides=override_pairs(args.set_cfgs),
        use_tfboard=args.use_tfboard, no_save=args.no_save, keep_classes=keep, source_classes=args.source_classes,
        num_classes=args.num_classes,
        max_iter=args.max_iter, device=args.device, seed=args.seed, log_period=args.log_period,
        checkpoint_period=args.checkpoint_period, precision=checked_precision(args),
    )
    result = train_launched(options)
    if result.rank != 0:
        return 0
    for line in result.surgery:
        print(f"surgery  {line}")
    steps = len(result.history)
    last = result.history[-1]["total_loss"] if result.history else float("nan")
    print(f"trained  {steps} iterations from step {result.start_step} in {result.seconds:.1f} s; last total_loss {last:.4f}")
    if result.checkpoint is not None:
        print(f"saved    {result.checkpoint}")
    if result.model_final is not None:
        print(f"saved    {result.model_final} (detconvert.load_model / detconvert infer --wts)")
    return 0
