"""``wsss demo``: image labels vs boxes vs full masks on the synthetic set, with a table and an HTML report."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..datasets.voc import VOCSegmentation
from ..io import read_label_png
from ..palette import colorize
from .config import deep_merge
from .pipelines import run_pipeline
from .report import format_table, gallery, write_report

DEMO_DATA = {"num_train": 400, "num_val": 100, "size": 128, "seed": 0}

QUICK_OVERRIDES: Dict[str, Any] = {
    "data": {"batch_size": 4, "eval_batch_size": 4, "crop_size": 64},
    "stages": {
        "classifier": {"trainer": {"max_epochs": 1}},
        "cams": {"cam": {"cam_scales": [1.0]}},
        "affinity": {"trainer": {"max_epochs": 1}, "schedule": {"min_steps": 0}},
        "box_init": {"initializers": ["filled", "grabcut"]},
        "boxsup": {"model": {"init_args": {"round_epochs": 1, "crf_candidate": False}}, "trainer": {"max_epochs": 2}},
        "segmenter": {"trainer": {"max_epochs": 1}},
    },
}


CURVE_FRACTIONS = (0.0, 0.1, 0.3, 1.0)

# ``wsss demo --methods``: the methods beyond the baselines on the demo data, as overrides of the image pipeline
# (the same settings as experiments/synthetic/pipeline_<method>.yaml); each shares the baseline's stages it does
# not change (CDA's seed classifier is the baseline classifier; SEC and self-training reuse everything up to the
# random walk).
METHOD_OVERRIDES: Dict[str, Dict[str, Any]] = {
    "image_erasing": {"stages": {"classifier": {"model": {"class_path": "ErasingCAMClassifier", "init_args": {
        "erase_rounds": 2, "first_round_epochs": 12, "round_epochs": 3, "erase_threshold": 0.5}},
        "trainer": {"max_epochs": 18}}}},
    "image_cda": {"stages": {"classifier": {"datamodule": "CDADataModule", "data": {
        "paste_prob": 0.5, "max_objects": 1, "object_scale": [0.7, 1.3], "min_object_area": 64}}}},
    "image_sec": {"stages": {"segmenter": {"labels_from": "affinity", "model": {"class_path": "SECSegmenter", "init_args": {
        "seed_weight": 1.0, "expand_weight": 1.0, "constrain_weight": 1.0, "loss_stride": 8,
        "gwrp_reference_pixels": 1681}}}}},
    "image_selftrain": {"stages": {"segmenter": {"model": {"class_path": "SelfTrainingSegmenter", "init_args": {
        "rounds": 2, "round_epochs": 4, "portion": 0.5, "portion_step": 0.1, "max_portion": 0.8, "mrkld_weight": 0.1}}}}},
}


def demo_config(data_root: Path, supervision: str, quick: bool, progress: bool, size: int = 128,
                box_fraction: Optional[float] = None) -> Dict[str, Any]:
    """The pipeline config of one supervision type on the demo data (training crops = the image size).

    ``box_fraction`` makes a ``hybrid`` config whose summary entry is ``hybrid_<fraction>``.
    """
    config: Dict[str, Any] = {"name": f"demo-{supervision}", "supervision": supervision,
                              "dataset": {"root": str(data_root), "name": "synthetic"}, "progress_bar": progress,
                              "data": {"crop_size": min(size, 112)}}
    if box_fraction is not None:
        config.update(supervision="hybrid", name=f"demo-hybrid-{box_fraction:g}", summary_key=f"hybrid_{box_fraction:g}",
                      hybrid={"box_fraction": float(box_fraction)})
    if quick:
        config = deep_merge(config, QUICK_OVERRIDES)
    return config


def _heatmap(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    import matplotlib

    colours = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
    return (0.5 * image + 0.5 * colours).astype(np.uint8)


def demo_galleries(summary: Dict[str, Any], data_root: Path, num_images: int = 6) -> Dict[str, bytes]:
    """Galleries: training images with CAMs and every supervision's pseudo labels; val images with predictions."""
    from ..cam.evaluation import load_cams

    entries = summary["supervision"]
    galleries: Dict[str, bytes] = {}
    train = VOCSegmentation(data_root, "train")
    columns, rows, titles = ["image"], [], []
    sources = []
    if "image" in entries:
        stages = entries["image"]["stages"]
        cams_dir = Path(stages["cams"]["dir"]) / "cams"
        columns += ["CAM", "CAM labels", "random walk"]
        sources += [("cam", cams_dir), ("png", Path(stages["cams"]["dir"]) / "labels"),
                    ("png", Path(stages["random_walk"]["dir"]) / "labels")]
    if "box" in entries:
        rounds_dir = Path(entries["box"]["stages"]["boxsup"]["dir"]) / "rounds"
        last = max((p for p in rounds_dir.glob("round_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
        columns += ["box init (round 0)", f"BoxSup {last.name}"]
        sources += [("png", rounds_dir / "round_0"), ("png", last)]
    columns.append("ground truth")
    for image_id in train.ids[:num_images]:
        sample = train.load(image_id)
        row = [sample["image"]]
        for kind, folder in sources:
            if kind == "cam":
                cams = load_cams(folder / f"{image_id}.npz")["cams"]
                row.append(_heatmap(sample["image"], cams.max(0) if len(cams) else np.zeros(sample["image"].shape[:2])))
            else:
                row.append(colorize(read_label_png(folder / f"{image_id}.png")))
        row.append(colorize(sample["mask"]))
        rows.append(row)
        titles.append(image_id)
    galleries["Training images: CAMs and pseudo labels"] = gallery(columns, rows, titles)
    val_columns = ["image"] + [f"{name} segmenter" for name in entries] + ["ground truth"]
    val = VOCSegmentation(data_root, "val")
    predictions = {name: predict_val(Path(entry["stages"]["segmenter"]["dir"]) / "checkpoints" / "final.ckpt",
                                     val, val.ids[:num_images]) for name, entry in entries.items()}
    val_rows = []
    for k, image_id in enumerate(val.ids[:num_images]):
        sample = val.load(image_id)
        val_rows.append([sample["image"]] + [colorize(predictions[name][k]) for name in entries] + [colorize(sample["mask"])])
    galleries["Validation images: predictions of each supervision's segmenter"] = gallery(val_columns, val_rows, val.ids[:num_images])
    return galleries


def predict_val(checkpoint: Path, dataset: VOCSegmentation, ids: Sequence[str]) -> List[np.ndarray]:
    """Argmax predictions uint8 [H, W] of a segmenter checkpoint on a few images."""
    import torch

    from ..datamodules.transforms import apply_transform, eval_transform
    from ..serialization import load_model_checkpoint
    from ..tasks import DeepLabSegmenter

    model = load_model_checkpoint(DeepLabSegmenter, checkpoint).eval()
    transform = eval_transform()
    out = []
    with torch.no_grad():
        for image_id in ids:
            sample = apply_transform(transform, dataset.load(image_id))
            logits = model.predict_logits(sample["image"][None])
            out.append(logits[0].argmax(0).numpy().astype(np.uint8))
    return out


def run_demo(out: str, data: Optional[str] = None, num_train: Optional[int] = None, num_val: Optional[int] = None,
             size: Optional[int] = None, supervisions: Sequence[str] = ("image", "box", "full"), quick: bool = False,
             progress: bool = True, curve: Sequence[float] = (), methods: Sequence[str] = (),
             segmenter_seeds: Sequence[int] = ()) -> Dict[str, Any]:
    """Generate the synthetic set if needed, run the pipelines, print the table, write the report.

    ``curve``: box fractions of ``hybrid`` runs added after the supervisions (``wsss demo --curve`` runs
    :data:`CURVE_FRACTIONS`); they share their image-label stages, and the report plots their val mIoU
    against annotation hours. ``methods``: keys of :data:`METHOD_OVERRIDES` run as image pipelines.
    ``segmenter_seeds``: every run also trains its final segmenter with these seeds (the seed-to-seed spread of
    its val mIoU goes to the summary and the table).

    Returns:
        the summary dict (also in ``out/summary.json``).
    """
    from ..datasets.synthetic import make_synthetic

    out_dir = Path(out)
    params = dict(DEMO_DATA)
    if quick:
        params.update(num_train=12, num_val=6, size=64)
    params.update({k: v for k, v in (("num_train", num_train), ("num_val", num_val), ("size", size)) if v is not None})
    data_root = Path(data) if data else out_dir / f"data_{params['num_train']}_{params['num_val']}_{params['size']}"
    start = time.perf_counter()
    make_synthetic(data_root, **params)
    print(f"synthetic data: {data_root} ({params['num_train']} train / {params['num_val']} val, {params['size']} px)")
    summary: Dict[str, Any] = {}
    for supervision in supervisions:
        print(f"\n=== {supervision} supervision ===")
        summary = run_pipeline(demo_config(data_root, supervision, quick, progress, params["size"]), out_dir,
                               segmenter_seeds=segmenter_seeds)
    for method in methods:
        print(f"\n=== {method} ===")
        config = deep_merge(demo_config(data_root, "image", quick, progress, params["size"]), METHOD_OVERRIDES[method])
        summary = run_pipeline(deep_merge(config, {"name": f"demo-{method}", "summary_key": method}), out_dir,
                               segmenter_seeds=segmenter_seeds)
    for fraction in curve:
        print(f"\n=== hybrid supervision, box fraction {fraction:g} ===")
        summary = run_pipeline(demo_config(data_root, "hybrid", quick, progress, params["size"], fraction), out_dir,
                               segmenter_seeds=segmenter_seeds)
    print("\n" + format_table(summary))
    report = write_report(out_dir, summary, demo_galleries(summary, data_root))
    print(f"\nsummary: {out_dir / 'summary.json'}\nreport:  {report}\ntotal wall time: {time.perf_counter() - start:.0f} s")
    return summary
