"""Pooled vs serial dense CRF over a batch of synthetic images, and where a pool's time goes.

Images are smooth random colour fields (low-resolution noise upsampled bicubically) with noisy class
probabilities derived from a smooth random label field, so the CRF does real work. Prints, with the load average
before and after:

* ``serial``: :func:`crf_from_probs` on every image in this process;
* ``pool``: :func:`batch_crf` (the library: arrays in a shared memory-mapped file, one thread per worker);
* ``pool, pickled``: the same pool sending the arrays through its pipes (the library before this benchmark's
  findings), to show what the transfer costs;
* ``ceiling``: the same images split over independent processes started before the clock, nothing transferred:
  what the cores give (on a machine whose cores are shared or hyper-threads this is well below the core count);
* the pool's start-up with no work, the threads each worker runs, and what moving the arrays costs alone.

Usage: ``PYTHONPATH=. python benchmarks/crf.py [--n 32] [--size 128] [--classes 21] [--processes N]
[--mp-context fork|spawn|forkserver] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from typing import Callable, Dict, List, Tuple

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


def _pickled_job(job: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return crf_from_probs(job[0], job[1])


def pickled_pool(images, probs, processes: int, mp_context) -> List[np.ndarray]:
    """A pool receiving and returning the arrays through its pipes (the previous ``batch_crf``)."""
    with multiprocessing.get_context(mp_context).Pool(processes) as pool:
        return pool.map(_pickled_job, list(zip(images, probs)), chunksize=max(1, len(images) // (4 * processes)))


def _share(images, probs, start: int, step: int, barrier, results) -> None:
    barrier.wait()
    t0 = time.perf_counter()
    for image, p in zip(images[start::step], probs[start::step]):
        crf_from_probs(image, p)
    results.put(time.perf_counter() - t0)


def ceiling(images, probs, processes: int) -> float:
    """Wall time of the batch split over ``processes`` forked processes that hold their images already and start
    together: compute only."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_share, args=(images, probs, k, processes, barrier, results))
               for k in range(processes)]
    for worker in workers:
        worker.start()
    times = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    return max(times)


def _echo(job: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return job[1]


def transfer(images, probs, processes: int, mp_context) -> Tuple[float, float]:
    """(seconds to send the batch through a pool's pipes and get arrays of the marginals' size back, with no CRF;
    seconds to put it in a shared file and copy the outputs back, as :func:`batch_crf` does)."""
    from lightning_wsss.refine.shared_arrays import SharedArrays

    with multiprocessing.get_context(mp_context).Pool(processes) as pool:
        pool.map(_echo, [(images[0], probs[0])] * processes, chunksize=1)  # started
        t0 = time.perf_counter()
        pool.map(_echo, list(zip(images, probs)), chunksize=max(1, len(images) // (4 * processes)))
        piped = time.perf_counter() - t0
    t0 = time.perf_counter()
    inputs = SharedArrays.create([s for i, p in zip(images, probs) for s in ((i.shape, "uint8"), (p.shape, "float32"))])
    outputs = SharedArrays.create([(p.shape, "float32") for p in probs])
    for index, (image, p) in enumerate(zip(images, probs)):
        inputs.view(2 * index)[...] = image
        inputs.view(2 * index + 1)[...] = p
        outputs.view(index)[...] = p  # what a worker writes
    outputs.copies(range(len(probs)))
    inputs.unlink()
    outputs.unlink()
    return piped, time.perf_counter() - t0


def _threads(_: int) -> int:
    time.sleep(0.2)  # keep both workers busy so each answers once
    return len(os.listdir("/proc/self/task"))


def startup(processes: int, mp_context) -> Tuple[float, List[int]]:
    """(seconds to start and stop a pool with no CRF work, threads in each worker)."""
    t0 = time.perf_counter()
    with multiprocessing.get_context(mp_context).Pool(processes) as pool:
        threads = pool.map(_threads, range(processes), chunksize=1)
    return time.perf_counter() - t0 - 0.2, threads


def interleaved(repeat: int, variants: Dict[str, Callable[[], object]]) -> Dict[str, Tuple[float, object]]:
    """``{name: (fastest wall time, result of that run)}``, the variants run in turn in each of ``repeat`` rounds, so a
    load that comes and goes (other jobs on a shared machine) weighs on all of them alike."""
    best: Dict[str, Tuple[float, object]] = {name: (float("inf"), None) for name in variants}
    for _ in range(max(1, repeat)):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            result = fn()
            seconds = time.perf_counter() - t0
            if seconds < best[name][0]:
                best[name] = (seconds, result)
    return best


def report(name: str, seconds: float, serial: float, n: int, note: str = "") -> str:
    return f"{name:<24}: {seconds:6.2f} s ({1000 * seconds / n:6.1f} ms/image)  x{serial / seconds:4.2f}  {note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--processes", type=int, default=None, help="pool size (default cpu_count)")
    parser.add_argument("--mp-context", default=None, help="fork / spawn / forkserver (default: the platform's)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the fastest is kept")
    args = parser.parse_args()

    images, probs = synthetic_batch(args.n, args.size, args.classes)
    params = CRFParams()
    n_proc = args.processes or os.cpu_count() or 1
    method = args.mp_context or multiprocessing.get_start_method()
    print(f"{args.n} images {args.size}x{args.size}, {args.classes} classes, {params.iterations} mean-field "
          f"iterations, cpu_count={os.cpu_count()}, {n_proc} processes, start method {method}, "
          f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    times = interleaved(args.repeat, {
        "serial": lambda: [crf_from_probs(i, p, params) for i, p in zip(images, probs)],
        "pool": lambda: batch_crf(images, probs, params, n_proc, args.mp_context),
        "pickled": lambda: pickled_pool(images, probs, n_proc, args.mp_context),
        "ceiling": lambda: ceiling(images, probs, n_proc),
    })
    (t_serial, serial), (t_pool, pooled), (t_pickled, _) = times["serial"], times["pool"], times["pickled"]
    t_ceiling = times["ceiling"][1]  # the compute time the processes report, not the start-up around it
    t_start, threads = startup(n_proc, args.mp_context)
    moves = [transfer(images, probs, n_proc, args.mp_context) for _ in range(max(1, args.repeat))]
    t_piped, t_shared = min(m[0] for m in moves), min(m[1] for m in moves)
    same = all(np.array_equal(a, b) for a, b in zip(serial, pooled))
    print(report("serial", t_serial, t_serial, args.n))
    print(report(f"pool ({n_proc} procs)", t_pool, t_serial, args.n, f"identical results: {same}"))
    print(report("pool, pickled arrays", t_pickled, t_serial, args.n, "(arrays through the pipes)"))
    print(report("ceiling", t_ceiling, t_serial, args.n, "(independent processes, compute only)"))
    print(f"pool start-up + stop, no work: {t_start:.2f} s; threads per worker: {threads}")
    mb = sum(p.nbytes for p in probs) / 2**20
    print(f"moving the batch ({mb:.0f} MiB of probabilities in, as much out), no CRF: {t_piped:.2f} s through the "
          f"pool's pipes, {t_shared:.2f} s through a shared file")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
