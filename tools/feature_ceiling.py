"""How well can a linear map of a feature set localize the classes? A probe fit to the ground truth says.

    python tools/feature_ceiling.py --checkpoint RUN/image/classifier/<hash>/checkpoints/final.ckpt --root DATA \\
        [--split train] [--images N] [--features classifier:4 classifier:2,3,4 imagenet:4 imagenet:2,3,4] \\
        [--image-labels gap topk:0.05+neg ...] [--holdout] [--json]

A CAM is a linear map of one feature map (the classifier's row of a class applied to every cell), max-normalised
per image and thresholded. For each feature set (``source:levels``; ``classifier`` is the checkpoint's backbone,
``imagenet`` the same architecture with its ImageNet weights; several levels make a hypercolumn on the first
level's grid, :func:`~lightning_wsss.cam.cell_probe.hypercolumn`), this fits one logistic regression per class to
the *ground-truth* share of the class in every cell (:func:`~lightning_wsss.cam.cell_probe.fit_cell_probes`, the
cells of the images without the class as negatives), then scores its maps on the images' labelled classes like
``wsss evaluate-cams`` (best background threshold): once max-normalised per image as a CAM is (``cam-like``), once as
raw probabilities (``probability``). ``--image-labels POOLING[+neg] ...`` adds, per feature set, probes fit from the
image labels alone (:func:`~lightning_wsss.cam.cell_probe.fit_image_label_probes`: each image's cells pooled by
``gap``, ``max``, ``topk:F`` or ``lse:R`` into its class scores, ``+neg`` also making every cell of an image without
a class a negative), scored cam-like: how much of the ceiling the image labels select, with no CAM involved. No
weakly supervised map that is linear in these features and normalised like a CAM can be expected to beat the
``cam-like`` row; the plain CAM of the checkpoint is scored beside them. ``--holdout`` fits on the first half of the
images and scores the second half (default: in sample, as pseudo labels are scored on the images they are made for).
The masks serve this diagnosis only.
"""

from __future__ import annotations

import argparse
import json
from itertools import islice
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from lightning_wsss.cam.cell_probe import (cell_targets, cells_per_image, fit_cell_probes, fit_image_label_probes,
                                           probe_maps, valid_cells)
from lightning_wsss.cam.threshold_sweep import DEFAULT_THRESHOLDS, ThresholdSweep
from lightning_wsss.datamodules import ImageLabelDataModule
from lightning_wsss.datasets import open_split
from lightning_wsss.serialization import load_model_checkpoint
from lightning_wsss.tasks import ProbeCAMClassifier

DEFAULT_FEATURES = ("classifier:4", "classifier:2,3,4", "imagenet:4", "imagenet:2,3,4")


def parse_feature_set(text: str) -> Tuple[str, List[int]]:
    """``"imagenet:2,3,4"`` -> ``("imagenet", [2, 3, 4])``."""
    source, _, levels = text.partition(":")
    if source not in ("classifier", "imagenet") or not levels:
        raise ValueError(f"a feature set is 'classifier:LEVELS' or 'imagenet:LEVELS', got {text!r}")
    return source, [int(level) for level in levels.split(",")]


