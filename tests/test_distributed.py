"""The pieces of a multi-process pipeline, in one process: shares, launcher detection, trainer placement,
scores summed over shares, the failure board and its watcher (the runs themselves: tests/test_pipeline_ddp.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_wsss.datasets import VOCSegmentation
from lightning_wsss.errors import DataError
from lightning_wsss.io import read_label_png, write_label_png
from lightning_wsss.metrics import evaluate_reader
from lightning_wsss.pipeline.distributed import SINGLE, Launch, World, detect_launch
from lightning_wsss.pipeline.failures import FailureBoard, describe
from lightning_wsss.pipeline.training import world_trainer_settings

LAUNCH_VARIABLES = ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                    "MASTER_PORT", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_PROCID", "SLURM_LOCALID",
                    "SLURM_NODEID", "SLURM_NNODES", "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_NODELIST")


@pytest.fixture
def no_launcher(monkeypatch):
    for key in LAUNCH_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_shares_are_disjoint_and_cover_the_items():
    items = [f"id{i}" for i in range(11)]
    shares = [World(rank=r, size=3).share(items) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 3]
    assert sorted(sum(shares, [])) == sorted(items) and len(set(sum(shares, []))) == 11
    assert shares[1] == items[1::3]
    assert World(rank=3, size=4).share(["a", "b"]) == []  # more processes than items: an empty share


def test_one_process_collectives_return_their_input():
    tensor = torch.tensor([1, 2, 3])
    assert torch.equal(SINGLE.reduce_sum(tensor), tensor) and SINGLE.broadcast({"a": 1}) == {"a": 1}
    assert SINGLE.gather(5) == [5] and SINGLE.share([1, 2]) == [1, 2]
    SINGLE.barrier()
    assert (SINGLE.num_nodes, SINGLE.is_zero) == (1, True)


def test_no_launcher_is_one_process(no_launcher):
    assert detect_launch() is None


def test_torchrun_variables(no_launcher):
    for key, value in dict(TORCHELASTIC_RUN_ID="x", RANK="5", WORLD_SIZE="8", LOCAL_RANK="1", LOCAL_WORLD_SIZE="4",
                           MASTER_ADDR="10.0.0.2", MASTER_PORT="29400").items():
        no_launcher.setenv(key, value)
    assert detect_launch() == Launch(rank=5, size=8, local_rank=1, local_size=4, address="10.0.0.2", port=29400)
    assert World(5, 8, 1, 4).num_nodes == 2


def test_slurm_variables(no_launcher):
    for key, value in dict(SLURM_NTASKS="8", SLURM_NTASKS_PER_NODE="4", SLURM_PROCID="6", SLURM_LOCALID="2",
                           SLURM_NODEID="1", SLURM_NNODES="2", SLURM_JOB_NAME="wsss", SLURM_JOB_ID="1234",
                           SLURM_NODELIST="gpu[07-08]").items():
        no_launcher.setenv(key, value)
    launch = detect_launch()
    assert (launch.rank, launch.size, launch.local_rank, launch.local_size) == (6, 8, 2, 4)
    assert launch.address == "gpu07" and launch.port == 15000 + 1234
    no_launcher.setenv("SLURM_NTASKS", "1")  # one task (the one-GPU job): a single process
    assert detect_launch() is None


def test_trainer_settings_follow_the_world_not_the_config():
    config = {"accelerator": "cpu", "devices": 8, "strategy": "ddp", "sync_batchnorm": True, "max_epochs": 3}
    one = world_trainer_settings(config, SINGLE, spans_world=True)
    assert (one["devices"], one["num_nodes"], one["strategy"]) == (1, 1, "auto")
    world = World(rank=5, size=8, local_rank=1, local_size=4)
    train = world_trainer_settings({"accelerator": "cpu"}, world, spans_world=True)
    assert (train["devices"], train["num_nodes"], train["strategy"]) == (4, 2, "ddp")
    keep = world_trainer_settings({"strategy": "ddp_find_unused_parameters_true"}, world, spans_world=True)
    assert keep["strategy"] == "ddp_find_unused_parameters_true"
    for strategy in (None, "ddp"):  # a task whose parameters may miss a gradient (ReCAM's head before its epoch)
        found = world_trainer_settings({"strategy": strategy}, world, spans_world=True, find_unused=True)
        assert found["strategy"] == "ddp_find_unused_parameters_true"
    own = world_trainer_settings(config, world, spans_world=False)  # prediction, validation: this rank's device
    assert (own["devices"], own["num_nodes"], own["strategy"], own["max_epochs"]) == (1, 1, "auto", 3)
    assert "sync_batchnorm" not in own
    assert world_trainer_settings({"accelerator": "gpu"}, world, spans_world=False)["devices"] == [1]


def _noisy_predictions(root: Path, folder: Path) -> VOCSegmentation:
    """The train masks with a corner relabelled and some pixels ignored, as predictions to score."""
    reader = VOCSegmentation(root, "train")
    rng = np.random.default_rng(0)
    for image_id in reader.ids:
        mask = read_label_png(reader.mask_path(image_id)).copy()
        mask[mask == 255] = 0
        mask[:12, :12] = rng.integers(0, 3)
        mask[rng.random(mask.shape) < 0.05] = 255
        write_label_png(folder / f"{image_id}.png", mask)
    return reader


def test_scores_of_shares_summed_equal_the_whole(tiny_voc, tmp_path):
    """Each process scores its share and the confusion matrices are summed: the mIoU of the whole split, not a
    mean of the shares' mIoUs."""
    reader = _noisy_predictions(tiny_voc, tmp_path)
    whole = evaluate_reader(tmp_path, reader, "train")
    shares = [World(r, 2).share(reader.ids) for r in range(2)]
    local = {}

    def keep(rank):
        def reduce(tensor):
            local[rank] = tensor.clone()
            return tensor
        return reduce

    alone = [evaluate_reader(tmp_path, reader, "train", ids=shares[r], reduce=keep(r))["miou"] for r in range(2)]
    summed = [evaluate_reader(tmp_path, reader, "train", ids=shares[r], reduce=lambda t, r=r: t + local[1 - r])
              for r in range(2)]
    assert summed[0]["miou"] == summed[1]["miou"] == pytest.approx(whole["miou"], abs=1e-7)
    assert summed[0]["num_images"] == whole["num_images"] == len(reader.ids)
    assert abs(np.mean(alone) - whole["miou"]) > 1e-3  # averaging the shares would not do
    empty = evaluate_reader(tmp_path, reader, "train", ids=[], reduce=lambda t: t + local[0] + local[1])
    assert empty["miou"] == pytest.approx(whole["miou"], abs=1e-7)  # a rank with nothing to score still gets it


