"""The thread policy: how many threads each process of a run uses, so that processes do not oversubscribe cores.

Every process of a run computes with some library's thread pool: torch's intra-op threads in the training
process, OpenCV's (through albumentations) in each DataLoader worker, and whatever a pool worker (the CRF) loads.
Left at their defaults each pool takes every core, and a process that shares its cores with another busy one
slows down far more than its share: the issue that asked for this policy saw a CamVid classifier train at
0.17 it/s with two torch threads next to one busy process and at 2.06 it/s with one, and
``benchmarks/threads.py`` measures the same collapse on the synthetic classifier (README, "Benchmarks").
The policy:

* a process owns the cores of its CPU affinity (``taskset``, a SLURM allocation), divided among the ranks that
  share them (``SLURM_CPUS_PER_TASK`` when SLURM states it, else ``LOCAL_WORLD_SIZE`` under torchrun);
* its intra-op threads are those cores minus its DataLoader workers, at least one (:func:`intra_op_threads`);
* a DataLoader or pool worker computes with one thread: torch, OpenCV (:func:`limit_worker_threads`, through
  :func:`worker_init` for DataLoaders).

Overrides, in order: ``WSSS_THREADS`` (the intra-op threads of each process), else ``OMP_NUM_THREADS`` (as torch
itself reads it). Nothing here imports torch or OpenCV: a library not loaded yet is left alone.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

THREADS_ENV = "WSSS_THREADS"


def _positive_int(name: str) -> Optional[int]:
    """The environment variable ``name`` as an integer >= 1, ``None`` when unset or empty.

    Raises:
        ValueError: it is set to anything else.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {text!r}")
    return int(text)


def owned_cores(ranks_on_node: Optional[int] = None) -> int:
    """Cores this process may use: its CPU affinity, shared among the ranks of the node.

    ``SLURM_CPUS_PER_TASK`` caps it (SLURM's share of each task); otherwise the affinity is divided among the
    ranks on this node: ``LOCAL_WORLD_SIZE`` under torchrun, else ``ranks_on_node`` (a pipeline's world knows it
    under srun too), else 1.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_task = _positive_int("SLURM_CPUS_PER_TASK")
    if per_task is not None:
        return max(1, min(cores, per_task))
    ranks = _positive_int("LOCAL_WORLD_SIZE") or max(1, int(ranks_on_node or 1))
    return max(1, cores // ranks)


def intra_op_threads(num_workers: int = 0, cores: Optional[int] = None) -> int:
    """Intra-op threads for a process with ``num_workers`` DataLoader workers.

    ``WSSS_THREADS`` if set, else ``OMP_NUM_THREADS`` if set, else the owned cores minus the workers (at least 1).
    """
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = _positive_int(name)
        if value is not None:
            return value
    owned = owned_cores() if cores is None else cores
    return max(1, owned - max(0, int(num_workers)))


def _set_opencv_threads(threads: int) -> None:
    """OpenCV's threads; one thread is ``setNumThreads(0)`` (run sequentially): ``setNumThreads(1)`` hangs in a forked
    worker whose parent had run OpenCV's thread pool (OpenCV 5, pthreads backend)."""
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(0 if threads <= 1 else threads)


def apply_thread_policy(num_workers: int = 0) -> int:
    """Set torch's intra-op threads and OpenCV's threads of this process by :func:`intra_op_threads`.

    Call it in the process that trains or predicts, before the work starts (a pipeline: before each stage's
    Trainer runs). Returns the thread count.
    """
    threads = intra_op_threads(num_workers)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    _set_opencv_threads(threads)
    return threads


def limit_worker_threads() -> None:
    """One thread for torch and OpenCV in this process (a DataLoader or pool worker)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _set_opencv_threads(1)


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of the suite's DataLoaders: :func:`limit_worker_threads`, then Lightning's worker seeding
    when ``seed_everything(workers=True)`` asked for it (Lightning adds its own only to loaders without one)."""
    limit_worker_threads()
    if int(os.environ.get("PL_SEED_WORKERS", 0) or 0):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
