"""The stage runner: hashing, skipping complete stages, resuming interrupted ones.

Each stage writes to ``OUT/<stage>/<hash>/`` where the hash covers the stage's resolved config and the
hashes of the stages it reads from. A stage is complete when its ``stage.json`` exists (written atomically,
last); a complete stage is skipped, an incomplete one resumes from what it left (training from
``checkpoints/last.ckpt``, prediction by skipping images already written).

Under several processes (:mod:`.distributed`) every rank runs every stage function (which splits the work:
training under DDP, images by rank); rank 0 alone decides whether a stage is complete, holds its lock for the
job, and writes ``config.json`` and, after a barrier, ``stage.json``; the others take its decisions and its
result (outputs and the metrics reduced over the ranks).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..errors import DataError, StageBusyError
from ..io import remove_stale_temporaries, write_json_atomic
from .config import stage_hash
from .distributed import SINGLE, World
from .environment import run_environment


@dataclass
class StageResult:
    """What a stage left: its folder, named outputs (paths), metrics, and timing."""

    name: str
    hash: str
    dir: str
    outputs: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    reused: bool = False
    environment: Dict[str, Any] = field(default_factory=dict)
    """What it ran on (:func:`~.environment.run_environment`: torch threads, device, versions); not hashed."""


StageFn = Callable[["PipelineContext", Path, Dict[str, StageResult], Dict[str, Any]], Dict[str, Any]]


@dataclass
class Stage:
    """A pipeline step.

    Attributes:
        name: folder name under the output directory.
        config: the stage's resolved config (hashed).
        run: ``(ctx, stage_dir, upstream results, config) -> {"outputs": {...}, "metrics": {...}}``.
        upstream: names of the stages whose results it reads (their hashes join its own).
        inputs: what ``run`` gets: key -> the name of the stage whose result it is (the artifacts it reads, see
            :mod:`.registry`); by default each upstream stage under its own name. Sets ``upstream`` when given.
    """

    name: str
    config: Dict[str, Any]
    run: StageFn
    upstream: Sequence[str] = ()
    folder: Optional[str] = None
    """The folder (and, for the stages after it, the upstream name in the hash) when it differs from ``name``:
    CDA's seed classifier is the plain classifier, so it shares its folder and hash and is trained once."""
    root: Optional[str] = None
    """A folder relative to the pipeline's own (``../image``) holding this stage: a hybrid pipeline keeps its
    image-label stages with the image pipeline's, so the two share them."""
    inputs: Optional[Mapping[str, str]] = None
    unhashed: Tuple[str, ...] = ()
    """Keys of ``config["stage"]`` (or of ``config`` itself when it has no ``stage``) that change how the stage
    runs, not what it writes (a worker count): passed to :attr:`run`, left out of the hash."""

    def hashed_config(self) -> Dict[str, Any]:
        """:attr:`config` without its :attr:`unhashed` keys."""
        if not self.unhashed:
            return self.config
        if isinstance(self.config.get("stage"), Mapping):
            own = {k: v for k, v in self.config["stage"].items() if k not in self.unhashed}
            return {**self.config, "stage": own}
        return {k: v for k, v in self.config.items() if k not in self.unhashed}

    def __post_init__(self) -> None:
        if self.inputs is None:
            self.inputs = {name: name for name in self.upstream}
        else:
            self.upstream = tuple(dict.fromkeys(self.inputs.values()))


class PipelineContext:
    """Shared state of one pipeline run: output folder, pipeline config, results so far, a log function (rank 0
    logs, the other ranks are quiet), and the :class:`~.distributed.World` of processes running it."""

    def __init__(self, out_dir: Path, config: Mapping[str, Any], log: Callable[[str], None] = print,
                 world: World = SINGLE) -> None:
        self.out_dir = Path(out_dir)
        self.config = dict(config)
        self.results: Dict[str, StageResult] = {}
        self.world = world
        self.log = log if world.is_zero else _quiet


def _quiet(_message: str) -> None:
    pass


