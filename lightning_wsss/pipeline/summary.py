"""The ``summary.json`` of a pipeline output folder: one entry per supervision (or ``summary_key``), with the
pseudo-label scores each stage declares, the val mIoU, the annotation cost and the stages' folders."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np

from ..errors import DataError
from ..io import file_lock, write_json_atomic
from .costs import annotation_hours
from .plan import plan, preset
from .runner import PipelineContext, StageResult
from .stages import count_boxes, split_reader

__all__ = ["summarize", "summary_key", "seed_spread", "update_summary", "read_summary"]


def pseudo_scores(config: Mapping[str, Any], results: Mapping[str, StageResult]) -> Dict[str, Any]:
    """The pseudo-label scores of the stages that ran, under the summary keys their declarations give (in stage
    order; a preset's ``summary_prefix`` prefixes a stage's keys)."""
    prefixes = preset(config).get("summary_prefix") or {}
    scores: Dict[str, Any] = {}
    for step in plan(config):
        if step.name in results:
            scores.update(step.spec.summary_entries(results[step.name].metrics, prefixes.get(step.name, "")))
    return scores


def _label_parts(config: Mapping[str, Any], results: Mapping[str, StageResult]) -> Optional[Dict[str, Any]]:
    """The outputs of the stage that split the images into box and image-label parts (hybrid), if any."""
    for step in plan(config):
        if "label_parts" in step.spec.writes and step.name in results:
            return results[step.name].outputs
    return None


def _clean(value: Any) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def summarize(config: Mapping[str, Any], results: Mapping[str, StageResult], wall_s: float) -> Dict[str, Any]:
    """The ``summary.json`` entry of one pipeline (mIoU as fractions; NaN becomes null)."""
    supervision = config["supervision"]
    train = split_reader(PipelineContext(Path("."), config), "fit")
    protocol = (config.get("costs") or {}).get("box_protocol", "extreme_clicking")
    extra: Dict[str, Any] = {}
    parts = _label_parts(config, results)
    if parts is not None:
        box_ids, num_boxes = parts["box_ids"], int(parts["num_boxes"])
        hours = annotation_hours(supervision, len(train), num_boxes=num_boxes, box_protocol=protocol,
                                 num_box_images=len(box_ids))
        hybrid = config.get("hybrid") or {}
        fraction = hybrid.get("box_fraction") if hybrid.get("box_list") is None else len(box_ids) / max(1, len(train))
        extra = {"box_fraction": fraction, "num_box_images": len(box_ids), "num_boxes": num_boxes}
    else:
        hours = annotation_hours(supervision, len(train), num_boxes=count_boxes(train) if supervision == "box" else 0,
                                 box_protocol=protocol)
    labels_from = (config["stages"].get("segmenter") or {}).get("labels_from")
    if labels_from:
        extra["trained_on"] = labels_from
    val = [r.metrics["val_miou"] for r in results.values() if "val_miou" in r.metrics]
    return {
        **extra,
        "pseudo_miou": {k: _clean(v) for k, v in pseudo_scores(config, results).items()},
        "val_miou": float(val[-1]) if val else None,
        "annotation_hours": round(hours, 3),
        "wall_s": round(wall_s, 1),
        "stages": {name: {"hash": r.hash, "dir": r.dir, "reused": r.reused, "wall_s": round(r.wall_s, 1),
                          "torch_threads": r.environment.get("torch_threads")}
                   for name, r in results.items()},
    }


def summary_key(config: Mapping[str, Any]) -> str:
    """The entry name in ``summary.json``: ``summary_key`` when set (e.g. ``hybrid_0.1`` on a cost curve, or
    ``image_erasing``), else the supervision."""
    return str(config.get("summary_key") or config["supervision"])


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
              "num_train": len(split_reader(ctx, "fit")),
              "num_val": len(split_reader(ctx, "validate")) if data.get("val_split", "val") else 0}
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
