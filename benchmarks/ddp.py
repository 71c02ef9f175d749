"""Benchmark: time per training epoch of a tiny task on 2 DDP processes (CPU, gloo) against 1 process.

    python benchmarks/ddp.py [--task cam|seg] [--images 64] [--size 64] [--batch 8] [--epochs 4] [--repeats 1]

A synthetic set (``make_synthetic``) is generated into a temporary folder; then, in this same run, each
configuration trains the same task on the same data in a fresh subprocess (``python benchmarks/ddp.py
--worker ...``; for DDP Lightning re-executes that command for rank 1):

* ``1 proc x 1 thread``: ``Trainer(devices=1)``, ``torch.set_num_threads(1)``;
* ``1 proc x 2 threads``: ``Trainer(devices=1)``, intra-op parallelism on both cores (the fair baseline on a
  2-core machine);
* ``2 procs x 1 thread``: ``Trainer(devices=2, strategy="ddp")``, gloo all-reduce of the gradients.

``--batch`` is the per-process batch size, so an epoch covers the same images in every configuration (DDP:
half per rank, a global batch twice as large, half the optimisation steps). Epoch time is measured on rank 0
from ``on_train_epoch_start`` to ``on_train_epoch_end`` (validation and checkpointing off); the first epoch is
a warm-up and is dropped, the median of the others is reported. With ``--repeats 2`` the configurations are
run twice in alternation and the medians pooled, so a load change hits every configuration. The load average
is printed before and after: on a shared machine the numbers are only comparable within one run.

``--pipeline image|box``: a whole tiny pipeline (``wsss pipeline``) on the same synthetic set, once in one process
and once under ``torchrun --nproc_per_node 2`` (each process 1 thread), each in a fresh output folder; prints the
wall time of the command (start-up included) and of each stage (``summary.json``), with the load average:

    python benchmarks/ddp.py --pipeline image [--images 64] [--size 64] [--epochs 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

CONFIGS: Tuple[Tuple[str, int, int], ...] = (
    ("1 proc x 1 thread", 1, 1),
    ("1 proc x 2 threads", 1, 2),
    ("2 procs x 1 thread", 2, 1),
)


# ----------------------------------------------------------------------------------------------- worker
def _worker(args: argparse.Namespace) -> None:
    """Train ``args.task`` for ``args.epochs`` epochs; rank 0 writes the epoch times to ``args.result``."""
    import lightning as L
    import torch

    from lightning_wsss.datamodules import ImageLabelDataModule, MaskDataModule
    from lightning_wsss.datasets.synthetic import SYNTHETIC_CLASSES
    from lightning_wsss.tasks import CAMClassifier, DeepLabSegmenter

    torch.set_num_threads(args.threads)

    class EpochTimer(L.Callback):
        def __init__(self) -> None:
            self.times: List[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.times.append(time.perf_counter() - self._start)

    num_classes = len(SYNTHETIC_CLASSES)
    L.seed_everything(0)
    common = dict(root=args.root, batch_size=args.batch, crop_size=args.size, num_workers=0)
    if args.task == "cam":
        model: L.LightningModule = CAMClassifier(num_classes, backbone="test_resnet", output_stride=16, lr=0.05)
        datamodule: L.LightningDataModule = ImageLabelDataModule(**common)
    else:
        model = DeepLabSegmenter(num_classes, encoder="tu-test_resnet", decoder_channels=32, lr=0.05)
        datamodule = MaskDataModule(**common)
    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto", max_epochs=args.epochs,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(model, datamodule=datamodule)
    if trainer.is_global_zero:
        Path(args.result).write_text(json.dumps({
            "epoch_times": timer.times, "world_size": trainer.world_size, "steps": trainer.global_step,
        }))


# ----------------------------------------------------------------------------------------------- driver
def _run_config(args: argparse.Namespace, root: Path, devices: int, threads: int, result: Path) -> Dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--root", str(root), "--result", str(result),
           "--task", args.task, "--size", str(args.size), "--batch", str(args.batch), "--epochs", str(args.epochs),
           "--devices", str(devices), "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({devices} procs x {threads} threads):\n{proc.stdout[-4000:]}")
    return json.loads(result.read_text())


# ----------------------------------------------------------------------------------------------- whole pipeline
PIPELINE_CONFIGS: Tuple[Tuple[str, int], ...] = (("1 process", 1), ("2 processes", 2))


def _pipeline_config(root: Path, supervision: str, epochs: int, path: Path) -> Path:
    """A tiny pipeline YAML: the demo's stages with ``epochs`` per training stage, no logger, no bars."""
    import yaml

    trainer = {"trainer": {"max_epochs": epochs}}
    config = {"name": f"bench-{supervision}", "supervision": supervision, "progress_bar": False, "logger": "none",
              "dataset": {"root": str(root), "name": "synthetic"},
              "data": {"batch_size": 8, "eval_batch_size": 1, "crop_size": 64},
              "stages": {"classifier": trainer, "affinity": {**trainer, "schedule": {"min_steps": 0}},
                         "cams": {"cam": {"cam_scales": [1.0]}}, "box_init": {"initializers": ["filled", "grabcut"]},
                         "boxsup": {"trainer": {"max_epochs": 2 * epochs},
                                    "model": {"init_args": {"round_epochs": epochs, "crf_candidate": False}}},
                         "segmenter": trainer}}
    path.write_text(yaml.safe_dump(config))
    return path


