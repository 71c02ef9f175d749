"""Plain-text tables of scoring results: per-class IoU (``wsss evaluate``) and the CAM threshold sweep
(``wsss evaluate-cams``)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional


def format_iou_table(result: Dict[str, object], title: str = "") -> str:
    """Render the result of :func:`score_label_maps` as a plain-text table (IoU in percent)."""
    lines: List[str] = []
    if title:
        lines.append(title)
    per_class: Dict[str, Optional[float]] = result["per_class"]  # type: ignore[assignment]
    width = max([len("class")] + [len(name) for name in per_class])
    lines.append(f"{'class':<{width}}  IoU (%)")
    lines.append("-" * (width + 9))
    for name, value in per_class.items():
        lines.append(f"{name:<{width}}  {'   n/a' if value is None else f'{100 * value:6.2f}'}")
    lines.append("-" * (width + 9))
    lines.append(f"{'mIoU':<{width}}  {100 * float(result['miou']):6.2f}   ({result['num_images']} images)")
    return "\n".join(lines)


def format_cam_sweep(result: Dict[str, Any], cams: str, root: str, split: str) -> str:
    """Render the result of :func:`~lightning_wsss.cam.threshold_sweep.evaluate_cam_thresholds` as a text table."""
    name = "bg threshold" if result["bg_mode"] == "constant" else "  bg alpha"
    lines = [f"CAM pseudo labels in {cams} vs {root} [{split}], {result['num_images']} images",
             f"{name:>12}  mIoU (%)  foreground (%)"]
    for t, m, share in zip(result["thresholds"], result["miou"], result["foreground_share"]):
        marker = "  <- best" if t == result["best_threshold"] else ""
        lines.append(f"{t:12.2f}  {100 * m:8.2f}  {100 * share:14.1f}{marker}")
    lines.append(f"best: {name.strip()} {result['best_threshold']:.2f}, mIoU {100 * result['best_miou']:.2f}; "
                 f"ground truth foreground {100 * result['foreground_share_gt']:.1f} %")
    lines.append("per-class IoU (%) at the best setting: " + ", ".join(
        f"{k} {'n/a' if v is None else f'{100 * v:.1f}'}" for k, v in result["per_class"].items()))
    return "\n".join(lines)
