"""The supervision comparison: a text table, a cost-versus-mIoU plot, galleries and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..io import atomic_write, write_bytes_atomic

ORDER = ("image", "hybrid", "box", "full")


def _pct(value: Optional[float]) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}"


def comparison_rows(summary: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One row per supervision: name, annotation hours, best pseudo-label mIoU, val mIoU, ratio to full."""
    entries = summary.get("supervision", {})
    full = entries.get("full", {}).get("val_miou")
    rows = []
    for name in sorted(entries, key=lambda n: supervision_order(n, entries[n])):
        entry = entries[name]
        pseudo = [v for v in entry.get("pseudo_miou", {}).values() if v is not None]
        rows.append({
            "supervision": name,
            "annotation_hours": entry.get("annotation_hours"),
            "pseudo_miou": entry["pseudo_miou"].get(final_pseudo_key(name, entry)) if pseudo else None,
            "val_miou": entry.get("val_miou"),
            "relative_to_full": (entry["val_miou"] / full) if full else None,
            "wall_s": entry.get("wall_s"),
            "seed_spread": seed_spread_text(entry.get("segmenter_seeds")),
        })
    return rows


def seed_spread_text(spread: Optional[Mapping[str, Any]]) -> Optional[str]:
    """``"27.9 +- 6.3 (3 seeds: 30.5 20.5 32.8)"`` (percent) from an entry's ``segmenter_seeds``; None without."""
    if not spread or spread.get("mean") is None:
        return None
    values = [v for v in spread["val_miou"].values() if v is not None]
    listed = " ".join(f"{100 * v:.1f}" for v in values)
    return f"{100 * spread['mean']:.1f} +- {100 * spread['std']:.1f} ({len(values)} seeds: {listed})"


def supervision_order(name: str, entry: Mapping[str, Any]):
    """Sort key of a summary entry: image, hybrid (by box fraction), box, full, then anything else by name."""
    base = name.split("_", 1)[0]
    rank = ORDER.index(base) if base in ORDER else len(ORDER)
    return (rank, float(entry.get("box_fraction") or 0.0), name)


