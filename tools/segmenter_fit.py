"""How well a trained segmenter fits the pseudo labels it was trained on, next to its mIoU on the ground truth.

    python tools/segmenter_fit.py --checkpoint RUN/image/segmenter/<hash>/checkpoints/final.ckpt \
        --labels RUN/image/random_walk/<hash>/labels --root DATA [--images 200]

A segmenter whose predictions on its own training images are far from its training labels has not fitted
them (too few epochs, a bad seed, an optimisation that never separated some classes): its val mIoU then says
little about the quality of those labels. Per-class IoUs near 0 on both lines show which classes it never
learned.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from lightning_wsss.datasets import open_split
from lightning_wsss.io import read_label_png
from lightning_wsss.metrics import score_label_maps
from lightning_wsss.pipeline.predictions import predict_val
from lightning_wsss.tables import format_iou_table


def fit_scores(checkpoint: Path, labels: Path, root: Path, split: str = "train", images: int = 200) -> Dict[str, dict]:
    """Score a segmenter's argmax predictions on the first ``images`` images of ``split``.

    Returns:
        ``{"fit": score vs the label PNGs in labels/, "ground_truth": score vs the split's masks}``, each the dict
        of :func:`lightning_wsss.metrics.score_label_maps`.
    """
    dataset = open_split(root, split, **({} if str(split).endswith(".json") else {"require_masks": True}))
    ids: List[str] = list(dataset.ids[:images])
    predictions: Sequence[np.ndarray] = predict_val(checkpoint, dataset, ids)
    names = list(dataset.class_names)
    targets = {"fit": [read_label_png(labels / f"{image_id}.png") for image_id in ids],
               "ground_truth": [dataset.load(image_id)["mask"] for image_id in ids]}
    return {key: score_label_maps(zip(predictions, maps), len(names), names) for key, maps in targets.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--labels", required=True, type=Path, help="the pseudo-label folder the segmenter trained on")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=200, help="first N images of the split")
    args = parser.parse_args()
    scores = fit_scores(args.checkpoint, args.labels, args.root, args.split, args.images)
    print(format_iou_table(scores["fit"], f"predictions vs training labels ({args.labels})"))
    print(format_iou_table(scores["ground_truth"], "predictions vs ground truth"))


if __name__ == "__main__":
    main()
