"""What a refinement changed in the labels it started from, judged by the masks: the pixels it added to each class
and how many the masks confirm, split by how much they grow their class; the pixels it removed; the objects it lost.

    python tools/refinement_changes.py --reference RUN/image/cams/<hash>/labels \
        --refined RUN/image/cam_crf/<hash>/labels --root DATA [--split train] [--max-growth 1.0 --min-kept 0.5]

A refinement can raise the labels' mIoU and still teach a segmenter worse (README "Bounded CRF"): the mIoU weighs
pixels, a segmenter also learns from what the changes are. Per class (pixels whose mask is 255 are left out):

- ``added``: pixels the refinement labels with the class where the reference did not, in percent of all pixels,
  and the share of them the masks label with the class (``right``); by the image's growth of the class (its added
  pixels over its reference pixels in that image): below 0.5, 0.5 to 1, above 1;
- ``removed``: pixels of the class in the reference that the refinement labels otherwise, and the share of them
  the masks do not label with the class;
- ``objects lost``: of the masks' objects (``SegmentationObject`` instances where the data set has them, else the
  connected regions of each class), the share labelled with their class on less than 20 % of their pixels, in the
  reference and after the refinement;
- ``newly lost``: the objects lost after the refinement but not in the reference, by what became of the reference's
  regions of their class that overlap them: ``removed`` (under half of those regions' pixels keep the class: what
  ``--min-kept`` restores), ``kept off`` (at least half keep it, but the regions lay mostly outside the object: the
  refinement kept their outside part), ``kept on`` (at least half keep it, the regions lay mostly on the object).

``--max-growth`` / ``--min-kept`` also score the refined labels with those bounds
(:func:`lightning_wsss.refine.label_bounds.bound_changes`) against the reference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import cv2
import numpy as np

from lightning_wsss.datasets import open_split
from lightning_wsss.io import read_label_png
from lightning_wsss.metrics import score_label_maps
from lightning_wsss.refine.label_bounds import bound_changes

GROWTH_BINS = (0.5, 1.0)
"""Edges of the growth bins: below 0.5, 0.5 to 1, above 1."""
LOST_BELOW = 0.2
"""An object is lost when less than this share of its pixels carries its class."""
NEWLY_LOST = ("removed", "kept off", "kept on")
"""What became of the reference regions of a newly lost object (see the module docstring)."""


def growth_bin(added: int, reference: int) -> int:
    """The bin (0, 1, 2) of a class's growth in one image: ``added / reference`` (no reference pixels: bin 2)."""
    if reference == 0:
        return len(GROWTH_BINS)
    return int(np.searchsorted(GROWTH_BINS, added / reference, side="right"))


def image_changes(reference: np.ndarray, refined: np.ndarray, mask: np.ndarray,
                  num_classes: int) -> Dict[str, np.ndarray]:
    """Counts of one image: ``added`` / ``added_right`` [C, bins], ``removed`` / ``removed_right`` [C]."""
    valid = mask != 255
    bins = len(GROWTH_BINS) + 1
    out = {"added": np.zeros((num_classes, bins), np.int64), "added_right": np.zeros((num_classes, bins), np.int64),
           "removed": np.zeros(num_classes, np.int64), "removed_right": np.zeros(num_classes, np.int64)}
    for label in range(1, num_classes):
        added = (refined == label) & (reference != label) & valid
        removed = (reference == label) & (refined != label) & valid
        b = growth_bin(int(added.sum()), int(((reference == label) & valid).sum()))
        out["added"][label, b] += added.sum()
        out["added_right"][label, b] += (added & (mask == label)).sum()
        out["removed"][label] += removed.sum()
        out["removed_right"][label] += (removed & (mask != label)).sum()
    return out


def objects(mask: np.ndarray, instances: Optional[np.ndarray]) -> Iterable[Tuple[int, np.ndarray]]:
    """``(class, pixels [H, W] bool)`` of each object of a mask: its instances, else its classes' connected regions."""
    if instances is not None:
        for index in np.unique(instances):
            if index in (0, 255):
                continue
            region = instances == index
            labels = mask[region]
            labels = labels[(labels != 0) & (labels != 255)]
            if labels.size:
                yield int(np.bincount(labels).argmax()), region
        return
    for label in np.unique(mask):
        if label in (0, 255):
            continue
        count, regions = cv2.connectedComponents((mask == label).astype(np.uint8), connectivity=8)
        for index in range(1, count):
            yield int(label), regions == index


def lost_objects(labels: np.ndarray, mask: np.ndarray, instances: Optional[np.ndarray],
                 num_classes: int) -> np.ndarray:
    """Counts [C, 2]: the objects of each class, and those labelled with their class on < ``LOST_BELOW``."""
    out = np.zeros((num_classes, 2), np.int64)
    for label, region in objects(mask, instances):
        out[label, 0] += 1
        out[label, 1] += (labels[region] == label).mean() < LOST_BELOW
    return out