def _run_pipeline(config: Path, out: Path, processes: int) -> Dict:
    """Run ``wsss pipeline`` with ``processes`` processes; returns its wall time and its stages' wall times."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    cmd = (launcher if processes > 1 else [sys.executable]) + ["-m", "lightning_wsss", "pipeline", str(config),
                                                                "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed ({processes} processes):\n{proc.stdout[-4000:]}")
    entry = next(iter(json.loads((out / "summary.json").read_text())["supervision"].values()))
    return {"wall_s": wall, "stages": {name: stage["wall_s"] for name, stage in entry["stages"].items()}}


def _print_load(when: str) -> None:
    load = os.getloadavg()
    print(f"load average {when}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")


def pipeline_main(args: argparse.Namespace) -> None:
    """Time a whole tiny pipeline with 1 and 2 processes on the same data (see the module docstring)."""
    from lightning_wsss.datasets.synthetic import make_synthetic

    _print_load("before")
    runs: Dict[str, List[Dict]] = {name: [] for name, _ in PIPELINE_CONFIGS}
    with tempfile.TemporaryDirectory(prefix="wsss_ddp_pipeline_") as tmp:
        root = make_synthetic(Path(tmp) / "data", num_train=args.images, num_val=max(2, args.images // 8),
                              size=args.size, seed=0)
        config = _pipeline_config(root, args.pipeline, args.epochs, Path(tmp) / "pipeline.yaml")
        for repeat in range(args.repeats):
            for name, processes in PIPELINE_CONFIGS:
                runs[name].append(_run_pipeline(config, Path(tmp) / f"out_{repeat}_{processes}", processes))
    _print_load("after")
    print(f"{args.pipeline} pipeline, {args.images} training images of {args.size}x{args.size}, {args.epochs} epoch(s) "
          f"per training stage, batch 8 per process, 1 thread per process, {args.repeats} repeat(s) (medians)")
    stages = list(runs[PIPELINE_CONFIGS[0][0]][0]["stages"])
    print(f"{'configuration':<14}{'command s':>10}{'stages s':>10}" + "".join(f"{s:>13}" for s in stages))
    for name, _ in PIPELINE_CONFIGS:
        wall = statistics.median(r["wall_s"] for r in runs[name])
        per_stage = [statistics.median(r["stages"][s] for r in runs[name]) for s in stages]
        print(f"{name:<14}{wall:>10.1f}{sum(per_stage):>10.1f}" + "".join(f"{t:>13.1f}" for t in per_stage))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", choices=["image", "box"], default=None,
                        help="time a whole tiny pipeline with 1 and 2 processes instead of one task's epochs")
    parser.add_argument("--task", choices=["cam", "seg"], default="cam")
    parser.add_argument("--images", type=int, default=64, help="training images")
    parser.add_argument("--size", type=int, default=64, help="image side and crop size")
    parser.add_argument("--batch", type=int, default=8, help="batch size per process")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per configuration (the first is dropped)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating passes over the configurations")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.pipeline:
        pipeline_main(args)
        return
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is a warm-up)")

    from lightning_wsss.datasets.synthetic import make_synthetic

    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          f"({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory(prefix="wsss_ddp_bench_") as tmp:
        root = make_synthetic(Path(tmp) / "data", num_train=args.images, num_val=2, size=args.size, seed=0)
        epoch_times: Dict[str, List[float]] = {name: [] for name, _, _ in CONFIGS}
        steps: Dict[str, int] = {}
        for repeat in range(args.repeats):
            for name, devices, threads in CONFIGS:
                out = _run_config(args, root, devices, threads, Path(tmp) / f"result_{repeat}_{devices}_{threads}.json")
                epoch_times[name].extend(out["epoch_times"][1:])
                steps[name] = out["steps"] // args.epochs
    load_after = os.getloadavg()

    print(f"task {args.task}, {args.images} images of {args.size}x{args.size}, batch {args.batch} per process, "
          f"{args.epochs} epochs x {args.repeats} repeat(s), first epoch of each run dropped")
    base = statistics.median(epoch_times[CONFIGS[0][0]])
    base2 = statistics.median(epoch_times[CONFIGS[1][0]])
    print(f"{'configuration':<22}{'steps/epoch':>12}{'s/epoch':>10}{'vs 1x1':>9}{'vs 1x2':>9}   epochs (s)")
    for name, _, _ in CONFIGS:
        median = statistics.median(epoch_times[name])
        runs = " ".join(f"{t:.2f}" for t in epoch_times[name])
        print(f"{name:<22}{steps[name]:>12}{median:>10.3f}{median / base:>9.2f}{median / base2:>9.2f}   {runs}")
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


if __name__ == "__main__":
    main()
