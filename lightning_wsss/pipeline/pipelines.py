"""Assembling and running a supervision pipeline from one config; writing ``summary.json``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import DataError
from ..io import file_lock, write_json_atomic
from .config import deep_merge, validate_config
from .costs import annotation_hours
from .defaults import DEFAULTS, STAGES_BY_SUPERVISION
from .runner import PipelineContext, Stage, StageResult, run_stages
from .training import stage_seed
from . import stages as S

STAGE_FUNCTIONS = {
    "seed_classifier": (S.classifier_stage, ()),
    "seed_cams": (S.cams_stage, ("seed_classifier",)),
    "classifier": (S.classifier_stage, ()),
    "cams": (S.cams_stage, ("classifier",)),
    "affinity": (S.affinity_stage, ("cams",)),
    "random_walk": (S.random_walk_stage, ("cams", "affinity")),
    "box_init": (S.box_init_stage, ()),
    "boxsup": (S.boxsup_stage, ()),
    "hybrid_labels": (S.hybrid_labels_stage, ("random_walk", "box_init")),
}

IMAGE_LABEL_STAGES = ("seed_classifier", "seed_cams", "classifier", "cams", "affinity", "random_walk")

SEGMENTER_SOURCE = {"image": "random_walk", "box": "boxsup", "full": "ground_truth", "hybrid": "hybrid_labels"}

# image pipeline: what the segmenter trains on (``stages.segmenter.labels_from``): the random walk's labels (the
# default), the CAM labels, or the confident affinity labels (fg / bg / 255: the seeds of SECSegmenter)
LABEL_SOURCES = {"random_walk": ("random_walk", "labels_dir"), "cams": ("cams", "labels_dir"),
                 "affinity": ("affinity", "affinity_labels_dir")}


def resolve(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config with the defaults filled in."""
    return deep_merge(DEFAULTS, config)


def uses_cda(config: Mapping[str, Any]) -> bool:
    """Whether the classifier trains with context decoupling (it then needs a seed classifier's CAM labels)."""
    from ..datamodules.cda import CDADataModule
    from .config import resolve_class

    name = (config["stages"].get("classifier") or {}).get("datamodule", "ImageLabelDataModule")
    return issubclass(resolve_class(name, "data"), CDADataModule)


def hybrid_box_ids(config: Mapping[str, Any]) -> List[str]:
    """The box images of a ``hybrid`` pipeline (``hybrid.box_fraction`` + ``hybrid.seed``, or ``hybrid.box_list``)."""
    from ..datamodules.hybrid import select_box_images

    hybrid = config.get("hybrid") or {}
    ids = S.split_reader(PipelineContext(Path("."), config), "fit").ids
    fraction = hybrid.get("box_fraction") if hybrid.get("box_list") is None else None
    return select_box_images(ids, fraction, int(hybrid.get("seed", 0)), hybrid.get("box_list"))


def stage_names(config: Mapping[str, Any]) -> List[str]:
    """The stages of the config's supervision, in order (CDA prepends a seed classifier and its CAMs)."""
    names = list(STAGES_BY_SUPERVISION[config["supervision"]])
    if "classifier" in names and uses_cda(config):
        names = ["seed_classifier", "seed_cams"] + names
    return names


