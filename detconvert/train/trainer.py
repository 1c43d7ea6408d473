"""The training loop behind ``tools/train_net_step.py`` / ``detconvert train``.

Detectron.pytorch's ``train_net_step.py`` is the model: aspect-ratio grouped minibatches from a
prefetching ``DataLoader``, the LR of every iteration from Detectron's schedule (``lr_at_iter``), and
``iter_size`` micro-batches whose gradients are *summed* before one SGD step (the LR follows the
per-step batch size, lessons L15). Checkpoints are keyed by parameter name
(:mod:`detconvert.train.checkpoint`); ``--resume`` restores step, schedule LR and momentum, while
``--load_ckpt`` / ``--load_detectron`` load weights only and start a fresh optimizer with the new LR.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from detconvert.data.batching import pad_images
from detconvert.data.samplers import AspectRatioGroupedBatchSampler, DistributedAspectRatioGroupedBatchSampler
from detconvert.errors import ConfigError, DetconvertError, PathLike
from detconvert.inference.precision import PrecisionPolicy, resolve_precision
from detconvert.modeling.detector import DetectronModel, build_model
from detconvert.ops.preprocess import prep_im_for_blob
from detconvert.spec import ArchSpec
from detconvert.train.checkpoint import load_weights_for_finetune, resume, save_checkpoint
from detconvert.train.config import TrainConfig
from detconvert.train.forward import TrainBatch, TrainProposalSettings, init_for_training, training_losses
from detconvert.train.roidb import (
    CocoJsonDataset,
    add_bbox_regression_targets,
    extend_with_flipped_entries,
    filter_for_training,
)
from detconvert.train.sampling import SeededSampling
from detconvert.train.solver import SolverConfig, build_optimizer, lr_at_iter, scale_to_batch_size, set_lr

__all__ = [
    "TrainOptions",
    "TrainResult",
    "RoidbImageDataset",
    "collate_train_batch",
    "build_train_loader",
    "accumulate_gradients",
    "export_detectron_pickle",
    "save_model_final",
    "train",
    "train_launched",
]


# ------------------------------------------------------------------------------------------- data


class RoidbImageDataset(Dataset):
    """Images of a training roidb, prepared as Detectron's ``roi_data/minibatch.get_minibatch`` does.

    Each item picks a training scale (``TRAIN.SCALES``, ``randint`` per image), flips the image when
    the entry is a flipped copy, subtracts ``PIXEL_MEANS`` and resizes (``prep_im_for_blob``). The
    scale draw is seeded by ``(seed, epoch, index)`` so workers are deterministic.

    Args:
        roidb: training roidb (flipped copies included).
        cfg: the training config (scales, max size).
        pixel_means: BGR means.
        seed: the seed of the scale draws.
    """

    def __init__(self, roidb: Sequence[Dict[str, Any]], cfg: TrainConfig, pixel_means: Sequence[float], seed: int = 0):
        self.roidb = list(roidb)
        self.cfg = cfg
        self.pixel_means = tuple(pixel_means)
        self.seed = seed
        self.epoch = 0
        self._images: Dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.roidb)

    def aspect_ratios(self) -> List[float]:
        """``width / height`` of every entry (for aspect grouping)."""
        return [e["width"] / float(e["height"]) for e in self.roidb]

    def _read(self, path: str) -> np.ndarray:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise DetconvertError("training image missing or not readable by OpenCV", path)
        return image

    def __getitem__(self, index: int) -> Dict[str, Any]:
        entry = self.roidb[index]
        image = self._read(entry["image"])
        if image.shape[0] != entry["height"] or image.shape[1] != entry["width"]:
            raise DetconvertError(
                f"image is {image.shape[1]}x{image.shape[0]}, the annotations say {entry['width']}x{entry['height']}",
                entry["image"])
        if entry["flipped"]:
            image = image[:, ::-1, :]
        rng = np.random.RandomState([self.seed, self.epoch, index])
        target = self.cfg.scales[rng.randint(len(self.cfg.scales))]
        prepared, scale = prep_im_for_blob(np.ascontiguousarray(image), target, self.cfg.max_size, self.pixel_means)
        return {"data": torch.from_numpy(np.ascontiguousarray(prepared.transpose(2, 0, 1))), "im_scale": float(scale),
                "roidb": entry}


def collate_train_batch(samples: Sequence[Dict[str, Any]], stride: int = 0) -> TrainBatch:
    """Pad the images of one minibatch together (``FPN.COARSEST_STRIDE`` with FPN) into a :class:`TrainBatch`."""
    return TrainBatch(
        images=pad_images([s["data"] for s in samples], stride),
        im_scales=[s["im_scale"] for s in samples],
        roidb=[s["roidb"] for s in samples],
    )


class _Collate:
    """Picklable collate function (worker processes need one)."""

    def __init__(self, stride: int):
        self.stride = stride

    def __call__(self, samples: Sequence[Dict[str, Any]]) -> TrainBatch:
        return collate_train_batch(samples, self.stride)


def build_train_loader(dataset: RoidbImageDataset, ims_per_batch: int, num_workers: int, stride: int, seed: int = 0,
                       world: Optional[Tuple[int, int]] = None) -> DataLoader:
    """A prefetching ``DataLoader`` over aspect-ratio grouped batches (landscape and portrait never mix).

    With ``world = (world_size, rank)`` each rank draws its own ``ims_per_batch`` images per step
    from one shared, seeded order (rank ``r`` takes chunks ``r, r + R, ...``), so no two ranks train
    on the same chunk in an epoch.
    """
    if world is not None:
        sampler = DistributedAspectRatioGroupedBatchSampler(dataset.aspect_ratios(), ims_per_batch, num_replicas=world[0],
                                                            rank=world[1], shuffle=True, seed=seed)
    else:
        sampler = AspectRatioGroupedBatchSampler(dataset.aspect_ratios(), ims_per_batch, 1, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=_Collate(stride),
                      persistent_workers=False)


def _endless(loader: DataLoader) -> Iterator[TrainBatch]:
    """Batches forever, a new shuffled epoch each pass (``set_epoch``)."""
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        loader.dataset.epoch = epoch
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise DetconvertError("the training set is empty after filtering", "--dataset")
        epoch += 1


# ------------------------------------------------------------------------------------------- step


def accumulate_gradients(loss_fn: Callable[[Any], Dict[str, Tensor]], micro_batches: Sequence[Any]) -> Dict[str, float]:
    """Run ``iter_size`` micro-batches, back-propagating each total loss: gradients are *summed*.

    This is Detectron.pytorch's ``iter_size`` (``for inner_iter in range(iter_size): loss.backward()``);
    the caller zeroes gradients before and steps the optimizer after. Only Python floats are kept, so
    no graph outlives its micro-batch.

    Returns:
        Each loss summed over the micro-batches, plus ``total_loss``.
    """
    sums: Dict[str, float] = {}
    for micro in micro_batches:
        losses = loss_fn(micro)
        total = sum(losses.values())
        total.backward()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        sums["total_loss"] = sums.get("total_loss", 0.0) + float(total.detach())
    return sums


class _LossNet(nn.Module):
    """The training forward as one module call, so ``DistributedDataParallel`` sees it.

    DDP all-reduces gradients only for backward passes of its own ``forward``; the loss functions
    call the model's submodules directly, hence this wrapper.
    """

    def __init__(self, model: DetectronModel, cfg: TrainConfig, settings: TrainProposalSettings,
                 precision: Optional[PrecisionPolicy] = None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.settings = settings
        self.precision = precision

    def forward(self, batch: TrainBatch, rng: SeededSampling) -> Dict[str, Tensor]:
        return training_losses(self.model, batch, self.cfg, rng, self.settings, precision=self.precision)


def _process_group() -> Optional[Tuple[int, int]]:
    """``(world_size, rank)`` of an initialized process group of more than one process, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_world_size(), dist.get_rank()
    return None


