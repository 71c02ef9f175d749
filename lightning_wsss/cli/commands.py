"""Sub-commands of ``wsss`` beyond the data basics: CAM evaluation, pipelines, the demo."""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List

import numpy as np

from .main import register


def quiet_lightning() -> None:
    """Hide Lightning's start-up tips and device banners (progress bars and warnings stay)."""
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)


@register("evaluate-cams")
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
    if ":" in spec:
        start, stop, step = (float(v) for v in spec.split(":"))
        thresholds = [round(float(t), 4) for t in np.arange(start, stop + step / 2, step)]
    else:
        thresholds = [float(t) for t in spec.split(",")]
    from ..cam.evaluation import evaluate_cam_thresholds

    result = evaluate_cam_thresholds(args.cams, args.root, args.split, thresholds, bg_mode=args.bg_mode)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(format_cam_sweep(result, args.cams, args.root, args.split))
    return 0


def format_cam_sweep(result: Dict[str, Any], cams: str, root: str, split: str) -> str:
    """The text table of :func:`~lightning_wsss.cam.evaluation.evaluate_cam_thresholds`' result."""
    name = "bg threshold" if result["bg_mode"] == "constant" else "  bg alpha"
    lines = [f"CAM pseudo labels in {cams} vs {root} [{split}], {result['num_images']} images",
             f"{name:>12}  mIoU (%)  foreground (%)"]
    for t, m, share in zip(result["thresholds"], result["miou"], result["foreground_share"]):
        marker = "  <- best" if t == result["best_threshold"] else ""
        lines.append(f"{t:12.2f}  {100 * m:8.2f}  {100 * share:14.1f}{marker}")
    lines.append(f"best: {name.strip()} {result['best_threshold']:.2f}, mIoU {100 * result['best_miou']:.2f}; "
                 f"ground truth foreground {100 * result['foreground_share_gt']:.1f} %")
    lines.append("per-class IoU (%) at the best setting: " + ", ".join(
        f"{k} {'n/a' if v is None else f'{100 * v:.1f}'}" for k, v in result["per_class"].items()))
    return "\n".join(lines)


def _number_list(spec: str, cast=float) -> List:
    """``start:stop:step`` (inclusive) or a comma list."""
    if ":" in spec:
        start, stop, step = (float(v) for v in spec.split(":"))
        return [cast(round(float(t), 4)) for t in np.arange(start, stop + step / 2, step)]
    return [cast(float(v)) for v in spec.split(",") if v.strip()]


@register("sweep-walk")
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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    quiet_lightning()
    from ..refine.walk_sweep import format_walk_sweep, sweep_walk as run_sweep, walk_grid
    from ..serialization import load_model_checkpoint
    from ..tasks.irn import refiner_class

    grid = walk_grid(args.modes, _number_list(args.betas), _number_list(args.steps, int),
                     _number_list(args.bg_alphas), _number_list(args.bg_thresholds))
    model = load_model_checkpoint(refiner_class(args.checkpoint), args.checkpoint).to(args.device)
    result = run_sweep(model, args.cams, args.root, args.split, grid, limit=args.limit, progress=not args.json)
    print(json.dumps(result, indent=2) if args.json else format_walk_sweep(result, args.top))
    return 0


SEGMENTER_SEEDS_HELP = ("also train the final segmenter with these seeds on the same pseudo labels (earlier stages "
                        "are shared) and report its val mIoU as mean +- std over them: with few epochs the spread is "
                        "often larger than the gaps between methods")


@register("pipeline")
def pipeline(argv: List[str]) -> int:
    """``wsss pipeline CONFIG [--out DIR]``: run a supervision pipeline; complete stages are skipped."""
    parser = argparse.ArgumentParser(prog="wsss pipeline", description="Run a multi-stage WSSS pipeline from one YAML.")
    parser.add_argument("config", help="pipeline YAML (see experiments/*/pipeline_*.yaml)")
    parser.add_argument("--out", default=None, help="output folder (default: the config's 'out', else runs/<name>)")
    parser.add_argument("--segmenter-seeds", nargs="+", type=int, default=(), metavar="SEED",
                        help=SEGMENTER_SEEDS_HELP)
    parser.add_argument("--seed", type=int, default=None,
                        help="override the config's seed (every stage reruns under it: classifier seeds, for example)")
    parser.add_argument("--until", default=None, metavar="STAGE",
                        help="stop after this stage (e.g. cams); prints its folder and metrics, writes no summary entry")
    args = parser.parse_args(argv)
    quiet_lightning()
    from ..pipeline.checks import load_config
    from ..pipeline.pipelines import run_pipeline
    from ..pipeline.report import format_table

    config = load_config(args.config)
    if args.seed is not None:
        config["seed"] = args.seed
    out = args.out or config.get("out") or f"runs/{config.get('name', 'pipeline')}"
    if args.until:
        partial = run_pipeline(config, out, until=args.until)
        if _rank_zero():
            for name, stage in partial["stages"].items():
                print(f"{name:<16} {stage['dir']}  {stage['metrics']}")
        return 0
    summary = run_pipeline(config, out, segmenter_seeds=args.segmenter_seeds)
    if _rank_zero():
        print(format_table(summary))
        print(f"summary: {out}/summary.json")
    return 0


