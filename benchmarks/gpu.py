"""GPU throughput of the suite's heavy parts, printed as Markdown with the device named.

* segmenter training: images/s of DeepLabV3+ (ResNet-50, OS 16, 21 classes) training steps (forward, pixel
  cross-entropy, backward, SGD step) on random 512 px batches, in fp32 and in bf16 autocast + channels-last;
* CAM extraction: images/s of ``CAMClassifier.compute_cams`` (ResNet-50, OS 16, scales 1.0/0.5/1.5/2.0 + flip,
  3 present classes) on 512 px images, fp32 and bf16 autocast;
* random walk: seconds for ``random_walk`` (sparse and shift) on one 512 x 512 map, 21 channels, radius 5 (34
  offsets), beta 8, 256 steps (psa's log_t 8).

Ratios against fp32 / sparse are in the same run. ``--device cpu`` runs the same code on the CPU (a smoke run). The networks start from random weights (speed only).

    python benchmarks/gpu.py [--batch 16] [--steps 20] [--size 512] [--out RESULTS.md]
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

NUM_CLASSES = 21
DEVICE = "cuda"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], steps: int, warmup: int) -> float:
    """Seconds per call of ``fn`` (CUDA-synchronised), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def autocast(bf16: bool):
    return torch.autocast(DEVICE, dtype=torch.bfloat16) if bf16 else nullcontext()


def segmenter_step_fn(batch: int, size: int, bf16: bool, channels_last: bool) -> Callable[[], None]:
    """One DeepLabV3+ training step on a fixed random batch."""
    from lightning_wsss.tasks import DeepLabSegmenter

    task = DeepLabSegmenter(num_classes=NUM_CLASSES, encoder="resnet50").to(DEVICE).train()
    images = torch.randn(batch, 3, size, size, device=DEVICE)
    masks = torch.randint(0, NUM_CLASSES, (batch, size, size), device=DEVICE)
    if channels_last:
        task = task.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(task.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(bf16):
            loss = F.cross_entropy(task(images), masks, ignore_index=255)
        loss.backward()
        optimizer.step()

    return step


def cam_fn(batch: int, size: int, bf16: bool) -> Callable[[], None]:
    """Multi-scale + flip CAMs of 3 present classes for a fixed random batch."""
    from lightning_wsss.tasks import CAMClassifier

    task = CAMClassifier(num_classes=NUM_CLASSES, backbone="resnet50", cam_scales=(1.0, 0.5, 1.5, 2.0)).to(DEVICE).eval()
    images = torch.randn(batch, 3, size, size, device=DEVICE)
    class_ids = torch.tensor([[1, 5, 12]] * batch, device=DEVICE)

    def run() -> None:
        with torch.no_grad(), autocast(bf16):
            task.compute_cams(images, class_ids)

    return run


def walk_fn(size: int, method: str) -> Callable[[], None]:
    """The random walk on one size x size map."""
    from lightning_wsss.refine import affinity_from_features, neighbor_offsets, random_walk

    generator = torch.Generator().manual_seed(0)
    offsets = neighbor_offsets(5).to(DEVICE)
    coarse = torch.randn(1, 16, size // 8, size // 8, generator=generator)
    features = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).to(DEVICE)
    aff = affinity_from_features(features, offsets)
    cams = torch.rand(1, NUM_CLASSES, size, size, generator=generator).to(DEVICE)
    return lambda: random_walk(cams, aff, offsets, beta=8.0, log_t=8, method=method)


def measure(args: argparse.Namespace) -> List[Dict[str, object]]:
    rows: List[Dict[str, object]] = []
    for name, bf16, channels_last in [("fp32", False, False), ("bf16-mixed + channels-last", True, True)]:
        seconds = timed(segmenter_step_fn(args.batch, args.size, bf16, channels_last), args.steps, args.warmup)
        rows.append({"what": f"segmenter training, {name}", "value": args.batch / seconds, "unit": "images/s"})
    for name, bf16 in [("fp32", False), ("bf16-mixed", True)]:
        seconds = timed(cam_fn(args.batch, args.size, bf16), args.steps, args.warmup)
        rows.append({"what": f"CAM extraction (4 scales + flip), {name}", "value": args.batch / seconds,
                     "unit": "images/s"})
    for method in ("sparse", "shift"):
        seconds = timed(walk_fn(args.size, method), 3, 1)
        rows.append({"what": f"random walk {args.size}x{args.size}, {method}, 256 steps", "value": seconds,
                     "unit": "s"})
    return rows


def markdown(rows: List[Dict[str, object]], args: argparse.Namespace) -> str:
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU"
    lines = [f"### `benchmarks/gpu.py` on {device} (torch {torch.__version__}, batch {args.batch}, "
             f"{args.size} px, {args.steps} timed steps)", "", "| what | value | ratio to the first of its group |",
             "|---|---|---|"]
    base: Dict[str, float] = {}
    for row in rows:
        group = str(row["what"]).split(",")[0]
        value = float(row["value"])
        base.setdefault(group, value)
        ratio = value / base[group] if row["unit"] == "images/s" else base[group] / value
        lines.append(f"| {row['what']} | {value:.2f} {row['unit']} | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the table to this file")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run of the script")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device (--device cpu for a smoke run)")
    torch.backends.cudnn.benchmark = True
    text = markdown(measure(args), args)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
