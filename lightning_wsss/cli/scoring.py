"""``wsss evaluate``, ``wsss evaluate-cams``, ``wsss sweep-walk``: scoring label maps, CAMs and walk settings."""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Dict, List, Optional

from .quiet import quiet_lightning
from .registry import command


def number_list(spec: str, cast: Callable[[float], float] = float) -> List:
    """``start:stop:step`` (inclusive) or a comma list."""
    if ":" in spec:
        import numpy as np

        start, stop, step = (float(v) for v in spec.split(":"))
        return [cast(round(float(t), 4)) for t in np.arange(start, stop + step / 2, step)]
    return [cast(float(v)) for v in spec.split(",") if v.strip()]


@command("evaluate", "score a folder of label PNGs against a split's ground truth (mIoU, per-class IoU)")
def evaluate(argv: List[str]) -> int:
    """``wsss evaluate --pred DIR --root ROOT [--split SPLIT] [--json]``."""
    parser = argparse.ArgumentParser(prog="wsss evaluate", description="Score a folder of label PNGs against ground truth.")
    parser.add_argument("--pred", required=True, help="folder of <id>.png label maps")
    parser.add_argument("--root", required=True, help="data set root (VOC layout), or the image folder for COCO")
    parser.add_argument("--split", default="val", help="split name, or a COCO instances JSON")
    parser.add_argument("--json", action="store_true", help="print JSON with 'miou' and 'per_class' instead of a table")
    args = parser.parse_args(argv)
    from ..metrics import evaluate_folder
    from ..tables import format_iou_table

    result = evaluate_folder(args.pred, args.root, args.split)
    print(json.dumps(result, indent=2) if args.json else format_iou_table(result, f"{args.pred} vs {args.root} [{args.split}]"))
    return 0


@command("evaluate-cams", "score saved CAMs as pseudo labels over a sweep of background thresholds")
def evaluate_cams(argv: List[str]) -> int:
    """``wsss evaluate-cams --cams DIR --root ROOT --split SPLIT``: best background threshold, per-class IoU and
    foreground share."""
    parser = argparse.ArgumentParser(prog="wsss evaluate-cams",
                                     description="Score CAM pseudo labels over a sweep of background thresholds.")
    parser.add_argument("--cams", required=True, help="folder of <id>.npz CAM files (the 'cams' folder of a CAM prediction)")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--bg-mode", choices=["constant", "power"], default="constant",
                        help="constant: background score = threshold (irn); power: (1 - max cam) ** alpha (psa)")
    parser.add_argument("--thresholds", default=None,
                        help="start:stop:step (inclusive) or a comma list; default 0.05:0.95:0.05 (constant) or "
                             "1,2,4,8,16,32 (power alphas)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    spec = args.thresholds or ("0.05:0.95:0.05" if args.bg_mode == "constant" else "1,2,4,8,16,32")
    from ..cam.threshold_sweep import evaluate_cam_thresholds
    from ..tables import format_cam_sweep

    result = evaluate_cam_thresholds(args.cams, args.root, args.split, number_list(spec), bg_mode=args.bg_mode)
    print(json.dumps(result, indent=2) if args.json else format_cam_sweep(result, args.cams, args.root, args.split))
    return 0


def parse_overrides(parser: argparse.ArgumentParser, items: List[str]) -> Dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> ``{KEY: yaml(VALUE)}``; a malformed item ends the command with a usage error."""
    import yaml

    overrides: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def parse_yaml_value(parser: argparse.ArgumentParser, flag: str, text: Optional[str]) -> Any:
    """An option's YAML value (``None`` when not given); text that is not YAML ends the command with a usage
    error naming the option."""
    import yaml

    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        parser.error(f"{flag} takes YAML, got {text!r}: {exc}")


@command("sweep-walk", "score a grid of random-walk settings on a split's masks and print the best")
def sweep_walk(argv: List[str]) -> int:
    """``wsss sweep-walk --checkpoint CKPT --cams DIR --root ROOT``: score random-walk settings on the training
    masks and print the best (the protocol psa / irn report)."""
    parser = argparse.ArgumentParser(prog="wsss sweep-walk", description="Score a grid of random-walk settings "
                                     "(mode, beta, steps, background) on a split's masks and print the best.")
    parser.add_argument("--checkpoint", required=True,
                        help="a trained AffinityRefiner or BoundaryRefiner (the affinity stage's checkpoints/final.ckpt)")
    parser.add_argument("--cams", required=True, help="the CAM stage's cams folder of <id>.npz files")
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--modes", nargs="+", default=["psa", "irn"], choices=["psa", "irn"])
    parser.add_argument("--betas", default="4,8,10", help="comma list or start:stop:step")
    parser.add_argument("--steps", default="2,4,8,16,32,64,128,256", help="numbers of walk steps")
    parser.add_argument("--bg-alphas", default="4,8,16,32", help="psa: background powers (1 - max cam) ** alpha")
    parser.add_argument("--bg-thresholds", default="0.1:0.6:0.05", help="irn: background scores after the walk")
    parser.add_argument("--limit", type=int, default=None, help="score the first N images only")
    parser.add_argument("--top", type=int, default=15, help="rows of the table")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="refiner arguments for the walk, as in stages.random_walk.walk "
                             "(e.g. boundary_cams=false for a BoundaryRefiner); values are read as YAML")
    parser.add_argument("--crf", default=None, metavar="YAML",
                        help="also score every setting after a dense CRF of its walked scores, the random-walk "
                             "stage's walk.crf: true (psa's parameters) or a mapping such as '{scale_params: true, "
                             "bilateral_srgb: 5}'")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    overrides = parse_overrides(parser, args.overrides)
    crf = parse_yaml_value(parser, "--crf", args.crf)
    from ..refine.crf import crf_params_for

    try:
        crf_params_for(crf, (1, 1))
    except ValueError as exc:
        parser.error(f"--crf: {exc}")
    quiet_lightning()
    from ..refine.walk_sweep import format_walk_sweep, sweep_walk as run_sweep, walk_grid
    from ..serialization import load_model_checkpoint
    from ..tasks.irn import refiner_class

    grid = walk_grid(args.modes, number_list(args.betas), number_list(args.steps, int),
                     number_list(args.bg_alphas), number_list(args.bg_thresholds))
    model = load_model_checkpoint(refiner_class(args.checkpoint), args.checkpoint, **overrides).to(args.device)
    result = run_sweep(model, args.cams, args.root, args.split, grid, limit=args.limit, progress=not args.json, crf=crf)
    print(json.dumps(result, indent=2) if args.json else format_walk_sweep(result, args.top))
    return 0