# ------------------------------------------------------------------------------------------- options


@dataclass
class TrainOptions:
    """Everything ``train_net_step.py`` takes (flag names in comments).

    Attributes:
        cfg: Detectron YAML path, text or nested dict (``--cfg``); None with ``load_detectron``: the cfg
            embedded in that file (its class names and narrow body too, when it carries a ``'detconvert'`` entry).
        annotations: COCO-format json (``--dataset``).
        image_dir: folder of the images (default: beside the json, ``images/``).
        output_dir: checkpoints go to ``<output_dir>/ckpt`` (``--output_dir``).
        load_detectron: ``model_final.pkl`` to fine-tune from (``--load_detectron``).
        load_ckpt: a detconvert training checkpoint to fine-tune from (``--load_ckpt``).
        resume: continue ``load_ckpt``'s run: step, LR, momentum (``--resume``).
        batch_size: images per step (``--bs``; default ``NUM_GPUS * IMS_PER_BATCH``, LR scaled).
        num_workers: data loader workers (``--nw``).
        iter_size: micro-batches summed per step (``--iter_size``).
        overrides: ``(KEY, VALUE)`` config pairs (``--set``).
        use_tfboard: write TensorBoard scalars (``--use_tfboard``).
        no_save: write no checkpoint (``--no_save``).
        keep_classes: keep these classes of the loaded model (``--keep-classes``).
        source_classes: class names of the ``load_detectron`` model: ``coco*``, ``voc*``, ... or a
            class-list file (``--source-classes``; default: COCO for 81 classes, else ``class_N``).
        num_classes: re-initialise the class layers for this many classes (``--num-classes``).
        max_iter: override ``SOLVER.MAX_ITER`` after scaling (``--max-iter``).
        device: ``cpu`` / ``cuda`` / ``cuda:N`` (``--device``).
        seed: seeds the init, the sampler and the target sampling.
        log_period: a progress line every N iterations (0: none).
        checkpoint_period: a checkpoint every N iterations (0: only at the end).
        clip_grad_norm: clip the gradient norm of each step (not a Detectron option; off by default).
        precision: ``"exact"`` (default, float32) or ``"fast"`` (``--precision``): channels-last and bfloat16
            autocast for the convolutions and linear layers; targets, RoIAlign and losses stay float32.
            Recorded in the checkpoints and ``model_final.pth``.
        body_override: :class:`~detconvert.spec.ResNetSpec` fields replacing the config's (tiny models:
            ``block_counts``, ``stem_out_dim``, ``res2_out_dim``), which Detectron's config cannot express.
        log: where progress lines go.
    """

    cfg: Optional[Union[PathLike, Mapping[str, Any]]]
    annotations: Optional[PathLike] = None
    image_dir: Optional[PathLike] = None
    output_dir: Optional[PathLike] = None
    load_detectron: Optional[PathLike] = None
    load_ckpt: Optional[PathLike] = None
    resume: bool = False
    batch_size: Optional[int] = None
    num_workers: int = 0
    iter_size: int = 1
    overrides: Sequence[Tuple[str, Any]] = ()
    use_tfboard: bool = False
    no_save: bool = False
    keep_classes: Sequence[str] = ()
    source_classes: Optional[str] = None
    num_classes: Optional[int] = None
    max_iter: Optional[int] = None
    device: str = "cpu"
    seed: int = 3
    log_period: int = 20
    checkpoint_period: int = 0
    body_override: Mapping[str, Any] = field(default_factory=dict)
    clip_grad_norm: Optional[float] = None
    precision: str = "exact"
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)


