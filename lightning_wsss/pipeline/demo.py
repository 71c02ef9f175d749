"""``wsss demo``: image labels vs boxes vs full masks on the synthetic set, with a table and an HTML report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..errors import DataError
from ..threads import owned_cores
from .config import deep_merge
from .galleries import demo_galleries
from .parallel_runs import run_in_processes
from .pipelines import run_pipeline
from .report import format_table, write_report
from .summary import read_summary

DEMO_DATA = {"num_train": 400, "num_val": 100, "size": 128, "seed": 0}

DEMO_STAGES: Dict[str, Any] = {"affinity": {"schedule": {"min_steps": 250}},
                               "cam_crf": {"crf": {"scale_params": True}, "bg_threshold": 0.075, "max_growth": 1.0,
                                           "min_kept": 0.5},
                               "box_init": {"kwargs": {"crf": {"scale_params": True, "edge_confidence": 0.6}}}}
"""The demo's own stage settings. The image labels' refinement: the CAMs through psa's CRF scaled to the 128 px
images, its changes bounded against the CAM labels (no class more than doubled, every CAM region kept on half its
pixels), at background 0.075 (the best of ``tools/cam_crf_sweep.py`` with the bounds on the training masks of
three seeds): over three seeds it beats the walk and the CAM labels in labels and segmenter (README "Bounded CRF"). AffinityNet (``--methods image_walk``, IRN, SEC, self-training):
250 steps, not 500: on the demo the ratio of val/aff_same to val/aff_cross stops growing there (14.6 at step 250,
12.5 at step 500; README "Refinement"). The CRF box
initializer: spatial widths scaled to the 128 px images and the box prior's border confidence 0.6, the best of
``tools/box_init_sweep.py`` on the demo's training masks (README "Boxes"; the synthetic shapes fill 71 % of their
boxes). BoxSup takes the pipelines' defaults (README "Boxes"), its pool's CRF proposal made with these settings
(a pipeline's BoxSup takes the ``box_init`` stage's ``kwargs``)."""

DEMO_ORDERS: Dict[str, list] = {
    "image": ["classifier", "cams", "cam_crf", "segmenter"],
    "hybrid": ["classifier", "cams", "cam_crf", "box_init", "hybrid_labels", "segmenter"],
}
"""The demo's image-label refinement is the bounded CAM + CRF (``DEMO_STAGES``), in the hybrid curve too; the
methods (:data:`METHODS`) start from the walk's pipeline, ``presets.yaml``'s ``image`` order."""

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

# ``wsss demo --methods``: the methods beyond the baselines, IRN's boundary relations (``image_irn``, the affinity
# stage a BoundaryRefiner), ReCAM's maps (``image_recam``: ReCAM with the background in its softmax, its own
# classifier) and LPCAM's maps (``image_lpcam``, the CAM stage an LPCAMClassifier on the baseline's
# classifier) and ProbeCAM's (``image_probecam``, likewise on the baseline's classifier), the baseline's CAMs through a
# dense CRF instead of the walk (``image_cam_crf``), each the image pipeline with the settings of its
# experiments/synthetic/pipeline_<method>.yaml (the file's own keys, on the demo's data); each shares the baseline's
# stages it does not change (CDA's seed classifier is the baseline classifier; SEC and self-training reuse
# everything up to the random walk).
METHODS: Dict[str, str] = {"image_erasing": "pipeline_erasing.yaml", "image_cda": "pipeline_cda.yaml",
                           "image_sec": "pipeline_sec.yaml", "image_selftrain": "pipeline_selftrain.yaml",
                           "image_irn": "pipeline_irn.yaml", "image_lpcam": "pipeline_lpcam.yaml",
                           "image_recam": "pipeline_recam.yaml", "image_probecam": "pipeline_probecam.yaml",
                           "image_cam_crf": "pipeline_cam_crf.yaml", "image_walk": "pipeline_walk.yaml"}

METHOD_CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "synthetic"
"""Where the method configs are: the source checkout's ``experiments/synthetic``."""

NOT_METHOD_KEYS = ("base", "name", "out")
"""The keys of a method config that are about its own run, not the method (the demo has its data and folder)."""


def method_overrides(method: str, folder: Path = METHOD_CONFIGS) -> Dict[str, Any]:
    """The settings a method config adds to the image pipeline it is based on (its own keys, not its base's).

    Raises:
        DataError: the file is missing (the method configs come with the source checkout) or not a mapping.
    """
    from .config import read_yaml

    path = Path(folder) / METHODS[method]
    if not path.is_file():
        raise DataError(path, f"the config of demo method {method} is missing (wsss demo --methods reads "
                              "experiments/synthetic/ of a source checkout)")
    overrides = {k: v for k, v in read_yaml(path).items() if k not in NOT_METHOD_KEYS}
    if overrides.get("summary_key", method) != method:
        raise DataError(path, f"summary_key {overrides['summary_key']!r} differs from the demo's name {method!r}")
    return overrides


