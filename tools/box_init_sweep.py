"""Score a grid of one box initializer's settings on a split's masks, next to the filled boxes and the share of
its box that an object covers.

    python tools/box_init_sweep.py --root DATA --split train --initializer crf \\
        --kwargs '{"scale_params": true, "min_fill": 0.3, "max_fill": 0.98}' \\
        --grid edge_confidence=0.4,0.5,0.6,0.7,0.8 [--grid box_confidence=0.8,0.9] [--limit N] [--json]

The protocol of ``wsss sweep-walk`` for the box initializers: the training split's masks score each setting, so
that a config carries a measured value. The first line prints the mean *box fill* of the ground truth (the share
of each box its object covers), the number that decides, for example, how confident the CRF's box prior may be at
the box's border: objects that fill two thirds of their boxes (street signs, cars, the synthetic shapes) want a
prior above 0.5 there, a horse with its legs (two fifths) one below.
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from lightning_wsss.boxes import make_box_mask
from lightning_wsss.boxes.initializers import box_pixel_range
from lightning_wsss.datasets import open_split
from lightning_wsss.metrics import score_label_maps


def parse_grid(specs: Sequence[str]) -> List[Dict[str, object]]:
    """``["a=1,2", "b=x"]`` -> ``[{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]`` (values read as YAML)."""
    axes: List[Tuple[str, List[object]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise SystemExit(f"--grid wants KEY=V1,V2,...; got {spec!r}")
        axes.append((key.strip(), [yaml.safe_load(value) for value in values.split(",")]))
    return [dict(zip([key for key, _ in axes], point)) for point in itertools.product(*[v for _, v in axes])]


def box_fill(samples: Iterable[dict]) -> float:
    """Mean share of each box that its class covers in the ground-truth mask (boxes of all samples)."""
    shares = []
    for sample in samples:
        for box, label in zip(np.asarray(sample["boxes"]), np.asarray(sample["box_labels"])):
            x0, y0, x1, y1 = box_pixel_range(box)
            shares.append(float((sample["mask"][y0:y1, x0:x1] == label).mean()))
    return float(np.mean(shares)) if shares else float("nan")


def score_setting(samples: Sequence[dict], class_names: Sequence[str], initializer: str,
                  kwargs: Dict[str, object]) -> Dict[str, object]:
    """``score_label_maps`` of ``initializer(**kwargs)``'s masks against the samples' masks."""
    pairs = ((make_box_mask(initializer, s["image"], s["boxes"], s["box_labels"], source=s["id"], **kwargs), s["mask"])
             for s in samples)
    return score_label_maps(pairs, len(class_names), class_names)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--initializer", default="crf")
    parser.add_argument("--kwargs", default="{}", help="JSON: arguments every setting shares")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2")
    parser.add_argument("--limit", type=int, default=None, help="score the first N images only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    dataset = open_split(args.root, args.split, require_masks=True)
    ids = dataset.ids[: args.limit] if args.limit else dataset.ids
    samples = [dataset.load(image_id) for image_id in ids]
    names = list(dataset.class_names)
    shared = json.loads(args.kwargs)
    rows = [("filled", score_setting(samples, names, "filled", {}))]
    for point in parse_grid(args.grid) or [{}]:
        label = ", ".join(f"{k}={v}" for k, v in point.items()) or "(kwargs only)"
        rows.append((f"{args.initializer}: {label}", score_setting(samples, names, args.initializer, {**shared, **point})))
    fill = box_fill(samples)
    if args.json:
        print(json.dumps({"box_fill": fill, "images": len(samples),
                          "rows": [{"setting": s, "miou": r["miou"], "per_class": r["per_class"]} for s, r in rows]}))
        return
    print(f"{len(samples)} images; ground-truth box fill {100 * fill:.1f} %; shared kwargs {shared}")
    print("| setting | mIoU % | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for setting, result in sorted(rows, key=lambda row: -row[1]["miou"]):
        cells = " | ".join("" if v is None else f"{100 * v:.1f}" for v in result["per_class"].values())
        print(f"| {setting} | {100 * result['miou']:.2f} | {cells} |")


if __name__ == "__main__":
    main()
