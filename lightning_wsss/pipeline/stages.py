"""The functions of the built-in pipeline stages (declared in :mod:`.builtin`).

Each takes ``(ctx, stage_dir, upstream, cfg)``: ``upstream`` maps the artifacts it reads (``cams``, ``labels``,
``classifier``...) to the results of the stages that wrote them, ``cfg`` is its stage config. It returns
``{"outputs": {...}, "metrics": {...}}``.

Every rank of a multi-process run calls each function (``ctx.world``): training runs under DDP, prediction on
each rank's share (:mod:`.training`), and the CPU work (affinity labels, box masks, the hybrid union, scoring)
on ``ctx.world.share(ids)``; scores sum their confusion matrices over the ranks, so each image counts once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
from tqdm.auto import tqdm

from ..io import read_label_png, write_label_png
from ..metrics import evaluate_reader
from ..serialization import load_model_checkpoint
from ..threads import limit_worker_threads, owned_cores
from .config import deep_merge
from .runner import PipelineContext, StageResult
from .training import fit_model, log_shares, make_datamodule, predict_to_dir, show_progress, validate_model


def _train_split(ctx: PipelineContext) -> str:
    return (ctx.config.get("data") or {}).get("train_split", "train")


def split_reader(ctx: PipelineContext, stage: str = "fit"):
    """The raw reader of a stage's split, as the pipeline's DataModule builds it (VOC layout or COCO)."""
    return make_datamodule(ctx, "WSSSDataModule").build_reader(stage)


def _subset_reader(ctx: PipelineContext, ids: List[str]):
    """The training split's reader restricted to ``ids``."""
    return make_datamodule(ctx, "WSSSDataModule", {"train_ids": list(ids)}).build_reader("fit")


def pseudo_miou(ctx: PipelineContext, labels_dir: Path, dataset=None) -> float:
    """mIoU of a folder of pseudo labels against the ground truth of ``dataset`` (default: the training split;
    a subset reader scores those images only); NaN without masks or images. Once every rank has written its
    share, each scores its share of the images and the confusion matrices are summed."""
    dataset = split_reader(ctx) if dataset is None else dataset
    if len(dataset) == 0 or not dataset.has_masks():
        return float("nan")
    world = ctx.world
    world.barrier()
    return float(evaluate_reader(labels_dir, dataset, _train_split(ctx), ids=world.share(dataset.ids),
                                 reduce=world.reduce_sum)["miou"])


def count_boxes(dataset, ids: Optional[List[str]] = None) -> int:
    """Number of boxes of a reader's split, or of its ``ids`` (from the XML of VOC-layout sets without decoding
    images)."""
    ids = dataset.ids if ids is None else ids
    if hasattr(dataset, "annotations"):
        return int(sum(len(a.boxes) for a in (dataset.annotations(i) for i in ids) if a is not None))
    return int(sum(len(dataset.load(i)["boxes"]) for i in ids))


def _total_boxes(ctx: PipelineContext, dataset) -> int:
    """:func:`count_boxes` of the whole split, each rank counting its share."""
    import torch

    return int(ctx.world.reduce_sum(torch.tensor(count_boxes(dataset, ctx.world.share(dataset.ids)))))


def _progress(ctx: PipelineContext) -> bool:
    """Whether this process shows progress bars (the config's ``progress_bar``; rank 0 only; never into a file)."""
    return show_progress(ctx) and ctx.world.is_zero


