"""Independent pipeline runs side by side: one ``wsss pipeline`` process each, the machine's cores shared out.

``wsss demo --jobs N`` runs its supervision types this way: they share no stage, so on a machine with N or more
cores they finish in the time of the longest instead of the sum, with the same figures (every process is seeded
the same; each gets ``cores // N`` torch threads unless ``OMP_NUM_THREADS`` is set). The runs write one
``summary.json`` under its lock. Each process logs to ``<out>/logs/<name>.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import yaml

from ..errors import DataError
from ..io import atomic_write
from ..threads import owned_cores

Run = Tuple[str, Mapping[str, Any]]


def threads_per_job(jobs: int) -> int:
    """Torch / OpenMP threads for each of ``jobs`` processes: the cores this process owns split evenly, at least 1."""
    return max(1, owned_cores() // max(1, jobs))


def job_environment(jobs: int) -> Dict[str, str]:
    """The environment of one run: ``OMP_NUM_THREADS`` from :func:`threads_per_job` unless already set."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_job(jobs)))
    return env


def pipeline_command(config_path: Path, out_dir: Path, segmenter_seeds: Sequence[int]) -> List[str]:
    """``python -m lightning_wsss pipeline CONFIG --out OUT [--segmenter-seeds ...]``."""
    command = [sys.executable, "-m", "lightning_wsss", "pipeline", str(config_path), "--out", str(out_dir)]
    if segmenter_seeds:
        command += ["--segmenter-seeds", *map(str, segmenter_seeds)]
    return command


def _run_one(name: str, config: Mapping[str, Any], out_dir: Path, jobs: int, segmenter_seeds: Sequence[int]) -> None:
    config_path = out_dir / "configs" / f"{name}.yaml"
    log_path = out_dir / "logs" / f"{name}.log"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(config_path, "w") as handle:
        handle.write(yaml.safe_dump(dict(config), sort_keys=False))
    print(f"=== {name}: started (config {config_path}, log {log_path})", flush=True)
    with open(log_path, "w") as log:
        code = subprocess.run(pipeline_command(config_path, out_dir, segmenter_seeds), stdout=log,
                              stderr=subprocess.STDOUT, env=job_environment(jobs)).returncode
    if code != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise DataError(log_path, f"the {name} run failed (exit {code}): " + " | ".join(tail))
    print(f"=== {name}: done", flush=True)


def run_in_processes(runs: Sequence[Run], out_dir: Path, jobs: int, segmenter_seeds: Sequence[int] = ()) -> None:
    """Run each ``(name, config)`` as its own ``wsss pipeline`` process, ``jobs`` at a time, in the given order
    (put the longest first); raises :class:`DataError` naming the log of the first run that failed."""
    out_dir = Path(out_dir)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(_run_one, name, config, out_dir, jobs, segmenter_seeds) for name, config in runs]
        for future in futures:
            future.result()
