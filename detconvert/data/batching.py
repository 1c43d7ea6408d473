"""Per-device batching: pad each device's images to its own size, rounded up to the coarsest stride.

Detectron pads a minibatch to the largest image in it, rounded up to ``FPN.COARSEST_STRIDE`` when
FPN is on (``utils/blob.py::im_list_to_blob`` / ``get_max_shape``), zero-filled at the bottom and
right; C4 models are not rounded. Detectron.pytorch's ``roi_data/loader.py::collate_minibatch``
does this per GPU chunk, so a device holding portrait images is not padded to the width of
another device's landscape ones. :func:`collate_minibatch` builds exactly the per-device lists
that :class:`detconvert.parallel.DataParallel` (minibatch mode) consumes.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
from torch.utils.data import default_collate

T = TypeVar("T")
ImageLike = Union[torch.Tensor, np.ndarray]


def padded_size(height: int, width: int, stride: int = 0) -> Tuple[int, int]:
    """``(height, width)`` rounded up to a multiple of ``stride`` (no rounding for 0 or 1).

    Detectron: ``im_list_to_blob`` with ``FPN.COARSEST_STRIDE`` (32 for R-CNN FPN, 128 for RetinaNet).
    """
    if stride and stride > 1:
        return int(math.ceil(height / stride) * stride), int(math.ceil(width / stride) * stride)
    return int(height), int(width)


def pad_images(images: Sequence[ImageLike], stride: int = 0) -> torch.Tensor:
    """Stack ``[C, H, W]`` images of different sizes into one zero-padded ``[N, C, H, W]`` blob.

    Images are placed at the top-left; the blob size is the largest height and width, each
    rounded up to ``stride`` (:func:`padded_size`).

    Args:
        images: ``[C, H, W]`` tensors or numpy arrays with the same channel count and dtype.
        stride: ``FPN.COARSEST_STRIDE`` for FPN models, 0 for C4 models.
    """
    if not images:
        raise ValueError("pad_images needs at least one image")
    tensors = [torch.as_tensor(im) for im in images]
    for t in tensors:
        if t.dim() != 3 or t.shape[0] != tensors[0].shape[0]:
            raise ValueError(f"images must be [C, H, W] with the same C; got {[tuple(x.shape) for x in tensors]}")
    height, width = padded_size(max(t.shape[1] for t in tensors), max(t.shape[2] for t in tensors), stride)
    blob = tensors[0].new_zeros((len(tensors), tensors[0].shape[0], height, width))
    for i, t in enumerate(tensors):
        blob[i, :, : t.shape[1], : t.shape[2]] = t
    return blob


def split_into_chunks(items: Sequence[T], chunk_size: int) -> List[List[T]]:
    """Consecutive chunks of ``chunk_size`` items; only the last may be shorter."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [list(items[i : i + chunk_size]) for i in range(0, len(items), chunk_size)]


def collate_minibatch(
    samples: Sequence[Mapping[str, Any]],
    ims_per_device: int,
    stride: int = 0,
    image_key: str = "data",
    raw_keys: Sequence[str] = ("roidb",),
) -> Dict[str, List[Any]]:
    """Collate dataset samples into per-device chunks: ``{key: [chunk 0 value, chunk 1 value, ...]}``.

    The samples are cut into consecutive chunks of ``ims_per_device`` (the batch samplers of
    :mod:`detconvert.data.samplers` order them so each chunk has one orientation). In each chunk the
    ``image_key`` images are padded together (:func:`pad_images`), ``raw_keys`` stay plain Python
    lists (a roidb is not a tensor), every other key is ``default_collate``-d. The result feeds
    ``DataParallel(..., minibatch=True)`` directly: ``model(**collate_minibatch(...))``.

    Args:
        samples: dicts with the same keys; ``sample[image_key]`` is a ``[C, H, W]`` image.
        ims_per_device: images per device chunk (Detectron's ``TRAIN.IMS_PER_BATCH``).
        stride: padding multiple (``FPN.COARSEST_STRIDE`` with FPN, 0 otherwise).
        image_key: the key of the image.
        raw_keys: keys kept as lists of the samples' values.
    """
    if not samples:
        raise ValueError("collate_minibatch needs at least one sample")
    keys = list(samples[0])
    for s in samples:
        if set(s) != set(keys):
            raise ValueError(f"samples have different keys: {sorted(keys)} vs {sorted(s)}")
    batch: Dict[str, List[Any]] = {k: [] for k in keys}
    for chunk in split_into_chunks(samples, ims_per_device):
        for key in keys:
            values = [s[key] for s in chunk]
            if key == image_key:
                batch[key].append(pad_images(values, stride))
            elif key in raw_keys:
                batch[key].append(values)
            else:
                batch[key].append(default_collate(values))
    return batch