def build_stages(config: Mapping[str, Any]) -> List[Stage]:
    """The ordered stages of ``config['supervision']``, each with its resolved, hashable config.

    Every stage's config includes the shared ``dataset``, ``data``, ``trainer`` and ``seed`` settings, so a
    change there reruns everything while a change to one stage reruns it and the stages after it. In a
    ``hybrid`` pipeline the image-label stages do not depend on the box fraction (unless the CAMs of box
    images are restricted to their boxes) and live in the image pipeline's folder (``OUT/image``), so the
    points of a cost curve and the image pipeline share them.
    """
    supervision = config["supervision"]
    shared = {key: config.get(key) for key in ("dataset", "data", "trainer", "seed")}
    box_ids = hybrid_box_ids(config) if supervision == "hybrid" else None
    hybrid = config.get("hybrid") or {}
    stages: List[Stage] = []
    for name in stage_names(config):
        stage_cfg = dict(config["stages"].get(name) or {})
        upstream_extra: tuple = ()
        if name == "boxsup":
            stage_cfg["model"] = deep_merge(stage_cfg.get("model") or {}, {"init_args": {"seed": config.get("seed", 0)}})
        if name == "seed_classifier":  # the plain CAM classifier whose CAM labels give CDA its objects
            stage_cfg = deep_merge(config["stages"]["classifier"], {"model": {"class_path": "CAMClassifier"}})
            stage_cfg.pop("datamodule", None)
            stage_cfg.pop("data", None)
        if name == "seed_cams":
            stage_cfg = dict(config["stages"].get("cams") or {})
        if name == "classifier" and uses_cda(config):
            upstream_extra = ("seed_cams",)
        if name == "affinity" and stage_cfg.get("init_from") == "classifier":
            upstream_extra = ("classifier",)  # its checkpoint starts AffinityNet's backbone
        if box_ids is not None:
            if name == "box_init":
                stage_cfg["ids"] = box_ids
            if name == "cams" and hybrid.get("restrict_cams_to_boxes", False):
                stage_cfg["restrict_to_boxes"] = box_ids
            if name == "hybrid_labels":
                box_source = hybrid.get("box_source", "grabcut")
                if box_source not in (config["stages"].get("box_init") or {}).get("initializers", []):
                    raise ValueError(f"hybrid.box_source {box_source!r} must be one of stages.box_init.initializers")
                stage_cfg.update(box_ids=box_ids, box_source=box_source)
        if name == "segmenter":
            source, output = SEGMENTER_SOURCE[supervision], "labels_dir"
            if supervision == "image":
                labels_from = stage_cfg.pop("labels_from", "random_walk")
                if labels_from not in LABEL_SOURCES:
                    raise ValueError(f"stages.segmenter.labels_from must be one of {sorted(LABEL_SOURCES)}, got {labels_from!r}")
                source, output = LABEL_SOURCES[labels_from]
                if labels_from != "random_walk":  # the default stays out of the hash: earlier runs stay valid
                    stage_cfg["labels_from"] = labels_from
            fn, upstream = S.segmenter_stage_for(source, output), (() if source == "ground_truth" else (source,))
        else:
            fn, upstream = STAGE_FUNCTIONS[name]
        folder = {"seed_classifier": "classifier", "seed_cams": "cams"}.get(name) if uses_cda(config) else None
        # hybrid: the image-label stages live with the image pipeline's (same hashes when the settings match)
        root = "../image" if supervision == "hybrid" and name in IMAGE_LABEL_STAGES else None
        stages.append(Stage(name, {"stage": stage_cfg, "shared": shared}, _unwrap(fn), tuple(upstream) + upstream_extra,
                            folder, root))
    return stages


def _unwrap(fn: Callable) -> Callable:
    """Stage functions receive their own section; the hash covers the shared settings too."""

    def run(ctx, stage_dir, upstream, config):
        return fn(ctx, stage_dir, upstream, config["stage"])

    return run


