"""How much of a CAM classifier's decision comes from the objects and how much from their context.

    python tools/context_reliance.py --checkpoint RUN/image/classifier/<hash>/checkpoints/final.ckpt --root DATA \\
        [--split val] [--images N] [--dilate 2] [--fill inpaint|mean] [--json]
    python tools/context_reliance.py --summarize seed0.json seed1.json seed2.json   # mean +- std of --json outputs

The classifier scores three versions of every image of the split, all with the image's own labels:

- ``intact``: the image;
- ``context only``: every ground-truth object pixel (any foreground class, dilated by ``--dilate`` px so no
  outline is left) filled in from its surroundings (OpenCV's Telea inpainting, or the mean colour with ``--fill
  mean``);
- ``objects only``: every other pixel set to the mean colour (0 after normalisation, the colour padding uses).

Per class: average precision (AP) of the sigmoid scores against the labels, on each version, next to the chance
level (the class's share of the images). A classifier that recognises the objects loses most of its AP above
chance once they are gone and keeps it on the objects alone; one that reads the context keeps it on the context
alone, and its CAMs (the class rows applied to every cell) fire on that context. The ground-truth masks are used
only for this diagnosis, never for training.
"""

from __future__ import annotations

import argparse
import json
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch
from torchmetrics.functional.classification import binary_average_precision

from lightning_wsss.datamodules.transforms import IMAGENET_MEAN, normalize
from lightning_wsss.datasets import IGNORE_INDEX, open_split
from lightning_wsss.pipeline.config import resolve_class
from lightning_wsss.serialization import load_model_checkpoint

VERSIONS = ("intact", "context only", "objects only")


def object_region(mask: np.ndarray, dilate: int) -> np.ndarray:
    """bool [H, W]: pixels of any foreground class (not 0, not ignore), dilated by ``dilate`` px (square)."""
    region = (mask > 0) & (mask != IGNORE_INDEX)
    if dilate > 0 and region.any():
        kernel = np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8)
        region = cv2.dilate(region.astype(np.uint8), kernel) > 0
    return region


def fill_region(image: np.ndarray, region: np.ndarray, fill: str) -> np.ndarray:
    """uint8 [H, W, 3]: ``image`` with ``region`` (bool [H, W]) replaced by inpainting (``"inpaint"``, from the
    pixels around it) or by the ImageNet mean colour (``"mean"``)."""
    if not region.any():
        return image.copy()
    if fill == "inpaint":
        return cv2.inpaint(np.ascontiguousarray(image), region.astype(np.uint8), 5, cv2.INPAINT_TELEA)
    if fill == "mean":
        out = image.copy()
        out[region] = np.round(255 * np.asarray(IMAGENET_MEAN)).astype(np.uint8)
        return out
    raise ValueError(f"fill must be 'inpaint' or 'mean', got {fill!r}")


def image_versions(image: np.ndarray, mask: np.ndarray, dilate: int, fill: str) -> Dict[str, np.ndarray]:
    """The three versions of one image (see the module docstring), uint8 [H, W, 3] each."""
    objects = object_region(mask, dilate)
    return {"intact": image, "context only": fill_region(image, objects, fill),
            "objects only": fill_region(image, ~objects, "mean")}


def average_precisions(scores: torch.Tensor, labels: torch.Tensor) -> List[float]:
    """AP per class (float [N, C] scores, {0, 1} [N, C] labels); NaN for a class without positives or negatives."""
    out = []
    for column in range(labels.shape[1]):
        target = labels[:, column].long()
        if target.sum() == 0 or target.sum() == target.numel():
            out.append(float("nan"))
        else:
            out.append(float(binary_average_precision(scores[:, column], target)))
    return out


