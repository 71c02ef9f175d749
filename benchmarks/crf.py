"""Pooled vs serial dense CRF over a batch of synthetic images.

Images are smooth random colour fields (low-resolution noise upsampled bicubically)
with noisy class probabilities derived from a smooth random label field, so the CRF
does real work. Prints wall times and the speed-up of :func:`batch_crf` with a
process pool over running the images one by one in this process.

Usage: ``PYTHONPATH=. python benchmarks/crf.py [--n 32] [--size 128] [--classes 21] [--processes N]``
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from lightning_wsss.refine.crf import CRFParams, batch_crf, crf_from_probs


def synthetic_batch(n: int, size: int, num_classes: int, seed: int = 0):
    """n uint8 images [size, size, 3] and float32 probabilities [num_classes, size, size]."""
    rng = np.random.default_rng(seed)
    images, probs = [], []
    for _ in range(n):
        coarse = rng.integers(0, 256, (6, 6, 3)).astype(np.float32)
        img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        field = cv2.resize(rng.random((6, 6, num_classes)).astype(np.float32), (size, size))
        scores = np.exp(4.0 * field.transpose(2, 0, 1)) + rng.random((num_classes, size, size)) * 8.0
        probs.append((scores / scores.sum(0, keepdims=True)).astype(np.float32))
    return images, probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--processes", type=int, default=None, help="pool size (default cpu_count)")
    parser.add_argument("--mp-context", default=None, help="fork / spawn / forkserver")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant; the fastest is kept")
    args = parser.parse_args()

    images, probs = synthetic_batch(args.n, args.size, args.classes)
    params = CRFParams()
    n_proc = args.processes or os.cpu_count() or 1

    t_serial = t_pool = float("inf")
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        serial = [crf_from_probs(img, p, params) for img, p in zip(images, probs)]
        t_serial = min(t_serial, time.perf_counter() - t0)

        t0 = time.perf_counter()  # includes starting and stopping the pool
        pooled = batch_crf(images, probs, params, processes=n_proc, mp_context=args.mp_context)
        t_pool = min(t_pool, time.perf_counter() - t0)

    same = all(np.array_equal(a, b) for a, b in zip(serial, pooled))
    print(
        f"{args.n} images {args.size}x{args.size}, {args.classes} classes, "
        f"{params.iterations} mean-field iterations, cpu_count={os.cpu_count()}, "
        f"load average: {os.getloadavg()[0]:.1f}"
    )
    print(f"serial          : {t_serial:7.2f} s ({1000 * t_serial / args.n:6.1f} ms/image)")
    print(f"pool ({n_proc:>2} procs) : {t_pool:7.2f} s ({1000 * t_pool / args.n:6.1f} ms/image)")
    print(f"speed-up        : x{t_serial / t_pool:.2f}   identical results: {same}")


if __name__ == "__main__":
    main()
