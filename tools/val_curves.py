"""Validation curves of Lightning CSV logs as a Markdown table: one row per ``metrics.csv``, one column per epoch.

    python tools/val_curves.py experiments/camvid/study/gpu_logs/run1_*_metrics.csv --metric val/cam_miou --scale 100

A cheap proxy while a study runs: the classifier's single-scale CAM mIoU on the validation masks at its
configured background threshold (``val/cam_miou``), or its ``val/mAP``, every validation epoch.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence


def curve(path: Path, metric: str) -> Dict[int, float]:
    """{epoch: value} of ``metric`` in one Lightning ``metrics.csv`` (rows where it was logged)."""
    with open(path, newline="") as handle:
        return {int(row["epoch"]): float(row[metric]) for row in csv.DictReader(handle) if row.get(metric)}


def table(paths: Sequence[Path], metric: str, scale: float) -> str:
    curves = {path.stem: curve(path, metric) for path in paths}
    epochs = sorted({epoch for values in curves.values() for epoch in values})
    lines = [f"| run ({metric}) | " + " | ".join(f"epoch {e + 1}" for e in epochs) + " |",
             "|---|" + "---|" * len(epochs)]
    for name, values in curves.items():
        cells = [f"{scale * values[e]:.2f}" if e in values else "" for e in epochs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csvs", nargs="+", type=Path)
    parser.add_argument("--metric", default="val/cam_miou")
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    print(table(args.csvs, args.metric, args.scale))


if __name__ == "__main__":
    main()
