"""Mean and spread over seeds of pipeline summaries: one row per supervision entry and figure, as Markdown.

    wsss demo --out demo_s0                                                   # seed 0 (the configs' seed)
    wsss pipeline demo_s0/configs/image.yaml --seed 1 --out demo_s1          # ... and box, and seed 2
    python tools/summary_seed_table.py demo_s0/summary.json demo_s1/summary.json demo_s2/summary.json
    python tools/summary_seed_table.py RUN/box/boxsup/<seed 0 hash>/stage.json RUN/box/boxsup/<seed 1 hash>/stage.json ...

Every ``summary.json`` (``wsss pipeline`` / ``wsss demo``) holds, per supervision entry, its pseudo-label mIoU per
stage and the final segmenter's val mIoU; the table gives each figure's mean +- sample standard deviation and the
per-seed values, for the entries and figures every file has. A stage's ``stage.json`` (what ``wsss pipeline
--until STAGE`` leaves, without a summary entry) gives its metrics, named after the stage. A last line gives each
file's torch thread counts, from its stages' records (``?`` where a stage made before the record has none).
``--wall`` adds each entry's wall seconds (its stages end to end, reused stages at the time recorded when they ran).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from lightning_wsss.pipeline.report import recorded_threads


def figures(summary: Dict) -> Dict[str, float]:
    """``{"<entry> <figure>": value}`` of one summary: every pseudo-label stage and the val mIoU; of a
    ``stage.json``, ``{"<stage> <metric>": value}``."""
    out: Dict[str, float] = {}
    if "supervision" not in summary and isinstance(summary.get("metrics"), dict):
        return {f"{summary.get('name', 'stage')} {k}": float(v) for k, v in summary["metrics"].items()
                if isinstance(v, (int, float))}
    for entry, result in summary.get("supervision", {}).items():
        for stage, value in (result.get("pseudo_miou") or {}).items():
            out[f"{entry} {stage}"] = float(value)
        if result.get("val_miou") is not None:
            out[f"{entry} val"] = float(result["val_miou"])
    return out


def wall_seconds(summary: Dict) -> Dict[str, float]:
    """``{"<entry> wall s": seconds}`` of a summary's entries that record their wall time."""
    return {f"{entry} wall s": float(result["wall_s"]) for entry, result in summary.get("supervision", {}).items()
            if isinstance(result.get("wall_s"), (int, float))}


def thread_counts(summary: Dict) -> str:
    """The torch thread counts a summary's stages (or one stage) ran with: ``"2"``, ``"1,2"``; ``"?"`` for none
    recorded, ``"2+?"`` where some stages have no record."""
    if "supervision" not in summary:
        records = [(summary.get("environment") or {}).get("torch_threads")]
    else:
        records = [stage.get("torch_threads") for result in summary["supervision"].values()
                   for stage in (result.get("stages") or {}).values()]
    counts, complete = recorded_threads(records)
    text = ",".join(map(str, counts))
    if complete:
        return text
    return f"{text}+?" if text else "?"


def seed_table(summaries: Sequence[Dict], wall: bool = False) -> str:
    """The Markdown table of the figures all ``summaries`` share, in the first summary's order (``wall``: then the
    entries' wall seconds, unscaled)."""
    per_file = [{k: 100 * v for k, v in figures(s).items()} for s in summaries]  # mIoU in percent
    if wall:
        per_file = [{**f, **wall_seconds(s)} for f, s in zip(per_file, summaries)]
    keys = [k for k in per_file[0] if all(k in f for f in per_file[1:])]
    head = "figure (mIoU %; wall s)" if wall else "figure (mIoU %)"
    lines = [f"| {head} | mean +- std | per seed |", "|---|---|---|"]
    for key in keys:
        values = np.asarray([f[key] for f in per_file], dtype=np.float64)
        spread = values.std(ddof=1) if values.size > 1 else 0.0
        lines.append(f"| {key} | {values.mean():.2f} +- {spread:.2f} | {' / '.join(f'{v:.2f}' for v in values)} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summaries", nargs="+", type=Path, help="summary.json (or stage.json) files, one per seed")
    parser.add_argument("--wall", action="store_true", help="also each entry's wall seconds")
    args = parser.parse_args(argv)
    summaries = [json.loads(p.read_text()) for p in args.summaries]
    print(seed_table(summaries, args.wall))
    print(f"torch threads per seed: {' / '.join(thread_counts(s) for s in summaries)}")


if __name__ == "__main__":
    main()
