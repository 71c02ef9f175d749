"""Pipeline sub-commands of ``wsss``: ``pipeline``, ``demo`` and ``compare``."""

from __future__ import annotations

import argparse
from typing import List

from .quiet import quiet_lightning
from .registry import command


SEGMENTER_SEEDS_HELP = ("also train the final segmenter with these seeds on the same pseudo labels (earlier stages "
                        "are shared) and report its val mIoU as mean +- std over them: with few epochs the spread is "
                        "often larger than the gaps between methods")


@command("pipeline", "run a multi-stage pipeline from one YAML; complete stages are skipped, killed ones resume")
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


@command("demo", "image-label, box and full supervision on the synthetic set: table and HTML report")
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
                        help="also run the methods beyond the baselines, IRN's boundary relations, LPCAM's, "
                             "ReCAM's and ProbeCAM's maps as image pipelines (default with no value: all of "
                             "image_erasing image_cda image_sec image_selftrain image_irn image_lpcam image_recam "
                             "image_probecam), sharing the "
                             "baseline's stages")
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


@command("compare", "merge several runs' summary.json into one comparison table and report")
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
