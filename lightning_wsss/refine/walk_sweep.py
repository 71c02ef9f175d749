"""``wsss sweep-walk``: score random-walk settings on the training split's masks and name the best.

psa and irn choose beta, the number of steps and the background threshold on the training images' masks; this
does the same for a trained :class:`~lightning_wsss.tasks.AffinityRefiner` and the CAM stage's files, so a
config carries measured walk settings. Per image the affinities are computed once; per beta one walk of
``max(steps)`` steps gives every step count (:func:`~lightning_wsss.refine.random_walk.walk_snapshots`), and the
irn background threshold is applied after the walk, so the whole grid costs a few walks per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError, PathLike
from .crf import IGNORE_INDEX, CRFSpec, crf_from_scores, crf_params_for
from .random_walk import irn_scores, walk_snapshots

__all__ = ["walk_grid", "sweep_walk", "confusion_miou", "foreground_share", "format_walk_sweep"]


def walk_grid(modes: Sequence[str], betas: Sequence[float], steps: Sequence[int], bg_alphas: Sequence[float],
              bg_thresholds: Sequence[float]) -> List[Dict[str, Any]]:
    """Every setting of the sweep: ``{"mode": "psa", "beta", "t", "bg_alpha"}`` or ``{"mode": "irn", "beta",
    "t", "bg_threshold"}``, in a stable order."""
    grid: List[Dict[str, Any]] = []
    for mode in modes:
        if mode not in ("psa", "irn"):
            raise ValueError(f"walk mode must be 'psa' or 'irn', got {mode!r}")
        for beta in betas:
            for t in steps:
                if mode == "psa":
                    grid += [{"mode": mode, "beta": float(beta), "t": int(t), "bg_alpha": float(a)} for a in bg_alphas]
                else:
                    grid += [{"mode": mode, "beta": float(beta), "t": int(t), "bg_threshold": float(b)}
                             for b in bg_thresholds]
    if not grid:
        raise ValueError("the walk sweep grid is empty")
    return grid


def confusion_miou(confusion: np.ndarray) -> Tuple[float, np.ndarray]:
    """mIoU and per-class IoU of a confusion matrix [C, C] (rows: ground truth, columns: prediction); classes
    absent from both are NaN and left out of the mean (as :class:`~lightning_wsss.metrics.SegmentationIoU`)."""
    confusion = confusion.astype(np.float64)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
    return (float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")), iou


def _walked_scores(model, cams_fg: torch.Tensor, aff: torch.Tensor, grid: List[Dict[str, Any]],
                   image_size: Tuple[int, int]) -> Iterator[Tuple[int, torch.Tensor]]:
    """(setting index, walked scores [C, H, W] at image size, background first) for every setting, from
    foreground CAMs [1, K, h, w]."""
    height, width = image_size
    h, w = aff.shape[-2:]
    full = (h * model.stride, w * model.stride)

    def upsampled(scores: torch.Tensor) -> torch.Tensor:
        return F.interpolate(scores, size=full, mode="bilinear", align_corners=False)[0, :, :height, :width]

    groups: Dict[Tuple[str, float, Optional[float]], List[int]] = {}
    for index, s in enumerate(grid):
        groups.setdefault((s["mode"], s["beta"], s.get("bg_alpha")), []).append(index)
    for (mode, beta, alpha), indices in groups.items():
        if cams_fg.shape[1] == 0:  # no foreground: background everywhere, whatever the setting
            for index in indices:
                yield index, cams_fg.new_ones(1, height, width)
            continue
        if mode == "psa":
            bg = (1.0 - cams_fg.amax(dim=1, keepdim=True)).clamp(min=0) ** alpha
            start = torch.cat([bg, cams_fg], dim=1)
        else:
            start = cams_fg
        snaps = walk_snapshots(start, aff, model.offsets, [grid[i]["t"] for i in indices], beta=beta)
        for index in indices:
            walked = snaps[grid[index]["t"]]
            if mode == "irn":
                walked = irn_scores(walked, grid[index]["bg_threshold"], model.hparams.get("irn_normalize", "class"))
            yield index, upsampled(walked)


def _confusion(target: np.ndarray, valid: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion [C, C] of a label map against the mask's valid pixels (rows: ground truth)."""
    gt = target[valid].astype(np.int64)
    return np.bincount(gt * num_classes + label[valid], minlength=num_classes ** 2).reshape(num_classes, num_classes)


