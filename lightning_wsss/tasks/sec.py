"""SEC (Kolesnikov & Lampert, "Seed, Expand and Constrain: Three Principles for Weakly-Supervised Image
Segmentation", ECCV 2016) as a :class:`~lightning_wsss.tasks.segmenter.DeepLabSegmenter` loss.

The training batch's ``mask`` holds the *seeds* (a class, background included, where a localisation cue is
confident; 255 elsewhere; e.g. thresholded CAMs read by ``PseudoMaskDataModule``) and ``labels`` the image-level
labels. The loss is ``seed_weight * L_seed + expand_weight * L_expand + constrain_weight * L_constrain``:

* seeding: ``-1/|S| sum_{u in S} log p_u(s_u)`` over the seed pixels ``S`` of each image;
* expansion, by global weighted rank pooling (GWRP) of each class's probabilities (sorted decreasingly,
  weights ``d^j``): ``-1/|T| sum_{c in T} log G_c(d+) - 1/|A| sum_{c in A} log(1 - G_c(d-)) - log G_bg(d_bg)``
  with ``T`` the present foreground classes, ``A`` the absent ones and the background always present. The paper's
  decays: ``d+ = 0.996`` (present), ``d- = 0`` (absent: GWRP is then max pooling), ``d_bg = 0.999``;
* constrain: ``1/n sum_u KL(Q_u || p_u)`` with ``Q`` the dense-CRF marginals of the prediction on the
  (denormalised) image, computed with :func:`lightning_wsss.refine.crf.crf_from_probs`, no gradient through
  the CRF.

Resolution: as SEC (41x41 outputs for 321x321 crops), the three losses are computed on the logits downsampled
by ``loss_stride`` (bilinear; seeds by nearest neighbour, the image by area averaging for the CRF). The GWRP
decays are tuned to such ~41x41 maps, so each loss map's decays are rescaled to pool the same fraction of it
(:func:`scale_decay`, ``gwrp_reference_pixels``): unscaled, ``0.996 ** j`` pools a tiny fraction of a large map
and nearly all of a small one (14x14 for 112 px crops), where it asks every present class to cover the image. The CRF's spatial standard deviations default to
the :class:`~lightning_wsss.refine.crf.CRFParams` ones divided by ``loss_stride`` (SEC divides by its scale
factor likewise). Each image is cropped to its ``size`` first, so batch padding never enters a loss.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..datamodules.transforms import denormalize
from ..datasets.classes import IGNORE_INDEX
from ..refine.crf import CRFParams, crf_from_probs
from .segmenter import DeepLabSegmenter

__all__ = ["SECSegmenter", "gwrp", "scale_decay", "seeding_loss", "expansion_loss", "constrain_loss", "downsample_for_loss"]

LOG_EPS = 1e-5


# ----------------------------------------------------------------------------------------------- functional core
def gwrp(probs: Tensor, decay: float) -> Tensor:
    """Global weighted rank pooling over the spatial dimensions.

    ``G = sum_j d^j x_(j) / sum_j d^j`` with ``x_(0) >= x_(1) >= ...`` the sorted values (``d = 0``: max
    pooling; ``d = 1``: average pooling).

    Args:
        probs: float [..., H, W].
        decay: ``d`` in [0, 1].

    Returns:
        float [...].
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    flat = probs.flatten(-2)
    ordered = flat.sort(dim=-1, descending=True).values
    weights = torch.pow(torch.tensor(float(decay), dtype=ordered.dtype, device=ordered.device),
                        torch.arange(ordered.shape[-1], dtype=ordered.dtype, device=ordered.device))
    return (ordered * weights).sum(-1) / weights.sum()


def scale_decay(decay: float, num_pixels: int, reference_pixels: Optional[int]) -> float:
    """The GWRP decay for a map of ``num_pixels`` that pools the same *fraction* of the map as ``decay`` does on a
    map of ``reference_pixels``: ``decay ** (reference_pixels / num_pixels)`` (0 and 1 are kept; ``None``: as given).

    SEC's decays were chosen for 41x41 maps: ``0.996 ** j`` halves after about 173 of 1681 pixels (10 %). On a
    14x14 map the same decay weighs almost every pixel alike, i.e. it asks a present class to cover the whole
    image, against the seeds.
    """
    if reference_pixels is None or decay in (0.0, 1.0):
        return float(decay)
    return float(decay) ** (float(reference_pixels) / max(1, int(num_pixels)))


def seeding_loss(log_probs: Tensor, seeds: Tensor) -> Tensor:
    """SEC seeding loss of one image: ``-mean over seed pixels of log p(seed class)``.

    Args:
        log_probs: float [C, H, W] log-probabilities.
        seeds: long [H, W], class index or 255.

    Returns:
        scalar; 0 (with a gradient path) when the image has no seed.
    """
    valid = seeds != IGNORE_INDEX
    if not valid.any():
        return log_probs.sum() * 0.0
    picked = torch.gather(log_probs, 0, seeds.clamp(0, log_probs.shape[0] - 1)[None])[0]
    return -picked[valid].mean()