@torch.no_grad()
def context_reliance(model, root: str, split: str, images: int, dilate: int, fill: str) -> Dict[str, object]:
    """``{"classes", "chance", "ap": {version: [AP per foreground class]}, "map": {version: mAP}, "images"}``;
    mAP is over the classes with positives and negatives."""
    dataset = open_split(root, split, require_masks=True)
    ids = dataset.ids[:images] if images else dataset.ids
    scores: Dict[str, List[torch.Tensor]] = {version: [] for version in VERSIONS}
    labels = []
    for image_id in ids:
        sample = dataset.load(image_id)
        for version, picture in image_versions(sample["image"], sample["mask"], dilate, fill).items():
            scores[version].append(torch.sigmoid(model(torch.from_numpy(normalize(picture))[None])).float()[0])
        labels.append(torch.as_tensor(np.asarray(sample["labels"]), dtype=torch.float32))
    target = torch.stack(labels)
    ap = {version: average_precisions(torch.stack(rows), target) for version, rows in scores.items()}
    return {"classes": list(dataset.class_names[1:]), "images": len(ids),
            "chance": target.mean(0).tolist(),
            "ap": ap, "map": {version: float(np.nanmean(values)) for version, values in ap.items()}}


def format_table(result: Dict[str, object]) -> str:
    """AP (%) per version and class, the chance level in the first row."""
    classes: Sequence[str] = result["classes"]
    head = f"{'version':<14} {'mAP':>6} " + " ".join(f"{name[:10]:>10}" for name in classes)
    rows = [head, "-" * len(head)]
    chance = result["chance"]
    rows.append(f"{'chance':<14} {100 * float(np.mean(chance)):6.2f} " + " ".join(f"{100 * c:10.1f}" for c in chance))
    for version in VERSIONS:
        values = result["ap"][version]
        rows.append(f"{version:<14} {100 * result['map'][version]:6.2f} "
                    + " ".join(f"{100 * v:10.1f}" if v == v else f"{'n/a':>10}" for v in values))
    return "\n".join(rows)


def summarize(results: Sequence[Dict[str, object]]) -> str:
    """Mean +- sample std over runs (seeds) of every version's mAP and per-class AP (%), and the share of the image's
    mAP above chance that each version keeps (``(mAP - chance) / (intact mAP - chance)``)."""
    classes = results[0]["classes"]
    chance = 100 * float(np.mean(results[0]["chance"]))
    lines = [f"| version (runs: {len(results)}) | mAP % | above chance kept | " + " | ".join(classes) + " |",
             "|" + "---|" * (len(classes) + 3),
             f"| chance | {chance:.2f} | | " + " | ".join(f"{100 * c:.1f}" for c in results[0]["chance"]) + " |"]
    for version in VERSIONS:
        maps = np.array([100 * r["map"][version] for r in results])
        kept = np.array([(100 * r["map"][version] - chance) / (100 * r["map"]["intact"] - chance) for r in results])
        per_class = np.array([r["ap"][version] for r in results], dtype=float) * 100
        spread = lambda a: f"{np.mean(a):.2f} +- {np.std(a, ddof=1):.2f}" if len(a) > 1 else f"{np.mean(a):.2f}"
        lines.append(f"| {version} | {spread(maps)} | {100 * np.mean(kept):.0f} % | "
                     + " | ".join(f"{np.nanmean(column):.1f}" for column in per_class.T) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summarize", nargs="+", metavar="JSON", help="tabulate --json outputs (one per seed)")
    parser.add_argument("--checkpoint")
    parser.add_argument("--root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=0, help="first N images of the split (0: all)")
    parser.add_argument("--dilate", type=int, default=2, help="px added around the objects before they are erased")
    parser.add_argument("--fill", choices=["inpaint", "mean"], default="inpaint")
    parser.add_argument("--class-path", default="CAMClassifier", help="the checkpoint's task class")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    args = parser.parse_args()
    if args.summarize:
        print(summarize([json.loads(open(path).read()) for path in args.summarize]))
        return
    if not args.checkpoint or not args.root:
        parser.error("--checkpoint and --root are required (or --summarize)")
    model = load_model_checkpoint(resolve_class(args.class_path, "model"), args.checkpoint).eval()
    result = context_reliance(model, args.root, args.split, args.images, args.dilate, args.fill)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['images']} images of {args.split}; AP (%) of the classifier's scores, objects erased by "
              f"{args.fill} (dilated {args.dilate} px)")
        print(format_table(result))


if __name__ == "__main__":
    main()
