"""The ``cam_crf`` stage's labels over a grid of background thresholds and CRF settings, scored on a split's masks
(the protocol psa and irn report), with the share of pixels each setting labels foreground next to the masks'.

    python tools/cam_crf_sweep.py --cams RUN/image/cams/<hash>/cams --root DATA [--split train] \
        --bg-thresholds 0.05,0.1,0.15,0.2 --crfs '{none: false, psa: {scale_params: true}}' [--limit N] \
        [--processes 2] [--json] [--reference DIR --max-growth 1 --min-kept 0.5]

``--reference`` (the CAM stage's ``labels`` folder) with ``--max-growth`` / ``--min-kept`` scores the labels with
the stage's bounds on the CRF's changes (README "Bounded CRF"). ``--crfs``: named CRF settings (YAML: ``false``,
``true`` or a mapping of ``CRFParams`` fields plus ``scale_params``); ``none: false`` gives the CAM labels at each threshold. The best setting is printed last.
A setting that maximises this score can still flood the background (the foreground share tells).
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from lightning_wsss.cam.files import load_cams
from lightning_wsss.datasets import open_split
from lightning_wsss.io import read_label_png
from lightning_wsss.metrics import score_label_maps
from lightning_wsss.refine.cam_crf import cam_crf_labels
from lightning_wsss.threads import limit_worker_threads

_READER = None


def _init(root: str, split: str) -> None:
    global _READER
    limit_worker_threads()
    _READER = open_split(root, split)


def _labels(job: Tuple[str, str, float, Any, Dict[str, Any]]) -> Tuple[np.ndarray, np.ndarray]:
    """Worker: ``(labels, mask)`` of one image at one setting (``bounds``: ``reference`` folder, ``max_growth``,
    ``min_kept``, or empty)."""
    image_id, cams_dir, bg_threshold, crf, bounds = job
    sample = _READER.load(image_id)
    saved = load_cams(Path(cams_dir) / f"{image_id}.npz")
    extra = {}
    if bounds:
        extra = {"reference": read_label_png(Path(bounds["reference"]) / f"{image_id}.png"),
                 "max_growth": bounds.get("max_growth"), "min_kept": bounds.get("min_kept")}
    labels = cam_crf_labels(sample["image"], saved["cams"], saved["keys"], bg_threshold=bg_threshold, crf=crf, **extra)
    return labels, np.asarray(sample["mask"])


def foreground_share(pairs: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Tuple[float, float]:
    """``(labelled, truth)``: the shares of the scored pixels (mask not 255) labelled foreground / that are."""
    scored = sum(int((m != 255).sum()) for _, m in pairs)
    labelled = sum(int(((p != 0) & (m != 255)).sum()) for p, m in pairs)
    truth = sum(int(((m != 0) & (m != 255)).sum()) for _, m in pairs)
    return labelled / max(1, scored), truth / max(1, scored)


def sweep(cams: str, root: str, split: str, thresholds: Sequence[float], crfs: Dict[str, Any], limit: int = 0,
          processes: int = 1, bounds: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """One row per (CRF setting, threshold): ``{crf, bg_threshold, miou, labelled_fg, gt_fg}`` (fractions);
    ``bounds``: ``{reference: the CAM stage's labels folder, max_growth, min_kept}`` (see the module docstring)."""
    reader = open_split(root, split)
    ids = [i for i in reader.ids if (Path(cams) / f"{i}.npz").is_file()]
    ids = ids[:limit] if limit else ids
    rows = []
    with ProcessPoolExecutor(max(1, processes), initializer=_init, initargs=(root, split)) as pool:
        for name, crf in crfs.items():
            for threshold in thresholds:
                jobs = [(i, cams, threshold, crf, bounds or {}) for i in ids]
                pairs = list(pool.map(_labels, jobs, chunksize=8))
                miou = score_label_maps(pairs, len(reader.class_names), reader.class_names)["miou"]
                labelled, truth = foreground_share(pairs)
                rows.append({"crf": name, "bg_threshold": threshold, "miou": miou, "labelled_fg": labelled,
                             "gt_fg": truth, "num_images": len(ids)})
    return rows


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cams", required=True, help="the CAM stage's cams folder (<id>.npz)")
    parser.add_argument("--root", required=True, help="the data set (VOC layout)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--bg-thresholds", default="0.05,0.1,0.15,0.2,0.25,0.3")
    parser.add_argument("--crfs", default="{none: false, psa_scaled: {scale_params: true}}")
    parser.add_argument("--limit", type=int, default=0, help="the first N images only")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--reference", help="the CAM stage's labels folder the bounds are measured against")
    parser.add_argument("--max-growth", type=float)
    parser.add_argument("--min-kept", type=float)
    args = parser.parse_args(argv)
    if (args.max_growth is not None or args.min_kept is not None) != (args.reference is not None):
        parser.error("--max-growth / --min-kept need --reference (the CAM stage's labels), and --reference one of them")
    bounds = {"reference": args.reference, "max_growth": args.max_growth, "min_kept": args.min_kept} \
        if args.reference else None
    crfs = yaml.safe_load(args.crfs)
    if not isinstance(crfs, dict) or not crfs:
        parser.error("--crfs: a mapping of names to CRF settings")
    thresholds = [float(t) for t in args.bg_thresholds.split(",")]
    rows = sweep(args.cams, args.root, args.split, thresholds, crfs, args.limit, args.processes, bounds)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'crf':<14}{'bg':>6}{'mIoU':>8}{'fg %':>8}{'masks fg %':>12}   ({rows[0]['num_images']} images)")
    for row in rows:
        print(f"{row['crf']:<14}{row['bg_threshold']:>6.3g}{100 * row['miou']:>8.2f}{100 * row['labelled_fg']:>8.1f}"
              f"{100 * row['gt_fg']:>12.1f}")
    best = max(rows, key=lambda r: r["miou"])
    print(f"best: crf {best['crf']}, bg_threshold {best['bg_threshold']:g}: {100 * best['miou']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
