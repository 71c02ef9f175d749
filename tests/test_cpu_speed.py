"""CPU speed-ups that must not change a number: channel_argmax, the channels-last max pool, the IoU metric's own
argument check and the dataset's CPU-only reseeding (their timings: benchmarks/cpu_overheads.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_wsss.metrics import SegmentationIoU
from lightning_wsss.models.backbones import build_backbone
from lightning_wsss.models.deeplab import build_deeplab
from lightning_wsss.models.pooling import ChannelsLastMaxPool2d, use_channels_last_max_pools
from lightning_wsss.tensors import channel_argmax

from conftest import run_script


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8, torch.int64])
@pytest.mark.parametrize("shape,dim", [((4, 5, 9, 7), 1), ((5, 9, 7), 0), ((6, 11), 1), ((11, 6), 0)])
def test_channel_argmax_is_argmax_with_ties(dtype, shape, dim):
    values = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(0)).to(dtype)  # many ties
    assert torch.equal(channel_argmax(values, dim), values.argmax(dim))
    assert torch.equal(channel_argmax(values.transpose(-1, -2), dim), values.transpose(-1, -2).argmax(dim))
    if dtype.is_floating_point:
        values.view(-1)[::5] = float("nan")
        assert torch.equal(channel_argmax(values, dim), values.argmax(dim))


def _pool_pair(pool: nn.Module, fast: nn.Module, features: torch.Tensor):
    outputs, grads = [], []
    upstream = None
    for module in (pool, fast):
        leaf = features.clone().requires_grad_()
        out = module(leaf)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)) if upstream is None else upstream
        out.backward(upstream)
        outputs.append(out)
        grads.append(leaf.grad)
    return outputs, grads


@pytest.mark.parametrize("settings", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, stride=2),
                                      dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)])
def test_channels_last_max_pool_equals_max_pool_forward_and_backward(settings):
    features = torch.randn(2, 6, 13, 11, generator=torch.Generator().manual_seed(1)).relu()  # ReLU zeros: ties
    features[0, 0, :4, :4] = 1.0  # ties between positive values too
    (out, fast_out), (grad, fast_grad) = _pool_pair(nn.MaxPool2d(**settings), ChannelsLastMaxPool2d(**settings),
                                                    features)
    assert torch.equal(out, fast_out) and torch.equal(grad, fast_grad)
    assert fast_out.is_contiguous()  # handed back in the input's layout


def test_channels_last_max_pool_passes_other_inputs_through():
    fast = ChannelsLastMaxPool2d(3, 2, 1)
    channels_last = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(fast(channels_last), nn.MaxPool2d(3, 2, 1)(channels_last))
    with_indices = ChannelsLastMaxPool2d(2, 2, return_indices=True)
    values, indices = with_indices(torch.randn(1, 2, 4, 4))
    assert values.shape == indices.shape == (1, 2, 2, 2)
    three_d = torch.randn(2, 8, 8)
    assert torch.equal(fast(three_d), nn.MaxPool2d(3, 2, 1)(three_d))


def test_max_pools_replaced_at_any_depth_and_state_dicts_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    use_channels_last_max_pools(model)
    pool = model[1][1]
    assert type(pool) is ChannelsLastMaxPool2d and pool.ceil_mode and pool.kernel_size == 3
    assert model.state_dict().keys() == before.keys()
    deeplab = build_deeplab("deeplabv3plus", "tu-test_resnet", 3, decoder_channels=16)
    backbone = build_backbone("test_resnet")
    for built in (deeplab, backbone):
        pools = [type(m) for m in built.modules() if isinstance(m, nn.MaxPool2d)]
        assert pools and all(p is ChannelsLastMaxPool2d for p in pools)


def test_iou_metric_still_rejects_out_of_range_values_without_torchmetrics_check():
    metric = SegmentationIoU(3)
    assert metric.validate_args is False
    with pytest.raises(ValueError, match=r"prediction values \[5\] are outside the class range 0..2"):
        metric.update(torch.tensor([[0, 5]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="differs from target shape"):
        metric.update(torch.tensor([[0, 1]]), torch.tensor([0, 1]))


def test_cpu_overheads_benchmark_runs():
    repo = Path(__file__).resolve().parents[1]
    code, out, err = run_script(repo / "benchmarks" / "cpu_overheads.py", "--batch", "2", "--size", "32",
                                "--repeats", "1", "--depth", "3", cwd=repo)
    assert code == 0, err[-2000:]
    rows = [line for line in out.splitlines() if line.endswith("x")]
    assert [row.rsplit(None, 3)[0] for row in rows] == ["label map", "IoU update", "sample seed", "stem max pool",
                                                        "stem max pool + backward"]