def expansion_loss(probs: Tensor, labels: Tensor, decay_present: float = 0.996, decay_absent: float = 0.0,
                   decay_background: float = 0.999) -> Tensor:
    """SEC expansion loss of one image.

    ``-mean_{c in T} log G_c(d+) - mean_{c in A} log(1 - G_c(d-)) - log G_0(d_bg)``; a term with an empty set
    is left out; logs are taken of values clamped to ``[1e-5, 1]``.

    Args:
        probs: float [C, H, W] probabilities (channel 0 = background).
        labels: float [C-1] multi-hot foreground labels.

    Returns:
        scalar.
    """
    present = labels > 0.5
    foreground = probs[1:]
    loss = -torch.log(gwrp(probs[0], decay_background).clamp(LOG_EPS, 1.0))
    if present.any():
        loss = loss - torch.log(gwrp(foreground[present], decay_present).clamp(LOG_EPS, 1.0)).mean()
    if (~present).any():
        loss = loss - torch.log((1.0 - gwrp(foreground[~present], decay_absent)).clamp(LOG_EPS, 1.0)).mean()
    return loss


def constrain_loss(log_probs: Tensor, target: Tensor) -> Tensor:
    """SEC constrain loss of one image: ``1/n sum_u sum_c Q_uc log(Q_uc / p_uc)`` (KL(Q || p) per pixel, averaged).

    Args:
        log_probs: float [C, H, W] network log-probabilities (gradients flow here).
        target: float [C, H, W] distributions ``Q`` (no gradient; ``0 log 0 = 0``).

    Returns:
        scalar.
    """
    target = target.detach().to(log_probs.dtype)
    kl = torch.xlogy(target, target) - target * log_probs
    return kl.sum(0).mean()