def _rank_zero() -> bool:
    """Whether this process is rank 0 of the processes torchrun / srun started (or runs alone)."""
    from ..pipeline.distributed import detect_launch

    launch = detect_launch()
    return launch is None or launch.rank == 0


@register("demo")
def demo(argv: List[str]) -> int:
    """``wsss demo [--out DIR]``: the three supervision types on the synthetic set, table and HTML report."""
    parser = argparse.ArgumentParser(prog="wsss demo", description="Compare image-label, box and full supervision "
                                     "on the embedded synthetic data set (CPU, minutes).")
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument("--data", default=None, help="synthetic data folder (default: OUT/data; generated if absent)")
    parser.add_argument("--num-train", type=int, default=None, help="training images (default: the demo's size)")
    parser.add_argument("--num-val", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="image side")
    parser.add_argument("--supervision", nargs="+", default=["image", "box", "full"], choices=["image", "box", "full"])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (a few images, one epoch per stage)")
    parser.add_argument("--curve", nargs="*", type=float, default=None, metavar="FRACTION",
                        help="also run hybrid supervision at these box fractions (default with no value: 0 0.1 0.3 1) "
                             "and plot val mIoU against annotation hours (reuses the image-label stages; one box init and segmenter per fraction)")
    parser.add_argument("--methods", nargs="*", default=None, metavar="METHOD",
                        help="also run the methods beyond the baselines as image pipelines (default with no value: "
                             "image_erasing image_cda image_sec image_selftrain), sharing the baseline's stages")
    parser.add_argument("--segmenter-seeds", nargs="+", type=int, default=(), metavar="SEED",
                        help=SEGMENTER_SEEDS_HELP)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--jobs", type=int, default=0,
                        help="supervision types run side by side as separate processes, each with cores/jobs threads "
                             "and its log in OUT/logs (same figures; default 0: one per core, at most one per "
                             "supervision type; 1: one after the other in this process, with progress bars)")
    args = parser.parse_args(argv)
    quiet_lightning()
    from ..pipeline.demo import CURVE_FRACTIONS, METHODS, default_jobs, run_demo

    methods = () if args.methods is None else (tuple(args.methods) or tuple(METHODS))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")

    curve = () if args.curve is None else (tuple(args.curve) or CURVE_FRACTIONS)
    run_demo(args.out, data=args.data, num_train=args.num_train, num_val=args.num_val, size=args.size,
             supervisions=args.supervision, quick=args.quick, progress=not args.no_progress, curve=curve,
             methods=methods, segmenter_seeds=args.segmenter_seeds,
             jobs=args.jobs or default_jobs(len(args.supervision)))
    return 0


@register("compare")
def compare(argv: List[str]) -> int:
    """``wsss compare RUN_DIR... [--out DIR]``: merge several runs' summaries into one comparison table and report."""
    parser = argparse.ArgumentParser(prog="wsss compare", description="Merge the summary.json of several pipeline "
                                     "runs (e.g. one per supervision) into one table, summary and HTML report.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders holding summary.json (or the files)")
    parser.add_argument("--out", default="compare_out", help="output folder (default: compare_out)")
    args = parser.parse_args(argv)
    from pathlib import Path

    from ..errors import DataError
    from ..pipeline.compare import merge_summaries, summary_path, write_comparison
    from ..pipeline.report import format_table

    target = (Path(args.out) / "summary.json").resolve()
    for run in args.runs:
        if summary_path(run).resolve() == target:
            raise DataError(summary_path(run), "is an input and would be overwritten by the merged summary; "
                                               "choose another --out")
    summary = merge_summaries(args.runs)
    print(format_table(summary))
    paths = write_comparison(args.out, summary)
    print(f"\nsummary: {paths['summary']}\nreport:  {paths['html']}\nplot:    {paths['plot']}")
    return 0


@register("affinity-labels")
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
