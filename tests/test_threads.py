"""The thread policy: intra-op threads from the owned cores minus the DataLoader workers, one thread per worker,
and the environment overrides."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_wsss.datamodules import ImageLabelDataModule
from lightning_wsss.threads import apply_thread_policy, intra_op_threads, owned_cores, worker_init


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("WSSS_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE", "PL_SEED_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    return monkeypatch


def test_cores_minus_workers(clean_env):
    assert owned_cores() == 8
    assert intra_op_threads(num_workers=2) == 6
    assert intra_op_threads(num_workers=0, cores=2) == 2
    assert intra_op_threads(num_workers=4, cores=2) == 1


def test_ranks_share_the_node(clean_env):
    clean_env.setenv("LOCAL_WORLD_SIZE", "4")
    assert owned_cores() == 2 and intra_op_threads(num_workers=1) == 1
    clean_env.setenv("SLURM_CPUS_PER_TASK", "3")  # SLURM states the share itself
    assert owned_cores() == 3


def test_environment_overrides(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "2")
    assert intra_op_threads(num_workers=6) == 2
    clean_env.setenv("WSSS_THREADS", "5")
    assert intra_op_threads(num_workers=6) == 5
    clean_env.setenv("WSSS_THREADS", "many")
    with pytest.raises(ValueError, match="WSSS_THREADS must be an integer >= 1"):
        intra_op_threads()


def test_apply_sets_torch_and_opencv(clean_env):
    clean_env.setenv("WSSS_THREADS", "3")
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        assert apply_thread_policy(num_workers=2) == 3
        assert torch.get_num_threads() == 3 and cv2.getNumThreads() == 3
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


class ThreadProbe(Dataset):
    """Each item: the worker's torch and OpenCV thread counts and a number from numpy's global generator."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index):
        return torch.get_num_threads(), cv2.getNumThreads(), float(np.random.rand())


@pytest.mark.timeout(120)
def test_workers_run_one_thread_and_keep_lightnings_seeding(monkeypatch):
    from lightning.fabric.utilities.seed import pl_worker_init_function

    cv2.setNumThreads(2)  # what a worker would inherit
    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    torch.manual_seed(0)
    ours = list(DataLoader(ThreadProbe(), num_workers=2, batch_size=None, worker_init_fn=worker_init))
    torch.manual_seed(0)
    lightnings = list(DataLoader(ThreadProbe(), num_workers=2, batch_size=None, worker_init_fn=pl_worker_init_function))
    assert [(t, c) for t, c, _ in ours] == [(1, 1), (1, 1)]
    assert [r for _, _, r in ours] == [r for _, _, r in lightnings]  # the same worker seeds as Lightning's own


@pytest.mark.timeout(120)
def test_workers_do_not_hang_after_the_parent_ran_opencvs_pool():
    """``cv2.setNumThreads(1)`` in a forked worker hung now and then (2 of 12 forks) when the parent had just run
    OpenCV's thread pool; the policy asks for 0 (sequential), which never did (0 of 40)."""
    cv2.setNumThreads(2)
    image = np.random.default_rng(0).random((1500, 1500, 3), dtype=np.float32)
    for _ in range(6):
        for _ in range(3):
            cv2.resize(image, (1000, 1000))  # the pool's threads are busy right before the workers fork
        assert len(list(DataLoader(ThreadProbe(), num_workers=2, batch_size=None, worker_init_fn=worker_init))) == 2


def test_datamodule_loaders_use_the_worker_init(tiny_voc):
    with_workers = ImageLabelDataModule(str(tiny_voc), batch_size=2, crop_size=32, num_workers=1)
    assert with_workers.train_dataloader().worker_init_fn is worker_init
    without = ImageLabelDataModule(str(tiny_voc), batch_size=2, crop_size=32, num_workers=0)
    assert without.train_dataloader().worker_init_fn is None  # Lightning may add its own


def test_wsss_fit_applies_the_policy(clean_env, tiny_voc, tmp_path):
    """``wsss fit`` with 1 DataLoader worker on 8 owned cores trains with 7 torch threads."""
    from pathlib import Path

    from lightning_wsss.cli.lightning import run_lightning_cli

    clean_env.chdir(Path(__file__).resolve().parents[1])
    cli = run_lightning_cli(["fit", "--config", "experiments/synthetic/cam.yaml", f"--data.init_args.root={tiny_voc}",
                             "--data.init_args.num_workers=1", "--data.init_args.batch_size=2",
                             "--data.init_args.crop_size=32", "--trainer.fast_dev_run=1", "--trainer.logger=false",
                             "--trainer.callbacks=null", f"--trainer.default_root_dir={tmp_path}",
                             "--model.init_args.cam_scales=[1.0]"])
    assert cli.datamodule.num_workers == 1 and torch.get_num_threads() == 7


def test_owned_cores_divides_among_the_ranks_a_pipeline_knows(monkeypatch):
    """Under srun without --cpus-per-task nothing states the ranks on the node but the pipeline's world."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert owned_cores() == 8 and owned_cores(ranks_on_node=4) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert owned_cores(ranks_on_node=4) == 4