def downsample_for_loss(logits: Tensor, seeds: Optional[Tensor], stride: int) -> Tuple[Tensor, Optional[Tensor]]:
    """Logits [C, H, W] bilinearly resized to ``(ceil(H / stride), ceil(W / stride))``, seeds [H, W] by nearest.

    Returns:
        ``(float [C, h, w], long [h, w] or None)``; the inputs themselves for ``stride == 1``.
    """
    if stride == 1:
        return logits, seeds
    size = (math.ceil(logits.shape[-2] / stride), math.ceil(logits.shape[-1] / stride))
    small = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    if seeds is None:
        return small, None
    small_seeds = F.interpolate(seeds[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return small, small_seeds


# ----------------------------------------------------------------------------------------------- the task
class SECSegmenter(DeepLabSegmenter):
    """DeepLab trained with SEC's seeding, expansion and constrain losses (see the module docstring).

    Args:
        num_classes: classes including background.
        seed_weight, expand_weight, constrain_weight: loss weights (SEC: 1, 1, 1); 0 skips a term (and its CRF).
        decay_present, decay_absent, decay_background: GWRP decays (SEC: 0.996, 0, 0.999).
        loss_stride: the losses are computed on outputs downsampled by this factor (SEC: 8; 1 = full resolution).
        constrain_crf_params: ``CRFParams`` keyword arguments of the constrain CRF; default: ``CRFParams()``
            with ``gauss_sxy`` and ``bilateral_sxy`` divided by ``loss_stride``.
        gwrp_reference_pixels: the map size (pixels) the decays are meant for (SEC: 41 x 41); each loss map's
            decays are rescaled to pool the same fraction of it (:func:`scale_decay`). ``None`` uses the decays
            as given whatever the map size.
        **kwargs: :class:`DeepLabSegmenter` arguments.
    """

    def __init__(
        self,
        num_classes: int,
        seed_weight: float = 1.0,
        expand_weight: float = 1.0,
        constrain_weight: float = 1.0,
        decay_present: float = 0.996,
        decay_absent: float = 0.0,
        decay_background: float = 0.999,
        loss_stride: int = 8,
        constrain_crf_params: Optional[Dict[str, float]] = None,
        gwrp_reference_pixels: Optional[int] = 41 * 41,
        **kwargs: Any,
    ) -> None:
        if loss_stride < 1:
            raise ValueError(f"loss_stride must be >= 1, got {loss_stride}")
        for name, decay in (("decay_present", decay_present), ("decay_absent", decay_absent),
                            ("decay_background", decay_background)):
            if not 0.0 <= decay <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {decay}")
        if min(seed_weight, expand_weight, constrain_weight) < 0 or seed_weight + expand_weight + constrain_weight <= 0:
            raise ValueError("loss weights must be >= 0 and not all 0")
        super().__init__(num_classes, **kwargs)

    # ------------------------------------------------------------------ pieces
    def constrain_crf_params(self) -> CRFParams:
        """The CRF parameters of the constrain loss (see the class docstring)."""
        if self.hparams.constrain_crf_params:
            return CRFParams(**self.hparams.constrain_crf_params)
        base = CRFParams()
        stride = float(self.hparams.loss_stride)
        return CRFParams(gauss_sxy=base.gauss_sxy / stride, gauss_compat=base.gauss_compat,
                         bilateral_sxy=base.bilateral_sxy / stride, bilateral_srgb=base.bilateral_srgb,
                         bilateral_compat=base.bilateral_compat, iterations=base.iterations)

    def crf_target(self, image: Tensor, probs: Tensor) -> Tensor:
        """Dense-CRF marginals of ``probs`` float [C, h, w] on ``image`` (normalised, float [3, h', w']).

        The image is area-resized to ``(h, w)`` and denormalised to uint8 RGB; no gradient.

        Returns:
            float [C, h, w] on ``probs``' device.
        """
        mean, std = self.normalization()
        with torch.no_grad():
            if tuple(image.shape[-2:]) != tuple(probs.shape[-2:]):
                image = F.interpolate(image[None].float(), size=probs.shape[-2:], mode="area")[0]
            rgb = denormalize(image.detach().float().cpu().numpy(), mean, std)
            marginals = crf_from_probs(rgb, probs.detach().float().cpu().numpy(), self.constrain_crf_params())
        return torch.from_numpy(np.asarray(marginals, dtype=np.float32)).to(probs.device)

    def sec_losses(self, logits: Tensor, batch: Dict[str, Any]) -> Dict[str, Tensor]:
        """The three SEC losses, each averaged over the images of the batch.

        Args:
            logits: float [B, C, H, W] at input resolution.
            batch: ``mask`` (seeds, long [B, H, W]), ``labels`` [B, C-1], ``image``, ``size``.

        Returns:
            ``{"seed": scalar, "expand": scalar, "constrain": scalar}`` (terms with weight 0 are 0).
        """
        hp = self.hparams
        seeds_all = batch["mask"]
        sizes = batch.get("size")
        out: Dict[str, List[Tensor]] = {"seed": [], "expand": [], "constrain": []}
        seeded: List[bool] = []
        for i in range(logits.shape[0]):
            height, width = (sizes[i].tolist() if sizes is not None else logits.shape[-2:])
            image_logits, seeds = downsample_for_loss(logits[i, :, :height, :width].float(),
                                                      seeds_all[i, :height, :width], int(hp.loss_stride))
            log_probs = image_logits.log_softmax(dim=0)
            probs = log_probs.exp()
            if hp.seed_weight > 0:
                out["seed"].append(seeding_loss(log_probs, seeds))
                seeded.append(bool((seeds != IGNORE_INDEX).any()))
            if hp.expand_weight > 0:
                pixels, reference = probs.shape[-2] * probs.shape[-1], hp.get("gwrp_reference_pixels")
                out["expand"].append(expansion_loss(probs, batch["labels"][i],
                                                    scale_decay(hp.decay_present, pixels, reference),
                                                    scale_decay(hp.decay_absent, pixels, reference),
                                                    scale_decay(hp.decay_background, pixels, reference)))
            if hp.constrain_weight > 0:
                target = self.crf_target(batch["image"][i, :, :height, :width], probs)
                out["constrain"].append(constrain_loss(log_probs, target))
        zero = logits.sum() * 0.0
        result: Dict[str, Tensor] = {}
        for name, values in out.items():
            if name == "seed" and values:
                kept = [v for v, s in zip(values, seeded) if s]
                result[name] = torch.stack(kept).mean() if kept else zero
            else:
                result[name] = torch.stack(values).mean() if values else zero
        return result

    # ------------------------------------------------------------------ hook
    def loss(self, logits: Tensor, batch: Dict[str, Any]) -> Tensor:
        """``seed_weight * L_seed + expand_weight * L_expand + constrain_weight * L_constrain`` (logged each)."""
        if "mask" not in batch:
            raise ValueError("SECSegmenter needs seeds in the batch 'mask' (e.g. PseudoMaskDataModule on a seed folder)")
        hp = self.hparams
        parts = self.sec_losses(logits, batch)
        batch_size = len(batch["id"]) if "id" in batch else logits.shape[0]
        if self._trainer is not None:
            for name, value in parts.items():
                self.log(f"train/{name}_loss", value, batch_size=batch_size)
        return (hp.seed_weight * parts["seed"] + hp.expand_weight * parts["expand"]
                + hp.constrain_weight * parts["constrain"])
