"""Where adversarial erasing mines: per round, the share of the mined pixels that lie on the ground-truth
foreground, and the mined share of the image.

    python tools/erasing_mined_precision.py --checkpoint RUN/image/classifier/<hash>/checkpoints/final.ckpt --root DATA

A round whose precision falls far below round 0's while its area grows is mining context, not object parts.
"""

from __future__ import annotations

import argparse

import torch

from lightning_wsss.datamodules import ImageLabelDataModule
from lightning_wsss.serialization import load_model_checkpoint
from lightning_wsss.tasks.erasing import ErasingCAMClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=160, help="first N images of the split")
    args = parser.parse_args()
    model = load_model_checkpoint(ErasingCAMClassifier, args.checkpoint).eval()
    datamodule = ImageLabelDataModule(root=args.root, predict_split=args.split, eval_batch_size=16)
    datamodule.setup("predict")
    rounds = len(model.round_snapshots)
    on_object, mined, pixels, seen = torch.zeros(rounds), torch.zeros(rounds), 0, 0
    for batch in datamodule.predict_dataloader():
        _, regions = model.mined_regions(batch["image"], batch["labels"])  # bool [B, R, H, W]
        foreground = (batch["mask"] > 0) & (batch["mask"] != 255)
        for k in range(rounds):
            on_object[k] += (regions[:, k] & foreground).sum()
            mined[k] += regions[:, k].sum()
        pixels += batch["mask"].numel()
        seen += len(batch["id"])
        if seen >= args.images:
            break
    for k in range(rounds):
        print(f"round {k}: {100 * float(on_object[k] / mined[k].clamp(min=1)):.1f} % of the mined pixels on the object, "
              f"mined {100 * float(mined[k] / pixels):.1f} % of the image ({seen} images)")


if __name__ == "__main__":
    main()
