"""Pure tensor functions for class activation maps (CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM).

Shape conventions used throughout:

* ``activations``: float ``[B, D, h, w]`` -- the feature map of one target layer for a batch of images.
* ``grads``: float ``[B, K, D, h, w]`` -- d(score of the k-th requested class of image b) / d(activations[b]),
  one slice per requested class ``k`` (``K`` classes per image).
* ``weights``: float ``[B, K, D]`` -- one channel weighting per (image, class).
* ``maps``: float ``[B, K, h, w]`` -- one activation map per (image, class).

The definitions follow the papers and the conventions of the ``grad-cam`` package (``pytorch_grad_cam``):

* Grad-CAM (Selvaraju et al. 2017): ``w = mean_{ij} g``; map ``relu(sum_d w_d A_d)``.
* Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the exponential dropped, as pytorch-grad-cam does):
  ``alpha = g^2 / (2 g^2 + sum_{ij}(A) g^3 + 1e-6)`` (0 where ``g == 0``), ``w = sum_{ij} alpha * relu(g)``.
* XGrad-CAM (Fu et al. 2020): ``w = sum_{ij} g * A / (sum_{ij} A + 1e-7)``.
* LayerCAM (Jiang et al. 2021): map ``relu(sum_d relu(g_d) * A_d)`` (position-wise weights).
* CAM (Zhou et al. 2016): ``w = fc_weight[class]``; map ``relu(sum_d w_d A_d)``.
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cam_weights_from_classifier",
    "gradcam_weights",
    "gradcampp_weights",
    "xgradcam_weights",
    "layercam_map",
    "weighted_sum",
    "upsample",
    "normalize_maps",
    "NORMALIZE_MODES",
]

NORMALIZE_MODES = ("max", "minmax", "none")

_GRADCAMPP_EPS = 1e-6  # pytorch-grad-cam's constant in the alpha denominator
_XGRADCAM_EPS = 1e-7  # pytorch-grad-cam's constant in the XGrad-CAM denominator


def _check_grads(grads: Tensor, activations: Tensor) -> None:
    if grads.dim() != 5 or activations.dim() != 4:
        raise ValueError(
            f"expected grads [B, K, D, h, w] and activations [B, D, h, w], "
            f"got {tuple(grads.shape)} and {tuple(activations.shape)}"
        )
    if grads.shape[0] != activations.shape[0] or grads.shape[2:] != activations.shape[1:]:
        raise ValueError(
            f"grads {tuple(grads.shape)} do not match activations {tuple(activations.shape)}"
        )


def cam_weights_from_classifier(fc_weight: Tensor, class_ids: Tensor) -> Tensor:
    """Original CAM weights: the classifier's weight rows for the requested classes.

    Args:
        fc_weight: float ``[C, D]`` (a Linear weight; a 1x1 Conv2d weight ``[C, D, 1, 1]`` is accepted too).
        class_ids: long ``[B, K]`` indices into the ``C`` classifier outputs; ``-1`` marks padding.

    Returns:
        float tensor ``[B, K, D]``; rows for padded entries (``-1``) are zero.
    """
    if fc_weight.dim() == 4 and fc_weight.shape[2:] == (1, 1):
        fc_weight = fc_weight.flatten(1)
    if fc_weight.dim() != 2:
        raise ValueError(f"fc_weight must be [C, D] (or [C, D, 1, 1]), got {tuple(fc_weight.shape)}")
    if class_ids.dim() != 2:
        raise ValueError(f"class_ids must be [B, K], got {tuple(class_ids.shape)}")
    valid = class_ids >= 0
    weights = fc_weight[class_ids.clamp(min=0)]  # [B, K, D]
    return weights * valid.unsqueeze(-1).to(weights.dtype)


def gradcam_weights(grads: Tensor) -> Tensor:
    """Grad-CAM channel weights: the spatial mean of the gradients.

    Args:
        grads: float ``[B, K, D, h, w]``.

    Returns:
        float tensor ``[B, K, D]``.
    """
    if grads.dim() != 5:
        raise ValueError(f"grads must be [B, K, D, h, w], got {tuple(grads.shape)}")
    return grads.mean(dim=(-2, -1))


def gradcampp_weights(grads: Tensor, activations: Tensor) -> Tensor:
    """Grad-CAM++ channel weights (closed form for a linear score, as in pytorch-grad-cam).

    ``alpha = g^2 / (2 g^2 + sum_{ij}(A) * g^3 + 1e-6)``, set to 0 where ``g == 0``;
    ``w = sum_{ij} relu(g) * alpha``.

    Args:
        grads: float ``[B, K, D, h, w]``.
        activations: float ``[B, D, h, w]``.

    Returns:
        float tensor ``[B, K, D]``.
    """
    _check_grads(grads, activations)
    g2 = grads * grads
    g3 = g2 * grads
    sum_a = activations.sum(dim=(-2, -1))[:, None, :, None, None]  # [B, 1, D, 1, 1]
    alpha = g2 / (2.0 * g2 + sum_a * g3 + _GRADCAMPP_EPS)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (grads.clamp(min=0) * alpha).sum(dim=(-2, -1))


def xgradcam_weights(grads: Tensor, activations: Tensor) -> Tensor:
    """XGrad-CAM channel weights: ``sum_{ij}(g * A) / (sum_{ij} A + 1e-7)``.

    Args:
        grads: float ``[B, K, D, h, w]``.
        activations: float ``[B, D, h, w]``.

    Returns:
        float tensor ``[B, K, D]``.
    """
    _check_grads(grads, activations)
    sum_a = activations.sum(dim=(-2, -1))  # [B, D]
    num = (grads * activations.unsqueeze(1)).sum(dim=(-2, -1))  # [B, K, D]
    return num / (sum_a.unsqueeze(1) + _XGRADCAM_EPS)


def layercam_map(grads: Tensor, activations: Tensor, relu: bool = True) -> Tensor:
    """LayerCAM map: position-wise weights ``relu(g)``, ``sum_d relu(g_d) * A_d``.

    Args:
        grads: float ``[B, K, D, h, w]``.
        activations: float ``[B, D, h, w]``.
        relu: apply ReLU to the channel sum (the method's definition; pytorch-grad-cam does too).

    Returns:
        float tensor ``[B, K, h, w]``.
    """
    _check_grads(grads, activations)
    maps = (grads.clamp(min=0) * activations.unsqueeze(1)).sum(dim=2)
    return maps.clamp(min=0) if relu else maps


def weighted_sum(weights: Tensor, activations: Tensor, relu: bool = True) -> Tensor:
    """Channel-weighted sum of activations, ``sum_d w[b, k, d] * A[b, d]``.

    Args:
        weights: float ``[B, K, D]``.
        activations: float ``[B, D, h, w]``.
        relu: apply ReLU to the result (CAM, Grad-CAM, Grad-CAM++ and XGrad-CAM all do).

    Returns:
        float tensor ``[B, K, h, w]``.
    """
    if weights.dim() != 3 or activations.dim() != 4 or weights.shape[0] != activations.shape[0] \
            or weights.shape[2] != activations.shape[1]:
        raise ValueError(
            f"expected weights [B, K, D] and activations [B, D, h, w], "
            f"got {tuple(weights.shape)} and {tuple(activations.shape)}"
        )
    maps = torch.einsum("bkd,bdhw->bkhw", weights, activations)
    return maps.clamp(min=0) if relu else maps


def upsample(maps: Tensor, size: Union[Sequence[int], Tuple[int, int]]) -> Tensor:
    """Bilinear resize of maps to ``size`` (``align_corners=False``, no antialiasing).

    This is the same sampling as OpenCV's ``cv2.resize(..., interpolation=INTER_LINEAR)`` used by
    pytorch-grad-cam (half-pixel centres, edge clamping); the two agree to ~1e-6 on float32 maps.

    Args:
        maps: float ``[B, K, h, w]``.
        size: target ``(H, W)``.

    Returns:
        float tensor ``[B, K, H, W]`` (the input itself when it already has that size).
    """
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def normalize_maps(maps: Tensor, mode: str = "max", eps: float = 1e-7) -> Tensor:
    """Per-map normalisation over the two spatial dimensions.

    Args:
        maps: float ``[..., h, w]`` (typically ``[B, K, h, w]``), normally non-negative (ReLU'd CAMs).
        mode: ``"max"`` -- ``x / (max(x) + eps)`` (the WSSS convention; a non-negative map lands in
            ``[0, 1]`` and all-zero maps stay zero); ``"minmax"`` -- ``(x - min) / (max - min + eps)``
            (pytorch-grad-cam's ``scale_cam_image``); ``"none"`` -- unchanged.
        eps: added to the denominator.

    Returns:
        float tensor with the shape of ``maps``.
    """
    if mode == "none":
        return maps
    if mode == "max":
        peak = maps.amax(dim=(-2, -1), keepdim=True)
        return maps / (peak + eps)
    if mode == "minmax":
        low = maps.amin(dim=(-2, -1), keepdim=True)
        shifted = maps - low
        return shifted / (shifted.amax(dim=(-2, -1), keepdim=True) + eps)
    raise ValueError(f"normalize mode must be one of {NORMALIZE_MODES}, got {mode!r}")
