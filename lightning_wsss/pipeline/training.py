"""Building trainers, datamodules and models for pipeline stages; resumable fit and predict."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import lightning as L

from ..callbacks import ArtifactWriter, EpochSeed, LastCheckpoint, MaskPanelLogger
from ..callbacks.checkpointing import save_checkpoint_atomic
from ..errors import DataError
from ..serialization import (UnsafePickleError, allow_safe_globals, load_model_checkpoint, safe_torch_load,
                             weights_only_kwargs)
from .config import deep_merge, resolve_class
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


def make_trainer(ctx: PipelineContext, stage_dir: Path, stage_name: str, trainer_cfg: Optional[Mapping[str, Any]],
                 callbacks: List[L.Callback], logger: bool = True) -> L.Trainer:
    """A Trainer with the pipeline's shared trainer settings overridden by the stage's."""
    cfg = deep_merge(ctx.config.get("trainer") or {}, trainer_cfg)
    cfg.setdefault("enable_model_summary", False)
    cfg.setdefault("enable_checkpointing", False)  # LastCheckpoint writes last.ckpt atomically instead
    cfg.setdefault("enable_progress_bar", bool(ctx.config.get("progress_bar", True)))
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
    if final.is_file():  # the stage-local arguments (out_dir) follow the output folder, not the checkpoint's copy
        return load_model_checkpoint(model_cls, final, **(extra_init or {})), final
    seed = stage_seed(ctx.config, seed)
    L.seed_everything(seed, workers=True, verbose=False)  # weights init included
    model = model_cls(num_classes=datamodule.num_classes, **init_args)
    last = stage_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if _valid_checkpoint(last) else None
    if last.exists() and resume is None:
        last.unlink()
    callbacks = [LastCheckpoint(str(stage_dir / "checkpoints")), EpochSeed(seed)]
    trainer = make_trainer(ctx, stage_dir, stage_name, trainer_cfg, callbacks)
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
    """Run ``predict`` writing artifacts under ``stage_dir`` (images already written are skipped)."""
    cfg = deep_merge({"inference_mode": False}, trainer_cfg)
    trainer = make_trainer(ctx, stage_dir, stage_name, cfg, [ArtifactWriter(str(stage_dir))], logger=False)
    trainer.predict(model, datamodule, return_predictions=False)
    return stage_dir


def validate_model(ctx: PipelineContext, stage_dir: Path, stage_name: str, model, datamodule,
                   trainer_cfg: Optional[Mapping[str, Any]] = None) -> Dict[str, float]:
    """Validation metrics of ``model`` on the datamodule's val split (floats)."""
    trainer = make_trainer(ctx, stage_dir, stage_name, trainer_cfg, [], logger=False)
    metrics = trainer.validate(model, datamodule, verbose=False)[0]
    return {k: float(v) for k, v in metrics.items()}
