"""Default stage configs: CPU-sized (the synthetic set at 128 px, tiny random-init backbones).

A pipeline YAML overrides any key of these (``stages: {classifier: {trainer: {max_epochs: 20}}}``); the VOC and
COCO configs in ``experiments/`` replace the models with ResNet-50 / DeepLabV3+ settings.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from .config import deep_merge

TINY_BACKBONE = "test_resnet"  # timm's 0.4 M-parameter ResNet: trains on 2 CPU cores in seconds per epoch
TINY_ENCODER = "tu-test_resnet"

DEFAULTS: Dict[str, Any] = {
    "seed": 0,
    "logger": "csv",
    "progress_bar": True,
    "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 10, "num_sanity_val_steps": 0},
    "data": {"batch_size": 16, "eval_batch_size": 16, "crop_size": 112, "scale_range": [0.8, 1.2], "num_workers": 0},
    "costs": {"box_protocol": "extreme_clicking"},
    # supervision: hybrid -- which training images carry boxes (box_fraction drawn with seed, or a box_list file
    # of ids), which initializer makes their masks, and whether their CAMs are restricted to their boxes
    "hybrid": {"box_fraction": 0.1, "seed": 0, "box_list": None, "box_source": "grabcut", "restrict_cams_to_boxes": False},
    "stages": {
        "classifier": {
            "model": {"class_path": "CAMClassifier", "init_args": {
                "backbone": TINY_BACKBONE, "output_stride": 16, "lr": 0.05, "head_lr_mult": 10.0}},
            "trainer": {"max_epochs": 12},
        },
        "cams": {"cam": {"cam_method": "cam", "cam_scales": [1.0, 0.5, 1.5, 2.0], "cam_flip": True,
                         "bg_mode": "constant", "bg_threshold": 0.15}},
        # AffinityNet starts from the trained classifier's backbone (init_from: classifier | imagenet | none), trains
        # at least min_steps optimiser steps (6 epochs of 400 images are 150; the demo takes 250, see demo.py), with
        # colour jitter, and validates on
        # the val masks every epoch: val/aff_same vs val/aff_cross say whether its affinities separate objects
        "affinity": {
            "labels": {"mode": "psa", "alpha_low": 4, "alpha_high": 32},
            "init_from": "classifier",
            "schedule": {"min_steps": 500},
            "data": {"color_jitter": 0.3},
            "model": {"class_path": "AffinityRefiner", "init_args": {
                "backbone": TINY_BACKBONE, "output_stride": 16, "feature_levels": [1, 2, 3], "embed_dim": 32, "lr": 0.05, "radius": 5}},
            "trainer": {"max_epochs": 6},
        },
        # walk: mode psa (the background (1 - max) ** bg_alpha walked with the classes) or irn (foreground only,
        # bg_threshold after the walk); t (steps) or log_t, else scaled to the map; `wsss sweep-walk` measures them
        # the best setting of `wsss sweep-walk` on the demo's first 100 training images (README "Refinement"):
        # irn's walk (foreground only, background threshold after the walk), beta 10, 2 ** 2 = 4 steps
        "random_walk": {"walk": {"mode": "irn", "beta": 10.0, "log_t": 2, "bg_threshold": 0.2, "bg_alpha": 16.0}},
        "box_init": {"initializers": ["filled", "grabcut", "crf"]},
        # BoxSup: a box's mask changes only when a candidate's cost is lower by more than replace_margin, both with
        # the network's cross-entropy leaving out the pixels within output_stride / 2 of the candidates' boundaries
        # (ce_ignore_band, the class default) and with every pixel counted (ce_confirm_unbanded), the term weighing
        # 1 (BoxSup: 3); measured with tools/boxsup_rules.py on the demo and the horses (README "Boxes"). The pool
        # holds the previous and initializer's masks, the proposals' (the filled box included), optionally the
        # network's CRF-refined prediction (crf_candidate) and GrabCut re-run from its mask (grabcut_candidate);
        # the round-0 initializer and the proposals take stages.box_init.kwargs unless BoxSup sets its own
        "boxsup": {
            "model": {"class_path": "BoxSupSegmenter", "init_args": {
                "initializer": "grabcut", "proposals": ["crf", "filled"], "crf_candidate": False, "round_epochs": 6,
                "replace_margin": 0.1, "grabcut_candidate": False, "ce_weight": 1.0, "ce_confirm_unbanded": True,
                "arch": "deeplabv3plus", "encoder": TINY_ENCODER, "output_stride": 16, "decoder_channels": 64,
                "lr": 0.05}},
            "trainer": {"max_epochs": 12},
        },
        "segmenter": {
            "model": {"class_path": "DeepLabSegmenter", "init_args": {
                "arch": "deeplabv3plus", "encoder": TINY_ENCODER, "output_stride": 16, "decoder_channels": 64,
                "lr": 0.05}},
            "trainer": {"max_epochs": 12},
        },
    },
}


def resolve(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config with the defaults filled in (a stage section naming a ``declaration`` of its own replaces the
    built-in stage of that name, and takes none of its defaults)."""
    resolved = deep_merge(DEFAULTS, config)
    for name, section in (config.get("stages") or {}).items():
        if isinstance(section, Mapping) and section.get("declaration") is not None:
            resolved["stages"][name] = deep_merge({}, section)
    return resolved
