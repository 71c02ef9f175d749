"""Where a label folder's classes go wrong: per class, how much of what it labels is that class, and how much
of the class it loses to background.

    python tools/label_confusion.py --pred RUN/image/affinity/<hash>/affinity_labels --root DATA [--split train]
    python tools/label_confusion.py --pred RUN/box/box_init/<hash>/crf --root DATA
    python tools/label_confusion.py --checkpoint RUN/image/segmenter/<hash>/checkpoints/final.ckpt --root DATA \
        --split val --matrix

``--checkpoint`` scores a segmenter's argmax predictions instead of a label folder; ``--matrix`` also prints the
confusion matrix, each ground-truth row in percent of its pixels (where a class's pixels go). A last line gives the
share of the pixels labelled foreground next to the masks' (over- or under-coverage at a glance), and the mIoU with
each class's IoU (``wsss evaluate``'s protocol: label 255 is a miss).

For every class ``c`` (pixels whose ground truth is 255 are left out; predicted 255 is "unlabelled", as in the
confident affinity labels):

- ``precision``: of the pixels labelled ``c``, the share whose ground truth is ``c``;
- ``on gt bg``: of the pixels labelled ``c``, the share whose ground truth is background (context taken for the
  object, or a box mask that floods its box);
- ``recall``: of the ground-truth ``c`` pixels, the share labelled ``c``;
- ``lost to bg``: of the ground-truth ``c`` pixels, the share labelled background.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from lightning_wsss.datasets import open_split
from lightning_wsss.metrics import label_pairs

UNLABELLED = 255


def confusion(pairs: Iterable[Tuple[np.ndarray, np.ndarray]], num_classes: int) -> np.ndarray:
    """Counts ``[C, C + 1]``: rows the ground truth, columns the label (the last column: label 255).

    Args:
        pairs: ``(label, truth)`` uint8 maps of one shape; truth 255 is left out.
    """
    counts = np.zeros((num_classes, num_classes + 1), np.int64)
    for label, truth in pairs:
        keep = truth != UNLABELLED
        column = np.where(label[keep] == UNLABELLED, num_classes, label[keep]).astype(np.int64)
        counts += np.bincount(truth[keep].astype(np.int64) * (num_classes + 1) + column,
                              minlength=num_classes * (num_classes + 1)).reshape(num_classes, num_classes + 1)
    return counts


def class_rates(counts: np.ndarray, names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Per foreground class, ``precision``, ``on_gt_bg``, ``recall`` and ``lost_to_bg`` (see the module doc)."""
    rates = {}
    for c in range(1, counts.shape[0]):
        labelled = counts[:, c].sum()
        truth = counts[c].sum()
        rates[names[c]] = {"precision": counts[c, c] / max(1, labelled), "on_gt_bg": counts[0, c] / max(1, labelled),
                           "recall": counts[c, c] / max(1, truth), "lost_to_bg": counts[c, 0] / max(1, truth)}
    return rates


def class_ious(counts: np.ndarray, names: Sequence[str]) -> Dict[str, Optional[float]]:
    """Per class (background included) the IoU of the ``[C, C + 1]`` counts, by :mod:`lightning_wsss.metrics`'
    protocol (a label 255 is a miss, no class's false positive); ``None`` where the class is on neither side."""
    hits = np.diag(counts[:, :-1])
    unions = counts.sum(axis=1) + counts[:, :-1].sum(axis=0) - hits
    return {name: (float(h / u) if u else None) for name, h, u in zip(names, hits, unions)}


def mean_iou(ious: Dict[str, Optional[float]]) -> float:
    """The mean of :func:`class_ious` over the classes present."""
    return float(np.mean([v for v in ious.values() if v is not None]))


def foreground_shares(counts: np.ndarray) -> Dict[str, float]:
    """``labelled_fg`` / ``unlabelled``: shares of the scored pixels labelled a class (not 0, not 255) / 255;
    ``gt_fg``: the share whose ground truth is a class; from the ``[C, C + 1]`` counts."""
    total = max(1, counts.sum())
    return {"labelled_fg": counts[:, 1:-1].sum() / total, "unlabelled": counts[:, -1].sum() / total,
            "gt_fg": counts[1:].sum() / total}


def prediction_pairs(checkpoint: Path, dataset) -> Iterable[Tuple[np.ndarray, np.ndarray]]:
    """``(prediction, truth)`` for every image of ``dataset``: a segmenter checkpoint's argmax predictions."""
    from lightning_wsss.pipeline.predictions import predict_val

    ids = list(dataset.ids)
    for prediction, image_id in zip(predict_val(checkpoint, dataset, ids), ids):
        yield prediction, np.asarray(dataset.load(image_id)["mask"])


def row_shares(counts: np.ndarray) -> np.ndarray:
    """The ``[C, C + 1]`` counts with each ground-truth row divided by its sum (rows without pixels: 0)."""
    return counts / np.maximum(1, counts.sum(axis=1, keepdims=True))


def format_matrix(counts: np.ndarray, names: Sequence[str]) -> str:
    """The row shares in percent: one row per ground-truth class, one column per label (and 255)."""
    columns = [name[:8] for name in names] + ["255"]
    lines = ["ground truth -> label, % of the row:", f"{'':<12}" + "".join(f"{c:>9}" for c in columns)]
    for name, row in zip(names, row_shares(counts)):
        lines.append(f"{name:<12}" + "".join(f"{100 * v:9.1f}" for v in row))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", type=Path, help="folder of <id>.png label maps")
    source.add_argument("--checkpoint", type=Path, help="a segmenter checkpoint whose predictions are scored")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--matrix", action="store_true", help="also print the confusion matrix (rows in percent)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    dataset = open_split(args.root, args.split, require_masks=True)
    pairs = (prediction_pairs(args.checkpoint, dataset) if args.checkpoint
             else label_pairs(args.pred, dataset, args.split))
    counts = confusion(pairs, dataset.num_classes)
    rates = class_rates(counts, dataset.class_names)
    if args.json:
        ious = class_ious(counts, dataset.class_names)
        extra = {"shares": foreground_shares(counts), "iou": ious, "miou": mean_iou(ious)}
        if args.matrix:
            extra["matrix"] = row_shares(counts).tolist()
        print(json.dumps({**rates, **extra}, indent=1))
        return
    print(f"{'class':<12} precision  on gt bg    recall  lost to bg   ({args.pred or args.checkpoint}, "
          f"{len(dataset.ids)} images)")
    for name, r in rates.items():
        print(f"{name:<12} {100 * r['precision']:9.1f} {100 * r['on_gt_bg']:9.1f} {100 * r['recall']:9.1f} "
              f"{100 * r['lost_to_bg']:11.1f}")
    ious = class_ious(counts, dataset.class_names)
    print(f"mIoU {100 * mean_iou(ious):.2f} % (" + ", ".join(
        f"{name} {'-' if v is None else f'{100 * v:.1f}'}" for name, v in ious.items()) + ")")
    shares = foreground_shares(counts)
    print(f"labelled foreground: {100 * shares['labelled_fg']:.1f} % of the pixels (the masks: "
          f"{100 * shares['gt_fg']:.1f} %), unlabelled {100 * shares['unlabelled']:.1f} %")
    if args.matrix:
        print(format_matrix(counts, dataset.class_names))


if __name__ == "__main__":
    main()