def test_failure_board_keeps_the_first_failure():
    store = torch.distributed.HashStore()
    one, zero = FailureBoard(store, rank=1), FailureBoard(store, rank=0)
    assert zero.first() is None
    assert one.publish(DataError("/data/JPEGImages/x.jpg", "unreadable or truncated image"))
    assert not zero.publish(RuntimeError("connection closed by peer"))  # a consequence: not reported
    assert zero.first() == {"rank": 1, "message": "data error: /data/JPEGImages/x.jpg: unreadable or truncated image"}
    assert not one.wait_for_acks(1, timeout=0.05)
    zero.acknowledge()
    assert one.wait_for_acks(1, timeout=1.0)
    assert describe(ValueError("bad")) == "ValueError: bad"


WATCHER_SCRIPT = """
import sys, time, torch
from lightning_wsss.errors import DataError
from lightning_wsss.pipeline.failures import FailureBoard, Watcher
store = torch.distributed.HashStore()
Watcher(FailureBoard(store, rank=0)).start()
time.sleep(0.5)
FailureBoard(store, rank=1).publish(DataError("/data/x.jpg", "unreadable"))
time.sleep(30)  # the main thread is busy: the watcher ends the process
print("not stopped")
"""


def test_the_watcher_ends_its_process_when_another_rank_failed():
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", WATCHER_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not stopped" not in proc.stdout
    assert "wsss: stopping: rank 1 failed: data error: /data/x.jpg: unreadable" in proc.stderr
    assert time.monotonic() - start < 25
