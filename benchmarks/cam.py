"""Benchmark: CAMExtractor (all classes of a batch at once) vs pytorch-grad-cam (one call per class).

    python benchmarks/cam.py [--device cpu|cuda] [--size 224] [--batch 4] [--classes 3] [--repeats 5]

For images with ``--classes`` present classes each, times per gradient method

* ours: one ``CAMExtractor(images, class_ids [B, K])`` call;
* pytorch-grad-cam: ``K`` calls, each with one ``ClassifierOutputTarget`` per image (its documented use),

on the same resnet18 (random weights, ``model.eval()``) and inputs, and ``method="cam"`` against a plain
``torch.no_grad`` forward pass. Each timing: warm-up runs, then the median of ``--repeats`` runs; the two
sides of each row are measured alternately in the same loop so load changes hit both. ``max|diff|`` is the
largest difference between our ``normalize="minmax"`` maps and pytorch-grad-cam's (same definition).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import numpy as np
import torch
import torchvision

from lightning_wsss.cam import CAMExtractor

_PGC_CLASSES = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _alternate(fns: Dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int) -> Dict[str, float]:
    """Median seconds per callable, measured round-robin."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for run in range(warmup + repeats):
        for name, fn in fns.items():
            elapsed = _timed(fn, device)
            if run >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=3, help="present classes per image (K)")
    parser.add_argument("--num-classes", type=int, default=20, help="classifier outputs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--multilayer", action="store_true", help="also time layercam on layer2..layer4")
    args = parser.parse_args()

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=args.num_classes).to(device).eval()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    class_ids = torch.stack([torch.randperm(args.num_classes)[: args.classes] for _ in range(args.batch)]).to(device)

    def ours_fn(method: str, layers, normalize: str = "max"):
        def run():
            with CAMExtractor(model, layers, method=method, normalize=normalize) as extractor:
                return extractor(images, class_ids)

        return run

    def pgc_fn(method: str, layers):
        def run():
            with getattr(pytorch_grad_cam, _PGC_CLASSES[method])(model, layers) as cam:
                return np.stack(
                    [cam(images, [ClassifierOutputTarget(int(c)) for c in class_ids[:, k]])
                     for k in range(class_ids.shape[1])],
                    axis=1,
                )

        return run

    rows = [(method, [model.layer4[-1]], "layer4[-1]") for method in _PGC_CLASSES]
    if args.multilayer:
        rows.append(("layercam", [model.layer2[-1], model.layer3[-1], model.layer4[-1]], "layer2-4"))

    print(f"device={device} threads={torch.get_num_threads()} resnet18 batch={args.batch} size={args.size} "
          f"K={args.classes} classes/image, median of {args.repeats} (warm-up {args.warmup})")
    header = f"{'method':<10} {'layers':<11} {'ours ms':>9} {'grad-cam ms':>12} {'speed-up':>9} {'max|diff|':>10}"
    print(header)
    print("-" * len(header))
    for method, layers, layer_name in rows:
        diff = np.abs(ours_fn(method, layers, "minmax")().cpu().numpy() - pgc_fn(method, layers)()).max()
        t = _alternate({"ours": ours_fn(method, layers), "pgc": pgc_fn(method, layers)}, device,
                       args.warmup, args.repeats)
        print(f"{method:<10} {layer_name:<11} {t['ours'] * 1e3:9.1f} {t['pgc'] * 1e3:12.1f} "
              f"{t['pgc'] / t['ours']:8.1f}x {diff:10.1e}")
        model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward fills parameter grads

    def forward():
        with torch.no_grad():
            return model(images)

    t = _alternate({"cam": ours_fn("cam", [model.layer4]), "forward": forward}, device, args.warmup, args.repeats)
    print(f"\n{'cam':<10} {'layer4':<11} {t['cam'] * 1e3:9.1f} ms vs no_grad forward {t['forward'] * 1e3:.1f} ms "
          f"-> {t['cam'] / t['forward']:.2f}x a forward pass")


if __name__ == "__main__":
    main()
