"""Per-class IoU gain of refined labels over their base labels, as mean +- std over runs (seeds).

    python tools/class_gains.py --root DATA --split train \\
        --pair RUN0/image/cams/<hash>/labels RUN0/image/random_walk/<hash>/labels \\
        --pair RUN1/image/cams/<hash>/labels RUN1/image/random_walk/<hash>/labels

Each ``--pair BASE REFINED`` is one run (one seed): both label folders are scored against the split's masks
and the refined IoU minus the base IoU is taken per class and for the mIoU. Which classes a refinement helps
and which it hurts shows what limits it (on the synthetic set, the two classes with a context background).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from lightning_wsss.datasets import open_split
from lightning_wsss.metrics import evaluate_reader


def label_ious(folder: Path, dataset) -> Dict[str, float]:
    """Per-class IoU (and ``mIoU``) of a label folder against ``dataset``'s masks."""
    scores = evaluate_reader(folder, dataset)
    ious = {name: float("nan") if value is None else float(value) for name, value in scores["per_class"].items()}
    ious["mIoU"] = float(scores["miou"])
    return ious


def gains(pairs: Sequence[Tuple[Dict[str, float], Dict[str, float]]]) -> Dict[str, Tuple[float, float, List[float]]]:
    """``{class: (mean, sample std, per run)}`` of ``refined - base`` over the ``(base, refined)`` score pairs."""
    table = {}
    for name in pairs[0][0]:
        values = [refined[name] - base[name] for base, refined in pairs]
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        table[name] = (float(np.mean(values)), std, values)
    return table


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--pair", nargs=2, action="append", required=True, type=Path, metavar=("BASE", "REFINED"))
    args = parser.parse_args(argv)
    dataset = open_split(args.root, args.split, require_masks=True)
    scored = [(label_ious(base, dataset), label_ious(refined, dataset)) for base, refined in args.pair]
    print(f"| class | refined - base, IoU points (mean +- std over {len(scored)}) | per run |")
    print("|---|---|---|")
    for name, (mean, std, values) in gains(scored).items():
        runs = " / ".join(f"{100 * v:+.2f}" for v in values)
        print(f"| {name} | {100 * mean:+.2f} +- {100 * std:.2f} | {runs} |")


if __name__ == "__main__":
    main()