@dataclass
class TrainResult:
    """What :func:`train` did: the trained model (train mode off), per-iteration log, files written."""

    model: DetectronModel
    class_names: List[str]
    cfg: Dict[str, Any]
    history: List[Dict[str, float]]
    checkpoint: Optional[Path]
    start_step: int
    seconds: float
    surgery: List[str] = field(default_factory=list)
    #: ``<output_dir>/model_final.pth``: the trained detector for :func:`detconvert.load_model`.
    model_final: Optional[Path] = None
    #: This process's rank (0 outside a process group): only rank 0 reports.
    rank: int = 0
    #: What the training ran as (:meth:`PrecisionPolicy.describe`): precision, dtype, layout, device.
    precision: Dict[str, Any] = field(default_factory=dict)


def _translated_cfg(options: TrainOptions, num_classes: Optional[int]) -> Dict[str, Any]:
    from detconvert.config import translate_config

    overrides = list(options.overrides)
    if num_classes is not None:
        overrides.append(("MODEL.NUM_CLASSES", str(num_classes)))
    translated = translate_config(options.cfg, overrides=overrides)
    return translated.cfg.to_dict()


def _spec(cfg: Mapping[str, Any], body_override: Mapping[str, Any]) -> ArchSpec:
    from detconvert.config import build_spec

    spec = build_spec(cfg)
    if body_override:
        spec = dataclasses.replace(spec, body=dataclasses.replace(spec.body, **dict(body_override)))
    return spec


