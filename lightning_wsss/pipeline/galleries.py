"""The demo report's galleries: training images with their CAMs and pseudo labels, and validation images with
each supervision's segmenter predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from ..datasets.voc import VOCSegmentation
from ..io import read_label_png
from ..palette import colorize
from .predictions import predict_val
from .report import gallery
from .runner import read_stage_marker

__all__ = ["demo_galleries"]


def _heatmap(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    import matplotlib

    colours = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
    return (0.5 * image + 0.5 * colours).astype(np.uint8)


def _refinement(stages: Dict[str, Any]) -> Optional[str]:
    """The last stage after the CAMs that wrote labels (the random walk, CAM + CRF), or None."""
    names = list(stages)
    after = names[names.index("cams") + 1:] if "cams" in names else []
    labelled = [name for name in after if name != "segmenter" and (Path(stages[name]["dir"]) / "labels").is_dir()]
    return labelled[-1] if labelled else None


def segmenter_predictions(stage: Dict[str, Any], dataset: VOCSegmentation, ids: list) -> list:
    """Predictions of a summary entry's segmenter stage, loaded as the class the stage trained (see
    :func:`~lightning_wsss.pipeline.predictions.load_segmenter` for stages made before it was recorded)."""
    stage_dir = Path(stage["dir"])
    outputs = read_stage_marker(stage_dir / "stage.json", "segmenter").outputs
    return predict_val(stage_dir / "checkpoints" / "final.ckpt", dataset, ids, outputs.get("class_path"))


def demo_galleries(summary: Dict[str, Any], data_root: Path, num_images: int = 6) -> Dict[str, bytes]:
    """Galleries: training images with CAMs and every supervision's pseudo labels; val images with predictions."""
    from ..cam.files import load_cams

    entries = summary["supervision"]
    galleries: Dict[str, bytes] = {}
    train = VOCSegmentation(data_root, "train")
    columns, rows, titles = ["image"], [], []
    sources = []
    if "image" in entries:
        stages = entries["image"]["stages"]
        cams_dir = Path(stages["cams"]["dir"]) / "cams"
        columns += ["CAM", "CAM labels"]
        sources += [("cam", cams_dir), ("png", Path(stages["cams"]["dir"]) / "labels")]
        refined = _refinement(stages)
        if refined is not None:
            columns.append(refined.replace("_", " "))
            sources.append(("png", Path(stages[refined]["dir"]) / "labels"))
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
    predictions = {name: segmenter_predictions(entry["stages"]["segmenter"], val, val.ids[:num_images])
                   for name, entry in entries.items()}
    val_rows = []
    for k, image_id in enumerate(val.ids[:num_images]):
        sample = val.load(image_id)
        val_rows.append([sample["image"]] + [colorize(predictions[name][k]) for name in entries] + [colorize(sample["mask"])])
    galleries["Validation images: predictions of each supervision's segmenter"] = gallery(val_columns, val_rows, val.ids[:num_images])
    return galleries
