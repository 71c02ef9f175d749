"""Affinity separation: do learnt affinities keep regions together and boundaries apart?

The AffinityNet loss falls on the *confident* pairs it trains on and says little about the walk. What the walk
needs is that ``a^beta`` is high between two pixels of one region and low across a region boundary: psa/irn walk
``D^-1 A^beta``, so background spreads into an object when ``a^beta`` across their boundary is not far below
``a^beta`` inside the object. :func:`affinity_separation` measures exactly that on ground-truth masks: the mean
``a^beta`` of pixel pairs (within the walk's offsets) inside one region and across a boundary.
"""

from __future__ import annotations

from typing import Dict

import torch

from .affinity_labels import in_map_mask, shift_map
from .crf import IGNORE_INDEX

__all__ = ["SEPARATION_KEYS", "affinity_separation_sums", "affinity_separation"]

#: ``bg``: both pixels background; ``fg``: both the same foreground class; ``same``: the same label (bg + fg);
#: ``cross``: two different labels (a region boundary lies between them).
SEPARATION_KEYS = ("bg", "fg", "same", "cross")


def affinity_separation_sums(aff: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor,
                             beta: float = 8.0) -> Dict[str, torch.Tensor]:
    """Sums and counts of ``a^beta`` per pair kind, for exact means over many batches.

    Args:
        aff: float tensor [B, P, h, w]; ``aff[b, p, y, x]`` joins (y, x) and (y + dy_p, x + dx_p).
        labels: integer tensor [B, h, w] at the affinity resolution (255 = unknown: pairs touching it are left
            out, as are pairs whose partner is outside the map).
        offsets: LongTensor [P, 2] of (dy, dx).
        beta: the walk's exponent.

    Returns:
        ``{"sum": float64 [4], "count": int64 [4]}`` in the order of :data:`SEPARATION_KEYS`.
    """
    if aff.dim() != 4 or labels.dim() != 3 or aff.shape[0] != labels.shape[0] or aff.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"aff [B, P, h, w] and labels [B, h, w] must agree, got {tuple(aff.shape)} and "
                         f"{tuple(labels.shape)}")
    offsets = torch.as_tensor(offsets, dtype=torch.long).cpu()
    if offsets.dim() != 2 or offsets.shape != (aff.shape[1], 2):
        raise ValueError(f"offsets must be [{aff.shape[1]}, 2], got {tuple(offsets.shape)}")
    lab = labels.long()
    h, w = lab.shape[-2:]
    inside = in_map_mask(h, w, offsets, device=lab.device)
    powered = aff.detach().double().clamp_min(0).pow(beta)
    sums = torch.zeros(4, dtype=torch.float64, device=aff.device)
    counts = torch.zeros(4, dtype=torch.int64, device=aff.device)
    known = lab != IGNORE_INDEX
    for p, (dy, dx) in enumerate(offsets.tolist()):
        other = shift_map(lab, dy, dx, fill=IGNORE_INDEX)
        valid = known & (other != IGNORE_INDEX) & inside[p]
        same = valid & (lab == other)
        kinds = (same & (lab == 0), same & (lab != 0), same, valid & (lab != other))
        values = powered[:, p]
        for k, kind in enumerate(kinds):
            sums[k] += values[kind].sum()
            counts[k] += kind.sum()
    return {"sum": sums, "count": counts}


def affinity_separation(aff: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor,
                        beta: float = 8.0) -> Dict[str, float]:
    """Mean ``a^beta`` of background, same-object, same-region and cross-boundary pairs.

    Returns:
        ``{"bg", "fg", "same", "cross"}`` floats (NaN for a kind without pairs) and ``"ratio"`` = same / cross
        (how many times more easily the walk moves inside a region than across a boundary).
    """
    return separation_means(affinity_separation_sums(aff, labels, offsets, beta))


def separation_means(sums: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """The means (and the same / cross ratio) of accumulated :func:`affinity_separation_sums`."""
    total, count = sums["sum"].double().cpu(), sums["count"].cpu()
    means = {key: (float(total[k] / count[k]) if int(count[k]) > 0 else float("nan"))
             for k, key in enumerate(SEPARATION_KEYS)}
    cross = means["cross"]
    means["ratio"] = means["same"] / cross if cross > 0 else float("nan")
    return means