def _load_detectron_model(options: TrainOptions) -> Tuple[DetectronModel, List[str], Dict[str, Any]]:
    """Model of ``--load_detectron`` with its own class count (the config's NUM_CLASSES follows the weights)."""
    from detconvert.config import build_spec, translate_config
    from detconvert.io.weights import load_weights
    from detconvert.inference.predictor import default_class_names
    from detconvert.modeling.loading import load_detectron_blobs

    wf = load_weights(options.load_detectron)
    # Without --cfg the weight file's embedded cfg is the training config (read_source takes a .pkl).
    cfg_source = options.cfg if options.cfg is not None else options.load_detectron
    translated = translate_config(cfg_source, weights_cfg_or_blobs=wf, overrides=list(options.overrides))
    cfg = translated.cfg.to_dict()
    spec = build_spec(cfg)
    if options.body_override:
        spec = dataclasses.replace(spec, body=dataclasses.replace(spec.body, **dict(options.body_override)))
    body = _body_of_blobs(wf.blobs, spec)
    if body:
        spec = dataclasses.replace(spec, body=dataclasses.replace(spec.body, **body))
    model = build_model(spec)
    load_detectron_blobs(model, wf.blobs, source=wf.path)
    stored = wf.stored_spec["class_names"] if wf.stored_spec is not None else None
    try:
        if stored and not options.source_classes and len(stored) == spec.num_classes:
            names = list(stored)  # the names the file carries in its 'detconvert' entry
        else:
            names = default_class_names(spec.num_classes, options.source_classes)
    except DetconvertError as exc:
        raise DetconvertError(str(exc), "--source-classes") from None
    if len(names) != spec.num_classes:
        raise DetconvertError(f"names {len(names) - 1} classes + background, the model in {wf.path} predicts "
                              f"{spec.num_classes - 1} + background", "--source-classes")
    return model, names, cfg


_BLOCK_BLOB = re.compile(r"^res([2-5])_(\d+)_branch2a_w$")