# ---------------------------------------------------------------------- image labels
def classifier_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                     cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Train the CAM classifier on image-level labels (a DataModule that pastes objects, CDA's, cuts them out
    along the ``labels`` it reads, or along its own ``data.object_mask_dir`` where it reads none)."""
    data = dict(cfg.get("data") or {})
    if "labels" in upstream:
        data["object_mask_dir"] = upstream["labels"].outputs["labels_dir"]
    dm = make_datamodule(ctx, cfg.get("datamodule", "ImageLabelDataModule"), data)
    _, ckpt = fit_model(ctx, stage_dir, "classifier", cfg["model"], dm, cfg.get("trainer"))
    return {"outputs": {"checkpoint": str(ckpt), "class_path": cfg["model"].get("class_path", "CAMClassifier")}}


def cams_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
               cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Multi-scale CAMs and argmax pseudo labels on the training split.

    ``class_path`` (optional) loads the classifier's checkpoint into another CAM method that only changes how
    maps are made (``LPCAMClassifier``), so it is compared with the plain CAM on the same trained classifier.
    """
    from .config import resolve_class

    classifier = upstream["classifier"]
    model_cls = resolve_class(cfg.get("class_path") or classifier.outputs.get("class_path", "CAMClassifier"), "model")
    model = load_model_checkpoint(model_cls, classifier.outputs["checkpoint"])
    for key, value in (cfg.get("cam") or {}).items():
        model.hparams[key] = value
    dm = make_datamodule(ctx, "ImageLabelDataModule", deep_merge({"predict_split": _train_split(ctx)}, cfg.get("data")))
    predict_to_dir(ctx, stage_dir, "cams", model, dm, cfg.get("trainer"))
    if cfg.get("restrict_to_boxes"):
        restrict_saved_cams(ctx, stage_dir, cfg["restrict_to_boxes"], model)
    return {"outputs": {"cams_dir": str(stage_dir / "cams"), "labels_dir": str(stage_dir / "labels")},
            "metrics": {"pseudo_miou": pseudo_miou(ctx, stage_dir / "labels")}}


def restrict_saved_cams(ctx: PipelineContext, stage_dir: Path, image_ids: List[str], model) -> None:
    """Hybrid supervision: restrict the saved CAMs of the box images to their boxes and rewrite their labels.

    Idempotent (restricting twice changes nothing), so an interrupted pass is simply rerun.
    """
    import torch

    from ..cam.box_restriction import restrict_cams_to_boxes
    from ..cam.files import load_cams
    from ..cam.multiscale import cams_to_label
    from ..io import write_npz_atomic

    reader = split_reader(ctx)
    for image_id in ctx.world.share(image_ids):
        path = stage_dir / "cams" / f"{image_id}.npz"
        saved = load_cams(path)
        sample = reader.load(image_id)
        cams = restrict_cams_to_boxes(saved["cams"], saved["keys"], sample["boxes"], sample["box_labels"])
        with torch.no_grad():
            labels = cams_to_label(model.background(torch.from_numpy(cams)[None]), torch.from_numpy(saved["keys"])[None])
        write_npz_atomic(path, cams=cams.astype(np.float16), keys=saved["keys"])
        write_label_png(stage_dir / "labels" / f"{image_id}.png", labels[0].numpy().astype(np.uint8))


# ---------------------------------------------------------------------- segmenter
def training_datamodule(inputs: Mapping[str, str]) -> str:
    """The DataModule a segmenter trains with, from the stages that wrote what it reads (artifact -> stage):
    the ground-truth masks without labels, :class:`HybridDataModule` over box and image-label masks when the
    labels come with their ``label_parts``, else the pseudo masks."""
    labels = inputs.get("labels") or inputs.get("affinity_labels")
    if labels is None:
        return "MaskDataModule"
    return "HybridDataModule" if inputs.get("label_parts") == labels else "PseudoMaskDataModule"


def stage_init_args(model_cls, stage_dir: Path) -> Dict[str, Any]:
    """What a task asks its stage to add to its init arguments (``stage_init_args``: a rounds task's ``out_dir``)."""
    hook = getattr(model_cls, "stage_init_args", None)
    return dict(hook(stage_dir)) if callable(hook) else {}


def task_metrics(model) -> Dict[str, float]:
    """The metrics a task reports for the summary (``summary_metrics``: a rounds task's round mIoUs)."""
    hook = getattr(model, "summary_metrics", None)
    return dict(hook()) if callable(hook) else {}