def newly_lost(reference: np.ndarray, refined: np.ndarray, mask: np.ndarray, instances: Optional[np.ndarray],
               num_classes: int) -> np.ndarray:
    """Counts [C, 3] of the objects lost in ``refined`` but not in ``reference``, by :data:`NEWLY_LOST`."""
    out = np.zeros((num_classes, len(NEWLY_LOST)), np.int64)
    regions_of: Dict[int, np.ndarray] = {}
    for label, region in objects(mask, instances):
        if (reference[region] == label).mean() < LOST_BELOW or (refined[region] == label).mean() >= LOST_BELOW:
            continue
        if label not in regions_of:
            regions_of[label] = cv2.connectedComponents((reference == label).astype(np.uint8), connectivity=8)[1]
        touched = np.isin(regions_of[label], np.unique(regions_of[label][region & (reference == label)]))
        kept = (refined[touched] == label).mean()
        inside = region[touched].mean()
        out[label, 0 if kept < 0.5 else (1 if inside < 0.5 else 2)] += 1
    return out


def refinement_changes(reference_dir: Path, refined_dir: Path, root: Path, split: str = "train",
                       max_growth: Optional[float] = None, min_kept: Optional[float] = None) -> Dict[str, object]:
    """The changes of ``refined_dir`` against ``reference_dir`` on ``split``'s masks (see the module docstring).

    Returns:
        ``{"classes", "pixels", "added", "added_right", "removed", "removed_right", "lost_reference",
        "lost_refined", "miou": {"reference", "refined"[, "bounded"]}}`` (counts as nested lists).
    """
    dataset = open_split(root, split, require_masks=True)
    names: List[str] = list(dataset.class_names)
    num_classes = len(names)
    instance_dir = Path(root) / "SegmentationObject"
    totals: Dict[str, np.ndarray] = {}
    lost = {"reference": np.zeros((num_classes, 2), np.int64), "refined": np.zeros((num_classes, 2), np.int64)}
    newly = np.zeros((num_classes, len(NEWLY_LOST)), np.int64)
    pairs: Dict[str, list] = {"reference": [], "refined": [], "bounded": []}
    pixels = 0
    for image_id in dataset.ids:
        mask = np.asarray(dataset.load(image_id)["mask"])
        reference = read_label_png(Path(reference_dir) / f"{image_id}.png")
        refined = read_label_png(Path(refined_dir) / f"{image_id}.png")
        instance_path = instance_dir / f"{image_id}.png"
        instances = read_label_png(instance_path) if instance_path.is_file() else None
        pixels += int((mask != 255).sum())
        for key, value in image_changes(reference, refined, mask, num_classes).items():
            totals[key] = totals.get(key, 0) + value
        for key, labels in (("reference", reference), ("refined", refined)):
            lost[key] += lost_objects(labels, mask, instances, num_classes)
            pairs[key].append((labels, mask))
        newly += newly_lost(reference, refined, mask, instances, num_classes)
        if max_growth is not None or min_kept is not None:
            pairs["bounded"].append((bound_changes(reference, refined, max_growth, min_kept), mask))
    miou = {key: score_label_maps(p, num_classes, names)["miou"] for key, p in pairs.items() if p}
    return {"classes": names, "pixels": pixels, **{k: v.tolist() for k, v in totals.items()},
            "lost_reference": lost["reference"].tolist(), "lost_refined": lost["refined"].tolist(),
            "newly_lost": newly.tolist(), "miou": miou}


def format_changes(result: Dict[str, object]) -> str:
    """The per-class table of :func:`refinement_changes`."""
    pixels = result["pixels"]
    added, added_right = np.asarray(result["added"]), np.asarray(result["added_right"])
    removed, removed_right = np.asarray(result["removed"]), np.asarray(result["removed_right"])
    lost_ref, lost_new = np.asarray(result["lost_reference"]), np.asarray(result["lost_refined"])

    def share(count, right) -> str:
        return f"{100 * count / pixels:5.2f} ({100 * right / count:3.0f})" if count else f"{0:5.2f} (  -)"

    head = ("class", "added, growth < 0.5", "0.5 to 1", "> 1", "removed (right)", "objects lost: ref -> refined")
    lines = ["pixels in % of all (in parentheses: % the masks confirm)", " | ".join(head)]
    for label in range(1, len(result["classes"])):
        objects_ = max(int(lost_ref[label, 0]), 1)
        lost = (f"{100 * lost_ref[label, 1] / objects_:.1f} -> {100 * lost_new[label, 1] / objects_:.1f} % "
                f"of {int(lost_ref[label, 0])}")
        lines.append(" | ".join([result["classes"][label]]
                                + [share(added[label, b], added_right[label, b]) for b in range(added.shape[1])]
                                + [share(removed[label], removed_right[label]), lost]))
    newly = np.asarray(result["newly_lost"])
    lines.append("objects newly lost, by what became of their reference regions: "
                 + ", ".join(f"{name} {int(newly[:, i].sum())}" for i, name in enumerate(NEWLY_LOST)))
    lines.append("mIoU: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in result["miou"].items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, type=Path, help="label folder the refinement started from")
    parser.add_argument("--refined", required=True, type=Path, help="label folder after the refinement")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--max-growth", type=float, default=None)
    parser.add_argument("--min-kept", type=float, default=None)
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args()
    result = refinement_changes(args.reference, args.refined, args.root, args.split, args.max_growth, args.min_kept)
    print(json.dumps(result) if args.json else format_changes(result))


if __name__ == "__main__":
    main()
