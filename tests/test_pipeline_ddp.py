"""`wsss pipeline` with 2 CPU processes (torchrun, gloo) against 1: the same files and scores from the same trained
checkpoints, summary.json from rank 0, a data error on one rank ending both, the job's stage lock, resuming a killed
2-process run with 1 process.

Each run is a subprocess (``python -m torch.distributed.run --standalone --nproc_per_node 2 -m lightning_wsss
pipeline ...``) on a 9 + 3 image synthetic set (odd on purpose: the ranks get 5 and 4 training images, 2 and 1 val
images). ``eval_batch_size: 1`` makes predictions independent of how the images are shared out (a batch pads its
images to the largest), so the files of both runs are byte-identical; ``batch_size: 2`` gives every rank several
steps per epoch (DDP finds parameters without gradients at the second one).
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

from lightning_wsss.datasets.synthetic import make_synthetic
from lightning_wsss.pipeline.config import deep_merge
from lightning_wsss.pipeline.demo import QUICK_OVERRIDES

from conftest import lock_held_elsewhere

RUN_TIMEOUT_S = 300
LAUNCH_VARIABLES = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "TORCHELASTIC_RUN_ID", "GROUP_RANK", "ROLE_RANK", "PL_GLOBAL_SEED")
PER_IMAGE = {"image": ("cams/*/cams/{id}.npz", "cams/*/labels/{id}.png", "affinity/*/affinity_labels/{id}.png",
                       "random_walk/*/labels/{id}.png"),
             "box": ("box_init/*/filled/{id}.png", "box_init/*/grabcut/{id}.png")}
"""The files of the prediction and CPU stages, per training image."""
TRAINED = {"image": ("classifier", "affinity", "segmenter"), "box": ("boxsup", "segmenter")}
"""The training stages: their checkpoints are kept when the later stages are run again."""


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def odd_synthetic(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("ddp_syn") / "data", num_train=9, num_val=3, size=64, seed=3)


def write_config(root: Path, supervision: str, path: Path, **overrides) -> Path:
    config = deep_merge(QUICK_OVERRIDES, {
        "name": f"ddp-{supervision}", "supervision": supervision, "progress_bar": False, "logger": "none",
        "dataset": {"root": str(root), "name": "synthetic"}, "data": {"batch_size": 2, "eval_batch_size": 1}})
    path.write_text(yaml.safe_dump(deep_merge(config, overrides)))
    return path


def clean_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore", **extra)
    return env


def pipeline_command(config: Path, out: Path, processes: int) -> List[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return (launcher if processes > 1 else [sys.executable]) + ["-m", "lightning_wsss", "pipeline", str(config),
                                                                 "--out", str(out)]


def start(config: Path, out: Path, processes: int, **env: str) -> subprocess.Popen:
    return subprocess.Popen(pipeline_command(config, out, processes), env=clean_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


HOLD_AFTER_FIRST_CHECKPOINT = """
from lightning_wsss.callbacks import checkpointing
_save = checkpointing.LastCheckpoint.on_train_epoch_end
def _save_then_hold(self, trainer, pl_module):
    _save(self, trainer, pl_module)
    if "{stage}" in self.path.parts:
        import time
        time.sleep(3600)
checkpointing.LastCheckpoint.on_train_epoch_end = _save_then_hold
"""


def hold_after_first_checkpoint(folder: Path, stage: str) -> Dict[str, str]:
    """The environment of a run whose ranks stop, without exiting, once ``stage``'s first ``last.ckpt`` is written:
    a ``sitecustomize`` on ``PYTHONPATH`` wraps :class:`LastCheckpoint`, so a kill that follows always lands inside
    the stage's training, however late the polling test process is scheduled."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOLD_AFTER_FIRST_CHECKPOINT.format(stage=stage))
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH", "")]))}


def finish(proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"pipeline timed out after {timeout} s (a hang?); log tail:\n{output[-4000:]}")
    return output


def run(config: Path, out: Path, processes: int) -> str:
    proc = start(config, out, processes)
    output = finish(proc)
    assert proc.returncode == 0, output[-6000:]
    return output


