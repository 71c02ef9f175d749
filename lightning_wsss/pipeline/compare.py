"""Merging the ``summary.json`` files of several pipeline runs into one supervision comparison.

Runs of different supervision types often happen apart (one cluster job each); :func:`merge_summaries`
joins their summaries, refusing to mix data sets or to pick silently between two different results for the
same supervision. :func:`write_comparison` writes the merged summary, an HTML page and the cost plot.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import DataError, PathLike
from ..io import read_text_file, write_json_atomic
from .report import ORDER, png_bytes, write_report

DATASET_KEYS = ("dataset", "num_train", "num_val")
"""Top-level keys that must agree between merged summaries."""

RESULT_KEYS = ("pseudo_miou", "val_miou", "annotation_hours")
"""Entry keys that must agree when two summaries hold the same supervision (``wall_s`` and ``stages`` may differ)."""


def summary_path(path: PathLike) -> Path:
    """``path`` itself if it is a file, else ``path/summary.json``."""
    path = Path(path)
    return path if path.is_file() else path / "summary.json"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_entry(path: Path, name: str, entry: Any) -> None:
    """Raise DataError unless ``entry`` is a well-formed supervision entry (as ``pipelines.summarize`` writes)."""
    if not isinstance(entry, dict):
        raise DataError(path, f"supervision {name!r} is a {type(entry).__name__}, not an object")
    if not _is_number(entry.get("annotation_hours")):
        raise DataError(path, f"supervision {name!r} has no numeric 'annotation_hours'")
    if not _is_number(entry.get("val_miou")):
        raise DataError(path, f"supervision {name!r} has no numeric 'val_miou'")
    pseudo = entry.get("pseudo_miou", {})
    if not isinstance(pseudo, dict) or not all(v is None or _is_number(v) for v in pseudo.values()):
        raise DataError(path, f"supervision {name!r}: 'pseudo_miou' must map stage names to numbers or null")
    if entry.get("wall_s") is not None and not _is_number(entry["wall_s"]):
        raise DataError(path, f"supervision {name!r}: 'wall_s' must be a number")


def load_summary(path: PathLike) -> Tuple[Path, Dict[str, Any]]:
    """Read and check one run's summary (``path`` = a run folder or a ``summary.json``).

    Returns:
        ``(file path, summary dict)``.

    Raises:
        DataError: the file is missing, not JSON, or not shaped like a pipeline summary.
    """
    file = summary_path(path)
    if not file.is_file():
        raise DataError(file, "no summary.json here; run `wsss pipeline CONFIG` or `wsss demo` to make one")
    text = read_text_file(file, "summary")
    try:
        summary = json.loads(text)
    except ValueError as exc:
        raise DataError(file, f"not a readable JSON file ({exc})") from exc
    if not isinstance(summary, dict):
        raise DataError(file, "a summary must be a JSON object")
    entries = summary.get("supervision")
    if not isinstance(entries, dict) or not entries:
        raise DataError(file, "no 'supervision' entries (not a summary written by `wsss pipeline` or `wsss demo`)")
    for name, entry in entries.items():
        _check_entry(file, name, entry)
    return file, summary


def _same_number(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[str]:
    """Names of the result numbers that differ between two entries of the same supervision."""
    diffs = []
    for key in ("val_miou", "annotation_hours"):
        if not _same_number(a.get(key), b.get(key)):
            diffs.append(f"{key} {a.get(key)} vs {b.get(key)}")
    pa, pb = a.get("pseudo_miou") or {}, b.get("pseudo_miou") or {}
    for stage in sorted(set(pa) | set(pb)):
        if stage not in pa or stage not in pb or not _same_number(pa[stage], pb[stage]):
            diffs.append(f"pseudo_miou[{stage}] {pa.get(stage, 'missing')} vs {pb.get(stage, 'missing')}")
    return diffs


def merge_summaries(paths: Sequence[PathLike]) -> Dict[str, Any]:
    """Merge the supervision entries of several runs' summaries.

    Args:
        paths: run folders holding ``summary.json`` (or the files themselves).

    Returns:
        a summary dict like ``pipelines.run_pipeline`` returns (``dataset``, ``num_train``, ``num_val``,
        ``supervision`` -> entries, ordered image, hybrid, box, full, then others) plus ``sources``:
        supervision -> the file its entry came from. A supervision found in several files with the same
        numbers is taken from the first.

    Raises:
        DataError: naming the file, if one is missing or invalid, if it describes another data set
            (``dataset``, ``num_train`` or ``num_val`` differ from the first file's), or if it holds a
            supervision already merged from another file with different ``val_miou``,
            ``annotation_hours`` or ``pseudo_miou``.
        ValueError: ``paths`` is empty.
    """
    if not paths:
        raise ValueError("merge_summaries needs at least one summary")
    merged: Dict[str, Any] = {}
    entries: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    first: Optional[Path] = None
    for path in paths:
        file, summary = load_summary(path)
        if first is None:
            first = file
            merged = {key: summary.get(key) for key in DATASET_KEYS}
        else:
            for key in DATASET_KEYS:
                if summary.get(key) != merged[key]:
                    raise DataError(file, f"describes another data set: {key} = {summary.get(key)!r}, but "
                                          f"{first} has {merged[key]!r}; only runs on the same data can be compared")
        for name, entry in summary["supervision"].items():
            if name in entries:
                diffs = _differences(entries[name], entry)
                if diffs:
                    raise DataError(file, f"supervision {name!r} differs from the one in {sources[name]} "
                                          f"({'; '.join(diffs)}); keep only one of these runs")
                continue
            entries[name] = entry
            sources[name] = str(file)
    rank = {name: i for i, name in enumerate(ORDER)}
    order = sorted(entries, key=lambda n: rank.get(n, len(ORDER)))
    merged["supervision"] = {name: entries[name] for name in order}
    merged["sources"] = {name: sources[name] for name in order}
    return merged


def pseudo_miou_plot(summary: Mapping[str, Any]) -> bytes:
    """PNG bytes of a bar chart: training pseudo-label mIoU of every stage, grouped by supervision.

    Supervisions without pseudo labels (``full``) are left out; stages with no score (null) are drawn empty.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(name, stage, value) for name, entry in summary.get("supervision", {}).items()
            for stage, value in (entry.get("pseudo_miou") or {}).items()]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(bars) + 1.5), 3.5))
    colours: Dict[str, str] = {}
    for i, (name, stage, value) in enumerate(bars):
        first_bar = name not in colours
        colour = colours.setdefault(name, f"C{len(colours)}")
        height = 0.0 if value is None else 100 * value
        ax.bar(i, height, color=colour, label=name if first_bar else None)
        ax.annotate("n/a" if value is None else f"{height:.1f}", (i, height), textcoords="offset points",
                    xytext=(0, 2), ha="center", fontsize=7)
    ax.set_xticks(range(len(bars)), [stage for _, stage, _ in bars], rotation=35, ha="right", fontsize=8)
    top = max([100 * v for _, _, v in bars if v is not None], default=0.0)
    ax.set_ylim(0, max(10.0, 1.2 * top))
    ax.set_ylabel("pseudo-label mIoU (%), train")
    ax.set_title(f"pseudo labels per stage: {summary.get('dataset')}")
    if bars:
        ax.legend(title="supervision", fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return png_bytes(fig)


def write_comparison(out_dir: PathLike, summary: Mapping[str, Any]) -> Dict[str, Path]:
    """Write ``summary.json`` (merged), ``comparison.html`` and ``cost_vs_miou.png`` into ``out_dir``.

    The HTML is :func:`report.write_report`'s page with the per-stage pseudo-label chart as its one figure
    section (written in a scratch folder and moved, so a ``report.html`` already in ``out_dir`` is kept).

    Returns:
        ``{"summary": path, "html": path, "plot": path}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out_dir / "summary.json", "html": out_dir / "comparison.html",
             "plot": out_dir / "cost_vs_miou.png"}
    sections = {}
    if any(entry.get("pseudo_miou") for entry in summary.get("supervision", {}).values()):
        sections["Pseudo-label mIoU per stage"] = pseudo_miou_plot(summary)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".compare-") as scratch:
        html = write_report(Path(scratch), summary, sections)
        os.replace(html, paths["html"])
        os.replace(Path(scratch) / "cost_vs_miou.png", paths["plot"])
    write_json_atomic(paths["summary"], dict(summary))
    return paths
