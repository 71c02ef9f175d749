"""``wsss demo --jobs N``: the supervision types as side-by-side processes give the figures of one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lightning_wsss.pipeline import parallel_runs
from lightning_wsss.pipeline.parallel_runs import job_environment, pipeline_command, threads_per_job

REPO = Path(__file__).resolve().parents[1]


def run_demo(out: Path, data: Path, jobs: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "lightning_wsss", "demo", "--quick", "--supervision", "box", "full",
                    "--out", str(out), "--data", str(data), "--no-progress", "--jobs", str(jobs)],
                   check=True, cwd=REPO, env=env, capture_output=True, text=True)
    entries = json.loads((out / "summary.json").read_text())["supervision"]
    return {name: (entry["pseudo_miou"], entry["val_miou"]) for name, entry in entries.items()}


def test_parallel_demo_runs_give_the_sequential_figures(tmp_path):
    data = tmp_path / "data"
    sequential = run_demo(tmp_path / "one", data, 1)
    parallel = run_demo(tmp_path / "two", data, 2)
    assert set(sequential) == {"box", "full"}
    assert parallel == sequential
    assert (tmp_path / "two" / "logs" / "box.log").is_file() and (tmp_path / "two" / "configs" / "full.yaml").is_file()
    assert (tmp_path / "two" / "report.html").is_file()


def test_thread_split_and_command(monkeypatch, tmp_path):
    monkeypatch.setattr(parallel_runs, "owned_cores", lambda: 8)
    assert threads_per_job(3) == 2 and threads_per_job(16) == 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert job_environment(4)["OMP_NUM_THREADS"] == "2"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert job_environment(4)["OMP_NUM_THREADS"] == "3"
    command = pipeline_command(tmp_path / "c.yaml", tmp_path, [1, 2])
    assert command[-3:] == ["--segmenter-seeds", "1", "2"] and command[2:4] == ["lightning_wsss", "pipeline"]
