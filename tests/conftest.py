"""Shared fixtures: tiny VOC-layout data sets written by the tests, and the optional ../shared/data folder."""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from PIL import Image

from lightning_wsss.io import write_label_png

SHARED_DATA = Path(os.environ.get("WSSS_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))

TINY_CLASSES = ["background", "red", "green", "tv/monitor"]


def pytest_configure(config):
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Tiny models run fastest on one thread, and do not fight subprocesses (DDP, pipelines) for the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_trainer(**kwargs):
    """A quiet CPU Trainer for tests (no logger, checkpoints, progress bar or sanity check), ``kwargs`` override."""
    import lightning as L

    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0)
    options.update(kwargs)
    return L.Trainer(**options)


def run_script(path: Path, *args: str, cwd: Optional[Path] = None) -> Tuple[int, str, str]:
    """Run ``python path args`` in this process (no interpreter and torch start-up per call, about 8 s on two
    cores): ``__main__``, ``sys.argv`` and the working directory as the command would see them; returns (exit
    status, stdout, stderr). An uncaught exception gives what the interpreter gives: its traceback on stderr, 1.
    The process-wide state a script may set (torch's grad mode, the working directory, ``sys.argv``) is restored."""
    import torch

    stdout, stderr = io.StringIO(), io.StringIO()
    argv, where, grad, code = sys.argv, os.getcwd(), torch.is_grad_enabled(), 0
    sys.argv = [str(path), *args]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, (int, type(None))):
            stderr.write(f"{stop.code}\n")  # sys.exit("message"): Python prints it to stderr
    except Exception:  # noqa: BLE001 - the interpreter's behaviour: traceback on stderr, exit status 1
        stderr.write(traceback.format_exc())
        code = 1
    finally:
        sys.argv = argv
        os.chdir(where)
        torch.set_grad_enabled(grad)
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder; tests using it skip with a reason where it is absent (a fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it ships beside the repo, not in it)")
    return SHARED_DATA


def xml_for(image_id: str, size: Tuple[int, int], objects: Sequence[Tuple[str, Sequence[float], int]]) -> str:
    """VOC XML text; objects are (name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)."""
    height, width = size
    parts = [f"<annotation><filename>{image_id}.jpg</filename><size><width>{width}</width><height>{height}</height>"
             f"<depth>3</depth></size>"]
    for name, (x0, y0, x1, y1), difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
                     f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    parts.append("</annotation>")
    return "".join(parts)


def write_tiny_voc(root: Path, num_images: int = 6, size: int = 48, splits: Dict[str, List[int]] = None,
                   class_names: Sequence[str] = TINY_CLASSES, seed: int = 0) -> Path:
    """Write a tiny VOC-layout data set: each image holds one or two coloured rectangles on grey.

    Returns:
        ``root``. Image ``img_i`` has a class-1 rectangle, and a class-2 one when ``i`` is odd.
    """
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "class_names.txt").write_text("\n".join(class_names) + "\n")
    colours = {1: (220, 40, 40), 2: (40, 200, 60)}
    for i in range(num_images):
        image_id = f"img_{i}"
        image = np.full((size, size, 3), 128, dtype=np.uint8) + rng.integers(0, 10, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        objects = []
        specs = [(1, (4 + i % 3, 6, 20 + i % 3, 26))]
        if i % 2:
            specs.append((2, (26, 24, 44, 42)))
        for cls, (x0, y0, x1, y1) in specs:  # 0-based, exclusive end
            image[y0:y1, x0:x1] = colours[cls]
            mask[y0:y1, x0:x1] = cls
            objects.append((class_names[cls], (x0 + 1, y0 + 1, x1, y1), 0))
        mask[0, :] = 255  # a void row, as VOC borders have
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        write_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
        (root / "Annotations" / f"{image_id}.xml").write_text(xml_for(image_id, (size, size), objects))
    splits = splits or {"train": list(range(0, num_images - 2)), "val": list(range(num_images - 2, num_images))}
    for name, indices in splits.items():
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"img_{i}\n" for i in indices))
    return root


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    """A 6-image VOC-layout data set (4 train, 2 val) with classes background/red/green/tv-monitor."""
    return write_tiny_voc(tmp_path / "tiny_voc")


def tiny_image_datamodule(root: Path, **kwargs):
    """An image-label DataModule on a tiny set: batches of 2, 32 px crops, predicting the training split."""
    from lightning_wsss.datamodules import ImageLabelDataModule

    options = dict(batch_size=2, eval_batch_size=2, crop_size=32, num_workers=0, predict_split="train")
    options.update(kwargs)
    return ImageLabelDataModule(str(root), **options)


def plain_cam_checkpoint(root: Path, folder: Path):
    """A plain CAMClassifier (test_resnet, one scale, no flip) trained two epochs on ``root`` from seed 0 and saved as
    ``folder/plain.ckpt``: ``(model, checkpoint path)``, for the methods that load a plain checkpoint."""
    import torch

    from lightning_wsss.tasks import CAMClassifier

    torch.manual_seed(0)
    plain = CAMClassifier(4, backbone="test_resnet", lr=0.05, cam_scales=[1.0], cam_flip=False)
    trainer = tiny_trainer(max_epochs=2, limit_val_batches=0, enable_checkpointing=True, default_root_dir=str(folder))
    trainer.fit(plain, tiny_image_datamodule(root))
    checkpoint = folder / "plain.ckpt"
    trainer.save_checkpoint(checkpoint)
    return plain, checkpoint


@contextlib.contextmanager
def lock_held_elsewhere(stage_dir: Path, seconds: int = 300) -> Iterator[None]:
    """Another process holds the stage lock of ``stage_dir`` (``flock`` on its ``.lock``) during the block."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time, pathlib\n"
        "p = pathlib.Path(sys.argv[1]); p.mkdir(parents=True, exist_ok=True)\n"
        "h = open(p / '.lock', 'a'); fcntl.flock(h.fileno(), fcntl.LOCK_EX); print('locked', flush=True)\n"
        f"time.sleep({int(seconds)})\n"), str(stage_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()
