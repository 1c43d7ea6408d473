"""Scatter/gather semantics of detconvert.parallel on a simulated device list (no CUDA needed)."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from detconvert.errors import DetconvertError
from detconvert.parallel.scatter_gather import (
    ScatterError,
    gather,
    is_empty_chunk,
    scatter_minibatch,
    scatter_split,
)

CPU = torch.device("cpu")
META = torch.device("meta")


def test_minibatch_scatter_keeps_each_devices_own_shape_and_leaves_cpu_keywords_untouched():
    data = [torch.rand(2, 3, 32, 64), torch.rand(1, 3, 64, 32), torch.rand(3, 3, 96, 96)]
    im_info = [torch.tensor([[32.0, 64.0, 1.0]] * 2), torch.tensor([[64.0, 32.0, 1.0]]), torch.rand(3, 3)]
    roidb = [[{"image": "a"}, {"image": "b"}], [{"image": "c"}], [{}, {}, {}]]
    # 'meta' stands in for "another device": a moved tensor visibly changes device.
    chunks = scatter_minibatch((data,), {"im_info": im_info, "roidb": roidb}, [META] * 3, ("im_info", "roidb"))
    assert len(chunks) == 3
    for i, (args, kwargs) in enumerate(chunks):
        assert args[0].device == META
        assert args[0].shape == data[i].shape
        assert kwargs["im_info"] is im_info[i]
        assert kwargs["roidb"] is roidb[i]


def test_non_cpu_keywords_are_moved_and_containers_rebuilt():
    nested = [{"a": torch.zeros(2), "b": [torch.ones(1), "text"]}]
    (args, kwargs), = scatter_minibatch((), {"x": nested}, [META])
    assert kwargs["x"]["a"].device == META
    assert kwargs["x"]["b"][0].device == META
    assert kwargs["x"]["b"][1] == "text"


def test_fewer_chunks_than_devices_uses_only_the_first_devices():
    chunks = scatter_minibatch(([torch.zeros(1, 3, 8, 8)],), {}, [CPU, META, META, META])
    assert len(chunks) == 1
    assert chunks[0][0][0].device == CPU


@pytest.mark.parametrize(
    "inputs, kwargs, devices, message",
    [
        (([torch.zeros(1)] * 3,), {}, [CPU, CPU], "3 per-device chunks but only 2"),
        ((torch.zeros(2),), {}, [CPU], "'positional input 0' is a Tensor"),
        (([torch.zeros(1)] * 2,), {"im_info": [None]}, [CPU, CPU], "disagree"),
        ((), {}, [CPU], "at least one input"),
    ],
)
def test_malformed_minibatch_inputs_raise_one_line_errors(inputs, kwargs, devices, message):
    with pytest.raises(ScatterError, match=message) as info:
        scatter_minibatch(inputs, kwargs, devices)
    assert isinstance(info.value, DetconvertError) and "\n" not in str(info.value)


def test_empty_chunk_detection():
    assert is_empty_chunk(((torch.zeros(0, 3, 8, 8),), {"im_info": torch.zeros(0, 3)}), ("im_info",))
    assert is_empty_chunk(((), {"data": None, "roidb": []}))
    assert not is_empty_chunk(((torch.zeros(1, 3, 8, 8),), {}))
    # Only cpu keywords: nothing says the chunk holds no work.
    assert not is_empty_chunk(((), {"roidb": []}), ("roidb",))


def test_split_mode_allows_uneven_and_short_batches():
    x = torch.arange(5.0).reshape(5, 1)
    roidb = ["r0", "r1", "r2", "r3", "r4"]
    chunks = scatter_split((x,), {"roidb": roidb, "flag": True}, [CPU] * 4, cpu_keywords=("roidb",))
    assert [c[0][0].shape[0] for c in chunks] == [2, 1, 1, 1]
    assert [c[1]["roidb"] for c in chunks] == [["r0", "r1"], ["r2"], ["r3"], ["r4"]]
    assert all(c[1]["flag"] is True for c in chunks)
    assert torch.equal(torch.cat([c[0][0] for c in chunks]), x)
    # A batch of 2 on 4 devices uses 2 devices.
    assert len(scatter_split((torch.zeros(2, 1),), {}, [CPU] * 4)) == 2
    with pytest.raises(ScatterError, match="cannot split"):
        scatter_split((torch.zeros(4, 1), torch.zeros(3, 1)), {}, [CPU, CPU])


Pair = collections.namedtuple("Pair", "left right")


def test_gather_tensors_dicts_none_numpy_scalars_strings_sequences():
    outputs = [
        {
            "scores": torch.tensor([1.0, 2.0]),
            "loss": torch.tensor(0.5),
            "metrics": {"count": 2, "ratio": np.float32(0.25), "flag": True},
            "boxes": np.zeros((2, 4)),
            "scalar_array": np.array(3.0),
            "name": "dev0",
            "missing": None,
            "pair": Pair(torch.zeros(2, 1), [torch.ones(1)]),
            "maybe": torch.tensor([7.0]),
        },
        {
            "scores": torch.tensor([3.0]),
            "loss": torch.tensor(1.5),
            "metrics": {"count": 1, "ratio": np.float32(0.75), "flag": False},
            "boxes": np.ones((1, 4)),
            "scalar_array": np.array(4.0),
            "name": "dev1",
            "missing": None,
            "pair": Pair(torch.ones(1, 1), [torch.zeros(1)]),
            "maybe": None,
        },
    ]
    merged = gather(outputs, CPU)
    assert torch.equal(merged["scores"], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(merged["loss"], torch.tensor([0.5, 1.5]))  # 0-dim losses unsqueezed
    assert torch.equal(merged["metrics"]["count"], torch.tensor([2, 1]))
    assert torch.allclose(merged["metrics"]["ratio"], torch.tensor([0.25, 0.75]))
    assert merged["metrics"]["flag"].tolist() == [True, False]
    assert isinstance(merged["boxes"], np.ndarray) and merged["boxes"].shape == (3, 4)
    assert merged["boxes"][2].tolist() == [1.0] * 4
    assert merged["scalar_array"].tolist() == [3.0, 4.0]
    assert merged["name"] == ["dev0", "dev1"]
    assert merged["missing"] is None
    assert isinstance(merged["pair"], Pair) and merged["pair"].left.shape == (3, 1)
    assert torch.equal(merged["pair"].right[0], torch.tensor([1.0, 0.0]))
    assert torch.equal(merged["maybe"], torch.tensor([7.0]))  # None entries are dropped


def test_gather_moves_tensors_to_output_device():
    merged = gather([torch.zeros(1), torch.zeros(2)], META)
    assert merged.device == META and merged.shape == (3,)


def test_gather_rejects_inconsistent_outputs():
    with pytest.raises(ScatterError, match="different keys"):
        gather([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}], CPU)
    with pytest.raises(ScatterError, match="different lengths"):
        gather([[torch.zeros(1)], [torch.zeros(1), torch.zeros(1)]], CPU)
    with pytest.raises(ScatterError, match="mix"):
        gather([torch.zeros(1), np.zeros(1)], CPU)
    with pytest.raises(TypeError, match="object"):
        gather([object(), object()], CPU)