@contextlib.contextmanager
def stage_lock(stage_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``stage_dir/.lock`` while a stage runs (POSIX ``flock``; released on exit, also
    when the process dies).

    Two pipelines sharing an output folder would otherwise train and predict into the same files at once (each
    resuming from the other's checkpoints). Elsewhere (no ``fcntl``) no lock is taken.

    Raises:
        StageBusyError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(stage_dir / ".lock", "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StageBusyError(f"{stage_dir} is being run by another process (lock {stage_dir / '.lock'}); wait for "
                                 "it to finish or use another output folder") from exc
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def job_lock(world: World, stage_dir: Path) -> Iterator[None]:
    """:func:`stage_lock` for a job of several processes: rank 0 takes the lock and holds it while the stage
    runs; the others learn from it whether it got the lock (so one job holds a stage, on any number of nodes).

    Raises:
        StageBusyError: on every rank, when another job holds the lock.
    """
    with contextlib.ExitStack() as stack:
        problem = None
        if world.is_zero:
            try:
                stack.enter_context(stage_lock(stage_dir))
            except StageBusyError as exc:
                problem = str(exc)
        problem = world.broadcast(problem)
        if problem is not None:
            raise StageBusyError(problem)
        yield


def _inside(path: str, folder: Path) -> bool:
    """Whether ``path`` names an existing file or folder inside ``folder``."""
    absolute = os.path.abspath(path)
    return os.path.exists(absolute) and os.path.commonpath([absolute, os.path.abspath(folder)]) == os.path.abspath(folder)


def stage_marker(result: StageResult, stage_dir: Path, tree: Path) -> Dict[str, Any]:
    """The content of ``stage.json``: the result with every output path inside the output tree ``tree`` stored
    relative to ``stage_dir`` (keys listed in ``relative_outputs``) and ``dir`` as ``"."``, so the output folder
    can be moved and reused from any working directory."""
    outputs = dict(result.outputs)
    relative = sorted(k for k, v in outputs.items() if isinstance(v, str) and v and _inside(v, tree))
    for key in relative:
        outputs[key] = os.path.relpath(os.path.abspath(outputs[key]), os.path.abspath(stage_dir))
    data = {k: v for k, v in asdict(result).items() if k != "reused"}
    return {**data, "dir": ".", "outputs": outputs, "relative_outputs": relative}


def read_stage_marker(marker: Path, name: str) -> StageResult:
    """The :class:`StageResult` of a complete stage from its ``stage.json``, paths resolved against the folder
    holding it (``relative_outputs``; files written before that key keep their paths as stored)."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(marker, f"unreadable stage marker ({exc}); delete it to rerun the stage") from exc
    stage_dir = marker.parent
    relative = data.pop("relative_outputs", None)
    if relative is not None:
        data["dir"] = str(stage_dir)
        data["outputs"] = {k: os.path.normpath(os.path.join(stage_dir, v)) if k in relative else v
                           for k, v in data.get("outputs", {}).items()}
    return StageResult(**{**data, "name": name, "reused": True})


def run_stages(ctx: PipelineContext, stages: List[Stage]) -> Dict[str, StageResult]:
    """Run ``stages`` in order, skipping complete ones. Returns the results by stage name."""
    folders = {stage.name: stage.folder or stage.name for stage in stages}
    for stage in stages:
        upstream = {folders[name]: ctx.results[name].hash for name in stage.upstream}
        digest = stage_hash(stage.hashed_config(), upstream)
        # lexically normalised: "OUT/hybrid/../image/..." names the image pipeline's folder even before OUT/hybrid
        # exists (the OS resolves ".." only through an existing folder, and the stage would not be found complete)
        stage_dir = Path(os.path.normpath(ctx.out_dir / (stage.root or ".") / folders[stage.name] / digest))
        marker = stage_dir / "stage.json"
        done = ctx.world.broadcast(_complete(marker, stage.name) if ctx.world.is_zero else None)
        if done is not None:
            result = done
            ctx.log(f"[{stage.name}] complete ({digest}), reusing {stage_dir}")
        else:
            ctx.log(f"[{stage.name}] running ({digest}) in {stage_dir}")
            result = run_stage(ctx, stage, digest, stage_dir, upstream)
            metrics = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in result.metrics.items())
            ctx.log(f"[{stage.name}] done in {result.wall_s:.1f}s -> {stage_dir} {metrics}")
        ctx.results[stage.name] = result
    return ctx.results


def _complete(marker: Path, name: str) -> Optional[StageResult]:
    """The result of a complete stage (its ``stage.json``), None for one to run."""
    return read_stage_marker(marker, name) if marker.is_file() else None


def run_stage(ctx: PipelineContext, stage: Stage, digest: str, stage_dir: Path,
              upstream: Dict[str, str]) -> StageResult:
    """Run one incomplete stage on every rank under the job's lock; rank 0 removes the temporaries a killed earlier
    run's atomic writes left in its folder, writes its ``config.json`` and ``stage.json`` and hands its result to the
    others."""
    world = ctx.world
    stage_dir.mkdir(parents=True, exist_ok=True)
    with job_lock(world, stage_dir):
        if world.is_zero:
            remove_stale_temporaries(stage_dir)  # the lock keeps other jobs out; the barrier keeps the other ranks
            write_json_atomic(stage_dir / "config.json", {"config": stage.config, "upstream": upstream})
        world.barrier()
        start = time.perf_counter()
        upstream_results = {key: ctx.results[name] for key, name in stage.inputs.items()}
        produced = stage.run(ctx, stage_dir, upstream_results, stage.config)
        world.barrier()
        result = None
        if world.is_zero:
            result = StageResult(stage.name, digest, str(stage_dir), produced.get("outputs", {}),
                                 produced.get("metrics", {}), time.perf_counter() - start,
                                 environment=run_environment(world.size))
            write_json_atomic(stage_dir / "stage.json", stage_marker(result, stage_dir, ctx.out_dir.parent))
        return world.broadcast(result)
