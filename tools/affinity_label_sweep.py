"""How good AffinityNet's confident labels would be under several label settings, scored on a split's masks.

    python tools/affinity_label_sweep.py --cams RUN/image/cams/<hash>/cams --root DATA \
        --settings psa:4,32 irn:0.30,0.05 irn:0.75,0.4 [--split train] [--limit 150] [--crf YAML] [--json]

A setting is ``psa:ALPHA_LOW,ALPHA_HIGH`` (two CRFs with background powers) or ``irn:FG,BG`` (two constant
thresholds refined by label CRFs), the two modes of ``stages.affinity.labels``. The label maps are computed as the
affinity stage computes them (``affinity_label_map``) and compared with the masks (pixels whose truth is 255 are
left out). Per setting:

- ``fg`` / ``bg`` / ``ignore``: shares of the pixels labelled foreground (any class), background, unlabelled;
- ``fg_precision``: of the pixels labelled a class, the share whose truth is that class;
- ``bg_precision``: of the pixels labelled background, the share whose truth is background;
- ``gt_fg_own``: of the ground-truth foreground pixels, the share labelled their own class;
- ``gt_fg_bg``: of the ground-truth foreground pixels, the share labelled background;
- ``gt_bg_bg``: of the ground-truth background pixels, the share labelled background.

psa's powers 4 / 32 and irn's thresholds 0.30 / 0.05 bracket the background scores that are best for CAMs on VOC
(about alpha 16, threshold 0.15). For CAMs whose best background threshold (``wsss evaluate-cams``) lies
elsewhere they may call nearly every pixel foreground, which this table shows before an AffinityNet trains on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import yaml

from lightning_wsss.cam.files import load_cams
from lightning_wsss.datasets import open_split
from lightning_wsss.refine.affinity_targets import MODE_PARAMETERS, affinity_label_map, label_kwargs
from lightning_wsss.refine.crf import CRFSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_confusion import confusion, foreground_shares  # noqa: E402


def parse_setting(text: str) -> Tuple[str, Dict[str, float]]:
    """``"psa:4,32"`` -> ``("psa", {"alpha_low": 4, "alpha_high": 32})``; ``"irn:0.3,0.05"`` -> thresholds."""
    mode, _, values = text.partition(":")
    parts = values.split(",")
    if mode not in MODE_PARAMETERS or len(parts) != 2:
        raise argparse.ArgumentTypeError(f"a setting is psa:ALPHA_LOW,ALPHA_HIGH or irn:FG,BG, got {text!r}")
    try:
        first, second = float(parts[0]), float(parts[1])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"setting {text!r}: {exc}") from exc
    return mode, dict(zip(MODE_PARAMETERS[mode], (first, second)))


def label_quality(counts: np.ndarray) -> Dict[str, float]:
    """The shares of the module doc from a ``[C, C + 1]`` count matrix (rows truth, columns label, last 255)."""
    num_classes = counts.shape[0]
    total = max(1, counts.sum())
    fg_columns = slice(1, num_classes)
    labelled_fg = counts[:, fg_columns].sum()
    labelled_bg = counts[:, 0].sum()
    truth_fg = counts[1:].sum()
    right_fg = np.trace(counts[1:, fg_columns])
    shares = foreground_shares(counts)
    return {
        "fg": shares["labelled_fg"], "bg": labelled_bg / total, "ignore": shares["unlabelled"],
        "fg_precision": right_fg / max(1, labelled_fg), "bg_precision": counts[0, 0] / max(1, labelled_bg),
        "gt_fg_own": right_fg / max(1, truth_fg), "gt_fg_bg": counts[1:, 0].sum() / max(1, truth_fg),
        "gt_bg_bg": counts[0, 0] / max(1, counts[0].sum()),
    }


def label_pairs(samples: Iterable[Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]], num_classes: int,
                mode: str, kwargs: Dict[str, float], crf: CRFSpec = None) -> Iterable[Tuple[np.ndarray, np.ndarray]]:
    """``(label, truth)`` per ``(image, mask, cams)`` sample under one setting (``crf``: the stage's
    ``labels.crf_params``)."""
    for image, mask, cams in samples:
        yield affinity_label_map(image, cams["cams"], cams["keys"], num_classes, mode,
                                 **label_kwargs(mode, kwargs, crf, image.shape[:2])), mask


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cams", required=True, type=Path, help="folder of <id>.npz CAM files")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--settings", required=True, nargs="+", type=parse_setting,
                        help="psa:ALPHA_LOW,ALPHA_HIGH or irn:FG,BG, one or more")
    parser.add_argument("--limit", type=int, default=None, help="the first N images of the split only")
    parser.add_argument("--crf", type=yaml.safe_load, default=None,
                        help="the label CRFs' setting, as stages.affinity.labels.crf_params (e.g. "
                             "'{scale_params: true}': the mode's own parameters scaled from 500 px to the image)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    dataset = open_split(args.root, args.split, require_masks=True)
    ids = dataset.ids[: args.limit] if args.limit else dataset.ids
    samples = []
    for image_id in ids:
        sample = dataset.load(image_id)
        cams = load_cams(args.cams / f"{image_id}.npz")
        samples.append((np.asarray(sample["image"]), np.asarray(sample["mask"]), cams))
    results = {}
    for mode, kwargs in args.settings:
        name = f"{mode}:" + ",".join(f"{v:g}" for v in kwargs.values())
        results[name] = label_quality(confusion(label_pairs(samples, dataset.num_classes, mode, kwargs, args.crf),
                                                dataset.num_classes))
        if not args.json:
            if len(results) == 1:
                print(f"{'setting':<16} {'fg %':>6} {'bg %':>6} {'ignore %':>9} {'fg prec.':>9} {'bg prec.':>9} "
                      f"{'gt fg own':>10} {'gt fg bg':>9} {'gt bg bg':>9}   ({args.cams}, {len(ids)} images)")
            r = {k: 100 * v for k, v in results[name].items()}
            print(f"{name:<16} {r['fg']:6.1f} {r['bg']:6.1f} {r['ignore']:9.1f} {r['fg_precision']:9.1f} "
                  f"{r['bg_precision']:9.1f} {r['gt_fg_own']:10.1f} {r['gt_fg_bg']:9.1f} {r['gt_bg_bg']:9.1f}", flush=True)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
