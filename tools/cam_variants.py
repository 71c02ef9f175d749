"""Score CAM-method settings on the first images of a split against the plain CAM of the same classifier.

    python tools/cam_variants.py --checkpoint RUN/image/classifier/<hash>/checkpoints/final.ckpt --root DATA \\
        [--images 200] [--scales 1.0 0.5 1.5 2.0] [--flip] \\
        --variants "LPCAMClassifier:select_threshold=0.1" "LPCAMClassifier:select_threshold=0.5" [--json-dir DIR]

Each variant is ``Class:key=value,key=value`` (a ``CAMClassifier`` subclass that only changes how maps are made,
and the hyper-parameters to set); the checkpoint loads into it as the pipeline's ``cams`` stage does. LPCAM's
prototypes and ProbeCAM's probes are built from the same images. Every map set is scored like ``wsss evaluate-cams``: the best
constant background threshold of 0.05 .. 0.95 and its mIoU. Quicker than a CAM stage per setting: use it to
choose settings, then run the stage. ``--json-dir DIR`` also writes every row's full result (the ``wsss
evaluate-cams --json`` fields: per-class IoU, foreground shares) to ``DIR/<row number>.json`` (0 the plain CAM,
then the variants in order), which ``tools/cam_seed_table.py`` turns into a table over seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch

from lightning_wsss.cam.threshold_sweep import DEFAULT_THRESHOLDS, ThresholdSweep
from lightning_wsss.datamodules import ImageLabelDataModule
from lightning_wsss.datasets import open_split
from lightning_wsss.pipeline.config import resolve_class
from lightning_wsss.serialization import load_model_checkpoint
from lightning_wsss.tasks.classifier import present_class_ids

def parse_variant(text: str) -> Tuple[str, Dict[str, Any]]:
    """``"LPCAMClassifier:a=1,b=0.5,c=x"`` -> ``("LPCAMClassifier", {"a": 1.0, "b": 0.5, "c": "x"})`` (numbers as
    floats, anything else as text)."""
    name, _, settings = text.partition(":")
    values = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, {key: _number_or_text(value) for key, value in values.items()}


def _number_or_text(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


def score_maps(model, batches: Sequence[Dict[str, Any]], names: Sequence[str] = ()) -> Dict[str, Any]:
    """``wsss evaluate-cams``' result (best threshold and mIoU, per-class IoU, foreground shares) of
    ``model.compute_cams`` over ``batches`` (batch size 1), scored by the library's threshold sweep."""
    sweep = ThresholdSweep(model.num_classes, DEFAULT_THRESHOLDS)
    for batch in batches:
        ids = present_class_ids(batch["labels"])
        cams = model.compute_cams(batch["image"], ids)
        height, width = batch["size"][0].tolist()
        present = ids[0] >= 0
        sweep.add(cams[0, present, :height, :width].float().numpy(), ids[0, present].numpy(),
                  batch["mask"][0, :height, :width].numpy())
    return sweep.result(list(names) or None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--variants", nargs="*", default=[])
    parser.add_argument("--base", default="CAMClassifier", help="the class of the first row (the checkpoint's own)")
    parser.add_argument("--json-dir", help="write every row's full result to DIR/<row>.json (0: the first row)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    datamodule = ImageLabelDataModule(root=args.root, predict_split=args.split, eval_batch_size=1, num_workers=0)
    datamodule.setup("predict")
    batches: List[Dict[str, Any]] = [b for _, b in zip(range(args.images), datamodule.predict_dataloader())]
    names = open_split(args.root, args.split).class_names
    rows = [(args.base, {})] + [parse_variant(v) for v in args.variants]
    print(f"{len(batches)} images of {args.split}, scales {args.scales}, flip {args.flip}")
    for index, (name, settings) in enumerate(rows):
        model = load_model_checkpoint(resolve_class(name, "model"), args.checkpoint).eval()
        model.hparams.cam_scales, model.hparams.cam_flip = list(args.scales), bool(args.flip)
        for key, value in settings.items():
            model.hparams[key] = value
        if hasattr(model, "build_prototypes"):  # LPCAM
            model.build_prototypes(batches)
        if hasattr(model, "build_probes"):  # ProbeCAM
            model.build_probes(batches)
        result = score_maps(model, batches, names)
        miou, threshold = result["best_miou"], result["best_threshold"]
        label = name + (":" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in settings.items()) if settings else "")
        print(f"{label:<60} mIoU {100 * miou:6.2f}  at threshold {threshold:.2f}")
        if args.json_dir:
            Path(args.json_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.json_dir) / f"{index}.json").write_text(json.dumps({"row": label, **result}, indent=1))


if __name__ == "__main__":
    main()
