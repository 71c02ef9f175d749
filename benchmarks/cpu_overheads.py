"""Benchmark: CPU costs every training and validation batch pays, each against the way the suite did it before,
in the same run.

    python benchmarks/cpu_overheads.py [--threads 1] [--batch 16] [--classes 7] [--size 128] [--repeats 20]
                                       [--depth 60]

* ``label map``: ``logits.argmax(1)`` against :func:`lightning_wsss.tensors.channel_argmax` (``max(1).indices``,
  the same indices) on ``[batch, classes, size, size]`` logits: every validation batch, CAM label map and walk
  ends in one.
* ``IoU update``: :class:`lightning_wsss.metrics.SegmentationIoU` updated with torchmetrics' own argument check
  (``validate_args=True``, one ``torch.unique`` per tensor) against the metric's default (its own range check only).
* ``sample seed``: a training sample's RNG reseeding (``TransformedDataset``) with ``torch.manual_seed`` against
  ``torch.default_generator.manual_seed``, called ``--depth`` frames down the stack as inside Lightning's loops
  (``torch.manual_seed`` formats the stack to queue the accelerators' seeds).
* ``stem max pool`` (forward) and ``... + backward``: the ResNet stem's 3x3 stride-2 max pool on
  ``[batch, 32, size * 7 / 16, size * 7 / 16]`` (``test_resnet`` on ``size * 7 / 8`` crops), ``nn.MaxPool2d``
  against :class:`lightning_wsss.models.pooling.ChannelsLastMaxPool2d`.

Medians of ``--repeats`` calls after one warm-up; the results of each pair are checked equal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, List, Tuple


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _at_depth(depth: int, fn: Callable[[], object]) -> object:
    return fn() if depth <= 0 else _at_depth(depth - 1, fn)


def measure(args: argparse.Namespace) -> List[Tuple[str, float, float]]:
    """``[(name, before ms, after ms)]`` for the five pairs."""
    import torch

    from lightning_wsss.metrics import SegmentationIoU
    from lightning_wsss.tensors import channel_argmax

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(args.batch, args.classes, args.size, args.size, generator=generator)
    target = torch.randint(0, args.classes, (args.batch, args.size, args.size), generator=generator)
    if not torch.equal(logits.argmax(1), channel_argmax(logits, 1)):
        raise AssertionError("channel_argmax differs from argmax")
    rows = [("label map", _median_ms(lambda: logits.argmax(1), args.repeats),
             _median_ms(lambda: channel_argmax(logits, 1), args.repeats))]

    preds = channel_argmax(logits, 1)
    checked, unchecked = SegmentationIoU(args.classes, validate_args=True), SegmentationIoU(args.classes)
    rows.append(("IoU update", _median_ms(lambda: checked.update(preds, target), args.repeats),
                 _median_ms(lambda: unchecked.update(preds, target), args.repeats)))
    if not torch.equal(checked.compute(), unchecked.compute()):
        raise AssertionError("the two IoU metrics differ")

    def reseed(seed_fn: Callable[[int], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.random.fork_rng(devices=[]):
                seed_fn(1234)
                return torch.rand(3)
        return lambda: _at_depth(args.depth, run)

    old, new = reseed(torch.manual_seed), reseed(torch.default_generator.manual_seed)
    if not torch.equal(old(), new()):
        raise AssertionError("the two reseeds draw different numbers")
    rows.append(("sample seed", _median_ms(old, args.repeats), _median_ms(new, args.repeats)))
    forward, both = _max_pools(args)
    return rows + [("stem max pool", *forward), ("stem max pool + backward", *both)]


def _max_pools(args: argparse.Namespace) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """Forward ms and forward + backward ms of ``nn.MaxPool2d`` and of ``ChannelsLastMaxPool2d`` (outputs and
    gradients checked equal)."""
    import torch
    from torch import nn

    from lightning_wsss.models.pooling import ChannelsLastMaxPool2d

    side = args.size * 7 // 16
    features = torch.randn(args.batch, 32, side, side, generator=torch.Generator().manual_seed(1)).relu()
    grads = []

    def step(pool: nn.Module, leaf: "torch.Tensor") -> None:
        leaf.grad = None
        pool(leaf).sum().backward()

    forward, both, outputs = [], [], []
    for pool in (nn.MaxPool2d(3, 2, 1), ChannelsLastMaxPool2d(3, 2, 1)):
        with torch.no_grad():
            forward.append(_median_ms(lambda: pool(features), args.repeats))
            outputs.append(pool(features))
        leaf = features.clone().requires_grad_()
        both.append(_median_ms(lambda: step(pool, leaf), args.repeats))
        grads.append(leaf.grad)
    if not (torch.equal(*outputs) and torch.equal(*grads)):
        raise AssertionError("the two max pools differ")
    return (forward[0], forward[1]), (both[0], both[1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--depth", type=int, default=60)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} threads={args.threads} batch={args.batch} classes={args.classes} "
          f"size={args.size} depth={args.depth} load={os.getloadavg()[0]:.2f}, median of {args.repeats}")
    print(f"{'operation':<24} {'before ms':>10} {'after ms':>9} {'speed-up':>9}")
    for name, before, after in measure(args):
        print(f"{name:<24} {before:>10.3f} {after:>9.3f} {before / after:>8.1f}x")


if __name__ == "__main__":
    main()
