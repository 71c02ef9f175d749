"""The affinity-separation metric on known answers, and its per-epoch logging by AffinityRefiner."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_wsss.refine.affinity_labels import neighbor_offsets
from lightning_wsss.refine.separation import affinity_separation, affinity_separation_sums


def test_separation_on_a_hand_computed_strip():
    # labels of a 1 x 4 strip: bg bg | obj obj, one right-neighbour offset: three pairs
    labels = torch.tensor([[[0, 0, 1, 1]]])
    offsets = torch.tensor([[0, 1]])
    aff = torch.tensor([[[[0.9, 0.5, 0.8, 0.3]]]])  # (0,1) bg-bg, (1,2) across, (2,3) obj-obj, the last: no partner
    out = affinity_separation(aff, labels, offsets, beta=2.0)
    assert out["bg"] == pytest.approx(0.81)
    assert out["cross"] == pytest.approx(0.25)
    assert out["fg"] == pytest.approx(0.64)
    assert out["same"] == pytest.approx((0.81 + 0.64) / 2)
    assert out["ratio"] == pytest.approx((0.81 + 0.64) / 2 / 0.25)


def test_separation_of_perfect_affinities_on_two_regions():
    """a = 1 inside a region and e^-1 across: same = 1, cross = e^-beta; pairs touching 255 are left out."""
    h, w = 6, 8
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[:, :, 4:] = 2
    labels[0, 0, 0] = 255
    offsets = neighbor_offsets(3)
    region = labels.clone()
    region[region == 255] = 0
    parts = []
    for dy, dx in offsets.tolist():
        other = torch.full_like(region, -1)
        ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
        other[:, ys, xs] = region[:, max(0, dy): min(h, h + dy), max(0, dx): min(w, w + dx)]
        parts.append(torch.where(other == region, 1.0, math.exp(-1.0)))
    aff = torch.stack(parts, 1)
    out = affinity_separation(aff, labels, offsets, beta=4.0)
    assert out["same"] == pytest.approx(1.0) and out["bg"] == pytest.approx(1.0) and out["fg"] == pytest.approx(1.0)
    assert out["cross"] == pytest.approx(math.exp(-4.0))
    sums = affinity_separation_sums(aff, labels, offsets, beta=4.0)
    # cross pairs: offsets whose partner lies on the other side of column 3|4, none touching the 255 pixel
    expected_cross = 0
    for dy, dx in offsets.tolist():
        for y in range(h):
            for x in range(w):
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and (y, x) != (0, 0) and (ny, nx) != (0, 0) and (x < 4) != (nx < 4):
                    expected_cross += 1
    assert int(sums["count"][3]) == expected_cross


def test_separation_without_pairs_is_nan_and_shapes_are_checked():
    out = affinity_separation(torch.rand(1, 4, 3, 3), torch.full((1, 3, 3), 255), neighbor_offsets(2), beta=8.0)
    assert all(math.isnan(out[k]) for k in ("bg", "fg", "same", "cross", "ratio"))
    with pytest.raises(ValueError):
        affinity_separation(torch.rand(1, 4, 3, 3), torch.zeros(1, 4, 3, dtype=torch.long), neighbor_offsets(2))
