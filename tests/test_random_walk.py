"""Tests for lightning_wsss.refine.random_walk (checked against explicit dense N x N matrices)."""

from __future__ import annotations

import resource
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_wsss.cam import add_background
from lightning_wsss.refine.affinity_labels import neighbor_offsets
from lightning_wsss.refine.random_walk import (
    affinity_from_features,
    apply_transition,
    irn_scores,
    irn_walk,
    propagate_to_labels,
    random_walk,
    transition_matrix,
    walk_snapshots,
)

METHODS = ["shift", "sparse"]


def dense_affinity(aff: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Loop reference: symmetric [N, N] affinity of one image (self loops = 1), aff [P, h, w]."""
    _, h, w = aff.shape
    n = h * w
    a = np.eye(n)
    for p, (dy, dx) in enumerate(offsets):
        for y in range(h):
            for x in range(w):
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w:
                    i, j = y * w + x, ny * w + nx
                    a[i, j] = a[j, i] = aff[p, y, x]
    return a


def psa_random_walk(cams: np.ndarray, aff: np.ndarray, offsets: np.ndarray, beta: float, log_t: int):
    """PSA's formulation: trans = A^beta / colsum, squared log_t times, cam_vec @ trans."""
    c, h, w = cams.shape
    a = dense_affinity(aff, offsets) ** beta
    trans = a / a.sum(0, keepdims=True)
    for _ in range(log_t):
        trans = trans @ trans
    return (cams.reshape(c, -1) @ trans).reshape(c, h, w)


def random_inputs(b=2, c=3, h=8, w=8, radius=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    offsets = neighbor_offsets(radius)
    feats = torch.randn(b, 4, h, w, generator=g, dtype=dtype)
    aff = affinity_from_features(feats, offsets)
    cams = torch.rand(b, c, h, w, generator=g, dtype=dtype)
    return cams, aff, offsets


def test_affinity_from_features_against_loops():
    offsets = neighbor_offsets(3)
    feats = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    aff = affinity_from_features(feats, offsets)
    assert aff.shape == (2, len(offsets), 4, 6)
    for b in range(2):
        for p, (dy, dx) in enumerate(offsets.tolist()):
            for y in range(4):
                for x in range(6):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < 4 and 0 <= nx < 6:
                        ref = torch.exp(-(feats[b, :, y, x] - feats[b, :, ny, nx]).abs().mean())
                    else:
                        ref = torch.tensor(0.0, dtype=torch.float64)
                    assert torch.allclose(aff[b, p, y, x], ref)


def test_affinity_from_features_is_differentiable():
    feats = torch.randn(1, 3, 5, 5, requires_grad=True)
    affinity_from_features(feats, neighbor_offsets(2)).sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()


def transition_to_dense(trans) -> np.ndarray:
    """Scatter the offset-form weights of batch item 0 into [N, N] by loops."""
    _, q, h, w = trans.weights.shape
    dense = np.zeros((h * w, h * w))
    for k, (dy, dx) in enumerate(trans.offsets.tolist()):
        for y in range(h):
            for x in range(w):
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w:
                    dense[y * w + x, ny * w + nx] += trans.weights[0, k, y, x].item()
                else:
                    assert trans.weights[0, k, y, x].item() == 0.0
    return dense


def test_transition_matrix_rows_sum_to_one_and_match_dense():
    cams, aff, offsets = random_inputs(b=1, h=6, w=7)
    trans = transition_matrix(aff, offsets, beta=3.0)
    assert trans.weights.shape == (1, 2 * len(offsets) + 1, 6, 7)
    torch.testing.assert_close(trans.weights.sum(1), torch.ones(1, 6, 7, dtype=torch.float64))
    dense = transition_to_dense(trans)
    a = dense_affinity(aff[0].numpy(), offsets.numpy()) ** 3.0
    np.testing.assert_allclose(dense, a / a.sum(1, keepdims=True), rtol=1e-10, atol=1e-12)


def test_transition_matrix_is_symmetric_up_to_degree():
    """T = D^-1 A with self loop 1 -> deg_i = 1 / T_ii and D T must be symmetric."""
    _, aff, offsets = random_inputs(b=1, h=5, w=6, seed=4)
    dense = transition_to_dense(transition_matrix(aff, offsets, beta=2.0))
    a = dense / np.diag(dense)[:, None]
    np.testing.assert_allclose(a, a.T, rtol=1e-10)


def test_transition_ignores_out_of_map_affinities():
    _, aff, offsets = random_inputs(b=1, h=5, w=5)
    polluted = torch.ones_like(aff)  # also 1 where the partner is outside the map
    clean = polluted * (aff > 0)
    torch.testing.assert_close(
        transition_matrix(polluted, offsets).weights, transition_matrix(clean, offsets).weights
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("log_t", [0, 3, 8])
def test_random_walk_matches_dense_psa_reference(method, log_t):
    cams, aff, offsets = random_inputs(b=2, c=3, h=8, w=8, radius=3)
    out = random_walk(cams, aff, offsets, beta=4.0, log_t=log_t, method=method)
    assert out.shape == cams.shape and out.dtype == torch.float64
    for b in range(2):
        ref = psa_random_walk(cams[b].numpy(), aff[b].numpy(), offsets.numpy(), 4.0, log_t)
        np.testing.assert_allclose(out[b].numpy(), ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_random_walk_float32_and_non_power_of_two_steps(method):
    cams, aff, offsets = random_inputs(b=1, c=2, h=8, w=8, radius=5)
    out = random_walk(cams.float(), aff.float(), offsets, beta=8.0, t=37, method=method)
    a = dense_affinity(aff[0].numpy(), offsets.numpy()) ** 8.0
    t = np.linalg.matrix_power(a / a.sum(1, keepdims=True), 37)
    ref = (t @ cams[0].numpy().reshape(2, -1).T).T.reshape(2, 8, 8)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=1e-4, atol=1e-5)


def dense_walk(cams: np.ndarray, aff: np.ndarray, offsets: np.ndarray, beta: float, t: int) -> np.ndarray:
    """(D^-1 A^beta)^t applied to every channel of cams [C, h, w], with a dense [N, N] matrix."""
    c, h, w = cams.shape
    a = dense_affinity(aff, offsets) ** beta
    trans = np.linalg.matrix_power(a / a.sum(1, keepdims=True), t)
    return (trans @ cams.reshape(c, -1).T).T.reshape(c, h, w)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("normalize", ["class", "global"])
def test_irn_walk_matches_dense_foreground_only_walk(method, normalize):
    """irn: the foreground alone is walked, each map divided by its max (or the image's), background after."""
    cams, aff, offsets = random_inputs(b=2, c=2, h=7, w=8, radius=3, seed=3)
    cams[:, 1] *= 0.2  # a faint class: per-class normalisation gives it back its full range
    out = irn_walk(cams, aff, offsets, beta=6.0, t=5, bg_threshold=0.4, normalize=normalize, method=method)
    assert out.shape == (2, 3, 7, 8)
    for b in range(2):
        walked = dense_walk(cams[b].numpy(), aff[b].numpy(), offsets.numpy(), 6.0, 5)
        top = walked.max(axis=(1, 2), keepdims=True) if normalize == "class" else walked.max()
        ref = np.concatenate([np.full((1, 7, 8), 0.4), walked / top])
        np.testing.assert_allclose(out[b].numpy(), ref, rtol=1e-8, atol=1e-10)
    if normalize == "class":
        assert torch.allclose(out[:, 1:].amax(dim=(2, 3)), torch.ones(2, 2, dtype=out.dtype))


@pytest.mark.parametrize("method", METHODS)
def test_psa_and_irn_walks_differ_only_in_the_background(method):
    """psa walks (1 - max)^alpha with the classes; irn never walks a background, so its classes are the walk's."""
    cams, aff, offsets = random_inputs(b=1, c=2, h=6, w=6, radius=3, seed=4)
    psa = random_walk(add_background(cams, "power", alpha=16.0), aff, offsets, beta=8.0, t=3, method=method)
    irn = irn_walk(cams, aff, offsets, beta=8.0, t=3, bg_threshold=0.25, method=method)
    walked_fg = psa[:, 1:]
    torch.testing.assert_close(irn[:, 1:], walked_fg / walked_fg.amax(dim=(2, 3), keepdim=True))
    assert torch.all(irn[:, 0] == 0.25)


def test_irn_scores_without_foreground_is_background():
    out = irn_scores(torch.zeros(2, 0, 3, 4), bg_threshold=0.3)
    assert out.shape == (2, 1, 3, 4) and torch.all(out == 0.3)
    assert irn_walk(torch.zeros(1, 0, 5, 5), torch.rand(1, 12, 5, 5), neighbor_offsets(3)).argmax(1).eq(0).all()
    with pytest.raises(ValueError):
        irn_scores(torch.rand(1, 2, 3, 3), normalize="max")


@pytest.mark.parametrize("method", METHODS)
def test_walk_snapshots_equal_separate_walks(method):
    cams, aff, offsets = random_inputs(b=1, c=2, h=6, w=7, radius=3, seed=5)
    snaps = walk_snapshots(cams, aff, offsets, [8, 0, 3, 3], beta=5.0, method=method)
    assert sorted(snaps) == [0, 3, 8]
    torch.testing.assert_close(snaps[0], cams)
    for t in (3, 8):
        torch.testing.assert_close(snaps[t], random_walk(cams, aff, offsets, beta=5.0, t=t, method=method))
    with pytest.raises(ValueError):
        walk_snapshots(cams, aff, offsets, [-1])


def test_constant_map_is_a_fixed_point():
    """The walk averages neighbours (pull direction): constants are preserved."""
    _, aff, offsets = random_inputs(b=1, h=6, w=6)
    trans = transition_matrix(aff, offsets, beta=8.0)
    const = torch.full((1, 2, 6, 6), 0.3, dtype=torch.float64)
    torch.testing.assert_close(apply_transition(trans, const), const)


def test_random_walk_rejects_mismatched_inputs():
    cams, aff, offsets = random_inputs()
    with pytest.raises(ValueError):
        random_walk(cams[:, :, :4], aff, offsets)
    with pytest.raises(ValueError):
        random_walk(cams, aff, offsets[:-1])
    with pytest.raises(ValueError):
        random_walk(cams, aff, offsets, method="dense")


def test_add_background_power_mode_is_psa_background():
    cams = torch.rand(2, 3, 4, 5)
    out = add_background(cams, "power", alpha=16)
    assert out.shape == (2, 4, 4, 5)
    expected = (1 - cams.numpy().max(1)) ** 16
    np.testing.assert_allclose(out[:, 0].numpy(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out[:, 1:], cams)
    assert add_background(cams[:, :0], "power", alpha=16).eq(1).all()  # no class present: all background


@pytest.mark.parametrize("method", METHODS)
def test_propagate_to_labels_matches_dense_reference(method):
    cams, aff, offsets = random_inputs(b=1, c=3, h=8, w=8, radius=3)
    labels = propagate_to_labels(cams, aff, offsets, size=(30, 27), beta=4.0, log_t=2, method=method)
    assert labels.shape == (1, 30, 27) and labels.dtype == torch.long
    ref = psa_random_walk(cams[0].numpy(), aff[0].numpy(), offsets.numpy(), 4.0, 2)
    up = F.interpolate(torch.from_numpy(ref)[None], size=(30, 27), mode="bilinear", align_corners=False)
    torch.testing.assert_close(labels, up.argmax(1))


def test_walk_spreads_seed_within_region_not_across_edge():
    """Affinity 1 inside two halves and ~0 across: a seed fills its own half only."""
    h, w = 12, 12
    offsets = neighbor_offsets(3)
    region = torch.zeros(1, 1, h, w)
    region[..., :, w // 2 :] = 1.0
    feats = region * 50.0  # exp(-50) across the edge
    aff = affinity_from_features(feats, offsets)
    cams = torch.full((1, 2, h, w), 0.0)
    cams[0, 0] = 0.002  # weak background everywhere
    cams[0, 1, 5, 2] = 1.0  # one seed in the left half: its mass spreads to ~1/72 per pixel
    labels = propagate_to_labels(cams, aff, offsets, size=(h, w), beta=8.0, log_t=8)
    assert (labels[0, :, : w // 2] == 1).all()
    assert (labels[0, :, w // 2 :] == 0).all()


_WALK_128 = """
import sys, torch
from lightning_wsss.refine.affinity_labels import neighbor_offsets
from lightning_wsss.refine.random_walk import affinity_from_features, random_walk
torch.set_num_threads(1)
offsets = neighbor_offsets(5)
g = torch.Generator().manual_seed(0)
aff = affinity_from_features(torch.randn(1, 8, 128, 128, generator=g), offsets)
cams = torch.rand(1, 4, 128, 128, generator=g)
out = random_walk(cams, aff, offsets, beta=8.0, log_t=8, method=sys.argv[1])
assert out.shape == cams.shape and torch.isfinite(out).all()
assert out.min() >= cams.min() - 1e-5 and out.max() <= cams.max() + 1e-5  # averages only
# peak RSS of this process image: VmHWM is reset by exec (ru_maxrss is not: it keeps the forking parent's)
status = "/proc/self/status"
print(next(int(line.split()[1]) for line in open(status) if line.startswith("VmHWM:")) if sys.platform.startswith("linux") else 0)
"""


@pytest.mark.parametrize("method", METHODS)
def test_random_walk_128x128_radius5_on_cpu(method):
    # a fresh process, so the peak memory is the walk's (plus the torch import), not the test session's
    import subprocess

    result = subprocess.run([sys.executable, "-c", _WALK_128, method], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    if sys.platform.startswith("linux"):  # VmHWM in KiB
        peak_gib = int(result.stdout.strip().splitlines()[-1]) / 2**20
        assert peak_gib < 2.0