def _body_of_blobs(blobs: Mapping[str, np.ndarray], spec: ArchSpec) -> Dict[str, Any]:
    """Body fields the weights fix but the config cannot say: block counts and the stem / res2 widths.

    A ``model_final.pkl`` that detconvert trained with a narrow body (``body_override``, the demo's
    shapes model) says its widths only through its blob shapes; the config alone would build R-50.
    Returns only the fields that differ from ``spec``'s.
    """
    counts: Dict[int, int] = {}
    for name in blobs:
        match = _BLOCK_BLOB.match(name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            counts[stage] = max(counts.get(stage, 0), block + 1)
    found: Dict[str, Any] = {}
    stages = sorted(counts)
    if stages and stages == list(range(2, 2 + len(stages))):
        found["block_counts"] = tuple(counts[s] for s in stages) + tuple(spec.body.block_counts[len(stages):])
    if "conv1_w" in blobs:
        found["stem_out_dim"] = int(np.shape(blobs["conv1_w"])[0])
    if "res2_0_branch2c_w" in blobs:
        found["res2_out_dim"] = int(np.shape(blobs["res2_0_branch2c_w"])[0])
    return {k: v for k, v in found.items() if getattr(spec.body, k) != v}


def _tensorboard(options: TrainOptions):
    if not options.use_tfboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DetconvertError("TensorBoard is not installed (pip install tensorboard); drop --use_tfboard",
                              "--use_tfboard") from None
    return SummaryWriter(str(Path(options.output_dir or ".") / "tb"))


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train(options: TrainOptions) -> TrainResult:
    """Train (or fine-tune) a Detectron e2e R-CNN or RetinaNet on a COCO-format dataset.

    Inside an initialized process group of R processes (``torchrun``, or a ``run_sharded`` worker)
    this is data-parallel training as Detectron's multi-GPU solver: the model is wrapped with
    :func:`~detconvert.parallel.distributed.wrap_ddp`, each rank takes ``batch_size / R`` images
    per step from its shard (losses normalised per rank), gradients are averaged over the ranks,
    and only rank 0 logs and writes checkpoints. Every rank returns the same parameters.

    Raises:
        DetconvertError: bad dataset, weights, checkpoint, flags (``--resume`` without ``--load_ckpt``,
            ``--resume`` with ``--load_detectron``, a class count that does not fit the dataset).
    """
    start_time = time.perf_counter()
    policy = resolve_precision(options.precision, options.device)  # a bad value fails before any data is read
    if options.resume and not options.load_ckpt:
        raise DetconvertError("--resume needs --load_ckpt (the checkpoint to continue)", "--resume")
    if options.resume and options.load_detectron:
        raise DetconvertError("--resume continues a detconvert checkpoint; it cannot start from --load_detectron",
                              "--resume")
    if options.source_classes and not options.load_detectron:
        raise DetconvertError("names the classes of a --load_detectron model; pass --load_detectron",
                              "--source-classes")
    if options.keep_classes and options.num_classes:
        raise DetconvertError("give either --keep-classes or --num-classes, not both", "--keep-classes")
    if options.cfg is None and not options.load_detectron:
        raise DetconvertError("no config: pass --cfg YAML (or --load_detectron PKL, whose embedded cfg is used)",
                              "--cfg")
    if options.annotations is None:
        raise DetconvertError("no training data: pass --dataset <annotations.json>", "--dataset")
    ann = Path(options.annotations)
    image_dir = Path(options.image_dir) if options.image_dir else ann.parent / "images"
    dataset = CocoJsonDataset(str(ann), str(image_dir))

    torch.manual_seed(options.seed)
    surgery_lines: List[str] = []
    if options.load_detectron:
        model, names, cfg = _load_detectron_model(options)
        model, names, cfg, surgery_lines = _class_surgery(model, names, cfg, options, dataset)
    else:
        if options.keep_classes or options.num_classes:
            raise DetconvertError("--keep-classes / --num-classes change a loaded model's classes; "
                                  "pass --load_detectron", "--keep-classes" if options.keep_classes else "--num-classes")
        cfg = _translated_cfg(options, dataset.num_classes)
        model = build_model(_spec(cfg, options.body_override))
        init_for_training(model, seed=options.seed)
        names = list(dataset.classes)
    spec = model.spec
    if spec.num_classes != dataset.num_classes:
        raise DetconvertError(
            f"the model predicts {spec.num_classes} classes (with background), the dataset has {dataset.num_classes}; "
            "pass --num-classes or --keep-classes", str(ann))
    trainable = spec.meta_arch == "retinanet" or (spec.meta_arch == "generalized_rcnn" and spec.rpn is not None
                                                   and spec.box_head is not None)
    if not trainable:
        raise ConfigError("detconvert train trains end-to-end R-CNN models (RPN + box head) and RetinaNet; "
                          f"this config is {spec.meta_arch}/{spec.pipeline}", str(options.cfg or options.load_detectron))

    tcfg = TrainConfig.from_detectron(cfg)
    solver = SolverConfig.from_detectron(cfg.get("SOLVER", {}))
    original_bs = int(cfg.get("NUM_GPUS", 1)) * tcfg.ims_per_batch
    batch_size = options.batch_size or original_bs
    if options.batch_size or options.iter_size != 1:
        solver = scale_to_batch_size(solver, original_bs, batch_size, options.iter_size)
    world = _process_group()
    world_size, rank = world if world is not None else (1, 0)
    if batch_size % world_size:
        raise DetconvertError(f"{batch_size} images per step do not split over {world_size} processes", "--bs")
    # The RPN loss normaliser (FPN.add_fpn_rpn_losses) divides by IMS_PER_BATCH: the images per step
    # of one process (Detectron: per GPU, whose gradients are then averaged).
    tcfg = tcfg.with_(ims_per_batch=batch_size // world_size)
    if options.max_iter is not None:
        solver = solver.with_(max_iter=int(options.max_iter))
    if options.clip_grad_norm:
        solver = solver.with_(clip_grad_norm=float(options.clip_grad_norm))
    proposal_settings = TrainProposalSettings.from_detectron(cfg)

    device = torch.device(options.device)
    model.to(device).train()
    policy.prepare_model(model)
    optimizer = build_optimizer(model, solver)
    start_step = 0
    if options.load_ckpt:
        if options.resume:
            start_step = resume(options.load_ckpt, model, optimizer, solver)
        else:
            load_weights_for_finetune(options.load_ckpt, model)

    # Training roidb (datasets/roidb.combined_roidb_for_training + filter_for_training).
    roidb = dataset.get_roidb(gt_min_area=tcfg.gt_min_area)
    if tcfg.use_flipped:
        extend_with_flipped_entries(roidb, dataset.keypoints)
    roidb = filter_for_training(roidb, tcfg)
    add_bbox_regression_targets(roidb, tcfg)
    if not roidb:
        raise DetconvertError("no image has a usable annotation", str(ann))
    data = RoidbImageDataset(roidb, tcfg, spec.conventions.pixel_means, seed=options.seed)
    stride = spec.fpn.coarsest_stride if spec.fpn is not None else 0
    loader = build_train_loader(data, batch_size // world_size, options.num_workers, stride, seed=options.seed,
                                world=world)
    batches = _endless(loader)
    rng = SeededSampling(options.seed + rank)
    is_main = rank == 0
    writer = _tensorboard(options) if is_main else None
    ckpt_dir = Path(options.output_dir or ".") / "ckpt"
    extra = {"cfg": _jsonable(cfg), "class_names": names, "body_override": dict(options.body_override),
             "precision": policy.describe()}

    net: nn.Module = _LossNet(model, tcfg, proposal_settings, policy)
    if world is not None:
        from detconvert.parallel.distributed import wrap_ddp

        # Some parameters get no gradient in a step (e.g. the mask head without foreground RoIs).
        net = wrap_ddp(net, device, find_unused_parameters=True)

    def loss_fn(batch: TrainBatch) -> Dict[str, Tensor]:
        batch.images = batch.images.to(device)
        # DDP averages the ranks' gradients, as Detectron's multi-GPU solver does.
        return net(batch, rng)

    history: List[Dict[str, float]] = []
    last_ckpt: Optional[Path] = None
    tic = time.perf_counter()
    for step in range(start_step, solver.max_iter):
        lr = lr_at_iter(step, solver)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        sums = accumulate_gradients(loss_fn, [next(batches) for _ in range(options.iter_size)])
        if not math.isfinite(sums["total_loss"]):
            raise DetconvertError(f"loss became {sums['total_loss']} at iteration {step}; lower SOLVER.BASE_LR", "train")
        if solver.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), solver.clip_grad_norm)
        optimizer.step()
        record = {"step": float(step), "lr": lr, **sums, "time": time.perf_counter() - tic}
        history.append(record)
        if writer is not None:
            for key, value in record.items():
                if key != "step":
                    writer.add_scalar(key, value, step)
        done = step + 1
        if is_main and options.log_period and (done % options.log_period == 0 or done == solver.max_iter):
            per_iter = record["time"] / max(done - start_step, 1)
            main = ", ".join(f"{k} {v:.4f}" for k, v in sums.items() if k in ("loss_cls", "loss_bbox", "loss_mask", "loss_kps"))
            options.log(f"iter {done}/{solver.max_iter}  total_loss {sums['total_loss']:.4f} ({main})  lr {lr:.6f}  "
                        f"{per_iter:.3f} s/iter  eta {_format_eta(per_iter * (solver.max_iter - done))}")
        if (is_main and not options.no_save and options.checkpoint_period and done % options.checkpoint_period == 0
                and done < solver.max_iter):
            last_ckpt = ckpt_dir / f"model_step{done}.pth"
            save_checkpoint(last_ckpt, model, optimizer, done, solver, extra)
    model_final: Optional[Path] = None
    # The DDP reducer holds the process group: free it here, before the caller destroys the group.
    del net, loss_fn
    gc.collect()
    if is_main and not options.no_save and solver.max_iter > start_step:
        last_ckpt = ckpt_dir / f"model_step{solver.max_iter}.pth"
        save_checkpoint(last_ckpt, model, optimizer, solver.max_iter, solver, extra)
        model_final = save_model_final(model, names, cfg, Path(options.output_dir or ".") / "model_final.pth",
                                       precision=policy)
    if writer is not None:
        writer.close()
    model.eval()
    return TrainResult(model, names, cfg, history, last_ckpt, start_step, time.perf_counter() - start_time,
                       surgery_lines, model_final, rank, policy.describe())


