"""Running one pipeline config: its stages (:mod:`.plan`), resumable (:mod:`.runner`), and its entry in
``summary.json`` (:mod:`.summary`), in one process or in every process torchrun / srun started
(:mod:`.distributed`; an error on one rank ends them all, :mod:`.failures`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from ..errors import DataError
from .checks import check_config
from .config import deep_merge
from .defaults import resolve
from .distributed import World, world_session
from .failures import failures_end_every_rank
from .plan import build_stages
from .runner import PipelineContext, run_stages
from .summary import seed_spread, summarize, summary_key, update_summary
from .training import stage_seed

__all__ = ["run_pipeline", "run_until", "segmenter_seed"]


def run_pipeline(config: Mapping[str, Any], out_dir: Path, log: Callable[[str], None] = print,
                 segmenter_seeds: Sequence[int] = (), until: Optional[str] = None) -> Dict[str, Any]:
    """Run one supervision pipeline and merge its entry into ``out_dir/summary.json``.

    ``until``: run the stages up to and including this one and stop (no summary entry is written; the
    result is ``{"stages": {name: {"dir", "hash", "metrics"}}}``), e.g. ``"cams"`` to study the CAM stage.

    ``segmenter_seeds``: also train the final segmenter with each of these seeds on the same pseudo labels (the
    stages before it are shared) and record ``segmenter_seeds`` in the entry (see :func:`seed_spread`); the
    entry's own ``val_miou`` stays the one of the config's seed.

    Returns:
        the whole summary dict (``dataset``, ``num_train``, ``num_val``, ``supervision`` -> entries).
    """
    check_config(config)
    resolved = resolve(config)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "the output folder is a file; choose another --out")
    with world_session() as world, failures_end_every_rank(world):
        note = world_note(resolved, world)
        if note and world.is_zero:
            log(note)
        if until is not None:
            return run_until(resolved, out_dir, until, log, world)
        entry = _run_entry(resolved, out_dir, log, world)
        if segmenter_seeds:
            entry["segmenter_seeds"] = _seed_runs(resolved, out_dir, log, world, entry["val_miou"], segmenter_seeds)
        return _write_summary(world, out_dir, resolved, {summary_key(resolved): entry})


def _seed_runs(resolved: Mapping[str, Any], out_dir: Path, log: Callable[[str], None], world: World,
               own_score: Any, seeds: Sequence[int]) -> Dict[str, Any]:
    """The segmenter trained with each of ``seeds`` on the same pseudo labels: the spread of its val mIoU."""
    scores = {segmenter_seed(resolved): own_score}
    for seed in map(int, seeds):
        if seed not in scores:
            if world.is_zero:
                log(f"--- segmenter seed {seed} ---")
            seeded = deep_merge(resolved, {"stages": {"segmenter": {"seed": seed}}})
            scores[seed] = _run_entry(seeded, out_dir, log, world)["val_miou"]
    return seed_spread(scores)


def _write_summary(world: World, out_dir: Path, resolved: Mapping[str, Any],
                   entries: Mapping[str, Any]) -> Dict[str, Any]:
    """Rank 0 merges the entries into ``summary.json`` once every rank is done; every rank gets the summary."""
    world.barrier()
    return world.broadcast(update_summary(out_dir, resolved, entries) if world.is_zero else None)


def world_note(resolved: Mapping[str, Any], world: World) -> Optional[str]:
    """A line when the config's ``trainer.devices`` x ``num_nodes`` differs from the run's processes (the
    processes are the launcher's, and batch sizes are per process, so the global batch differs from the
    config's)."""
    trainer = resolved.get("trainer") or {}
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if not isinstance(devices, int) or not isinstance(nodes, int) or devices < 1 or devices * nodes == world.size:
        return None
    return (f"note: the config's trainer states {devices * nodes} device(s); this run has {world.size} process(es) "
            f"(wsss pipeline starts none itself: torchrun --nproc_per_node N / srun start them), so training steps "
            f"take {world.size} x the per-process batch_size")


def run_until(resolved: Mapping[str, Any], out_dir: Path, until: str, log: Callable[[str], None],
              world: Optional[World] = None) -> Dict[str, Any]:
    """Run the stages of a resolved config up to and including ``until``; returns their folders and metrics."""
    stages = build_stages(resolved)
    names = [stage.name for stage in stages]
    if until not in names:
        raise DataError(None, f"--until {until!r} is not a stage of this pipeline; its stages: {', '.join(names)}")
    ctx = PipelineContext(out_dir / resolved["supervision"], resolved, log, world or World())
    results = run_stages(ctx, stages[: names.index(until) + 1])
    return {"stages": {name: {"dir": r.dir, "hash": r.hash, "metrics": r.metrics} for name, r in results.items()}}


def _run_entry(resolved: Mapping[str, Any], out_dir: Path, log: Callable[[str], None], world: World) -> Dict[str, Any]:
    """Run (or reuse) the stages of a resolved config; returns its summary entry (not written; rank 0's)."""
    ctx = PipelineContext(out_dir / resolved["supervision"], resolved, log, world)
    start = time.perf_counter()
    results = run_stages(ctx, build_stages(resolved))
    wall_s = sum(r.wall_s for r in results.values()) if results else time.perf_counter() - start
    return world.broadcast(summarize(resolved, results, wall_s) if world.is_zero else None)


def segmenter_seed(config: Mapping[str, Any]) -> int:
    """The seed the final segmenter trains with: ``stages.segmenter.seed``, else the pipeline's ``seed``."""
    return stage_seed(config, (config.get("stages") or {}).get("segmenter", {}).get("seed"))