def segmenter_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                    cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Train the segmenter on the labels it reads (:func:`training_datamodule`); it reports the final val mIoU
    and the task's own metrics (:func:`task_metrics`: a self-training segmenter's rounds)."""
    from .config import resolve_class

    kind = training_datamodule({name: result.name for name, result in upstream.items()})
    if kind == "HybridDataModule":
        parts = upstream["label_parts"].outputs
        data = {"box_mask_dir": parts["box_mask_dir"], "image_mask_dir": parts["image_mask_dir"], "box_ids": parts["box_ids"]}
    elif kind == "PseudoMaskDataModule":
        labels = upstream["labels"].outputs["labels_dir"] if "labels" in upstream else \
            upstream["affinity_labels"].outputs["affinity_labels_dir"]
        data = {"pseudo_mask_dir": labels}
    else:
        data = {}
    dm = make_datamodule(ctx, kind, deep_merge(data, cfg.get("data")) if data else cfg.get("data"))
    model_cls = resolve_class(cfg["model"].get("class_path", "DeepLabSegmenter"), "model")
    model, ckpt = fit_model(ctx, stage_dir, "segmenter", cfg["model"], dm, cfg.get("trainer"),
                            extra_init=stage_init_args(model_cls, stage_dir) or None, seed=cfg.get("seed"))
    metrics = validate_model(ctx, stage_dir, "segmenter", model, dm, cfg.get("trainer"))
    outputs = {"checkpoint": str(ckpt), "class_path": cfg["model"].get("class_path", "DeepLabSegmenter")}
    return {"outputs": outputs, "metrics": {"val_miou": metrics["val/miou"], **task_metrics(model)}}


# ---------------------------------------------------------------------- hybrid
def hybrid_labels_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                        cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The union of the two pseudo-label sets: box masks (``box_source`` initializer) for the box images, the image
    labels' last refinement (the random walk's, or ``cam_crf``'s) for the others; written to ``labels/`` (for
    inspection and ``wsss evaluate``) and scored as a whole and per part."""
    from ..io import copy_file_atomic

    box_ids = list(cfg["box_ids"])
    box_dir = Path(upstream["box_masks"].outputs[f"{cfg['box_source']}_dir"])
    image_dir = Path(upstream["labels"].outputs["labels_dir"])
    dataset = split_reader(ctx)
    chosen = set(box_ids)
    copied = 0
    for image_id in ctx.world.share(dataset.ids):
        target = stage_dir / "labels" / f"{image_id}.png"
        if not target.is_file():
            copy_file_atomic((box_dir if image_id in chosen else image_dir) / f"{image_id}.png", target)
            copied += 1
    log_shares(ctx, "hybrid_labels", "labels copied", copied)
    image_ids = [i for i in dataset.ids if i not in chosen]
    # the box part's score is box_init's; here the union and the image-label part
    metrics = {"hybrid": pseudo_miou(ctx, stage_dir / "labels", dataset),
               f"image_{upstream['labels'].name}":  # the image part, named after its stage (image_random_walk)
                   pseudo_miou(ctx, image_dir, _subset_reader(ctx, image_ids)) if image_ids else float("nan")}
    return {"outputs": {"labels_dir": str(stage_dir / "labels"), "box_mask_dir": str(box_dir),
                        "image_mask_dir": str(image_dir), "box_ids": box_ids,
                        "num_boxes": int(upstream["box_masks"].outputs["num_boxes"])},
            "metrics": metrics}


# ---------------------------------------------------------------------- boxes
_READER = None


def _set_reader(reader) -> None:
    global _READER
    _READER = reader


def _init_worker(reader) -> None:
    """Pool initializer: the reader, and one OpenCV / torch thread per worker (GrabCut and the CRF use OpenCV's
    and torch's pools)."""
    _set_reader(reader)
    limit_worker_threads()


def _box_mask_job(args) -> str:
    """Worker: one image's box mask, written atomically (top-level so process pools can pickle it)."""
    from ..boxes import make_box_mask

    image_id, name, kwargs, path = args
    sample = _READER.load(image_id)
    write_label_png(path, make_box_mask(name, sample["image"], sample["boxes"], sample["box_labels"], source=image_id, **kwargs))
    return image_id