def final_pseudo_key(supervision: str, entry: Mapping[str, Any]) -> Optional[str]:
    """The pseudo labels the segmenter trained on: the last stage's before it (image: ``random_walk``, or a stage
    a config inserts after it), the union (hybrid), the last BoxSup round (box); the last self-training round
    when there is one."""
    keys = list(entry.get("pseudo_miou", {}))
    if entry.get("trained_on") not in (None, "random_walk"):  # e.g. SEC on the affinity seeds (partial labels)
        return "cam" if entry["trained_on"] == "cams" else None
    selftrain = sorted((k for k in keys if k.startswith("selftrain_round_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if selftrain:
        return selftrain[-1]
    if "hybrid" in keys:
        return "hybrid"
    if supervision.startswith("image") and keys:  # the last stage before the segmenter: the random walk, or a
        return keys[-1]                             # post-processing stage of the config's order after it
    rounds = sorted((k for k in keys if k.startswith("boxsup_round_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    return rounds[-1] if rounds else (keys[-1] if keys else None)


def format_table(summary: Mapping[str, Any]) -> str:
    """The comparison as a plain-text table (mIoU in percent)."""
    rows = comparison_rows(summary)
    width = max([16] + [len(str(row["supervision"])) for row in rows])  # long summary keys keep the columns aligned
    lines = [f"data set: {summary.get('dataset')}  ({summary.get('num_train')} train / {summary.get('num_val')} val images)",
             f"{'supervision':<{width}} {'annot. h':>9} {'pseudo mIoU':>12} {'val mIoU':>9} {'vs full':>8} {'wall s':>8}",
             "-" * (width + 51)]
    for row in rows:
        rel = "     n/a" if row["relative_to_full"] is None else f"{100 * row['relative_to_full']:7.1f}%"
        lines.append(f"{row['supervision']:<{width}} {row['annotation_hours']:9.2f} {_pct(row['pseudo_miou']):>12} "
                     f"{_pct(row['val_miou']):>9} {rel:>8} {row['wall_s'] or 0:8.1f}")
    details = []
    for name, entry in summary.get("supervision", {}).items():
        if entry.get("pseudo_miou"):
            parts = ", ".join(f"{k} {_pct(v).strip()}" for k, v in entry["pseudo_miou"].items())
            details.append(f"  {name} pseudo-label mIoU (train): {parts}")
    for row in rows:
        if row["seed_spread"]:
            details.append(f"  {row['supervision']} val mIoU over segmenter seeds: {row['seed_spread']}")
    threads = thread_line(summary)
    if threads:
        details.append(threads)
    return "\n".join(lines + ([""] + details if details else []))


def recorded_threads(records: Sequence[Optional[Any]]) -> Tuple[List[int], bool]:
    """The distinct torch thread counts among ``records`` (stages' ``torch_threads``, None where a stage made
    before the record has none), sorted; and whether every record has one (False for no records)."""
    counts = sorted({int(r) for r in records if r is not None})
    return counts, bool(records) and all(r is not None for r in records)


def thread_line(summary: Mapping[str, Any]) -> str:
    """``  torch threads: image 1, box 1, full 2``: the thread counts each entry's stages ran with (as recorded in
    their ``stage.json``; ``1,2`` where they differ), so every figure of the table comes with its thread count;
    empty when no stage has a record (summaries made before it)."""
    parts = []
    for name, entry in summary.get("supervision", {}).items():
        counts, _ = recorded_threads([stage.get("torch_threads") for stage in (entry.get("stages") or {}).values()])
        if counts:
            parts.append(f"{name} {','.join(map(str, counts))}")
    return f"  torch threads: {', '.join(parts)}" if parts else ""


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def cost_plot(summary: Mapping[str, Any]) -> bytes:
    """PNG bytes of val mIoU against annotation hours, one point per supervision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for row in comparison_rows(summary):
        if row["val_miou"] is None:
            continue
        ax.scatter(row["annotation_hours"], 100 * row["val_miou"], s=60)
        ax.annotate(row["supervision"], (row["annotation_hours"], 100 * row["val_miou"]), textcoords="offset points",
                    xytext=(6, 4))
    curve = sorted((r["annotation_hours"], 100 * r["val_miou"]) for r in comparison_rows(summary)
                   if r["supervision"].startswith("hybrid") and r["val_miou"] is not None)
    if len(curve) >= 2:  # the hybrid cost/quality curve (box_fraction 0 .. 1)
        ax.plot(*zip(*curve), color="0.5", linestyle="--", linewidth=1, zorder=0, label="hybrid (box fraction)")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("symlog")
    ax.set_xlabel("estimated annotation time (hours)")
    ax.set_ylabel("val mIoU (%)")
    ax.set_title(f"cost vs quality: {summary.get('dataset')}")
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def gallery(columns: Sequence[str], rows: Sequence[Sequence[np.ndarray]], row_titles: Sequence[str]) -> bytes:
    """PNG bytes of an image grid: ``rows`` of RGB arrays [H, W, 3] under ``columns`` headings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.9 * len(columns), 1.9 * len(rows)), squeeze=False)
    for r, (images, title) in enumerate(zip(rows, row_titles)):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
    return png_bytes(fig)


def write_report(out_dir: Path, summary: Mapping[str, Any], galleries: Mapping[str, bytes]) -> Path:
    """Write ``out_dir/report.html`` (images embedded) and ``out_dir/cost_vs_miou.png``; returns the HTML path."""
    out_dir = Path(out_dir)
    plot = cost_plot(summary)
    write_bytes_atomic(out_dir / "cost_vs_miou.png", plot)
    rows = comparison_rows(summary)
    table = ["<table><tr><th>supervision</th><th>annotation hours</th><th>pseudo-label mIoU (train)</th>"
             "<th>val mIoU</th><th>val mIoU over segmenter seeds</th><th>relative to full</th><th>wall time (s)</th></tr>"]
    for row in rows:
        rel = "n/a" if row["relative_to_full"] is None else f"{100 * row['relative_to_full']:.1f}%"
        table.append(f"<tr><td>{html.escape(row['supervision'])}</td><td>{row['annotation_hours']:.2f}</td>"
                     f"<td>{_pct(row['pseudo_miou']).strip()}</td><td>{_pct(row['val_miou']).strip()}</td>"
                     f"<td>{html.escape(row['seed_spread'] or '')}</td><td>{rel}</td><td>{row['wall_s'] or 0:.0f}</td></tr>")
    table.append("</table>")
    details = "".join(
        f"<li><b>{html.escape(name)}</b>: " + ", ".join(f"{html.escape(k)} {_pct(v).strip()}%" for k, v in e["pseudo_miou"].items()) + "</li>"
        for name, e in summary.get("supervision", {}).items() if e.get("pseudo_miou"))

    def img(data: bytes, alt: str) -> str:
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    sections = "".join(f"<h2>{html.escape(title)}</h2>{img(data, title)}" for title, data in galleries.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>lightning-wsss: supervision comparison</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}td:first-child{{text-align:left}}img{{max-width:100%}}</style>
</head><body><h1>Supervision comparison on {html.escape(str(summary.get('dataset')))}</h1>
<p>{summary.get('num_train')} training and {summary.get('num_val')} validation images. mIoU measured with
<code>lightning_wsss.metrics</code>; annotation hours from measured annotation times (Bearman et al. ECCV 2016;
Papadopoulos et al. ICCV 2017), see <code>lightning_wsss/pipeline/costs.py</code>.</p>
{''.join(table)}<h2>Pseudo labels per stage</h2><ul>{details}</ul><h2>Cost versus mIoU</h2>{img(plot, 'cost vs mIoU')}
{sections}</body></html>"""
    path = out_dir / "report.html"
    with atomic_write(path, "w") as handle:
        handle.write(page)
    return path
