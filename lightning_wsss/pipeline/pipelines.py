"""Assembling and running a supervision pipeline from one config; writing ``summary.json``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..io import write_json_atomic
from .config import deep_merge, validate_config
from .costs import annotation_hours
from .defaults import DEFAULTS, STAGES_BY_SUPERVISION
from .runner import PipelineContext, Stage, StageResult, run_stages
from . import stages as S

STAGE_FUNCTIONS = {
    "classifier": (S.classifier_stage, ()),
    "cams": (S.cams_stage, ("classifier",)),
    "affinity": (S.affinity_stage, ("cams",)),
    "random_walk": (S.random_walk_stage, ("cams", "affinity")),
    "box_init": (S.box_init_stage, ()),
    "boxsup": (S.boxsup_stage, ()),
}

SEGMENTER_SOURCE = {"image": "random_walk", "box": "boxsup", "full": "ground_truth"}


def resolve(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config with the defaults filled in."""
    return deep_merge(DEFAULTS, config)


def build_stages(config: Mapping[str, Any]) -> List[Stage]:
    """The ordered stages of ``config['supervision']``, each with its resolved, hashable config.

    Every stage's config includes the shared ``dataset``, ``data``, ``trainer`` and ``seed`` settings, so a
    change there reruns everything while a change to one stage reruns it and the stages after it.
    """
    supervision = config["supervision"]
    shared = {key: config.get(key) for key in ("dataset", "data", "trainer", "seed")}
    stages: List[Stage] = []
    for name in STAGES_BY_SUPERVISION[supervision]:
        stage_cfg = dict(config["stages"].get(name) or {})
        if name == "boxsup":
            stage_cfg["model"] = deep_merge(stage_cfg.get("model") or {}, {"init_args": {"seed": config.get("seed", 0)}})
        if name == "segmenter":
            source = SEGMENTER_SOURCE[supervision]
            fn, upstream = S.segmenter_stage_for(source), (() if source == "ground_truth" else (source,))
        else:
            fn, upstream = STAGE_FUNCTIONS[name]
        stages.append(Stage(name, {"stage": stage_cfg, "shared": shared}, _unwrap(fn), upstream))
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
    if supervision == "image":
        pseudo = {"cam": results["cams"].metrics["pseudo_miou"], "random_walk": results["random_walk"].metrics["pseudo_miou"]}
    elif supervision == "box":
        pseudo = dict(results["box_init"].metrics)
        pseudo.update(results["boxsup"].metrics)
    costs = config.get("costs") or {}
    hours = annotation_hours(supervision, len(train), num_boxes=S.count_boxes(train) if supervision == "box" else 0,
                             box_protocol=costs.get("box_protocol", "extreme_clicking"))
    clean = {k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)) for k, v in pseudo.items()}
    return {
        "pseudo_miou": clean,
        "val_miou": float(results["segmenter"].metrics["val_miou"]),
        "annotation_hours": round(hours, 3),
        "wall_s": round(wall_s, 1),
        "stages": {name: {"hash": r.hash, "dir": r.dir, "reused": r.reused, "wall_s": round(r.wall_s, 1)} for name, r in results.items()},
    }


def run_pipeline(config: Mapping[str, Any], out_dir: Path, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run one supervision pipeline and merge its entry into ``out_dir/summary.json``.

    Returns:
        the whole summary dict (``dataset``, ``num_train``, ``num_val``, ``supervision`` -> entries).
    """
    validate_config(config)
    resolved = resolve(config)
    out_dir = Path(out_dir)
    ctx = PipelineContext(out_dir / resolved["supervision"], resolved, log)
    start = time.perf_counter()
    results = run_stages(ctx, build_stages(resolved))
    entry = summarize(resolved, results, sum(r.wall_s for r in results.values()) if results else time.perf_counter() - start)
    return update_summary(out_dir, resolved, {resolved["supervision"]: entry})


def update_summary(out_dir: Path, config: Mapping[str, Any], entries: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge supervision entries into ``out_dir/summary.json`` (atomic write) and return the summary."""
    import json

    path = Path(out_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    root = config["dataset"]["root"]
    data = config.get("data") or {}
    ctx = PipelineContext(Path(out_dir), config)
    summary["dataset"] = config["dataset"].get("name", Path(root).name)
    summary["num_train"] = len(S.split_reader(ctx, "fit"))
    summary["num_val"] = len(S.split_reader(ctx, "validate")) if data.get("val_split", "val") else 0
    summary.setdefault("supervision", {}).update(entries)
    write_json_atomic(path, summary)
    return summary
