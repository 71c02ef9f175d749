"""Mean and spread over seeds of ``wsss evaluate-cams --json`` results, one row per method, as a Markdown table.

    wsss evaluate-cams --cams RUN_SEED0/cams --root DATA --split train --json > cam_s0.json   # ... per seed
    python tools/cam_seed_table.py "CAM=cam_s0.json,cam_s1.json,cam_s2.json" "LPCAM=lp_s0.json,..."

Columns: best mIoU (mean +- sample std over the files), the foreground share at each file's best threshold
(the ground truth's in the header), the best thresholds, and the per-class IoU at the best threshold (mean).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np


def load_group(spec: str) -> tuple:
    """``"NAME=a.json,b.json"`` -> (NAME, [parsed results])."""
    name, _, files = spec.partition("=")
    return name, [json.loads(Path(f).read_text()) for f in files.split(",") if f]


def mean_std(values: Sequence[float]) -> str:
    array = np.asarray(values, dtype=np.float64) * 100
    spread = array.std(ddof=1) if array.size > 1 else 0.0
    return f"{array.mean():.2f} +- {spread:.2f}"


def table(groups: List[tuple]) -> str:
    """The Markdown table of the groups (every result must score the same classes)."""
    names = [n for n in groups[0][1][0]["per_class"] if n != "background"]
    truth = groups[0][1][0]["foreground_share_gt"]
    lines = [f"| method | seeds | best mIoU % | foreground % (truth {100 * truth:.1f}) | thresholds | "
             + " | ".join(names) + " |", "|" + "---|" * (5 + len(names))]
    for name, results in groups:
        shares = [r["foreground_share"][r["thresholds"].index(r["best_threshold"])] for r in results]
        per_class = []
        for cls in names:
            values = [r["per_class"][cls] for r in results if r["per_class"][cls] is not None]
            per_class.append(f"{100 * np.mean(values):.1f}" if values else "n/a")
        thresholds = "/".join(f"{r['best_threshold']:.2f}" for r in results)
        lines.append(f"| {name} | {len(results)} | {mean_std([r['best_miou'] for r in results])} | "
                     f"{100 * np.mean(shares):.1f} | {thresholds} | " + " | ".join(per_class) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="+", metavar="NAME=a.json,b.json")
    args = parser.parse_args()
    print(table([load_group(g) for g in args.groups]))


if __name__ == "__main__":
    main()
