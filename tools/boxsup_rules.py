"""Round 1 of BoxSup under several selection rules, from one network: which rule keeps what is good.

    wsss pipeline CONFIG --until boxsup      # with stages.boxsup.trainer.max_epochs = round_epochs (round 0 only)
    python tools/boxsup_rules.py --root DATA --stage RUN/box/boxsup/<hash> --proposals OTHER_RUN/rounds/proposals \\
        --rules 0.1,3,none 0.1,3,auto 0.1,1,auto 0.1,0,none

The stage's ``checkpoints/final.ckpt`` is the network trained on round 0; for every rule
``MARGIN,CE_WEIGHT,BAND[,CONFIDENCE]`` (``replace_margin``, ``ce_weight``, ``ce_ignore_band``: ``none``, ``auto``,
``uncertain`` or pixels, ``+confirm`` appended for ``ce_confirm_unbanded``; ``ce_band_confidence`` for
``uncertain``, default 0.9)
every training image's round-1 mask is rebuilt with :meth:`BoxSupSegmenter.update_mask` from the round-0 masks
and the proposal masks (``--proposals``: a ``rounds/proposals`` folder with one sub-folder per proposal, as a
BoxSup stage that reached round 1 writes it), and scored against the ground truth.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch

from lightning_wsss.datasets.voc import VOCSegmentation
from lightning_wsss.io import read_label_png
from lightning_wsss.metrics import score_label_maps
from lightning_wsss.serialization import safe_torch_load
from lightning_wsss.tasks.boxsup import BoxSupSegmenter


def parse_rule(text: str) -> Tuple[float, float, Union[int, str, None], float, bool]:
    """``MARGIN,CE_WEIGHT,BAND[,CONFIDENCE]`` -> (margin, weight, band, confidence of ``uncertain``, confirm);
    a band ending in ``+confirm`` sets ``ce_confirm_unbanded``."""
    margin, weight, band, *rest = text.split(",")
    confirm = band.endswith("+confirm")
    band = band.removesuffix("+confirm")
    band_value: Union[int, str, None] = None if band == "none" else band if band in ("auto", "uncertain") else int(band)
    return float(margin), float(weight), band_value, float(rest[0]) if rest else 0.9, confirm


def load_task(stage: Path) -> BoxSupSegmenter:
    checkpoint = safe_torch_load(stage / "checkpoints" / "final.ckpt", what="checkpoint")
    task = BoxSupSegmenter(**dict(checkpoint["hyper_parameters"]))
    task.load_state_dict(checkpoint["state_dict"])
    return task.eval()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--stage", required=True, type=Path, help="BoxSup stage folder trained through round 0")
    parser.add_argument("--proposals", required=True, type=Path, help="rounds/proposals folder")
    parser.add_argument("--rules", nargs="+", default=["0.1,3,none", "0.1,3,auto"], metavar="MARGIN,CE_WEIGHT,BAND")
    args = parser.parse_args(argv)
    task = load_task(args.stage)
    reader = VOCSegmentation(args.root, args.split)
    names = sorted(p.name for p in args.proposals.iterdir() if p.is_dir())
    data = []
    with torch.no_grad():
        for image_id in reader.ids:
            sample = reader.load(image_id)
            round0 = read_label_png(args.stage / "rounds" / "round_0" / f"{image_id}.png")
            proposals = [read_label_png(args.proposals / name / f"{image_id}.png") for name in names]
            data.append((sample, task.image_probs(sample["image"]), round0, proposals))
    round0_miou = score_label_maps(((r0, s["mask"]) for s, _, r0, _ in data), task.num_classes)["miou"]
    print(f"round 0: {100 * round0_miou:.2f} mIoU ({len(data)} images; proposals {', '.join(names)})")
    for rule in args.rules:
        margin, weight, band, confidence, confirm = parse_rule(rule)
        task.hparams.replace_margin, task.hparams.ce_weight, task.hparams.ce_ignore_band = margin, weight, band
        task.hparams.ce_band_confidence, task.hparams.ce_confirm_unbanded = confidence, confirm
        task.replaced = {"boxes": 0, "replaced": 0}
        pairs = [(task.update_mask(s["image"], probs, s["boxes"], s["box_labels"], r0, r0, proposals=props), s["mask"])
                 for s, probs, r0, props in data]
        miou = score_label_maps(pairs, task.num_classes)["miou"]
        band_text = f"{band} (confidence {confidence})" if band == "uncertain" else str(band)
        band_text += ", confirmed unbanded" if confirm else ""
        print(f"replace_margin {margin} ce_weight {weight} ce_ignore_band {band_text}: round 1 {100 * miou:.2f} mIoU, "
              f"{task.replaced['replaced']} of {task.replaced['boxes']} boxes changed")


if __name__ == "__main__":
    main()