@torch.no_grad()
def sweep_walk(model, cams_dir: PathLike, root: PathLike, split: str = "train", grid: Optional[List[Dict]] = None,
               limit: Optional[int] = None, class_names: Optional[Sequence[str]] = None,
               progress: bool = False, crf: CRFSpec = None) -> Dict[str, Any]:
    """mIoU of the walked labels of every setting of ``grid`` on the split's masks.

    Args:
        model: a trained ``AffinityRefiner`` (its ``walk_affinity``, ``downsample_cams``,
            ``walk_cams``, ``stride``, ``offsets``); evaluated on the CPU or wherever it lies.
        cams_dir: the CAM stage's ``<id>.npz`` folder.
        root, split: the data set (VOC layout, or a COCO JSON split) whose masks score the labels.
        grid: settings from :func:`walk_grid`.
        limit: score the first ``limit`` images only.
        crf: also score every setting's labels after a dense CRF of its walked scores (a
            :data:`~lightning_wsss.refine.crf.CRFSpec`, as the refiner's ``crf``): each setting then appears twice,
            ``"crf": False`` and ``"crf": True``.

    Returns:
        ``{"settings": [{..., "crf": bool, "miou": m, "fg_share": share of the pixels labelled foreground}], "best":
        the best setting, "num_images": n, "gt_fg_share": the masks' foreground share, "per_class": {name: IoU} at
        the best}``.

    Raises:
        DataError: a missing CAM file or one whose size differs from its mask (naming it).
    """
    from tqdm.auto import tqdm

    from ..cam.files import load_cams
    from ..datamodules import ImageLabelDataModule
    from ..metrics import iou_table

    grid = grid or walk_grid(["psa", "irn"], [8.0], [4, 16, 64, 256], [16.0], [0.25])
    kwargs = {} if str(split).endswith(".json") else {"class_names": class_names}
    dm = ImageLabelDataModule(root=str(root), predict_split=split, eval_batch_size=1, **kwargs)
    dm.setup("predict")
    reader = dm.datasets["predict"].reader
    num_classes = reader.num_classes
    with_crf = crf_params_for(crf, (1, 1)) is not None
    confusion = np.zeros((len(grid), 1 + with_crf, num_classes, num_classes), np.int64)
    model.eval()
    device = next(model.parameters()).device
    count = 0
    total = len(reader) if limit is None else min(limit, len(reader))
    for batch in tqdm(dm.predict_dataloader(), total=total, desc="walk sweep", disable=not progress):
        if count >= total:
            break
        image_id = batch["id"][0]
        height, width = batch["size"][0].tolist()
        item = reader.load(image_id)
        target = item["mask"]
        if target is None:
            raise DataError(f"{root}", f"image {image_id} of split {split} has no mask to score the walk on")
        path = Path(cams_dir) / f"{image_id}.npz"
        data = load_cams(path)
        if data["cams"].shape[1:] != target.shape:
            raise DataError(path, f"CAM size {data['cams'].shape[1:]} differs from the mask's {target.shape}")
        embedding, aff = model.walk_affinity(batch["image"].to(device))
        cams = torch.from_numpy(data["cams"]).to(aff.device, aff.dtype)[None]
        cams_fg = model.walk_cams(model.downsample_cams(cams, tuple(embedding.shape[-2:]), (height, width)), embedding)
        keys = np.concatenate([[0], data["keys"]]).astype(np.int64)
        valid = target != IGNORE_INDEX
        image = np.asarray(item["image"]) if with_crf else None
        for index, scores in _walked_scores(model, cams_fg, aff, grid, (height, width)):
            scores = scores.float().cpu().numpy()
            confusion[index, 0] += _confusion(target, valid, keys[scores.argmax(0)], num_classes)
            if with_crf:
                refined = crf_from_scores(image, scores, crf)
                confusion[index, 1] += _confusion(target, valid, keys[refined.argmax(0)], num_classes)
        count += 1
    settings = []
    per_class = []
    for setting, conf in zip(grid, confusion):
        for refined in range(1 + with_crf):
            miou, iou = confusion_miou(conf[refined])
            share = foreground_share(conf[refined])
            settings.append({**setting, "crf": bool(refined), "miou": miou, "fg_share": share})
            per_class.append(iou)
    best = int(np.nanargmax([s["miou"] for s in settings])) if count else 0
    names = list(getattr(reader, "class_names", None) or [str(i) for i in range(num_classes)])
    return {"settings": settings, "best": settings[best], "num_images": count,
            "gt_fg_share": foreground_share(confusion[0, 0].T) if count else float("nan"),
            "per_class": iou_table(torch.from_numpy(per_class[best]), names)}


def foreground_share(confusion: np.ndarray) -> float:
    """The share of the scored pixels labelled foreground (any class but 0) in a confusion matrix [C, C] (rows:
    ground truth, columns: label); its transpose gives the masks' share."""
    total = confusion.sum()
    return float(confusion[:, 1:].sum() / total) if total else float("nan")


def format_walk_sweep(result: Dict[str, Any], top: int = 15) -> str:
    """The sweep as text: the ``top`` settings by mIoU, the best per mode, and the best as a config line."""
    rows = sorted(result["settings"], key=lambda s: -np.nan_to_num(s["miou"], nan=-1.0))
    lines = [f"random-walk settings on {result['num_images']} images (mIoU of the walked labels vs the masks; fg: the "
             f"share of pixels labelled foreground, the masks' {100 * result.get('gt_fg_share', np.nan):.1f} %)",
             f"{'mode':>4} {'beta':>5} {'t':>5} {'bg':>6} {'crf':>4}  mIoU (%)  fg (%)"]
    for s in rows[:top]:
        bg = s.get("bg_alpha", s.get("bg_threshold"))
        crf = "yes" if s.get("crf") else "no"
        lines.append(f"{s['mode']:>4} {s['beta']:5g} {s['t']:5d} {bg:6g} {crf:>4}  {100 * s['miou']:8.2f}  "
                     f"{100 * s.get('fg_share', np.nan):6.1f}")
    for mode in ("psa", "irn"):
        for refined in (False, True):
            of_mode = [s for s in rows if s["mode"] == mode and bool(s.get("crf")) == refined]
            if of_mode:
                lines.append(f"best {mode}{' + CRF' if refined else ''}: {100 * of_mode[0]['miou']:.2f}")
    best = result["best"]
    bg_key = "bg_alpha" if best["mode"] == "psa" else "bg_threshold"
    crf = ", crf: <the sweep's CRF>" if best.get("crf") else ""
    lines.append(f"best: stages.random_walk.walk: {{mode: {best['mode']}, beta: {best['beta']:g}, t: {best['t']}, "
                 f"{bg_key}: {best[bg_key]:g}{crf}}}  (mIoU {100 * best['miou']:.2f})")
    lines.append("per-class IoU (%) at the best setting: " + ", ".join(
        f"{k} {'n/a' if v is None else f'{100 * v:.1f}'}" for k, v in result["per_class"].items()))
    return "\n".join(lines)
