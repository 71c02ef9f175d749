"""Benchmark: a training stage's throughput alone and next to a busy process, with the thread policy and without.

    python benchmarks/threads.py [--workers 2] [--images 64] [--size 96] [--batch 8] [--steps 40] [--seconds 20]
                                 [--load-procs 1] [--repeats 1] [--parts]

The stage is the synthetic CAM classifier (``test_resnet``, as ``experiments/synthetic/cam.yaml``) trained by a
Lightning Trainer on a synthetic set generated into a temporary folder, with ``--workers`` DataLoader workers
running the albumentations (OpenCV) augmentation. Each configuration runs in a fresh subprocess
(``--child``), so no thread setting leaks from one to the next:

* ``without``: the libraries' defaults: torch's intra-op threads = all cores, OpenCV's default threads in each
  DataLoader worker (the suite before :mod:`lightning_wsss.threads`);
* ``with``: :func:`lightning_wsss.threads.apply_thread_policy` (cores minus workers, at least one) and one thread
  per worker (:func:`lightning_wsss.threads.worker_init`);
* with ``--parts``, each half alone: ``torch only`` (the training process's threads) and ``workers only``.

``next to load`` runs ``--load-procs`` processes spinning on the CPU (pure Python) during the measurement. The
first 5 steps are a warm-up; throughput is then measured for ``--steps`` steps or ``--seconds`` seconds,
whichever comes first. ``OMP_NUM_THREADS`` and ``WSSS_THREADS`` are removed from the children's environment.
The load average is printed before and after: on a shared machine, compare numbers within one run only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

WARMUP = 5


def _child(args: argparse.Namespace) -> None:
    """Train for the measured steps; print ``{"it_s": ..., "threads": ...}`` as the last line."""
    import lightning as L
    import torch

    import lightning_wsss.datamodules.base as datamodule_base
    from lightning_wsss.datamodules import ImageLabelDataModule
    from lightning_wsss.tasks import CAMClassifier
    from lightning_wsss.threads import apply_thread_policy

    if "torch" in args.policy:
        apply_thread_policy(num_workers=args.workers)
    if "workers" not in args.policy:
        datamodule_base.worker_init = None  # the loaders as they were: no worker_init_fn

    class Throughput(L.Callback):
        def __init__(self) -> None:
            self.start, self.steps = 0.0, 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step == WARMUP:
                self.start = time.perf_counter()
            elif step > WARMUP:
                self.steps = step - WARMUP
                if self.steps >= args.steps or time.perf_counter() - self.start >= args.seconds:
                    trainer.should_stop = True

    timer = Throughput()
    L.seed_everything(0, verbose=False)
    model = CAMClassifier(7, backbone="test_resnet", weights=None, output_stride=16, lr=0.05)
    data = ImageLabelDataModule(root=args.root, batch_size=args.batch, crop_size=args.size, val_split=None,
                                num_workers=args.workers)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1000, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(model, data)
    seconds = time.perf_counter() - timer.start
    print(json.dumps({"it_s": timer.steps / seconds, "threads": torch.get_num_threads()}))


def _spin() -> None:
    while True:
        pass


def run_config(args: argparse.Namespace, root: str, policy: str, load: int) -> Dict[str, float]:
    """One configuration in a fresh subprocess, with ``load`` spinning processes beside it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "WSSS_THREADS", "MKL_NUM_THREADS")}
    env.update(PYTHONWARNINGS="ignore", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    argv = [sys.executable, __file__, "--child", "--root", root, "--workers", str(args.workers), "--size",
            str(args.size), "--batch", str(args.batch), "--steps", str(args.steps), "--seconds", str(args.seconds)]
    spinners = [multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) for _ in range(load)]
    for spinner in spinners:
        spinner.start()
    try:
        out = subprocess.run(argv + ["--policy", policy], env=env, capture_output=True, text=True, check=True)
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--images", type=int, default=64, help="training images of the synthetic set")
    parser.add_argument("--size", type=int, default=96, help="image side and crop size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40, help="measured steps (after 5 warm-up steps)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measure at most this long")
    parser.add_argument("--load-procs", type=int, default=1, help="busy processes for 'next to load'")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the configurations; the best is kept")
    parser.add_argument("--parts", action="store_true", help="also each half of the policy alone (torch threads only, "
                        "worker threads only)")
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    from lightning_wsss.datasets.synthetic import make_synthetic
    from lightning_wsss.threads import intra_op_threads

    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} CPUs)")
    policies = {"without": "", "with": "torch,workers"}
    if args.parts:
        policies.update({"torch only": "torch", "workers only": "workers"})
    configs: List[Tuple[str, str, int]] = [(name, policy, load) for name, policy in policies.items()
                                           for load in (0, args.load_procs)]
    best: Dict[Tuple[str, int], Dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = str(make_synthetic(Path(tmp) / "data", num_train=args.images, num_val=4, size=args.size))
        for _ in range(max(1, args.repeats)):
            for name, policy, load in configs:
                result = run_config(args, root, policy, load)
                if (name, load) not in best or result["it_s"] > best[(name, load)]["it_s"]:
                    best[(name, load)] = result
    print(f"stage: CAMClassifier (test_resnet) fit on {args.images} synthetic images of {args.size} px, batch "
          f"{args.batch}, {args.workers} DataLoader workers; policy: {intra_op_threads(args.workers)} torch "
          f"thread(s), 1 OpenCV thread per worker")
    print(f"{'thread policy':<14}{'beside':<18}{'torch threads':>14}{'it/s':>9}{'vs alone':>10}")
    for name, _, load in configs:
        result, alone = best[(name, load)], best[(name, 0)]["it_s"]
        beside = f"{load} busy process" + ("es" if load > 1 else "") if load else "nothing"
        print(f"{name:<14}{beside:<18}{int(result['threads']):>14}{result['it_s']:>9.2f}"
              f"{result['it_s'] / alone:>10.2f}")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
