"""Refinement core: dense CRF, bounds on its changes, affinity pseudo labels and the sparse random walk (pure
functions)."""

from lightning_wsss.refine.affinity_labels import (
    affinity_label_map_irn,
    affinity_label_map_psa,
    affinity_pairs,
    downsample_label_map,
    in_map_mask,
    neighbor_offsets,
    shift_map,
)
from lightning_wsss.refine.crf import (
    IRN_CRF_PARAMS,
    CRFParams,
    batch_crf,
    crf_from_labels,
    crf_from_probs,
    crf_labels,
    crf_params_for,
    scaled_crf_params,
)
from lightning_wsss.refine.label_bounds import bound_changes, keep_regions, limit_growth
from lightning_wsss.refine.random_walk import (
    Transition,
    affinity_from_features,
    apply_transition,
    propagate_to_labels,
    random_walk,
    transition_matrix,
)

__all__ = [
    "CRFParams",
    "IRN_CRF_PARAMS",
    "crf_from_probs",
    "crf_from_labels",
    "crf_labels",
    "batch_crf",
    "crf_params_for",
    "scaled_crf_params",
    "neighbor_offsets",
    "shift_map",
    "in_map_mask",
    "downsample_label_map",
    "affinity_label_map_psa",
    "affinity_label_map_irn",
    "affinity_pairs",
    "bound_changes",
    "limit_growth",
    "keep_regions",
    "Transition",
    "affinity_from_features",
    "transition_matrix",
    "apply_transition",
    "random_walk",
    "propagate_to_labels",
]
