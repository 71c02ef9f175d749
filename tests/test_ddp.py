"""The tasks under DDP: 2 CPU processes (gloo) against 1 process on the same data and weights.

One subprocess runs ``python tests/test_ddp.py --root ... --out ...`` with ``Trainer(strategy="ddp", devices=2)``:
Lightning re-executes this file for rank 1 (the script launcher), and every Trainer created afterwards in the
same processes reuses the process group. The script (see :func:`ddp_worker`) trains a tiny CAMClassifier for
one epoch, predicts CAMs into a folder, validates the CAMClassifier and a DeepLabSegmenter, and runs two BoxSup
rounds; each rank writes what it saw to ``rank<r>.json``. The 1-process references run in the pytest process
with the same functions (``devices=1``).

Why the validation equality uses an even split: for validation and test Lightning injects a plain
``DistributedSampler`` (``drop_last=False``), which pads the split to a multiple of the world size by
*repeating its first samples*; only prediction gets ``UnrepeatedDistributedSamplerWrapper``. With 4 val images
every image is seen exactly once on 2 ranks, so the torchmetrics-synced mIoU must equal the 1-process one.
With 3 val images rank 1 sees ``[1, 0]``: image 0 is counted twice, and the 2-process mIoU equals the
1-process mIoU over ``[0, 1, 2, 0]`` (tested below, to document the behaviour).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_wsss.callbacks.writers import ArtifactWriter
from lightning_wsss.datamodules import BoxDataModule, ImageLabelDataModule
from lightning_wsss.datasets.synthetic import SYNTHETIC_CLASSES, make_synthetic
from lightning_wsss.io import read_label_png, write_label_png
from lightning_wsss.metrics import evaluate_folder
from lightning_wsss.tasks import BoxSupSegmenter, CAMClassifier, DeepLabSegmenter

NUM_TRAIN = 7  # odd on purpose: 2 ranks get 4 + 3 images at prediction time
NUM_VAL = 4  # even: validation shares are exact (see the module docstring)
SIZE = 32
NUM_CLASSES = len(SYNTHETIC_CLASSES)
CAM_ARGS = dict(num_classes=NUM_CLASSES, backbone="test_resnet", output_stride=16, lr=0.05, cam_scales=(1.0, 0.5),
                cam_flip=True)
SEG_ARGS = dict(num_classes=NUM_CLASSES, arch="deeplabv3plus", encoder="tu-test_resnet", decoder_channels=16)
BOXSUP_ARGS = dict(SEG_ARGS, round_epochs=1, initializer="filled", crf_candidate=False, lr=0.05)
WORKER_TIMEOUT_S = 400


# ----------------------------------------------------------------------------------------------- shared steps
def _trainer_options(devices: int) -> Dict[str, Any]:
    return dict(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def image_datamodule(root: str, val_ids: Optional[Sequence[str]] = None) -> ImageLabelDataModule:
    return ImageLabelDataModule(root=root, batch_size=2, eval_batch_size=1, crop_size=SIZE, num_workers=0,
                                val_ids=list(val_ids) if val_ids is not None else None)


def predict_cams(checkpoint: str, root: str, out_dir: str, devices: int) -> int:
    """Write ``cams/<id>.npz`` and ``labels/<id>.png`` of the training split. Returns images written by this rank."""
    model = CAMClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    writer = ArtifactWriter(out_dir)
    L.Trainer(callbacks=[writer], **_trainer_options(devices)).predict(
        model, datamodule=image_datamodule(root), return_predictions=False)
    return writer.written


def validate(model: L.LightningModule, root: str, devices: int, val_ids: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``trainer.validate`` metrics (floats) and this rank's number of validation batches."""
    trainer = L.Trainer(**_trainer_options(devices))
    metrics = trainer.validate(model, datamodule=image_datamodule(root, val_ids), verbose=False)[0]
    return {"metrics": {k: float(v) for k, v in metrics.items()}, "batches": int(sum(trainer.num_val_batches))}


def segmenter(weights: str) -> DeepLabSegmenter:
    model = DeepLabSegmenter(**SEG_ARGS)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model


