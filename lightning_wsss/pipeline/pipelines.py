"""Running one pipeline config: its stages (:mod:`.plan`), resumable (:mod:`.runner`), and its entry in
``summary.json`` (:mod:`.summary`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from ..errors import DataError
from .checks import check_config
from .config import deep_merge
from .defaults import resolve
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
    if until is not None:
        return run_until(resolved, out_dir, until, log)
    entry = _run_entry(resolved, out_dir, log)
    if segmenter_seeds:
        own_seed = segmenter_seed(resolved)
        scores = {own_seed: entry["val_miou"]}
        for seed in map(int, segmenter_seeds):
            if seed not in scores:
                log(f"--- segmenter seed {seed} ---")
                seeded = deep_merge(resolved, {"stages": {"segmenter": {"seed": seed}}})
                scores[seed] = _run_entry(seeded, out_dir, log)["val_miou"]
        entry["segmenter_seeds"] = seed_spread(scores)
    return update_summary(out_dir, resolved, {summary_key(resolved): entry})


def run_until(resolved: Mapping[str, Any], out_dir: Path, until: str, log: Callable[[str], None]) -> Dict[str, Any]:
    """Run the stages of a resolved config up to and including ``until``; returns their folders and metrics."""
    stages = build_stages(resolved)
    names = [stage.name for stage in stages]
    if until not in names:
        raise DataError(None, f"--until {until!r} is not a stage of this pipeline; its stages: {', '.join(names)}")
    results = run_stages(PipelineContext(out_dir / resolved["supervision"], resolved, log), stages[: names.index(until) + 1])
    return {"stages": {name: {"dir": r.dir, "hash": r.hash, "metrics": r.metrics} for name, r in results.items()}}


def _run_entry(resolved: Mapping[str, Any], out_dir: Path, log: Callable[[str], None]) -> Dict[str, Any]:
    """Run (or reuse) the stages of a resolved config; returns its summary entry (not written)."""
    ctx = PipelineContext(out_dir / resolved["supervision"], resolved, log)
    start = time.perf_counter()
    results = run_stages(ctx, build_stages(resolved))
    return summarize(resolved, results, sum(r.wall_s for r in results.values()) if results else time.perf_counter() - start)


def segmenter_seed(config: Mapping[str, Any]) -> int:
    """The seed the final segmenter trains with: ``stages.segmenter.seed``, else the pipeline's ``seed``."""
    return stage_seed(config, (config.get("stages") or {}).get("segmenter", {}).get("seed"))