def box_init_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                   cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Box-to-mask pseudo labels of every configured initializer on the training split, each rank on its share
    with ``processes`` workers (default: the cores the rank owns)."""
    dataset = split_reader(ctx) if cfg.get("ids") is None else _subset_reader(ctx, cfg["ids"])
    processes = int(cfg.get("processes") or owned_cores(ctx.world.local_size))
    outputs: Dict[str, Any] = {}
    metrics: Dict[str, float] = {}
    for name in cfg["initializers"]:
        folder = stage_dir / name
        kwargs = (cfg.get("kwargs") or {}).get(name, {})
        jobs = [(i, name, kwargs, folder / f"{i}.png") for i in ctx.world.share(dataset.ids)
                if not (folder / f"{i}.png").is_file()]
        bar = tqdm(total=len(jobs), desc=f"box masks ({name})", disable=not _progress(ctx))
        _run_jobs(_box_mask_job, jobs, dataset, processes, bar)
        log_shares(ctx, "box_init", f"{name} masks", len(jobs))
        folder.mkdir(parents=True, exist_ok=True)
        outputs[f"{name}_dir"] = str(folder)
        metrics[name] = pseudo_miou(ctx, folder, dataset)
    outputs["num_boxes"] = _total_boxes(ctx, dataset)
    # what each folder was made with, so BoxSup can reuse the masks it would make the same way (seed_boxsup_masks)
    outputs["kwargs"] = {name: dict((cfg.get("kwargs") or {}).get(name, {})) for name in cfg["initializers"]}
    return {"outputs": outputs, "metrics": metrics}


def _run_jobs(job_fn, jobs: List[Any], dataset, processes: int, bar) -> None:
    """Run ``job_fn`` (a top-level function reading the worker's ``dataset``) on each of ``jobs``, in a pool of
    ``processes`` when there are several."""
    from concurrent.futures import ProcessPoolExecutor

    if processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(processes, initializer=_init_worker, initargs=(dataset,)) as pool:
            for _ in pool.map(job_fn, jobs, chunksize=8):
                bar.update()
    else:
        _set_reader(dataset)
        for job in jobs:
            job_fn(job)
            bar.update()
    bar.close()


# ---------------------------------------------------------------------- refinement
INIT_FROM = ("classifier", "imagenet", "none")


def affinity_init(cfg: Mapping[str, Any], upstream: Mapping[str, StageResult]) -> Dict[str, Any]:
    """The init arguments that start AffinityNet's backbone (``stages.affinity.init_from``).

    ``classifier``: the trained CAM classifier's backbone (``backbone_init``: its checkpoint; the refiner keeps its
    own ``weights`` with a warning where the backbones do not match); ``imagenet``: ``weights: imagenet``;
    ``none``: random weights; unset: the model's ``weights`` as configured.
    """
    init_from = cfg.get("init_from")
    if init_from is None:
        return {}
    if init_from not in INIT_FROM:
        raise ValueError(f"stages.affinity.init_from must be one of {INIT_FROM}, got {init_from!r}")
    if init_from == "imagenet":
        return {"weights": "imagenet"}
    if init_from == "none":
        return {"weights": None}
    classifier = upstream.get("classifier")
    if classifier is None:
        raise ValueError("stages.affinity.init_from: classifier needs the classifier stage upstream")
    return {"backbone_init": classifier.outputs["checkpoint"]}


def scheduled_trainer(trainer_cfg: Optional[Mapping[str, Any]], schedule: Optional[Mapping[str, Any]],
                      num_images: int, batch_size: int) -> Dict[str, Any]:
    """A stage's trainer settings with its length in optimiser steps that scale with the data set.

    ``schedule: {epochs: E, min_steps: S, max_steps: M}`` trains ``clamp(E * ceil(num_images / batch_size), S, M)``
    steps (``E`` defaults to the trainer's ``max_epochs``): psa trains about 10k steps, eight epochs of VOC, while
    six epochs of a 400-image set are 150 steps, too few for the affinities to separate objects. No schedule (or
    one whose bounds are all unset): the trainer settings unchanged.
    """
    cfg = dict(trainer_cfg or {})
    schedule = dict(schedule or {})
    unknown = set(schedule) - {"epochs", "min_steps", "max_steps"}
    if unknown:
        raise ValueError(f"schedule takes epochs, min_steps and max_steps, got {sorted(unknown)}")
    if not any(schedule.get(k) for k in ("min_steps", "max_steps")):
        return cfg
    epochs = int(schedule.get("epochs") or cfg.get("max_epochs") or 1)
    per_epoch = max(1, -(-int(num_images) // max(1, int(batch_size))))
    steps = max(int(schedule.get("min_steps") or 0), epochs * per_epoch)
    if schedule.get("max_steps"):
        steps = min(steps, int(schedule["max_steps"]))
    cfg.update(max_steps=int(steps), max_epochs=-1)
    return cfg


def affinity_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                   cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Confident affinity labels from the CAMs, then AffinityNet training on them (``init_from``: where its
    backbone starts, :func:`affinity_init`; ``schedule``: its length in steps, :func:`scheduled_trainer`).

    ``model.class_path`` chooses the refiner (``AffinityRefiner``, or IRN's ``BoundaryRefiner``); it joins the
    outputs so the random-walk stage loads the checkpoint into the same class."""
    from ..refine.affinity_targets import write_affinity_labels

    dataset = split_reader(ctx)
    labels = stage_dir / "affinity_labels"
    label_cfg = dict(cfg.get("labels") or {"mode": "psa"})
    pending = [i for i in ctx.world.share(dataset.ids) if not (labels / f"{i}.png").is_file()]
    if pending:
        write_affinity_labels(_subset_reader(ctx, pending), Path(upstream["cams"].outputs["cams_dir"]), labels,
                              progress=_progress(ctx), **label_cfg)
    log_shares(ctx, "affinity", "affinity label maps", len(pending))
    ctx.world.barrier()  # every rank trains on every label map
    dm = make_datamodule(ctx, "PseudoMaskDataModule", deep_merge({"pseudo_mask_dir": str(labels)}, cfg.get("data")))
    model_cfg = deep_merge(cfg["model"], {"init_args": affinity_init(cfg, upstream)})
    trainer_cfg = scheduled_trainer(cfg.get("trainer"), cfg.get("schedule"), len(dataset), dm.batch_size)
    _, ckpt = fit_model(ctx, stage_dir, "affinity", model_cfg, dm, trainer_cfg)
    return {"outputs": {"checkpoint": str(ckpt), "affinity_labels_dir": str(labels),
                        "class_path": model_cfg.get("class_path", "AffinityRefiner")}}


def walk_settings(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    """``stages.random_walk.walk`` as AffinityRefiner arguments (``mode`` is its ``walk_mode``)."""
    walk = dict(cfg.get("walk") or {})
    if "mode" in walk:
        walk["walk_mode"] = walk.pop("mode")
    return walk


def random_walk_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                      cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Propagate the CAMs with the learnt affinities; pseudo labels of the training split.

    ``walk: {mode: psa | irn, beta, t | log_t, bg_alpha (psa), bg_threshold (irn)}`` (see ``AffinityRefiner``).
    The checkpoint is loaded into the affinity stage's ``class_path`` (``AffinityRefiner`` for runs made before it
    was recorded).
    """
    from .config import resolve_class

    refiner = upstream["refiner"]
    model_cls = resolve_class(refiner.outputs.get("class_path") or "AffinityRefiner", "model")
    model = load_model_checkpoint(model_cls, refiner.outputs["checkpoint"],
                                  cams_dir=upstream["cams"].outputs["cams_dir"], **walk_settings(cfg))
    dm = make_datamodule(ctx, "ImageLabelDataModule", deep_merge({"predict_split": _train_split(ctx)}, cfg.get("data")))
    predict_to_dir(ctx, stage_dir, "random_walk", model, dm, cfg.get("trainer"))
    return {"outputs": {"labels_dir": str(stage_dir / "labels")},
            "metrics": {"pseudo_miou": pseudo_miou(ctx, stage_dir / "labels")}}


def cam_crf_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                  cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The CAM maps through a dense CRF at full resolution, no affinity network: pseudo labels of the training
    split (:func:`~lightning_wsss.refine.cam_crf.cam_crf_labels`), each rank on its share with ``processes``
    workers (default: the cores the rank owns).

    ``crf``: the CRF setting (default ``true``, psa's parameters); ``bg_mode`` / ``bg_threshold`` / ``bg_alpha``:
    the background channel, by default the CAM stage's (its ``cam`` settings, else the classifier's);
    ``ignore_changes``: 255 where the CRF changed the CAM labels; ``max_growth``: no class may gain more than this
    times its area in the CAM stage's labels (:func:`~lightning_wsss.refine.label_bounds.limit_growth`), so a lower
    ``bg_threshold`` lets the CRF reach an object's edges without flooding its context; ``min_kept``: every region
    of the CAM stage's labels keeps at least this share of its pixels
    (:func:`~lightning_wsss.refine.label_bounds.keep_regions`).
    """
    from ..refine.cam_crf import background_settings
    from ..serialization import checkpoint_hparams

    dataset = split_reader(ctx)
    hparams = checkpoint_hparams(upstream["classifier"].outputs["checkpoint"]) if "classifier" in upstream else {}
    settings = {**background_settings(cfg, hparams), "crf": cfg.get("crf", True),
                "ignore_changes": bool(cfg.get("ignore_changes", False)),
                "max_growth": cfg.get("max_growth"), "min_kept": cfg.get("min_kept")}
    cams_dir, folder = Path(upstream["cams"].outputs["cams_dir"]), stage_dir / "labels"
    bounded = settings["max_growth"] is not None or settings["min_kept"] is not None
    reference = Path(upstream["cams"].outputs["labels_dir"]) if bounded else None
    jobs = [(i, cams_dir / f"{i}.npz", reference / f"{i}.png" if reference else None, folder / f"{i}.png", settings)
            for i in ctx.world.share(dataset.ids) if not (folder / f"{i}.png").is_file()]
    processes = int(cfg.get("processes") or owned_cores(ctx.world.local_size))
    _run_jobs(_cam_crf_job, jobs, dataset, processes, tqdm(total=len(jobs), desc="CAM + CRF",
                                                           disable=not _progress(ctx)))
    log_shares(ctx, "cam_crf", "label maps", len(jobs))
    folder.mkdir(parents=True, exist_ok=True)
    return {"outputs": {"labels_dir": str(folder), "background": {k: settings[k] for k in BACKGROUND}},
            "metrics": {"pseudo_miou": pseudo_miou(ctx, folder, dataset)}}


BACKGROUND = ("bg_mode", "bg_threshold", "bg_alpha")


def _cam_crf_job(args) -> str:
    """Worker: one image's CAM + CRF labels, written atomically (top-level so process pools can pickle it)."""
    from ..cam.files import load_cams
    from ..errors import DataError
    from ..refine.cam_crf import cam_crf_labels

    image_id, cams_path, reference_path, path, settings = args
    saved = load_cams(cams_path)
    image = _READER.load(image_id)["image"]
    reference = read_label_png(reference_path) if reference_path is not None else None
    if reference is not None and reference.shape != image.shape[:2]:
        raise DataError(reference_path, f"CAM labels {reference.shape} do not fit an image of size {image.shape[:2]}")
    try:
        labels = cam_crf_labels(image, saved["cams"], saved["keys"], reference=reference, **settings)
    except ValueError as exc:
        raise DataError(cams_path, str(exc)) from None
    write_label_png(path, labels)
    return image_id


def reusable_box_masks(model_cls, init_args: Mapping[str, Any], out_dir: Path,
                       box_masks: Mapping[str, Any]) -> Dict[Path, Path]:
    """The folders of the ``box_init`` stage (``box_masks`` outputs) holding exactly the masks a BoxSup task would
    make for its round 0 and its proposals: target folder -> source folder.

    A folder qualifies when ``box_init`` ran that initializer with the settings BoxSup uses for it
    (``initializer_kwargs`` / ``proposal_kwargs``; the pipeline fills both from ``stages.box_init.kwargs``) and
    the task makes them as :class:`~lightning_wsss.tasks.BoxSupSegmenter` does (a subclass overriding
    ``initial_mask`` or ``proposal_masks`` gets none). Both call ``make_box_mask`` on the same raw samples, and
    GrabCut is seeded per box, so the files are the same bytes.
    """
    from ..tasks.boxsup import BoxSupSegmenter

    made_with = box_masks.get("kwargs")
    if made_with is None or not issubclass(model_cls, BoxSupSegmenter) \
            or model_cls.initial_mask is not BoxSupSegmenter.initial_mask \
            or model_cls.proposal_masks is not BoxSupSegmenter.proposal_masks:
        return {}
    from ..tasks.rounds import round_dir

    initializer = init_args.get("initializer")
    wanted = {round_dir(out_dir, 0): (initializer, init_args.get("initializer_kwargs") or {})}
    for name in init_args.get("proposals") or ():
        if name != initializer:
            wanted[out_dir / "proposals" / name] = (name, (init_args.get("proposal_kwargs") or {}).get(name) or {})
    return {target: Path(box_masks[f"{name}_dir"]) for target, (name, kwargs) in wanted.items()
            if name in made_with and f"{name}_dir" in box_masks and dict(made_with[name]) == dict(kwargs)}


def seed_boxsup_masks(ctx: PipelineContext, model_cls, init_args: Mapping[str, Any], out_dir: Path,
                      box_masks: Mapping[str, Any]) -> int:
    """Copy (atomically) the masks of :func:`reusable_box_masks` that BoxSup's folders lack, each rank its share;
    BoxSup reads masks already on disk instead of making them. Returns the number of files this rank copied."""
    from ..io import copy_file_atomic

    copied = 0
    for target, source in reusable_box_masks(model_cls, init_args, out_dir, box_masks).items():
        for path in ctx.world.share(sorted(source.glob("*.png"))):
            if not (target / path.name).is_file():
                copy_file_atomic(path, target / path.name)
                copied += 1
    ctx.world.barrier()
    return copied


def boxsup_stage(ctx: PipelineContext, stage_dir: Path, upstream: Dict[str, StageResult],
                 cfg: Dict[str, Any]) -> Dict[str, Any]:
    """BoxSup rounds from the chosen initializer; the last round's masks are the pseudo labels."""
    from ..tasks.rounds import round_dir
    from .config import resolve_class

    dm = make_datamodule(ctx, "BoxDataModule", cfg.get("data"))
    model_cls = resolve_class(cfg["model"].get("class_path", "BoxSupSegmenter"), "model")
    extra_init = stage_init_args(model_cls, stage_dir)
    if "box_masks" in upstream and "out_dir" in extra_init:
        copied = seed_boxsup_masks(ctx, model_cls, cfg["model"].get("init_args") or {}, Path(extra_init["out_dir"]),
                                   upstream["box_masks"].outputs)
        total = sum(ctx.world.gather(copied))
        if total:
            ctx.log(f"[boxsup] {total} round-0 / proposal masks taken from box_init (the same settings)")
    model, ckpt = fit_model(ctx, stage_dir, "boxsup", cfg["model"], dm, cfg.get("trainer"), extra_init=extra_init)
    last = max(int(key.split("_")[1]) for key in model.read_rounds())
    return {"outputs": {"checkpoint": str(ckpt), "labels_dir": str(round_dir(model.out_dir, last))},
            "metrics": task_metrics(model)}