def untrained_segmenter_state(seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random segmenter weights whose predictions mix classes (a state dict).

    A freshly initialised head predicts one class everywhere, which makes every mIoU 0 and an equality of mIoUs
    vacuous; scaling the 1x1 head by 50 and raising the background bias by 0.3 gives per-pixel predictions
    that depend on the image (on the test data about half background, IoU around 0.45, several classes).
    """
    torch.manual_seed(seed)
    model = DeepLabSegmenter(**SEG_ARGS)
    with torch.no_grad():
        head = model.net.segmentation_head[0]
        head.weight.mul_(50.0)
        head.bias[0] += 0.3
    return model.state_dict()


def val_ids_of(root: str) -> List[str]:
    return (Path(root) / "ImageSets" / "Segmentation" / "val.txt").read_text().split()


def train_ids_of(root: str) -> List[str]:
    return (Path(root) / "ImageSets" / "Segmentation" / "train.txt").read_text().split()


# ----------------------------------------------------------------------------------------------- the DDP script
def ddp_worker(root: str, out: str, seg_weights: str, devices: int = 2) -> None:
    """Everything that runs under DDP; each rank writes ``out/rank<r>.json``."""
    torch.set_num_threads(1)
    out_p = Path(out)
    record: Dict[str, Any] = {}

    # 1. fit a CAMClassifier for one epoch
    L.seed_everything(0, workers=True)
    checkpoint = ModelCheckpoint(dirpath=str(out_p / "ckpt"), filename="cam")
    trainer = L.Trainer(max_epochs=1, callbacks=[checkpoint], limit_val_batches=0, **_trainer_options(devices))
    trainer.fit(CAMClassifier(**CAM_ARGS), datamodule=image_datamodule(root))
    record.update(rank=trainer.global_rank, world_size=trainer.world_size, train_batches=trainer.num_training_batches,
                  strategy=type(trainer.strategy).__name__, checkpoint=str(out_p / "ckpt" / "cam.ckpt"),
                  fit_steps=trainer.global_step)
    trainer.strategy.barrier("checkpoint_written")

    # 2. predict CAMs of the (odd-sized) training split
    record["predict_written"] = predict_cams(record["checkpoint"], root, str(out_p / "pred"), devices)

    # 3. validate: the CAM classifier, a segmenter, and the segmenter on an odd split
    cam_model = CAMClassifier.load_from_checkpoint(record["checkpoint"], map_location="cpu")
    record["validate_cam"] = validate(cam_model, root, devices)
    record["validate_seg"] = validate(segmenter(seg_weights), root, devices)
    record["validate_seg_odd"] = validate(segmenter(seg_weights), root, devices, val_ids_of(root)[:3])

    # 4. BoxSup: round 0 at fit start, round 1 at the end of epoch 0, each rank building its share
    L.seed_everything(0, workers=True)
    boxsup = BoxSupSegmenter(out_dir=str(out_p / "boxsup"), **BOXSUP_ARGS)
    trainer = L.Trainer(max_epochs=2, limit_val_batches=0, enable_checkpointing=False, **_trainer_options(devices))
    trainer.fit(boxsup, datamodule=BoxDataModule(root=root, batch_size=2, eval_batch_size=1, crop_size=SIZE))
    record["boxsup_share"] = sorted(boxsup.masks)
    record["boxsup_round_miou"] = boxsup.round_miou

    (out_p / f"rank{record['rank']}.json").write_text(json.dumps(record, indent=1))


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Dict[str, Any]:
    """Run :func:`ddp_worker` on 2 processes once; returns the paths and both ranks' records."""
    base = tmp_path_factory.mktemp("ddp")
    root = str(make_synthetic(base / "data", num_train=NUM_TRAIN, num_val=NUM_VAL, size=SIZE, seed=0))
    seg_weights = base / "seg.pt"
    torch.save(untrained_segmenter_state(), seg_weights)
    out = base / "out"
    env = {k: v for k, v in os.environ.items()
           if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--root", root, "--out", str(out), "--seg-weights", str(seg_weights)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 0 and the rank-1 process it launched share this session
        log, _ = proc.communicate()
        pytest.fail(f"DDP worker timed out after {WORKER_TIMEOUT_S} s (deadlock?); log tail:\n{log[-4000:]}")
    if proc.returncode != 0:
        pytest.fail(f"DDP worker failed (exit {proc.returncode}); log tail:\n{log[-6000:]}")
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {"root": root, "out": out, "seg_weights": str(seg_weights), "records": records, "log": log}


@pytest.fixture(scope="module")
def single_run(ddp_run, tmp_path_factory) -> Dict[str, Any]:
    """The 1-process references on the same data and weights (in this process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root, out = ddp_run["root"], tmp_path_factory.mktemp("single")
        checkpoint = ddp_run["records"][0]["checkpoint"]
        written = predict_cams(checkpoint, root, str(out / "pred"), devices=1)
        cam = validate(CAMClassifier.load_from_checkpoint(checkpoint, map_location="cpu"), root, devices=1)
        seg = validate(segmenter(ddp_run["seg_weights"]), root, devices=1)
        val = val_ids_of(root)
        seg_dup = validate(segmenter(ddp_run["seg_weights"]), root, devices=1, val_ids=val[:3] + val[:1])
        seg_odd = validate(segmenter(ddp_run["seg_weights"]), root, devices=1, val_ids=val[:3])
    finally:
        torch.set_num_threads(threads)
    return {"out": out, "predict_written": written, "validate_cam": cam, "validate_seg": seg,
            "validate_seg_dup": seg_dup, "validate_seg_odd": seg_odd}


def _stems(folder: Path, pattern: str) -> List[str]:
    return sorted(p.name.split(".")[0] for p in folder.glob(pattern))


# ----------------------------------------------------------------------------------------------- tests
def test_fit_runs_on_two_processes_and_writes_a_checkpoint(ddp_run):
    rank0, rank1 = ddp_run["records"]
    assert (rank0["rank"], rank1["rank"]) == (0, 1)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["strategy"] == "DDPStrategy"
    # 7 images, batch 2 per process, drop_last: each rank loads ceil(7 / 2) = 4 images -> 2 batches
    assert rank0["train_batches"] == rank1["train_batches"] == 2
    assert rank0["fit_steps"] == 2
    checkpoint = torch.load(rank0["checkpoint"], map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] == 2
    model = CAMClassifier.load_from_checkpoint(rank0["checkpoint"], map_location="cpu")
    assert model(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, NUM_CLASSES - 1)


def test_predict_writes_exactly_the_split_once(ddp_run):
    ids = sorted(train_ids_of(ddp_run["root"]))
    assert len(ids) == NUM_TRAIN
    pred = ddp_run["out"] / "pred"
    assert _stems(pred, "cams/*.npz") == ids
    assert _stems(pred, "labels/*.png") == ids
    assert not list(pred.rglob("*.tmp*"))  # atomic writes leave no temporaries
    # each rank wrote its own disjoint share: 4 + 3, nothing written twice
    assert sorted(r["predict_written"] for r in ddp_run["records"]) == [3, 4]


def test_predict_matches_single_process(ddp_run, single_run):
    ids = train_ids_of(ddp_run["root"])
    assert single_run["predict_written"] == NUM_TRAIN
    two, one = ddp_run["out"] / "pred", single_run["out"] / "pred"
    assert _stems(one, "cams/*.npz") == sorted(ids)
    for image_id in ids:
        with np.load(two / "cams" / f"{image_id}.npz") as a, np.load(one / "cams" / f"{image_id}.npz") as b:
            assert np.array_equal(a["keys"], b["keys"])
            assert a["cams"].shape == b["cams"].shape and a["cams"].shape[-2:] == (SIZE, SIZE)
            assert np.allclose(a["cams"].astype(np.float32), b["cams"].astype(np.float32), atol=2e-3)
        assert np.array_equal(read_label_png(two / "labels" / f"{image_id}.png"),
                              read_label_png(one / "labels" / f"{image_id}.png"))


def test_validate_metrics_equal_single_process_on_an_even_split(ddp_run, single_run):
    for key in ("validate_cam", "validate_seg"):
        two = ddp_run["records"][0][key]
        one = single_run[key]
        assert [r[key]["batches"] for r in ddp_run["records"]] == [NUM_VAL // 2, NUM_VAL // 2]
        assert one["batches"] == NUM_VAL
        assert two["metrics"] == ddp_run["records"][1][key]["metrics"]  # synced: both ranks report the same
        names = {"validate_cam": ["val/cam_miou", "val/loss"], "validate_seg": ["val/miou", "val/loss"]}[key]
        assert one["metrics"][names[0]] > 0.01  # not a degenerate score
        for name in names:
            assert two["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-5, abs=1e-6), (key, name)
    cam_map_two = ddp_run["records"][0]["validate_cam"]["metrics"]["val/mAP"]
    assert cam_map_two == pytest.approx(single_run["validate_cam"]["metrics"]["val/mAP"], rel=1e-5, nan_ok=True)


def test_seg_miou_equals_an_independent_reference(ddp_run, single_run, tmp_path):
    """The synced 2-process mIoU against labels predicted here and scored by ``evaluate_folder``."""
    model = segmenter(ddp_run["seg_weights"]).eval()
    dm = image_datamodule(ddp_run["root"])
    dm.setup("validate")
    folder = tmp_path / "val_pred"
    folder.mkdir()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            pred = model(batch["image"]).argmax(1)[0].numpy().astype(np.uint8)
            write_label_png(folder / f"{batch['id'][0]}.png", pred)
    reference = evaluate_folder(folder, ddp_run["root"], "val")["miou"]
    assert ddp_run["records"][0]["validate_seg"]["metrics"]["val/miou"] == pytest.approx(reference, rel=1e-5)


def test_odd_validation_split_repeats_the_first_image(ddp_run, single_run):
    """Documents Lightning's padding: 3 val images on 2 ranks are scored as [0, 1, 2, 0]."""
    odd = [r["validate_seg_odd"] for r in ddp_run["records"]]
    assert [r["batches"] for r in odd] == [2, 2]  # 4 batches for 3 images
    assert single_run["validate_seg_odd"]["batches"] == 3
    # the duplicate changes the score on this data, so the comparison below tells the two apart
    assert single_run["validate_seg_dup"]["metrics"]["val/miou"] != pytest.approx(
        single_run["validate_seg_odd"]["metrics"]["val/miou"], rel=1e-4)
    assert odd[0]["metrics"]["val/miou"] == pytest.approx(single_run["validate_seg_dup"]["metrics"]["val/miou"], rel=1e-5)


def test_boxsup_rounds_under_ddp(ddp_run):
    root, boxsup = ddp_run["root"], ddp_run["out"] / "boxsup"
    ids = sorted(train_ids_of(root))
    rank0, rank1 = ddp_run["records"]
    # the in-memory shares (round 1) are disjoint and cover the split: ids[rank::2]
    ordered = train_ids_of(root)
    assert rank0["boxsup_share"] == sorted(ordered[0::2]) and rank1["boxsup_share"] == sorted(ordered[1::2])
    rounds = json.loads((boxsup / "rounds.json").read_text())
    assert set(rounds) == {"round_0", "round_1"}
    for key in ("round_0", "round_1"):
        assert _stems(boxsup / key, "*.png") == ids
        # the synced round mIoU (both ranks) equals an independent score of the whole folder
        reference = evaluate_folder(boxsup / key, root, "train")["miou"]
        assert rounds[key] == pytest.approx(reference, rel=1e-5)
        assert rank0["boxsup_round_miou"][key] == pytest.approx(reference, rel=1e-5)
        assert rank1["boxsup_round_miou"][key] == pytest.approx(reference, rel=1e-5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="DDP worker of tests/test_ddp.py")
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seg-weights", required=True)
    parser.add_argument("--devices", type=int, default=2)
    args = parser.parse_args()
    ddp_worker(args.root, args.out, args.seg_weights, args.devices)
