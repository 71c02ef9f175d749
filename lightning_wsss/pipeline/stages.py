"""The stages of the three supervision pipelines, and the default stage configs (CPU-sized)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping

import numpy as np
from tqdm.auto import tqdm

from ..io import write_label_png
from ..metrics import evaluate_reader
from .config import deep_merge
from .runner import PipelineContext, Stage, StageResult
from .training import fit_model, make_datamodule, predict_to_dir, validate_model


def _train_split(ctx: PipelineContext) -> str:
    return (ctx.config.get("data") or {}).get("train_split", "train")


def split_reader(ctx: PipelineContext, stage: str = "fit"):
    """The raw reader of a stage's split, as the pipeline's DataModule builds it (VOC layout or COCO)."""
    return make_datamodule(ctx, "WSSSDataModule").build_reader(stage)


def _pseudo_miou(ctx: PipelineContext, labels_dir: Path) -> float:
    """mIoU of a folder of pseudo labels against the training split's ground truth (NaN without masks)."""
    dataset = split_reader(ctx)
    if not dataset.has_masks():
        return float("nan")
    return float(evaluate_reader(labels_dir, dataset, _train_split(ctx))["miou"])


def count_boxes(dataset) -> int:
    """Number of boxes of a reader's split (from the XML of VOC-layout sets without decoding images)."""
    if hasattr(dataset, "annotations"):
        return int(sum(len(a.boxes) for a in (dataset.annotations(i) for i in dataset.ids) if a is not None))
    return int(sum(len(dataset.load(i)["boxes"]) for i in dataset.ids))


# ---------------------------------------------------------------------- image labels
def classifier_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                     cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Train the CAM classifier on image-level labels."""
    dm = make_datamodule(ctx, cfg.get("datamodule", "ImageLabelDataModule"), cfg.get("data"))
    _, ckpt = fit_model(ctx, stage_dir, "classifier", cfg["model"], dm, cfg.get("trainer"))
    return {"outputs": {"checkpoint": str(ckpt)}}


def cams_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
               cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Multi-scale CAMs and argmax pseudo labels on the training split."""
    from ..tasks import CAMClassifier

    model = CAMClassifier.load_from_checkpoint(upstream["classifier"].outputs["checkpoint"], map_location="cpu",
                                               weights_only=False)
    for key, value in (cfg.get("cam") or {}).items():
        model.hparams[key] = value
    dm = make_datamodule(ctx, "ImageLabelDataModule", deep_merge({"predict_split": _train_split(ctx)}, cfg.get("data")))
    predict_to_dir(ctx, stage_dir, "cams", model, dm, cfg.get("trainer"))
    return {"outputs": {"cams_dir": str(stage_dir / "cams"), "labels_dir": str(stage_dir / "labels")},
            "metrics": {"pseudo_miou": _pseudo_miou(ctx, stage_dir / "labels")}}


# ---------------------------------------------------------------------- segmenter
def segmenter_stage_for(source: str):
    """A segmenter stage reading pseudo labels from ``source``'s ``labels_dir`` output (or ground truth for
    ``source == "ground_truth"``); it reports the final val mIoU."""

    def run(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult], cfg: Dict[str, Any]) -> Dict[str, Any]:
        if source == "ground_truth":
            dm = make_datamodule(ctx, "MaskDataModule", cfg.get("data"))
        else:
            labels = upstream[source].outputs["labels_dir"]
            dm = make_datamodule(ctx, "PseudoMaskDataModule", deep_merge({"pseudo_mask_dir": labels}, cfg.get("data")))
        model, ckpt = fit_model(ctx, stage_dir, "segmenter", cfg["model"], dm, cfg.get("trainer"))
        metrics = validate_model(ctx, stage_dir, "segmenter", model, dm, cfg.get("trainer"))
        return {"outputs": {"checkpoint": str(ckpt)}, "metrics": {"val_miou": metrics["val/miou"]}}

    return run


# ---------------------------------------------------------------------- boxes
_READER = None


def _set_reader(reader) -> None:
    global _READER
    _READER = reader


