"""Building trainers, datamodules and models for pipeline stages; resumable fit and predict.

Under several processes (:mod:`.distributed`) a training stage's Trainer spans them all (``strategy: ddp``,
``devices`` and ``num_nodes`` from the launcher); prediction and the final validation run on each rank's own
device, on its share of the images (``ids[rank::world]``: no image twice, none padded in), with no collective
inside them but the sums torchmetrics does of its metrics' states when they compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import lightning as L

from ..callbacks import ArtifactWriter, EpochSeed, LastCheckpoint, MaskPanelLogger
from ..callbacks.checkpointing import save_checkpoint_atomic
from ..callbacks.progress import progress_callbacks, stdout_is_terminal
from ..errors import DataError
from ..serialization import (UnsafePickleError, allow_safe_globals, load_model_checkpoint, safe_torch_load,
                             weights_only_kwargs)
from ..threads import apply_thread_policy
from .config import deep_merge, resolve_class
from .distributed import World
from .runner import PipelineContext


def make_logger(ctx: PipelineContext, stage_dir: Path, stage_name: str):
    """The stage's logger: ``csv`` (default), ``wandb`` (grouped by run, tagged by supervision and stage) or ``none``."""
    kind = str(ctx.config.get("logger", "csv")).lower()
    if kind == "none":
        return False
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        wandb_cfg = {k: v for k, v in (ctx.config.get("wandb") or {}).items() if k != "panel_images"}
        run_name = ctx.config.get("name", "wsss")
        supervision = ctx.config.get("supervision")
        return WandbLogger(
            project=wandb_cfg.pop("project", "lightning-wsss"),
            group=wandb_cfg.pop("group", run_name),
            name=f"{run_name}/{stage_name}",
            job_type=stage_name,
            tags=[f"supervision:{supervision}", f"stage:{stage_name}"] + list(wandb_cfg.pop("tags", [])),
            save_dir=str(stage_dir),
            config={"supervision": supervision, "stage": stage_name},
            **wandb_cfg,
        )
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(str(stage_dir), name="logs")


