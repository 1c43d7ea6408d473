"""DataParallel end to end on a simulated device list (several CPU "devices"), no CUDA needed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detconvert.data.batching import collate_minibatch
from detconvert.data.samplers import AspectRatioGroupedBatchSampler
from detconvert.parallel import DataParallel, ScatterError, mean_over_devices

CPU = torch.device("cpu")


class RecordingModel(nn.Module):
    """Returns per-image scores and a 0-dim loss computed inside the replica; records what it saw."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(2.0))
        self.calls = []

    def forward(self, data, im_info=None, roidb=None):
        self.calls.append({"shape": tuple(data.shape), "im_info": im_info, "roidb": roidb})
        scores = data.mean(dim=(1, 2, 3)) * self.weight
        return {
            "scores": scores,
            "losses": {"loss": (scores**2).sum()},
            "metrics": {"images": data.shape[0]},
            "name": f"{data.shape[2]}x{data.shape[3]}",
            "masks": None,
        }


def _chunks():
    torch.manual_seed(0)
    return [torch.rand(2, 3, 32, 64), torch.rand(1, 3, 64, 32), torch.rand(3, 3, 96, 96)]


def test_each_device_gets_its_own_size_and_outputs_are_gathered():
    model = RecordingModel()
    data = _chunks()
    im_info = [torch.rand(len(d), 3) for d in data]
    roidb = [[{"id": i}] * len(d) for i, d in enumerate(data)]
    wrapped = DataParallel(model, device_ids=[CPU] * 4, cpu_keywords=("im_info", "roidb"))
    out = wrapped(data, im_info=im_info, roidb=roidb)

    assert [c["shape"] for c in model.calls] == [tuple(d.shape) for d in data]
    assert all(c["im_info"] is im_info[i] and c["roidb"] is roidb[i] for i, c in enumerate(model.calls))
    expected_scores = torch.cat([d.mean(dim=(1, 2, 3)) * 2.0 for d in data])
    torch.testing.assert_close(out["scores"], expected_scores)
    expected_losses = torch.stack([((d.mean(dim=(1, 2, 3)) * 2.0) ** 2).sum() for d in data])
    torch.testing.assert_close(out["losses"]["loss"], expected_losses)
    assert out["metrics"]["images"].tolist() == [2, 1, 3]
    assert out["name"] == ["32x64", "64x32", "96x96"]
    assert out["masks"] is None


def test_one_chunk_for_four_devices():
    model = RecordingModel()
    data = torch.rand(2, 3, 16, 16)
    out = DataParallel(model, device_ids=[CPU] * 4)([data])
    assert len(model.calls) == 1
    torch.testing.assert_close(out["scores"], data.mean(dim=(1, 2, 3)) * 2.0)


def test_empty_chunk_is_skipped_and_reported_as_none_per_chunk():
    model = RecordingModel()
    data = [torch.rand(2, 3, 16, 16), torch.zeros(0, 3, 16, 16), torch.rand(1, 3, 8, 8)]
    wrapped = DataParallel(model, device_ids=[CPU] * 3)
    out = wrapped(data)
    assert [c["shape"][0] for c in model.calls] == [2, 1]
    assert out["scores"].shape == (3,)

    per_chunk = DataParallel(model, device_ids=[CPU] * 3, batch_outputs=False)(data)
    assert len(per_chunk) == 3 and per_chunk[1] is None
    torch.testing.assert_close(per_chunk[2]["scores"], data[2].mean(dim=(1, 2, 3)) * 2.0)

    with pytest.raises(ScatterError, match="all 2 per-device chunks are empty"):
        wrapped([torch.zeros(0, 3, 4, 4), torch.zeros(0, 3, 4, 4)])


def test_gradients_flow_back_to_the_module_like_an_unwrapped_run():
    data = _chunks()
    model = RecordingModel()
    out = DataParallel(model, device_ids=[CPU] * 3)(data)
    out["losses"]["loss"].sum().backward()
    wrapped_grad = model.weight.grad.clone()

    reference = RecordingModel()
    sum(reference(d)["losses"]["loss"] for d in data).backward()
    torch.testing.assert_close(wrapped_grad, reference.weight.grad)


def test_mean_over_devices_averages_float_losses_only():
    reduced = mean_over_devices({"losses": {"a": torch.tensor([1.0, 3.0])}, "count": torch.tensor([1, 2])})
    assert reduced["losses"]["a"].item() == 2.0
    assert reduced["count"].tolist() == [1, 2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA default")
def test_without_cuda_the_default_is_a_plain_call():
    model = RecordingModel()
    data = torch.rand(2, 3, 8, 8)
    sentinel = DataParallel(model, minibatch=False)
    assert sentinel.devices == []
    out = sentinel(data)
    assert out["losses"]["loss"].dim() == 0  # the module's own output, not gathered
    out = DataParallel(model)([data, data[:1]])  # minibatch: one plain call per chunk
    assert out["scores"].shape == (3,) and len(model.calls) == 3


def test_split_mode_on_simulated_devices():
    model = RecordingModel()
    data = torch.rand(5, 3, 8, 8)
    out = DataParallel(model, device_ids=[CPU] * 4, minibatch=False)(data)
    assert [c["shape"][0] for c in model.calls] == [2, 1, 1, 1]
    torch.testing.assert_close(out["scores"], data.mean(dim=(1, 2, 3)) * 2.0)


def test_mixed_device_types_are_refused():
    model = RecordingModel()
    wrapped = DataParallel(model, device_ids=[CPU, torch.device("meta")])
    with pytest.raises(ScatterError, match="distinct CUDA devices"):
        wrapped([torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)])


def test_sampler_collate_and_data_parallel_together():
    """A loader pipeline: aspect-grouped batches, per-device padding, one chunk per device."""
    rng = np.random.default_rng(3)
    sizes = [(int(h), int(w)) for h, w in rng.integers(20, 90, size=(11, 2))]
    dataset = [{"data": torch.rand(3, h, w), "roidb": {"index": i}} for i, (h, w) in enumerate(sizes)]
    sampler = AspectRatioGroupedBatchSampler([w / h for h, w in sizes], ims_per_device=2, num_devices=2, seed=1)
    model = RecordingModel()
    wrapped = DataParallel(model, device_ids=[CPU] * 2, cpu_keywords=("roidb",))
    seen = []
    for batch in sampler:
        inputs = collate_minibatch([dataset[i] for i in batch], ims_per_device=2, stride=32)
        out = wrapped(**inputs)
        assert out["scores"].shape == (len(batch),)
        for blob, roidb in zip(inputs["data"], inputs["roidb"]):
            assert blob.shape[2] % 32 == 0 and blob.shape[3] % 32 == 0
            seen.extend(r["index"] for r in roidb)
    assert sorted(seen) == list(range(11))