def train_launched(options: TrainOptions) -> TrainResult:
    """:func:`train`, joining the process group of a ``torchrun`` launch when there is one.

    Under ``torchrun --nproc-per-node N`` every process calls this; they form the group from the
    launcher's environment (gloo on the CPU, nccl with ``--device cuda``, each process on
    ``cuda:<LOCAL_RANK>``), train data-parallel and leave the group together. Without a launcher
    (or with a group already initialized) it is :func:`train`.
    """
    from detconvert.parallel.distributed import torchrun_environment

    if not torchrun_environment() or dist.is_initialized():
        return train(options)
    cuda = torch.device(options.device).type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    try:
        if cuda:
            options = dataclasses.replace(options, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        result = train(options)
        # No rank tears its connections down while another still talks over them.
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def _class_surgery(model: DetectronModel, names: List[str], cfg: Dict[str, Any], options: TrainOptions,
                   dataset: CocoJsonDataset) -> Tuple[DetectronModel, List[str], Dict[str, Any], List[str]]:
    """``--keep-classes`` (rows of the loaded classifier kept) / ``--num-classes`` (class layers reset)."""
    from detconvert.train.surgery import class_indices, keep_classes, reset_classes

    if options.keep_classes:
        rows = class_indices(names, list(options.keep_classes))
        dataset_names = list(dataset.classes)[1:]
        kept = [names[r] for r in rows]
        if sorted(kept) == sorted(dataset_names):
            # The dataset's contiguous class i must take the classifier row of the class of that name.
            rows = [rows[kept.index(n)] for n in dataset_names]
        model, report = keep_classes(model, rows, names)
    elif options.num_classes:
        new_names = list(dataset.classes) if options.num_classes == dataset.num_classes else \
            ["__background__"] + [f"class_{i}" for i in range(1, options.num_classes)]
        model, report = reset_classes(model, options.num_classes, new_names, seed=options.seed)
    else:
        return model, names, cfg, []
    cfg = dict(cfg)
    cfg["MODEL"] = dict(cfg["MODEL"], NUM_CLASSES=model.spec.num_classes)
    return model, list(report.classes), cfg, report.lines()


def save_model_final(model: DetectronModel, class_names: Sequence[str], cfg: Mapping[str, Any], path: PathLike,
                     precision: Optional[PrecisionPolicy] = None) -> Path:
    """Write the trained detector as a ``detconvert weights`` checkpoint (``torch`` layout).

    :func:`detconvert.load_model` rebuilds the network from the stored spec, so a body no Detectron
    key describes (``body_override``) loads too; the class names travel with it. Written atomically.
    """
    from detconvert.export.checkpoint import serialise_state, portable_state_dict
    from detconvert import __version__
    from detconvert.io.atomic import atomic_write
    from detconvert.inference.predictor import CHECKPOINT_FORMAT

    spec_dict = model.spec.to_dict()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "converter_version": __version__,
        "source_name": "detconvert train",
        "kind": "detector",
        "spec": json.dumps(spec_dict),
        "class_names": json.dumps(list(class_names)),
        "conventions": json.dumps(spec_dict["conventions"]),
        "cfg_json": json.dumps(_jsonable(cfg)),
        # How the weights were trained (exact: float32; fast: bfloat16 autocast); inference picks its own.
        "precision": json.dumps((precision or resolve_precision("exact", "cpu")).describe()),
    }
    with atomic_write(path, "wb") as handle:
        handle.write(serialise_state(portable_state_dict(model), metadata, "pth"))
    return Path(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


# ------------------------------------------------------------------------------------------- export


def export_detectron_pickle(model: DetectronModel, cfg_text: str, path: PathLike,
                            class_names: Optional[Sequence[str]] = None, **provenance: Any) -> Path:
    """Write ``model`` as a Detectron ``model_final.pkl``: ``{'blobs': {blob: float32}, 'cfg': yaml, 'detconvert': json}``.

    Blob names come from the model's mapping table (the inverse of the reader), in the Python-2.7
    protocol-2 byte format of Detectron's ``save_object``; the file is written atomically and
    reads back through :func:`detconvert.io.weights.load_weights` / ``load_detectron_blobs``.
    With ``class_names`` the container also carries the ``'detconvert'`` entry (the model's spec, the
    class names and ``provenance``; :mod:`detconvert.io.weights`), which Detectron ignores and which
    lets ``load_model`` / every command load a body no Detectron key describes by path alone.
    """
    from detconvert.io.py2_pickle_writer import Py2PickleWriter
    from detconvert.io.atomic import atomic_write
    from detconvert.io.weights import SPEC_KEY, spec_entry_text

    state = model.state_dict()
    blobs = {blob: state[name].detach().cpu().numpy().astype(np.float32) for name, blob in model.blob_table().items()}
    container: Dict[str, Any] = {"blobs": blobs, "cfg": cfg_text}
    if class_names is not None:
        if len(class_names) != model.spec.num_classes:
            raise DetconvertError(f"{len(class_names)} class names for a model of {model.spec.num_classes} classes "
                                  "(background included)", path)
        container[SPEC_KEY] = spec_entry_text(model.spec.to_dict(), class_names, **provenance)
    with atomic_write(path, "wb") as handle:
        Py2PickleWriter(handle).dump(container)
    return Path(path)
