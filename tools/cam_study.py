"""Run CAM-stage study configs in parallel and score each with ``wsss evaluate-cams``: one JSON of all results.

    python tools/cam_study.py --out runs/study --root ../shared/data/camvid-seq05vd --jobs 8 --seeds 0 1 2 \
        --chain experiments/camvid/study/gpu_up2os8.yaml,experiments/camvid/study/gpu_up2os8_lpcam.yaml \
        --once experiments/camvid/study/gpu_whole.yaml

Each ``--chain A,B,...`` runs once per seed: its configs one after the other in one output folder (so a config
that reuses A's classifier stage, LPCAM for instance, finds it), each as ``wsss pipeline CFG --until cams
--seed S`` followed by ``wsss evaluate-cams --json``. ``--once`` chains run with the first seed only. Chains run
``--jobs`` at a time. ``--results`` (default OUT/results.json) is rewritten after every scored config, so a run
cut short keeps what finished: ``{config stem: {seed: evaluate-cams JSON + wall_s}}``. The table at the end is
``tools/cam_seed_table.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cam_seed_table import table  # noqa: E402

WSSS = [sys.executable, "-m", "lightning_wsss"]
_LOCK = threading.Lock()


def cams_folder(pipeline_stdout: str) -> Optional[Path]:
    """The ``cams`` folder of the CAM stage from ``wsss pipeline --until cams``' output (None if not printed)."""
    for line in pipeline_stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "cams":
            return Path(parts[1]) / "cams"
    return None


def run_logged(command: List[str], log_path: Path, timeout: float) -> Tuple[int, str]:
    """Run ``command``, appending its output to ``log_path``; returns (exit code, stdout)."""
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            log.write(f"timed out after {timeout:.0f} s\n")
            return 124, ""
        log.write(done.stdout)
    return done.returncode, done.stdout


def score_config(config: Path, out: Path, seed: int, root: str, split: str, timeout: float) -> Optional[dict]:
    """Run one config's stages up to the CAMs under ``seed`` in ``out`` and score its CAMs."""
    log_path = out / f"{config.stem}_s{seed}.log"
    start = time.perf_counter()
    code, stdout = run_logged(WSSS + ["pipeline", str(config), "--out", str(out), "--until", "cams",
                                      "--seed", str(seed)], log_path, timeout)
    folder = cams_folder(stdout)
    if code != 0 or folder is None:
        return None
    code, stdout = run_logged(WSSS + ["evaluate-cams", "--cams", str(folder), "--root", root, "--split", split,
                                      "--json"], log_path, timeout)
    if code != 0:
        return None
    result = json.loads(stdout)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["cams"] = str(folder)
    return result


def record(results_path: Path, results: Dict[str, Dict[str, dict]], stem: str, seed: int, result: dict) -> None:
    """Add one result and rewrite the results file atomically."""
    with _LOCK:
        results.setdefault(stem, {})[str(seed)] = result
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, results_path)


def run_chain(chain: Sequence[Path], seed: int, args: argparse.Namespace, results: Dict[str, Dict[str, dict]]) -> None:
    """Run a chain's configs in order under one seed; a failed config stops the chain."""
    out = Path(args.out) / f"{chain[0].stem}_s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    for config in chain:
        result = score_config(config, out, seed, args.root, args.split, args.timeout)
        status = "failed (see its log)" if result is None else f"best mIoU {100 * result['best_miou']:.2f}"
        print(f"[{time.strftime('%H:%M:%S')}] {config.stem} seed {seed}: {status}", flush=True)
        if result is None:
            return
        record(Path(args.results), results, config.stem, seed, result)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the runs and logs")
    parser.add_argument("--root", required=True, help="data set root (VOC layout) the CAMs are scored on")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--chain", action="append", default=[], help="comma list of configs, run for every seed")
    parser.add_argument("--once", action="append", default=[], help="comma list of configs, run for the first seed")
    parser.add_argument("--jobs", type=int, default=1, help="chains run at a time")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per command")
    parser.add_argument("--results", default=None, help="results JSON (default OUT/results.json)")
    args = parser.parse_args(argv)
    args.results = args.results or str(Path(args.out) / "results.json")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    tasks = [([Path(c) for c in spec.split(",")], seed) for spec in args.chain for seed in args.seeds]
    tasks += [([Path(c) for c in spec.split(",")], args.seeds[0]) for spec in args.once]
    results: Dict[str, Dict[str, dict]] = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(run_chain, chain, seed, args, results) for chain, seed in tasks]:
            future.result()
    groups = [(stem, list(by_seed.values())) for stem, by_seed in results.items()]
    if groups:
        print(table(groups))
    return 0 if len(groups) == len({c for chain, _ in tasks for c in chain}) else 1


if __name__ == "__main__":
    sys.exit(main())