def summarize(config: Mapping[str, Any], results: Mapping[str, StageResult], wall_s: float) -> Dict[str, Any]:
    """The ``summary.json`` entry of one supervision type (mIoU as fractions; NaN becomes null)."""
    supervision = config["supervision"]
    train = S.split_reader(PipelineContext(Path("."), config), "fit")
    pseudo: Dict[str, Optional[float]] = {}
    if "seed_cams" in results:  # CDA: the plain classifier's CAMs that gave the pasted objects
        pseudo["seed_cam"] = results["seed_cams"].metrics["pseudo_miou"]
    if "cams" in results:
        pseudo["cam"] = results["cams"].metrics["pseudo_miou"]
        pseudo["random_walk"] = results["random_walk"].metrics["pseudo_miou"]
    if "box_init" in results:
        pseudo.update({f"box_{k}" if supervision == "hybrid" else k: v for k, v in results["box_init"].metrics.items()})
    if "boxsup" in results:
        pseudo.update(results["boxsup"].metrics)
    if "hybrid_labels" in results:
        pseudo.update(results["hybrid_labels"].metrics)
    pseudo.update({k: v for k, v in results["segmenter"].metrics.items() if k.startswith("selftrain_")})
    costs = config.get("costs") or {}
    protocol = costs.get("box_protocol", "extreme_clicking")
    extra: Dict[str, Any] = {}
    if supervision == "hybrid":
        outputs = results["hybrid_labels"].outputs
        hours = annotation_hours("hybrid", len(train), num_boxes=int(outputs["num_boxes"]), box_protocol=protocol,
                                 num_box_images=len(outputs["box_ids"]))
        hybrid = config.get("hybrid") or {}
        fraction = hybrid.get("box_fraction") if hybrid.get("box_list") is None else len(outputs["box_ids"]) / max(1, len(train))
        extra = {"box_fraction": fraction,
                 "num_box_images": len(outputs["box_ids"]), "num_boxes": int(outputs["num_boxes"])}
    else:
        hours = annotation_hours(supervision, len(train), num_boxes=S.count_boxes(train) if supervision == "box" else 0,
                                 box_protocol=protocol)
    labels_from = (config["stages"].get("segmenter") or {}).get("labels_from")
    if supervision == "image" and labels_from:
        extra["trained_on"] = labels_from
    clean = {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)) for k, v in pseudo.items()}
    return {
        **extra,
        "pseudo_miou": clean,
        "val_miou": float(results["segmenter"].metrics["val_miou"]),
        "annotation_hours": round(hours, 3),
        "wall_s": round(wall_s, 1),
        "stages": {name: {"hash": r.hash, "dir": r.dir, "reused": r.reused, "wall_s": round(r.wall_s, 1)} for name, r in results.items()},
    }


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
    validate_config(config)
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


def seed_spread(val_miou_by_seed: Mapping[int, Optional[float]]) -> Dict[str, Any]:
    """Val mIoU of one set of pseudo labels over segmenter seeds.

    Returns:
        ``{"val_miou": {seed (str): mIoU}, "mean": float, "std": float (sample, 0 for one seed), "min", "max"}``;
        seeds without a val mIoU (no val split) are left out of the statistics.
    """
    values = np.array([v for v in val_miou_by_seed.values() if v is not None], dtype=np.float64)
    stats = {"mean": None, "std": None, "min": None, "max": None}
    if values.size:
        stats = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                 "min": float(values.min()), "max": float(values.max())}
    return {"val_miou": {str(k): v for k, v in sorted(val_miou_by_seed.items())}, **stats}


def summary_key(config: Mapping[str, Any]) -> str:
    """The entry name in ``summary.json``: ``summary_key`` when set (e.g. ``hybrid_0.1`` on a cost curve, or
    ``image_erasing``), else the supervision."""
    return str(config.get("summary_key") or config["supervision"])


def update_summary(out_dir: Path, config: Mapping[str, Any], entries: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge supervision entries into ``out_dir/summary.json`` and return the summary.

    Read, merge and (atomic) write happen under a lock on ``out_dir/summary.json.lock``, so pipelines that share
    an output folder and finish at the same time keep every entry.
    """
    path = Path(out_dir) / "summary.json"
    root = config["dataset"]["root"]
    data = config.get("data") or {}
    ctx = PipelineContext(Path(out_dir), config)
    header = {"dataset": config["dataset"].get("name", Path(root).name),
              "num_train": len(S.split_reader(ctx, "fit")),
              "num_val": len(S.split_reader(ctx, "validate")) if data.get("val_split", "val") else 0}
    with file_lock(path.with_name(path.name + ".lock")):
        summary = read_summary(path)
        summary.update(header)
        summary.setdefault("supervision", {}).update(entries)
        write_json_atomic(path, summary)
    return summary


def read_summary(path: Path) -> Dict[str, Any]:
    """``summary.json`` as a dict (empty when absent).

    Raises:
        DataError: the file is not a JSON object (naming it).
    """
    import json

    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"unreadable summary ({exc}); move it away to start a new one") from exc
    if not isinstance(summary, dict) or not isinstance(summary.get("supervision", {}), dict):
        raise DataError(path, "summary is not a JSON object with a 'supervision' mapping")
    return summary