def train_ids(root: Path) -> List[str]:
    return (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()


def strip_after_training(folder: Path, supervision: str) -> None:
    """Remove every stage's ``stage.json`` and the per-image files, keeping the training stages' checkpoints (and
    the classifier / BoxSup stages whole: their folders hold training output only)."""
    (folder.parent / "summary.json").unlink()
    for marker in folder.glob("*/*/stage.json"):
        if marker.parent.parent.name not in ("classifier", "boxsup"):
            marker.unlink()
    for pattern in PER_IMAGE[supervision]:
        for path in folder.glob(pattern.format(id="*")):
            path.unlink()


def per_image_files(folder: Path, supervision: str) -> Dict[str, List[str]]:
    return {pattern: sorted(str(p.relative_to(folder)) for p in folder.glob(pattern.format(id="*")))
            for pattern in PER_IMAGE[supervision]}


def assert_same_files(two: Path, one: Path, supervision: str, ids: List[str]) -> None:
    files = per_image_files(two, supervision)
    assert files == per_image_files(one, supervision)
    for pattern, paths in files.items():
        assert len(paths) == len(ids), pattern  # one file per training image: none missing
        for rel in paths:
            assert filecmp.cmp(two / rel, one / rel, shallow=False), rel
    assert not list(two.rglob("*.tmp")) and not list(one.rglob("*.tmp"))


def share_counts(output: str) -> Dict[str, List[int]]:
    """``{"[cams] 9 images predicted": [5, 4], ...}`` from rank 0's lines on what each rank did."""
    counts = {}
    for line in output.splitlines():
        found = re.match(r"(\[\w+\] \d+ [\w ]+): ((?:rank \d+ \d+(?:, )?)+)$", line.strip())
        if found:
            counts[found.group(1)] = [int(n) for n in re.findall(r"rank \d+ (\d+)", found.group(2))]
    return counts


def entry(out: Path, supervision: str) -> Dict:
    return json.loads((out / "summary.json").read_text())["supervision"][supervision]


# ----------------------------------------------------------------------------------------------- image labels
@pytest.fixture(scope="module")
def image_runs(odd_synthetic, tmp_path_factory) -> Dict[str, object]:
    """A 2-process image pipeline (classifier and AffinityNet trained under DDP) killed while its segmenter trains,
    resumed by 1 process; then its prediction and CPU stages run again by 2 processes from the same checkpoints."""
    base = tmp_path_factory.mktemp("ddp_image")
    config = write_config(odd_synthetic, "image", base / "image.yaml",
                          stages={"classifier": {"trainer": {"max_epochs": 2}},
                                  "segmenter": {"trainer": {"max_epochs": 3}}})
    one = base / "one"
    proc = start(config, one, processes=2, **hold_after_first_checkpoint(base / "hold", "segmenter"))
    deadline = time.time() + RUN_TIMEOUT_S
    while not list(one.glob("image/segmenter/*/checkpoints/last.ckpt")):
        assert proc.poll() is None, finish(proc)[-4000:]
        assert time.time() < deadline, "no segmenter checkpoint"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
    killed_log = finish(proc)
    killed_with = {"summary": (one / "summary.json").exists(),
                   "markers": sorted(p.parent.parent.name for p in one.glob("image/*/*/stage.json"))}
    resumed = run(config, one, processes=1)
    two = base / "two"
    shutil.copytree(one, two)
    strip_after_training(two / "image", "image")
    again = run(config, two, processes=2)
    return {"config": config, "one": one, "two": two, "killed": killed_with, "killed_log": killed_log,
            "resumed": resumed, "again": again}


def test_a_killed_two_process_pipeline_resumes_with_one(image_runs):
    killed = image_runs["killed"]  # inside its last stage, the four before it complete
    assert killed == {"summary": False, "markers": ["affinity", "cams", "classifier", "random_walk"]}
    log = image_runs["resumed"]
    assert "[segmenter] resuming from" in log and "summary:" in log
    assert all(f"[{stage}] complete" in log for stage in killed["markers"])
    markers = sorted(p.parent.parent.name for p in (image_runs["one"] / "image").glob("*/*/stage.json"))
    assert markers == ["affinity", "cams", "classifier", "random_walk", "segmenter"]
    assert not list((image_runs["one"] / "image").glob("*/*/checkpoints/.*.tmp"))


def test_two_processes_write_the_files_of_one(image_runs, odd_synthetic):
    """From the same checkpoints, 2 processes write the CAMs, labels, affinity labels and walked labels of 1:
    the same set, byte for byte, each image by exactly one rank (5 + 4)."""
    ids = train_ids(odd_synthetic)
    assert_same_files(image_runs["two"] / "image", image_runs["one"] / "image", "image", ids)
    counts = share_counts(image_runs["again"])
    assert counts == {"[cams] 9 images predicted": [5, 4], "[affinity] 9 affinity label maps": [5, 4],
                      "[random_walk] 9 images predicted": [5, 4]}
    for stage in TRAINED["image"]:  # nothing trained again
        assert f"[{stage}] resuming" not in image_runs["again"]


def test_two_processes_report_the_scores_of_one_in_one_summary(image_runs):
    two, one = entry(image_runs["two"], "image"), entry(image_runs["one"], "image")
    assert two["pseudo_miou"] == one["pseudo_miou"] and set(two["pseudo_miou"]) == {"cam", "random_walk"}
    assert two["val_miou"] == one["val_miou"]
    assert {k: v["hash"] for k, v in two["stages"].items()} == {k: v["hash"] for k, v in one["stages"].items()}
    log = image_runs["again"]
    assert log.count("summary:") == 1 and log.count("supervision ") == 1  # the table: rank 0 alone prints it
    assert "note: the config's trainer states 1 device(s); this run has 2 process(es)" in log


# ----------------------------------------------------------------------------------------------- boxes
def _val_reference(out: Path, root: Path, ids: Optional[List[str]]) -> float:
    """The val mIoU of the segmenter's own predictions (``predict_val``) on ``ids`` (default: all)."""
    from lightning_wsss.datasets import VOCSegmentation
    from lightning_wsss.metrics import score_label_maps
    from lightning_wsss.pipeline.predictions import predict_val

    reader = VOCSegmentation(root, "val")
    ids = ids or reader.ids
    checkpoint = next(out.glob("box/segmenter/*/checkpoints/final.ckpt"))
    preds = predict_val(checkpoint, reader, ids)
    return score_label_maps(zip(preds, (reader.load(i)["mask"] for i in ids)), reader.num_classes)["miou"]


def test_box_pipeline_with_two_processes_and_one(odd_synthetic, tmp_path):
    """BoxSup and the segmenter train under DDP; the box masks and the validation of 1 process, from the same
    checkpoints, are those of 2; the val mIoU counts each of the 3 val images once (not rank 0's share, not
    Lightning's padded [0, 1, 2, 0])."""
    config = write_config(odd_synthetic, "box", tmp_path / "box.yaml")
    two, one = tmp_path / "two", tmp_path / "one"
    log = run(config, two, processes=2)
    assert share_counts(log) == {"[box_init] 9 filled masks": [5, 4], "[box_init] 9 grabcut masks": [5, 4]}
    rounds = json.loads(next(two.glob("box/boxsup/*/rounds/rounds.json")).read_text())
    assert set(rounds) == {"round_0", "round_1"}
    shutil.copytree(two, one)
    strip_after_training(one / "box", "box")
    run(config, one, processes=1)
    assert_same_files(two / "box", one / "box", "box", train_ids(odd_synthetic))
    got, ref = entry(two, "box"), entry(one, "box")
    assert got["pseudo_miou"] == ref["pseudo_miou"] and got["annotation_hours"] == ref["annotation_hours"]
    val_ids = (odd_synthetic / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert got["val_miou"] == pytest.approx(ref["val_miou"], abs=1e-6)
    assert got["val_miou"] == pytest.approx(_val_reference(two, odd_synthetic, None), abs=1e-5)
    assert abs(got["val_miou"] - _val_reference(two, odd_synthetic, val_ids[0::2])) > 1e-4  # not rank 0's share


# ----------------------------------------------------------------------------------------------- failures
@pytest.fixture
def rank_one_bad_image(odd_synthetic, tmp_path) -> Path:
    """The synthetic set with its second training image (rank 1's first in the box masks) unreadable."""
    root = tmp_path / "bad"
    shutil.copytree(odd_synthetic, root)
    (root / "JPEGImages" / f"{train_ids(root)[1]}.jpg").write_text("not a jpeg")
    return root


def _stamped_lines(proc: subprocess.Popen, timeout: float) -> List[tuple]:
    """``(seconds since start, line)`` of a process's output until it ends."""
    lines, start = [], time.monotonic()
    for line in proc.stdout:
        lines.append((time.monotonic() - start, line.rstrip()))
        assert time.monotonic() - start < timeout, "\n".join(text for _, text in lines[-40:])
    proc.wait()
    lines.append((time.monotonic() - start, "<exit>"))
    return lines


def test_a_data_error_on_rank_one_ends_both_torchrun_processes(rank_one_bad_image, tmp_path):
    bad = train_ids(rank_one_bad_image)[1]
    config = write_config(rank_one_bad_image, "box", tmp_path / "box.yaml")
    proc = start(config, tmp_path / "out", processes=2)
    lines = _stamped_lines(proc, RUN_TIMEOUT_S)
    assert proc.returncode != 0
    text = "\n".join(line for _, line in lines)
    message = f"data error: {rank_one_bad_image}/JPEGImages/{bad}.jpg: unreadable or truncated image"
    # rank 1 prints it, rank 0 stops with it (torchrun may stop rank 1 first once rank 0 has ended)
    assert f"wsss pipeline (rank 1 of 2): {message}" in text or f"wsss: stopping: rank 1 failed: {message}" in text
    failed_at = next(t for t, line in lines if message in line)
    assert lines[-1][0] - failed_at < 15, text[-3000:]  # both ended within seconds, no wait for a timeout
    assert not list((tmp_path / "out").rglob("stage.json"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_data_error_on_rank_one_ends_rank_zero_without_a_launcher_to_kill_it(rank_one_bad_image, tmp_path):
    """Two tasks as srun starts them (SLURM variables, rank 0 hosting the store), with nothing to stop the other
    task when one fails (no torchrun agent, no --kill-on-bad-exit): rank 0 stops on its own, with rank 1's
    message, instead of waiting at the next barrier for the timeout (30 min)."""
    config = write_config(rank_one_bad_image, "box", tmp_path / "box.yaml")
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = clean_env(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                        SLURM_NODEID="0", SLURM_NNODES="1", SLURM_JOB_ID="4242", SLURM_JOB_NAME="wsss-test",
                        SLURM_NODELIST="127.0.0.1", MASTER_PORT=port, WSSS_DIST_TIMEOUT="600")
        procs.append(subprocess.Popen(pipeline_command(config, tmp_path / "out", 1), env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True))
    ended = {}
    start_time = time.monotonic()
    while len(ended) < 2 and time.monotonic() - start_time < RUN_TIMEOUT_S:
        for rank, proc in enumerate(procs):
            if rank not in ended and proc.poll() is not None:
                ended[rank] = time.monotonic()
        time.sleep(0.05)
    logs = [finish(proc, timeout=10) for proc in procs]
    assert len(ended) == 2, logs
    bad = f"{rank_one_bad_image}/JPEGImages/{train_ids(rank_one_bad_image)[1]}.jpg"
    assert f"wsss pipeline (rank 1 of 2): data error: {bad}: unreadable" in logs[1]
    assert f"wsss: stopping: rank 1 failed: data error: {bad}: unreadable" in logs[0]
    assert [proc.returncode for proc in procs] == [2, 2]
    assert abs(ended[0] - ended[1]) < 10


def test_a_stage_held_by_another_job_stops_every_rank(odd_synthetic, tmp_path):
    """The lock is the job's: rank 0 tries it and every rank stops when another job holds it."""
    from lightning_wsss.pipeline.checks import load_config
    from lightning_wsss.pipeline.config import stage_hash
    from lightning_wsss.pipeline.defaults import resolve
    from lightning_wsss.pipeline.plan import build_stages

    config = write_config(odd_synthetic, "box", tmp_path / "box.yaml")
    first = build_stages(resolve(load_config(config)))[0]
    stage_dir = tmp_path / "out" / "box" / first.name / stage_hash(first.hashed_config(), {})
    with lock_held_elsewhere(stage_dir):
        proc = start(config, tmp_path / "out", processes=2)
        output = finish(proc)
    assert proc.returncode != 0
    busy = f"error: {stage_dir} is being run by another process"
    # both ranks raise it; the first to publish it reports it, the other reports it or stops with it
    reported = [f"wsss pipeline (rank {r} of 2): {busy}" in output for r in (0, 1)]
    stopped = [f"wsss: stopping: rank {r} failed: {busy}" in output for r in (0, 1)]
    assert any(reported) and output.count(busy) >= 2 and all(r or s for r, s in zip(reported, stopped[::-1]))
    assert not (stage_dir / "stage.json").exists() and not list(stage_dir.glob("filled/*.png"))