def _box_mask_job(args) -> str:
    """Worker: one image's box mask, written atomically (top-level so process pools can pickle it)."""
    from ..boxes import make_box_mask

    image_id, name, kwargs, path = args
    sample = _READER.load(image_id)
    write_label_png(path, make_box_mask(name, sample["image"], sample["boxes"], sample["box_labels"], source=image_id, **kwargs))
    return image_id


def box_init_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                   cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Box-to-mask pseudo labels of every configured initializer on the training split (``processes`` workers)."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    dataset = split_reader(ctx)
    processes = int(cfg.get("processes") or os.cpu_count() or 1)
    outputs: Dict[str, Any] = {}
    metrics: Dict[str, float] = {}
    for name in cfg["initializers"]:
        folder = stage_dir / name
        kwargs = (cfg.get("kwargs") or {}).get(name, {})
        jobs = [(i, name, kwargs, folder / f"{i}.png") for i in dataset.ids if not (folder / f"{i}.png").is_file()]
        bar = tqdm(total=len(jobs), desc=f"box masks ({name})", disable=not ctx.config.get("progress_bar", True))
        if processes > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(processes, initializer=_set_reader, initargs=(dataset,)) as pool:
                for _ in pool.map(_box_mask_job, jobs, chunksize=8):
                    bar.update()
        else:
            _set_reader(dataset)
            for job in jobs:
                _box_mask_job(job)
                bar.update()
        bar.close()
        outputs[f"{name}_dir"] = str(folder)
        metrics[name] = _pseudo_miou(ctx, folder)
    outputs["num_boxes"] = count_boxes(dataset)
    return {"outputs": outputs, "metrics": metrics}


# ---------------------------------------------------------------------- refinement
def affinity_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                   cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Confident affinity labels from the CAMs, then AffinityNet training on them."""
    from ..refine.affinity_targets import write_affinity_labels

    dataset = split_reader(ctx)
    labels = stage_dir / "affinity_labels"
    label_cfg = dict(cfg.get("labels") or {"mode": "psa"})
    write_affinity_labels(dataset, Path(upstream["cams"].outputs["cams_dir"]), labels,
                          progress=bool(ctx.config.get("progress_bar", True)), **label_cfg)
    dm = make_datamodule(ctx, "PseudoMaskDataModule", deep_merge({"pseudo_mask_dir": str(labels)}, cfg.get("data")))
    _, ckpt = fit_model(ctx, stage_dir, "affinity", cfg["model"], dm, cfg.get("trainer"))
    return {"outputs": {"checkpoint": str(ckpt), "affinity_labels_dir": str(labels)}}


def random_walk_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                      cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Propagate the CAMs with the learnt affinities; pseudo labels of the training split."""
    from ..tasks import AffinityRefiner

    model = AffinityRefiner.load_from_checkpoint(upstream["affinity"].outputs["checkpoint"], map_location="cpu",
                                                 weights_only=False, cams_dir=upstream["cams"].outputs["cams_dir"],
                                                 **(cfg.get("walk") or {}))
    dm = make_datamodule(ctx, "ImageLabelDataModule", deep_merge({"predict_split": _train_split(ctx)}, cfg.get("data")))
    predict_to_dir(ctx, stage_dir, "random_walk", model, dm, cfg.get("trainer"))
    return {"outputs": {"labels_dir": str(stage_dir / "labels")},
            "metrics": {"pseudo_miou": _pseudo_miou(ctx, stage_dir / "labels")}}


def boxsup_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                 cfg: Dict[str, Any]) -> Dict[str, Any]:
    """BoxSup rounds from the chosen initializer; the last round's masks are the pseudo labels."""
    import json

    dm = make_datamodule(ctx, "BoxDataModule", cfg.get("data"))
    rounds_dir = stage_dir / "rounds"
    _, ckpt = fit_model(ctx, stage_dir, "boxsup", cfg["model"], dm, cfg.get("trainer"),
                        extra_init={"out_dir": str(rounds_dir)})
    rounds = json.loads((rounds_dir / "rounds.json").read_text())
    last = max(rounds, key=lambda k: int(k.split("_")[1]))
    metrics = {f"boxsup_{key}": (float("nan") if value is None else float(value)) for key, value in rounds.items()}
    return {"outputs": {"checkpoint": str(ckpt), "labels_dir": str(rounds_dir / last)}, "metrics": metrics}