def finish_wandb(trainer: L.Trainer) -> None:
    """Close the stage's W&B run (each stage is its own run in the pipeline's group)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()


def _is_ddp(strategy: Any) -> bool:
    return isinstance(strategy, str) and strategy.startswith("ddp")


def _rank_device(cfg: Mapping[str, Any], world: World) -> Any:
    """This rank's own device for a Trainer: its GPU (``[local_rank]``) on a GPU accelerator, else 1."""
    import torch

    accelerator = str(cfg.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return [world.local_rank] if on_gpu else 1


def world_trainer_settings(cfg: Mapping[str, Any], world: World, spans_world: bool,
                           find_unused: bool = False) -> Dict[str, Any]:
    """Trainer settings placing it in the run's processes, whatever ``devices`` the config states.

    ``spans_world`` (training): DDP over every rank (``devices`` per node, ``num_nodes`` from the launcher; one
    process: one device); ``find_unused``: a task whose parameters may miss gradients in a step
    (``ddp_find_unused_parameters``). Otherwise (prediction, validation on a rank's share): this rank's device.
    """
    out = dict(cfg)
    if spans_world and world.size > 1:
        out.update(devices=world.local_size, num_nodes=world.num_nodes)
        if not _is_ddp(out.get("strategy")) or (find_unused and out["strategy"] == "ddp"):
            out["strategy"] = "ddp_find_unused_parameters_true" if find_unused else "ddp"
        return out
    out.update(devices=_rank_device(out, world) if world.size > 1 else 1, num_nodes=1)
    if _is_ddp(out.get("strategy")):
        out["strategy"] = "auto"
    if world.size > 1:
        out.pop("sync_batchnorm", None)
    return out


def show_progress(ctx: PipelineContext) -> bool:
    """Whether the run draws progress bars: the config's ``progress_bar``, and only on a terminal."""
    return bool(ctx.config.get("progress_bar", True)) and stdout_is_terminal()


def make_trainer(ctx: PipelineContext, stage_dir: Path, stage_name: str, trainer_cfg: Optional[Mapping[str, Any]],
                 callbacks: List[L.Callback], logger: bool = True, spans_world: bool = True,
                 find_unused: bool = False) -> L.Trainer:
    """A Trainer with the pipeline's shared trainer settings overridden by the stage's, spanning the run's
    processes (``spans_world``) or on this rank's device (:func:`world_trainer_settings`)."""
    cfg = world_trainer_settings(deep_merge(ctx.config.get("trainer") or {}, trainer_cfg), ctx.world, spans_world,
                                 find_unused)
    cfg.setdefault("enable_model_summary", False)
    cfg.setdefault("enable_checkpointing", False)  # LastCheckpoint writes last.ckpt atomically instead
    cfg.setdefault("enable_progress_bar", show_progress(ctx))  # a log file gets one line an epoch (EpochLog)
    if not spans_world and not ctx.world.is_zero:
        cfg["enable_progress_bar"] = False  # a Trainer of one device counts itself rank 0
    callbacks = list(callbacks) + progress_callbacks(bool(cfg["enable_progress_bar"]) or not ctx.world.is_zero)
    if logger and str(ctx.config.get("logger", "csv")).lower() == "wandb":
        callbacks = list(callbacks) + [MaskPanelLogger(int((ctx.config.get("wandb") or {}).get("panel_images", 4)))]
    return L.Trainer(default_root_dir=str(stage_dir), logger=make_logger(ctx, stage_dir, stage_name) if logger else False,
                     callbacks=callbacks, **cfg)


def make_datamodule(ctx: PipelineContext, class_name: str, overrides: Optional[Mapping[str, Any]] = None):
    """Instantiate a DataModule on the pipeline's data set with the shared ``data`` settings and ``overrides``."""
    dataset = ctx.config["dataset"]
    args = deep_merge({"root": str(dataset["root"])}, ctx.config.get("data") or {})
    args = deep_merge(args, overrides)
    return resolve_class(class_name, "data")(**args)


def _valid_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a loadable checkpoint (a write killed mid-way leaves an unloadable file).

    Raises:
        UnsafePickleError: the file loads only by running code from it (it was not written by this suite).
    """
    if not path.is_file():
        return False
    try:
        safe_torch_load(path, "checkpoint")
        return True
    except UnsafePickleError:
        raise
    except DataError:
        return False


def _resume_from(last: Path) -> Optional[str]:
    """``last`` when it is a loadable checkpoint; an unloadable one (a write killed mid-way) is removed."""
    if _valid_checkpoint(last):
        return str(last)
    if last.exists():
        last.unlink()
    return None


def stage_seed(pipeline_config: Mapping[str, Any], own: Optional[int] = None) -> int:
    """The seed a stage trains with: its own ``seed`` when set, else the pipeline's (default 0)."""
    return int(pipeline_config.get("seed", 0) if own is None else own)


def fit_model(ctx: PipelineContext, stage_dir: Path, stage_name: str, model_cfg: Mapping[str, Any], datamodule,
              trainer_cfg: Optional[Mapping[str, Any]] = None, extra_init: Optional[Dict[str, Any]] = None,
              seed: Optional[int] = None):
    """Train (or resume, or reuse) a model; returns ``(model, final checkpoint path)``.

    ``checkpoints/last.ckpt`` is written every epoch; a rerun resumes from it (an unreadable one is discarded).
    ``checkpoints/final.ckpt`` is written atomically when training ends; if it exists, training is skipped.
    """
    model_cls = resolve_class(model_cfg.get("class_path", "CAMClassifier"), "model")
    init_args = dict(model_cfg.get("init_args") or {})
    init_args.update(extra_init or {})
    final = stage_dir / "checkpoints" / "final.ckpt"
    if ctx.world.broadcast(final.is_file()):  # stage-local arguments (out_dir) follow the folder, not the checkpoint
        return load_model_checkpoint(model_cls, final, **(extra_init or {})), final
    seed = stage_seed(ctx.config, seed)
    L.seed_everything(seed, workers=True, verbose=False)  # weights init included
    model = model_cls(num_classes=datamodule.num_classes, **init_args)
    last = stage_dir / "checkpoints" / "last.ckpt"
    resume = ctx.world.broadcast(_resume_from(last) if ctx.world.is_zero else None)
    callbacks = [LastCheckpoint(str(stage_dir / "checkpoints")), EpochSeed(seed)]
    apply_thread_policy(int(getattr(datamodule, "num_workers", 0) or 0))
    trainer = make_trainer(ctx, stage_dir, stage_name, trainer_cfg, callbacks,
                           find_unused=bool(getattr(model_cls, "ddp_find_unused_parameters", False)))
    if resume:
        ctx.log(f"[{stage_name}] resuming from {last}")
    with allow_safe_globals():
        trainer.fit(model, datamodule, ckpt_path=resume, **weights_only_kwargs(trainer.fit))
    finish_wandb(trainer)
    save_checkpoint_atomic(trainer, final)
    trainer.strategy.barrier("final_checkpoint")
    return model, final


def predict_to_dir(ctx: PipelineContext, stage_dir: Path, stage_name: str, model, datamodule,
                   trainer_cfg: Optional[Mapping[str, Any]] = None) -> Path:
    """Run ``predict`` writing artifacts under ``stage_dir`` (images already written are skipped), each rank on its
    share of the predict split; returns when every rank is done."""
    world = ctx.world
    share = world.share(datamodule.build_reader("predict").ids)
    written = 0
    if share:
        cfg = deep_merge({"inference_mode": False}, trainer_cfg)
        writer = ArtifactWriter(str(stage_dir))
        apply_thread_policy(int(getattr(datamodule, "num_workers", 0) or 0))
        trainer = make_trainer(ctx, stage_dir, stage_name, cfg, [writer], logger=False, spans_world=False)
        trainer.predict(model, datamodule.with_ids("predict", share) if world.size > 1 else datamodule,
                        return_predictions=False)
        written = writer.written
    log_shares(ctx, stage_name, "images predicted", written)
    return stage_dir


def log_shares(ctx: PipelineContext, stage_name: str, what: str, count: int) -> None:
    """After every rank did its share, rank 0 logs how much each did (several processes only)."""
    counts = ctx.world.gather(int(count))
    if ctx.world.size > 1:
        ctx.log(f"[{stage_name}] {sum(counts)} {what}: " + ", ".join(f"rank {r} {n}" for r, n in enumerate(counts)))


def validate_model(ctx: PipelineContext, stage_dir: Path, stage_name: str, model, datamodule,
                   trainer_cfg: Optional[Mapping[str, Any]] = None) -> Dict[str, float]:
    """Validation metrics of ``model`` on the datamodule's val split (floats).

    Several processes: each validates its share of the split; the task's torchmetrics metrics sum their states
    over the ranks when they compute, so every image counts once (Lightning's distributed sampler would repeat
    images to even the shares out). Rank 0's metrics are returned.

    Raises:
        DataError: the val split has fewer images than there are processes.
    """
    world = ctx.world
    if world.size > 1:
        ids = datamodule.build_reader("validate").ids
        if len(ids) < world.size:
            raise DataError(None, f"the val split has {len(ids)} images, fewer than the {world.size} processes of this "
                                  "run: every process validates a share of it; run with fewer processes")
        datamodule = datamodule.with_ids("validate", world.share(ids))
    trainer = make_trainer(ctx, stage_dir, stage_name, trainer_cfg, [], logger=False, spans_world=False)
    metrics = trainer.validate(model, datamodule, verbose=False)[0]
    return world.broadcast({k: float(v) for k, v in metrics.items()})
