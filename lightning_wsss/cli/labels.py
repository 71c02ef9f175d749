"""``wsss affinity-labels``, ``wsss predict-box-crops``: label maps derived from saved CAMs or a trained
segmenter."""

from __future__ import annotations

import argparse
from typing import List

from .registry import command


@command("affinity-labels", "write confident fg / bg / ignore label PNGs from saved CAMs, for AffinityNet")
def affinity_labels(argv: List[str]) -> int:
    """``wsss affinity-labels --cams DIR --root ROOT --split SPLIT --out DIR``: confident fg/bg/ignore maps for AffinityNet."""
    parser = argparse.ArgumentParser(prog="wsss affinity-labels",
                                     description="Write confident affinity label PNGs (class / 0 / 255) from saved CAMs.")
    parser.add_argument("--cams", required=True, help="folder of <id>.npz CAM files")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=["psa", "irn"], default="psa",
                        help="psa: two CRFs with background powers 4 / 32; irn: thresholds 0.30 / 0.05 refined by CRF")
    args = parser.parse_args(argv)
    from pathlib import Path

    from ..datasets.voc import VOCSegmentation
    from ..refine.affinity_targets import write_affinity_labels

    out = write_affinity_labels(VOCSegmentation(args.root, args.split), Path(args.cams), Path(args.out), mode=args.mode)
    print(f"affinity labels written to {out}")
    return 0


@command("predict-box-crops", "segment each annotated box at a higher resolution with a segmenter, paste back, write PNGs")
def predict_box_crops(argv: List[str]) -> int:
    """``wsss predict-box-crops --checkpoint CKPT --root ROOT --split SPLIT --out DIR``."""
    parser = argparse.ArgumentParser(prog="wsss predict-box-crops", description="Label maps of a trained segmenter "
                                     "helped by the split's boxes: each box (plus context) is cropped, resized to "
                                     "--crop-size, segmented and pasted back over the full-image prediction.")
    parser.add_argument("--checkpoint", required=True, help="a segmenter checkpoint (a pipeline's segmenter "
                                                            "checkpoints/final.ckpt, or one written by wsss fit)")
    parser.add_argument("--root", required=True, help="data set root (VOC layout, with Annotations/<id>.xml)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", required=True, help="folder for the <id>.png label maps (existing ones are kept)")
    parser.add_argument("--crop-size", type=int, nargs="+", default=[320], metavar="PX", help="crop side, or H W")
    parser.add_argument("--context", type=float, default=0.1, help="margin on each side, as a share of the box")
    parser.add_argument("--combine", choices=["max", "mean"], default="max")
    parser.add_argument("--model-class", default="DeepLabSegmenter",
                        help="the checkpoint's class: a name in lightning_wsss.tasks or a dotted path")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if len(args.crop_size) > 2:
        parser.error("--crop-size takes one side or H W")
    from ..boxes.crop_prediction import predict_box_crops as run
    from ..datamodules import BoxDataModule
    from ..errors import DataError
    from ..serialization import load_model_checkpoint
    from .lightning import import_class

    path = args.model_class if "." in args.model_class else f"lightning_wsss.tasks.{args.model_class}"
    model = load_model_checkpoint(import_class(path), args.checkpoint).eval().to(args.device)
    datamodule = BoxDataModule(root=args.root, predict_split=args.split, eval_batch_size=1, num_workers=0)
    if getattr(model, "num_classes", datamodule.num_classes) != datamodule.num_classes:
        raise DataError(args.checkpoint, f"checkpoint has {model.num_classes} classes but the data set has "
                                         f"{datamodule.num_classes}")
    datamodule.setup("predict")
    crop = args.crop_size[0] if len(args.crop_size) == 1 else tuple(args.crop_size)
    written, skipped = run(model, datamodule.predict_dataloader(), args.out, crop, args.context, args.combine,
                           args.device)
    print(f"{written} label maps written to {args.out}" + (f" ({skipped} existed)" if skipped else ""))
    return 0