@torch.no_grad()
def collect(model: ProbeCAMClassifier, batches: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per image (batch size 1): its feature grid [D, h, w] (image and flip averaged), which cells lie inside the
    image (bool [h * w]), the ground-truth cell shares [C-1, h, w], its labels (bool [C-1]), its mask [H, W] and
    plain CAM [C-1, H, W] (max-normalised, single scale)."""
    records = []
    for batch in batches:
        images = batch["image"]
        features = model.flip_averaged_features(images)
        height, width = batch["size"][0].tolist()
        mask = batch["mask"][0, :height, :width]
        grid = tuple(features.shape[-2:])
        padded = torch.full(images.shape[-2:], 255, dtype=torch.long)
        padded[:height, :width] = mask
        valid = valid_cells(batch["size"], tuple(images.shape[-2:]), grid)[0]
        targets = cell_targets(padded, model.num_classes, grid)
        records.append({"features": features[0], "valid": valid, "targets": targets,
                        "labels": batch["labels"][0] > 0.5, "mask": mask.numpy(), "size": (height, width),
                        "cam": model.seed_cams(images, tuple(images.shape[-2:]))[0, :, :height, :width]})
    return records


def fit_oracle(records: Sequence[Dict[str, Any]], steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Probes fit to the ground-truth shares of ``records``' cells; every cell of an image without a class is one of
    that class's negatives."""
    features = torch.cat([r["features"].flatten(1).T for r in records])
    shares = torch.cat([r["targets"].flatten(1).T for r in records])
    absent = torch.cat([(~r["labels"])[None].expand(r["features"][0].numel(), -1) for r in records])
    return fit_cell_probes(features, shares, absent | (shares == 0), steps=steps)


def fit_from_image_labels(records: Sequence[Dict[str, Any]], spec: str,
                          steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Probes fit from ``records``' image labels alone; ``spec`` is a pooling, ``+neg`` adds the cell negatives."""
    pooling, _, flag = spec.partition("+")
    if flag not in ("", "neg"):
        raise ValueError(f"an image-label probe is POOLING or POOLING+neg, got {spec!r}")
    features, valid, labels = cells_per_image(
        torch.cat([r["features"].flatten(1).T[r["valid"]] for r in records]),
        torch.cat([torch.full((int(r["valid"].sum()),), index) for index, r in enumerate(records)]),
        torch.cat([r["labels"][None].expand(int(r["valid"].sum()), -1) for r in records]))
    return fit_image_label_probes(features, valid, labels, pooling, cell_negatives=flag == "neg", steps=steps)


def score(records: Sequence[Dict[str, Any]], num_classes: int, maps_of, names: Sequence[str] = ()) -> Dict[str, Any]:
    """Best-threshold mIoU of ``maps_of(record, class_rows) -> [K, H, W]`` on every record's labelled classes."""
    sweep = ThresholdSweep(num_classes, DEFAULT_THRESHOLDS)
    for record in records:
        rows = torch.nonzero(record["labels"]).flatten()
        maps = maps_of(record, rows) if len(rows) else torch.zeros(0, *record["size"])
        sweep.add(maps.float().numpy(), (rows + 1).numpy(), record["mask"])
    return sweep.result(list(names) or None)


def probe_scorer(weight: torch.Tensor, bias: torch.Tensor, normalise: bool):
    def maps_of(record, rows):
        maps = probe_maps(record["features"][None], weight[rows], bias[rows])
        maps = F.interpolate(maps, size=record["size"], mode="bilinear", align_corners=False)[0]
        return maps / (maps.flatten(1).amax(1)[:, None, None] + 1e-5) if normalise else maps
    return maps_of


def feature_ceiling(checkpoint: str, root: str, split: str, images: int, feature_sets: Sequence[str],
                    holdout: bool, steps: int, image_label_probes: Sequence[str] = ()) -> Dict[str, Any]:
    """``{"images", "scored", "rows": {name: evaluate-cams-like result}}``; one ``cam`` row, two per feature set and
    one per feature set and ``image_label_probes`` entry (:func:`fit_from_image_labels`)."""
    datamodule = ImageLabelDataModule(root=root, predict_split=split, eval_batch_size=1, num_workers=0)
    datamodule.setup("predict")
    names = open_split(root, split).class_names
    batches = list(islice(datamodule.predict_dataloader(), images or None))
    fit_part, score_part = (batches[: len(batches) // 2], batches[len(batches) // 2:]) if holdout else (batches, batches)
    rows: Dict[str, Any] = {}
    for text in feature_sets:
        source, levels = parse_feature_set(text)
        model = load_model_checkpoint(ProbeCAMClassifier, checkpoint, probe_features=source, probe_levels=levels).eval()
        scored = collect(model, score_part)
        if "cam" not in rows:
            rows["cam"] = score(scored, model.num_classes, lambda record, rows_: record["cam"][rows_], names)
        fitted = collect(model, fit_part) if holdout else scored
        weight, bias = fit_oracle(fitted, steps)
        rows[f"{text} cam-like"] = score(scored, model.num_classes, probe_scorer(weight, bias, True), names)
        rows[f"{text} probability"] = score(scored, model.num_classes, probe_scorer(weight, bias, False), names)
        for spec in image_label_probes:
            weight, bias = fit_from_image_labels(fitted, spec, steps)
            rows[f"{text} image labels {spec}"] = score(scored, model.num_classes, probe_scorer(weight, bias, True),
                                                        names)
    return {"images": len(batches), "scored": len(score_part), "holdout": holdout, "rows": rows}


def format_table(result: Dict[str, Any]) -> str:
    first = next(iter(result["rows"].values()))
    classes = list(first["per_class"])
    head = f"{'maps':<40} {'mIoU':>6} {'thr':>5} {'fg %':>5} " + " ".join(f"{name[:9]:>9}" for name in classes)
    lines = [head, "-" * len(head)]
    for name, row in result["rows"].items():
        best = row["thresholds"].index(row["best_threshold"])
        lines.append(f"{name:<40} {100 * row['best_miou']:6.2f} {row['best_threshold']:5.2f} "
                     f"{100 * row['foreground_share'][best]:5.1f} "
                     + " ".join(f"{100 * v:9.1f}" if v is not None else f"{'n/a':>9}" for v in row["per_class"].values()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a CAMClassifier checkpoint")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=0, help="first N images (0: all)")
    parser.add_argument("--features", nargs="+", default=list(DEFAULT_FEATURES), help="source:levels, see above")
    parser.add_argument("--image-labels", nargs="*", default=[], metavar="POOLING[+neg]",
                        help="probes fit from the image labels alone: gap, max, topk:F, lse:R; +neg: cell negatives")
    parser.add_argument("--holdout", action="store_true", help="fit on the first half, score the second")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of the probe fit")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    result = feature_ceiling(args.checkpoint, args.root, args.split, args.images, args.features, args.holdout,
                             args.steps, args.image_labels)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['scored']} images of {args.split} scored"
              + (f" (probes fit on the other {result['images'] - result['scored']})" if args.holdout else
                 " (probes fit on the same images)"))
        print(format_table(result))


if __name__ == "__main__":
    main()
