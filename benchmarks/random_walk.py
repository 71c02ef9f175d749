"""Sparse (offset-form) random walk vs a dense N x N reference: time and peak memory.

Each case runs in its own subprocess, which reports its wall time and the growth of
its peak resident set size (``ru_maxrss`` after the walk minus ``ru_maxrss`` after
inputs were built), so cases do not pollute each other's memory numbers. The peak
while building the inputs (``affinity_from_features``) is part of the baseline, so
a walk that needs less than that shows a delta of ~0. The sparse and shift walks are
timed as the best of 3 in-process runs; the dense ones run once per subprocess.

Cases (B=1, C=21 channels, radius 5 -> 34 offsets, beta=8, t=256 steps = PSA's logt=8):

* ``sparse``: ``random_walk(method="sparse")`` (block CSR matrix, 256 sparse matmuls);
* ``shift``: ``random_walk(method="shift")`` (256 rounds of shifted-tensor products);
* ``dense-matvec``: dense float32 [N, N] transition, 256 products ``v <- T v``;
* ``dense-pow``: PSA's own way: dense transition squared 8 times, then one product
  (64x64 only: at 128x128 it is ~70 TFLOP).

Usage: ``PYTHONPATH=. python benchmarks/random_walk.py [--sizes 64 128] [--skip-dense]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

C, RADIUS, BETA, LOG_T = 21, 5, 8.0, 8


def _inputs(size: int):
    import torch
    import torch.nn.functional as F

    from lightning_wsss.refine import affinity_from_features, neighbor_offsets

    g = torch.Generator().manual_seed(0)
    offsets = neighbor_offsets(RADIUS)
    # Smooth features so neighbouring affinities are realistic (not all ~0 after **beta).
    coarse = torch.randn(1, 16, size // 8, size // 8, generator=g)
    feats = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    aff = affinity_from_features(feats, offsets)
    cams = torch.rand(1, C, size, size, generator=g)
    return cams, aff, offsets


def _dense_transition(aff, offsets, beta: float):
    """Dense row-stochastic [N, N] float32 transition D^-1 A^beta (built in place)."""
    import torch

    _, _, h, w = aff.shape
    n = h * w
    a = torch.zeros(n, n, dtype=torch.float32)
    a.view(-1)[:: n + 1] = 1.0
    ys = torch.arange(h).view(h, 1)
    xs = torch.arange(w).view(1, w)
    for p, (dy, dx) in enumerate(offsets.tolist()):
        ny, nx = ys + dy, xs + dx
        keep = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        rows = (ys * w + xs).expand(h, w)[keep]
        cols = (ny * w + nx)[keep]
        vals = aff[0, p][keep].pow(beta)
        a[rows, cols] = vals
        a[cols, rows] = vals
    a /= a.sum(dim=1, keepdim=True)
    return a


def run_case(method: str, size: int) -> dict:
    """Run one case in this process; returns timings and peak-RSS growth (MiB)."""
    import torch

    from lightning_wsss.refine import random_walk

    torch.set_num_threads(os.cpu_count() or 1)
    cams, aff, offsets = _inputs(size)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if method in ("sparse", "shift"):
        # Cheap cases: several in-process runs, keep the fastest (machine-load noise).
        elapsed = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            out = random_walk(cams, aff, offsets, beta=BETA, log_t=LOG_T, method=method)
            elapsed = min(elapsed, time.perf_counter() - t0)
    else:
        trans = _dense_transition(aff, offsets, BETA)
        v = cams.reshape(C, -1)
        if method == "dense-matvec":  # v as [C, N]: v <- v T^T  ==  T applied to each column
            trans_t = trans.t()
            for _ in range(2**LOG_T):
                v = v @ trans_t
        else:  # dense-pow, PSA: (A D^-1)^256 as right factor == (D^-1 A)^256 on the left
            psa = trans.t().contiguous()
            del trans
            for _ in range(LOG_T):
                psa = psa @ psa
            v = v @ psa
        out = v.reshape(1, C, size, size)
        elapsed = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "method": method,
        "size": size,
        "seconds": elapsed,
        "peak_rss_delta_mib": (peak_kib - base_kib) / 1024.0,
        "peak_rss_mib": peak_kib / 1024.0,
        "checksum": float(out.double().sum()),
        "sample": out[0, :, size // 2, size // 3].tolist(),
    }


def _spawn(method: str, size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        return {"method": method, "size": size, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest is kept")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child[0], int(args.child[1]))))
        return

    print(
        f"C={C} radius={RADIUS} beta={BETA} t={2**LOG_T}, torch threads={os.cpu_count()}, "
        f"load average before: {os.getloadavg()[0]:.1f}"
    )
    header = f"{'size':>5} {'N':>6} {'method':>13} {'time s':>8} {'peak dRSS MiB':>14} {'peak RSS MiB':>13}"
    print(header + f" {'max|diff| vs sparse':>20}")
    for size in args.sizes:
        methods = ["sparse", "shift"]
        if not args.skip_dense:
            methods.append("dense-matvec")
            if size <= 64:
                methods.append("dense-pow")
        results = {}
        for m in methods:
            runs = [_spawn(m, size) for _ in range(max(1, args.repeat))]
            ok = [r for r in runs if "error" not in r]
            results[m] = min(ok, key=lambda r: r["seconds"]) if ok else runs[0]
        ref = results["sparse"]
        for m, r in results.items():
            if "error" in r:
                print(f"{size:>5} {size * size:>6} {m:>13}  FAILED: {r['error']}")
                continue
            diff = max(abs(a - b) for a, b in zip(r["sample"], ref.get("sample", r["sample"])))
            print(
                f"{size:>5} {size * size:>6} {m:>13} {r['seconds']:>8.2f} "
                f"{r['peak_rss_delta_mib']:>14.1f} {r['peak_rss_mib']:>13.0f} {diff:>20.2e}"
            )
        for m in methods[1:]:
            r = results[m]
            if "error" in r or "error" in ref:
                continue
            mem_ratio = max(r["peak_rss_delta_mib"], 1e-3) / max(ref["peak_rss_delta_mib"], 1e-3)
            print(
                f"      {m} / sparse: time x{r['seconds'] / ref['seconds']:.1f}, "
                f"peak memory x{mem_ratio:.1f}"
            )


if __name__ == "__main__":
    main()