def demo_config(data_root: Path, supervision: str, quick: bool, progress: bool, size: int = 128,
                box_fraction: Optional[float] = None) -> Dict[str, Any]:
    """The pipeline config of one supervision type on the demo data (training crops = the image size).

    ``box_fraction`` makes a ``hybrid`` config whose summary entry is ``hybrid_<fraction>``.
    """
    config: Dict[str, Any] = {"name": f"demo-{supervision}", "supervision": supervision,
                              "dataset": {"root": str(data_root), "name": "synthetic"}, "progress_bar": progress,
                              "data": {"crop_size": min(size, 112)}, "stages": DEMO_STAGES}
    if box_fraction is not None:
        config.update(supervision="hybrid", name=f"demo-hybrid-{box_fraction:g}", summary_key=f"hybrid_{box_fraction:g}",
                      hybrid={"box_fraction": float(box_fraction)})
    if config["supervision"] in DEMO_ORDERS:
        config["order"] = list(DEMO_ORDERS[config["supervision"]])
    if quick:
        config = deep_merge(config, QUICK_OVERRIDES)
    return config


def method_config(data_root: Path, method: str, quick: bool, progress: bool, size: int = 128) -> Dict[str, Any]:
    """The pipeline config of a demo method: the demo's image pipeline with the method's settings, in the stage
    order of the method's config, else of ``presets.yaml``'s image pipeline (the walk)."""
    config = demo_config(data_root, "image", quick, progress, size)
    config.pop("order")
    config = deep_merge(config, method_overrides(method))
    return deep_merge(config, {"name": f"demo-{method}", "summary_key": method})


def default_jobs(num_runs: int) -> int:
    """``wsss demo``'s parallel runs: one per owned core, at most ``num_runs``."""
    return max(1, min(num_runs, owned_cores()))


def run_demo(out: str, data: Optional[str] = None, num_train: Optional[int] = None, num_val: Optional[int] = None,
             size: Optional[int] = None, supervisions: Sequence[str] = ("image", "box", "full"), quick: bool = False,
             progress: bool = True, curve: Sequence[float] = (), methods: Sequence[str] = (),
             segmenter_seeds: Sequence[int] = (), jobs: int = 1) -> Dict[str, Any]:
    """Generate the synthetic set if needed, run the pipelines, print the table, write the report.

    ``curve``: box fractions of ``hybrid`` runs added after the supervisions (``wsss demo --curve`` runs
    :data:`CURVE_FRACTIONS`); they share their image-label stages, and the report plots their val mIoU
    against annotation hours. ``methods``: keys of :data:`METHODS` run as image pipelines.
    ``segmenter_seeds``: every run also trains its final segmenter with these seeds (the seed-to-seed spread of
    its val mIoU goes to the summary and the table). ``jobs`` > 1: the supervision types run side by side as
    separate ``wsss pipeline`` processes (:mod:`.parallel_runs`; same figures, logs under ``out/logs``).

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
    if jobs > 1 and len(supervisions) > 1:
        runs = [(supervision, demo_config(data_root, supervision, quick, False, params["size"]))
                for supervision in supervisions]
        run_in_processes(runs, out_dir, jobs, segmenter_seeds)
        summary = read_summary(out_dir / "summary.json")
    else:
        for supervision in supervisions:
            print(f"\n=== {supervision} supervision ===")
            summary = run_pipeline(demo_config(data_root, supervision, quick, progress, params["size"]), out_dir,
                                   segmenter_seeds=segmenter_seeds)
    for method in methods:
        print(f"\n=== {method} ===")
        summary = run_pipeline(method_config(data_root, method, quick, progress, params["size"]), out_dir,
                               segmenter_seeds=segmenter_seeds)
    for fraction in curve:
        print(f"\n=== hybrid supervision, box fraction {fraction:g} ===")
        summary = run_pipeline(demo_config(data_root, "hybrid", quick, progress, params["size"], fraction), out_dir,
                               segmenter_seeds=segmenter_seeds)
    print("\n" + format_table(summary))
    report = write_report(out_dir, summary, demo_galleries(summary, data_root))
    print(f"\nsummary: {out_dir / 'summary.json'}\nreport:  {report}\ntotal wall time: {time.perf_counter() - start:.0f} s")
    return summary
