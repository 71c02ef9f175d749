"""Sparse random walk over a local neighbourhood (PSA / IRN style CAM propagation).

The transition matrix of PSA is ``T = D^-1 A^beta`` where ``A`` is symmetric with
non-zeros only between pixels closer than ``radius`` (plus a self loop of
affinity 1). It is never built densely here: it is stored as one weight map per
neighbour offset, ``weights[b, q, y, x] = T[(y, x), (y, x) + offset_q]``, i.e.
``O(N * r^2)`` memory instead of ``O(N^2)``.

Direction. PSA computes ``cam_rw = cam_vec @ (A D^-1)^t`` with ``cam_vec`` [C, N];
since ``A`` is symmetric that equals ``((D^-1 A)^t cam_vec^T)^T``: every pixel's new
score is the affinity-weighted *average* of its neighbours' scores (rows of
``D^-1 A`` sum to 1, so each pixel "pulls" from its neighbours; a constant map is
a fixed point). That is what :func:`apply_transition` does. The other direction
(``T^T`` applied to a column vector, "push") would conserve the total score mass
instead and inflate pixels with high degree, which is not what PSA/IRN use.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from lightning_wsss.refine.affinity_labels import in_map_mask, neighbor_offsets, shift_map
from lightning_wsss.tensors import channel_argmax

__all__ = [
    "Transition",
    "affinity_from_features",
    "transition_matrix",
    "apply_transition",
    "random_walk",
    "walk_snapshots",
    "irn_scores",
    "irn_walk",
    "propagate_to_labels",
    "neighbor_offsets",
]

Method = Literal["shift", "sparse"]


@dataclass(frozen=True)
class Transition:
    """Row-stochastic local transition matrix in offset form.

    Attributes:
        weights: float tensor [B, Q, h, w]; ``weights[b, q, y, x]`` is the probability of
            pixel (y, x) pulling from pixel ``(y + dy_q, x + dx_q)``; 0 outside the map.
            Sums to 1 over q.
        offsets: LongTensor [Q, 2] of (dy, dx): ``(0, 0)`` first, then the P half-disk
            offsets, then their mirrors (Q = 2P + 1).
    """

    weights: torch.Tensor
    offsets: torch.Tensor

    @property
    def radius(self) -> int:
        """Largest |dy| or |dx| among the offsets (the padding needed to apply it)."""
        return int(self.offsets.abs().max().item())


def _check_offsets(offsets: torch.Tensor) -> torch.Tensor:
    offsets = torch.as_tensor(offsets, dtype=torch.long)
    if offsets.dim() != 2 or offsets.shape[1] != 2:
        raise ValueError(f"offsets must be [P, 2] (dy, dx), got {tuple(offsets.shape)}")
    return offsets.cpu()


def affinity_from_features(feats: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """PSA affinity ``a_ij = exp(-mean_d |f_i - f_j|)`` for each pixel and offset.

    Differentiable (use it in the affinity-net training step too).

    Args:
        feats: float tensor [B, D, h, w].
        offsets: LongTensor [P, 2] of (dy, dx), e.g. :func:`neighbor_offsets`.

    Returns:
        float tensor [B, P, h, w] in (0, 1]; entry ``(b, p, y, x)`` is the affinity between
        (y, x) and (y + dy_p, x + dx_p), 0 where that partner is outside the map.
    """
    if feats.dim() != 4:
        raise ValueError(f"feats must be [B, D, h, w], got {tuple(feats.shape)}")
    offsets = _check_offsets(offsets)
    h, w = feats.shape[-2:]
    out = []
    for dy, dx in offsets.tolist():
        other = shift_map(feats, dy, dx, fill=0)
        out.append(torch.exp(-(feats - other).abs().mean(dim=1)))
    aff = torch.stack(out, dim=1)
    mask = in_map_mask(h, w, offsets, device=feats.device)
    return aff * mask.unsqueeze(0).to(aff.dtype)


def transition_matrix(
    aff: torch.Tensor, offsets: torch.Tensor, beta: float = 8.0
) -> Transition:
    """Symmetric, row-normalised transition ``T = D^-1 A^beta`` in offset form.

    ``A`` holds ``aff`` for each stored pair in both directions plus a self loop of
    affinity 1; entries whose partner is outside the map are zeroed whatever ``aff``
    holds there.

    Args:
        aff: float tensor [B, P, h, w] (pair (y, x) <-> (y + dy_p, x + dx_p)), values >= 0.
        offsets: LongTensor [P, 2]: the half-disk offsets ``aff`` was computed for.
            Must not contain (0, 0) nor both an offset and its mirror.
        beta: exponent applied to the affinities (PSA: 8).

    Returns:
        :class:`Transition` with weights [B, 2P+1, h, w] (rows sum to 1).
    """
    offsets = _check_offsets(offsets)
    if aff.dim() != 4 or aff.shape[1] != offsets.shape[0]:
        raise ValueError(
            f"aff must be [B, P, h, w] with P = {offsets.shape[0]} offsets, got {tuple(aff.shape)}"
        )
    pairs = {tuple(o) for o in offsets.tolist()}
    if (0, 0) in pairs or any((-dy, -dx) in pairs for dy, dx in pairs) or len(pairs) != len(offsets):
        raise ValueError("offsets must be distinct, non-zero and contain no mirrored pair")
    h, w = aff.shape[-2:]
    mask = in_map_mask(h, w, offsets, device=aff.device).unsqueeze(0)
    fwd = aff.clamp_min(0).pow(beta) * mask.to(aff.dtype)
    # The mirrored pair (y, x) <-> (y - dy, x - dx) is stored at the partner pixel.
    bwd = torch.stack(
        [shift_map(fwd[:, p], -dy, -dx, fill=0) for p, (dy, dx) in enumerate(offsets.tolist())],
        dim=1,
    )
    self_loop = torch.ones_like(aff[:, :1])
    a = torch.cat([self_loop, fwd, bwd], dim=1)
    weights = a / a.sum(dim=1, keepdim=True)
    all_offsets = torch.cat([torch.zeros(1, 2, dtype=torch.long), offsets, -offsets], dim=0)
    return Transition(weights=weights, offsets=all_offsets)


def apply_transition(trans: Transition, x: torch.Tensor) -> torch.Tensor:
    """One step ``x <- T x`` (each pixel takes the weighted average of its neighbours).

    Args:
        trans: :class:`Transition` with weights [B, Q, h, w].
        x: float tensor [B, C, h, w].

    Returns:
        float tensor [B, C, h, w].
    """
    r = trans.radius
    h, w = x.shape[-2:]
    xp = F.pad(x, (r, r, r, r))
    out = torch.zeros_like(x)
    wts = trans.weights.unsqueeze(2)  # [B, Q, 1, h, w]
    for q, (dy, dx) in enumerate(trans.offsets.tolist()):
        out.addcmul_(wts[:, q], xp[:, :, r + dy : r + dy + h, r + dx : r + dx + w])
    return out


def _to_sparse(trans: Transition) -> torch.Tensor:
    """Block-diagonal CSR matrix [B*N, B*N] of the transition (N = h*w)."""
    wts = trans.weights
    b, q, h, w = wts.shape
    n = h * w
    dev = wts.device
    offs = trans.offsets.to(dev)
    ys = torch.arange(h, device=dev).view(1, 1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, 1, w)
    ny = ys + offs[:, 0].view(1, q, 1, 1)
    nx = xs + offs[:, 1].view(1, q, 1, 1)
    base = (torch.arange(b, device=dev) * n).view(b, 1, 1, 1)
    rows = (base + ys * w + xs).expand(b, q, h, w)
    cols = base + ny * w + nx
    keep = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    keep = keep.expand(b, q, h, w)
    idx = torch.stack([rows[keep], cols.expand(b, q, h, w)[keep]])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        coo = torch.sparse_coo_tensor(
            idx, wts[keep], (b * n, b * n), check_invariants=False
        ).coalesce()
        return coo.to_sparse_csr()


def random_walk(
    cams: torch.Tensor,
    aff: torch.Tensor,
    offsets: torch.Tensor,
    beta: float = 8.0,
    t: Optional[int] = None,
    log_t: int = 8,
    method: Method = "sparse",
) -> torch.Tensor:
    """Propagate scores with ``t`` steps of the random walk: ``(D^-1 A^beta)^t cams``.

    Runs on the device of the inputs; memory ``O(B * (C + 2P) * h * w)``.

    Args:
        cams: float tensor [B, C, h, w] (background channel included).
        aff: float tensor [B, P, h, w] pair affinities for ``offsets``.
        offsets: LongTensor [P, 2] half-disk offsets (see :func:`neighbor_offsets`).
        beta: affinity exponent.
        t: number of steps; default ``2 ** log_t`` (PSA: log_t = 8 -> 256 steps).
        log_t: used when ``t`` is None.
        method: ``"sparse"`` (default: the transition as a block-diagonal torch CSR matrix,
            ``t`` sparse-dense matmuls; ~7x faster on CPU) or ``"shift"`` (``t`` rounds of
            shifted-tensor products, no sparse kernels needed). Same result; see
            ``benchmarks/random_walk.py``.

    Returns:
        float tensor [B, C, h, w] (dtype: promotion of the cams and aff dtypes).
    """
    if cams.dim() != 4 or aff.dim() != 4:
        raise ValueError(f"cams and aff must be 4-D, got {tuple(cams.shape)} and {tuple(aff.shape)}")
    if cams.shape[0] != aff.shape[0] or cams.shape[-2:] != aff.shape[-2:]:
        raise ValueError(
            f"cams {tuple(cams.shape)} and aff {tuple(aff.shape)} disagree on batch or map size"
        )
    steps = 2**log_t if t is None else int(t)
    return walk_snapshots(cams, aff, offsets, [steps], beta=beta, method=method)[steps]


def walk_snapshots(
    cams: torch.Tensor,
    aff: torch.Tensor,
    offsets: torch.Tensor,
    steps: Sequence[int],
    beta: float = 8.0,
    method: Method = "sparse",
) -> Dict[int, torch.Tensor]:
    """The walk ``(D^-1 A^beta)^t cams`` for every ``t`` in ``steps``, from one walk of ``max(steps)`` steps.

    Used by the walk sweep (``wsss sweep-walk``): scoring 4, 8, ..., 256 steps costs one 256-step walk.

    Args:
        cams, aff, offsets, beta, method: as in :func:`random_walk`.
        steps: numbers of steps (>= 0, any order, repeats allowed).

    Returns:
        ``{t: float tensor [B, C, h, w]}`` for each distinct ``t``.
    """
    if cams.dim() != 4 or aff.dim() != 4:
        raise ValueError(f"cams and aff must be 4-D, got {tuple(cams.shape)} and {tuple(aff.shape)}")
    if cams.shape[0] != aff.shape[0] or cams.shape[-2:] != aff.shape[-2:]:
        raise ValueError(
            f"cams {tuple(cams.shape)} and aff {tuple(aff.shape)} disagree on batch or map size"
        )
    wanted = sorted({int(s) for s in steps})
    if not wanted or wanted[0] < 0:
        raise ValueError(f"steps must be >= 0, got {list(steps)}")
    if method not in ("shift", "sparse"):
        raise ValueError(f"method must be 'shift' or 'sparse', got {method!r}")
    dtype = torch.promote_types(cams.dtype, aff.dtype) if cams.is_floating_point() else aff.dtype
    x = cams.to(dtype)
    trans = transition_matrix(aff.to(dtype), offsets, beta)
    out: Dict[int, torch.Tensor] = {}
    if method == "shift":
        step = lambda v: apply_transition(trans, v)  # noqa: E731
        to_map = lambda v: v  # noqa: E731
        v = x
    else:
        b, c, h, w = x.shape
        mat = _to_sparse(trans)
        step = lambda v: mat @ v  # noqa: E731
        to_map = lambda v: v.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        v = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
    done = 0
    for target in wanted:
        for _ in range(target - done):
            v = step(v)
        done = target
        out[target] = to_map(v) if method == "sparse" or target != 0 else v.clone()
    return out


def irn_scores(walked_fg: torch.Tensor, bg_threshold: float = 0.25, normalize: str = "class",
               eps: float = 1e-5) -> torch.Tensor:
    """IRN's scores after a foreground-only walk: normalised class maps and a constant background channel.

    IRN (``make_sem_seg_labels.py``) walks the foreground CAMs only, divides the walked maps by their maximum and
    prepends the background threshold *after* the walk, so a weak affinity map cannot spread a strong background
    over an object (psa walks ``(1 - max cam) ** alpha`` with the classes, and a background that diffuses more
    easily than an object fills itself wins).

    Args:
        walked_fg: float tensor [B, K, h, w], the walked foreground scores (K may be 0).
        bg_threshold: the constant background score (IRN: 0.25).
        normalize: ``"class"``: each class map divided by its own maximum (a faint class keeps its extent);
            ``"global"``: all maps of an image divided by their common maximum (IRN's code).
        eps: floor of the divisor.

    Returns:
        float tensor [B, K+1, h, w], background (the constant) at channel 0.
    """
    if walked_fg.dim() != 4:
        raise ValueError(f"walked_fg must be [B, K, h, w], got {tuple(walked_fg.shape)}")
    b, k, h, w = walked_fg.shape
    bg = walked_fg.new_full((b, 1, h, w), float(bg_threshold))
    if k == 0:
        return bg
    if normalize == "class":
        top = walked_fg.amax(dim=(2, 3), keepdim=True)
    elif normalize == "global":
        top = walked_fg.amax(dim=(1, 2, 3), keepdim=True)
    else:
        raise ValueError(f"normalize must be 'class' or 'global', got {normalize!r}")
    return torch.cat([bg, walked_fg / top.clamp_min(eps)], dim=1)


def irn_walk(
    cams_fg: torch.Tensor,
    aff: torch.Tensor,
    offsets: torch.Tensor,
    beta: float = 8.0,
    t: Optional[int] = None,
    log_t: int = 8,
    bg_threshold: float = 0.25,
    normalize: str = "class",
    method: Method = "sparse",
) -> torch.Tensor:
    """IRN-style propagation: walk the foreground CAMs only, normalise, then the background threshold.

    Args:
        cams_fg: float tensor [B, K, h, w] (no background channel).
        aff, offsets, beta, t, log_t, method: as in :func:`random_walk`.
        bg_threshold, normalize: as in :func:`irn_scores`.

    Returns:
        float tensor [B, K+1, h, w] (channel 0 = the constant background); argmax gives the labels.
    """
    if cams_fg.shape[1] == 0:
        return irn_scores(cams_fg, bg_threshold, normalize)
    walked = random_walk(cams_fg, aff, offsets, beta=beta, t=t, log_t=log_t, method=method)
    return irn_scores(walked, bg_threshold, normalize)


def propagate_to_labels(
    cams_with_bg: torch.Tensor,
    aff: torch.Tensor,
    offsets: torch.Tensor,
    size: Tuple[int, int],
    beta: float = 8.0,
    t: Optional[int] = None,
    log_t: int = 8,
    method: Method = "sparse",
) -> torch.Tensor:
    """Random walk, bilinear upsampling to ``size`` and argmax.

    Args:
        cams_with_bg: float tensor [B, C, h, w] (channel 0 = background).
        aff, offsets, beta, t, log_t, method: as in :func:`random_walk`.
        size: output (H, W).

    Returns:
        LongTensor [B, H, W] of channel indices.
    """
    rw = random_walk(cams_with_bg, aff, offsets, beta=beta, t=t, log_t=log_t, method=method)
    up = F.interpolate(rw, size=tuple(size), mode="bilinear", align_corners=False)
    return channel_argmax(up, dim=1)
