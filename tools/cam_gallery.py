"""A gallery of CAMs from several CAM folders side by side on the same images, written as one PNG.

    python tools/cam_gallery.py --root DATA --split train --out docs/gallery.png \
        --cams "CAM=RUN/image/cams/<hash>/cams" "LPCAM=RUN/image/cams/<hash2>/cams" [--ids a b c | --num 6]

Each row is one image: the photo, its ground truth, then per CAM folder the max over the image's class maps as a
heat map over the photo. Colours of the ground truth follow the suite's palette.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from lightning_wsss.cam.files import load_cams
from lightning_wsss.datasets import open_split
from lightning_wsss.palette import colorize


def parse_sources(items: Sequence[str]) -> List[Tuple[str, Path]]:
    """``NAME=FOLDER`` pairs (a bare folder is named by its position)."""
    sources = []
    for index, item in enumerate(items):
        name, _, folder = item.rpartition("=")
        sources.append((name or f"cams {index}", Path(folder)))
    return sources


def render(root: Path, split: str, sources: Sequence[Tuple[str, Path]], ids: Sequence[str], out: Path) -> Path:
    """Draw the gallery and save it to ``out`` (PNG); returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = open_split(root, split, require_masks=True)
    columns = 2 + len(sources)
    fig, axes = plt.subplots(len(ids), columns, figsize=(2.2 * columns, 2.3 * len(ids)), squeeze=False)
    for row, image_id in enumerate(ids):
        sample = dataset.load(image_id)
        panels = [("image", sample["image"]), ("ground truth", colorize(sample["mask"]))]
        for name, folder in sources:
            cams = load_cams(folder / f"{image_id}.npz")["cams"]
            heat = cams.max(0) if len(cams) else np.zeros(sample["image"].shape[:2], np.float32)
            colours = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255
            panels.append((name, (0.5 * sample["image"] + 0.5 * colours).astype(np.uint8)))
        for column, (title, picture) in enumerate(panels):
            axes[row, column].imshow(picture)
            axes[row, column].set_axis_off()
            if row == 0:
                axes[row, column].set_title(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--cams", nargs="+", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--ids", nargs="*", default=None, help="image ids (default: --num evenly spaced ones)")
    parser.add_argument("--num", type=int, default=6)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    ids = args.ids
    if not ids:
        all_ids = open_split(args.root, args.split).ids
        ids = [all_ids[i] for i in np.linspace(0, len(all_ids) - 1, args.num).round().astype(int)]
    print(render(args.root, args.split, parse_sources(args.cams), ids, args.out))


if __name__ == "__main__":
    main()
