"""The DeepLab network: segmentation_models_pytorch's DeepLabV3 / DeepLabV3+ with encoder weights loaded offline.

The task that trains it is :class:`~lightning_wsss.tasks.DeepLabSegmenter`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from torch import nn

from ..errors import DataError
from .backbones import load_backbone_weights, load_state_dict_file, strip_prefixes
from .pooling import use_channels_last_max_pools
from .pretrained import resolve_weights

__all__ = ["ARCHITECTURES", "build_deeplab", "load_encoder_weights"]

ARCHITECTURES = ("deeplabv3", "deeplabv3plus")


def _is_local_weights(weights: Optional[str]) -> bool:
    return weights not in (None, "", "none", "imagenet")


def load_encoder_weights(model: nn.Module, encoder: str, path: str) -> Dict[str, int]:
    """Load a local state dict into an smp model's encoder.

    ``tu-NAME`` encoders wrap a timm ``features_only`` model at ``model.encoder.model``: it goes through
    :func:`lightning_wsss.models.backbones.load_backbone_weights` (timm names, or other names matched by order
    and shape). Native smp encoders (``resnet50``...) use torchvision/timm-style names: wrapper prefixes are
    stripped and every encoder tensor must be present; extra keys (the classifier) are dropped.

    Returns:
        ``{"loaded": n, "dropped": m}``.

    Raises:
        DataError: missing/unreadable file, missing tensors or shape mismatches (the message names the file).
    """
    if encoder.startswith("tu-"):
        return load_backbone_weights(model.encoder.model, encoder[3:], path)
    state = strip_prefixes(load_state_dict_file(path))
    own = model.encoder.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise DataError(path, f"weights lack {len(missing)} encoder tensors, e.g. {missing[:3]}")
    for key, value in own.items():
        if key in state and tuple(state[key].shape) != tuple(value.shape):
            raise DataError(path, f"{key!r}: shape {tuple(state[key].shape)} differs from the encoder's {tuple(value.shape)}")
    picked = {k: state[k] for k in own if k in state}
    model.encoder.load_state_dict(picked, strict=False)
    return {"loaded": len(picked), "dropped": len(state) - len(picked)}


def build_deeplab(
    arch: str,
    encoder: str,
    num_classes: int,
    encoder_weights: Optional[str] = None,
    output_stride: int = 16,
    encoder_depth: int = 5,
    decoder_channels: int = 256,
    aux_classes: Optional[int] = None,
) -> nn.Module:
    """Create an smp DeepLabV3 / DeepLabV3+ and load its encoder weights.

    Args:
        arch: ``"deeplabv3"`` or ``"deeplabv3plus"`` (case-insensitive; ``"DeepLabV3Plus"`` works).
        encoder: smp encoder name (``resnet50``) or timm through smp (``tu-resnet18``, ``tu-efficientnet_lite0``).
        num_classes: output channels (background included).
        encoder_weights: ``None``, ``"imagenet"`` or a local state-dict path. ``"imagenet"`` loads a packaged file
            offline where one is installed (:mod:`lightning_wsss.models.pretrained`), else smp's hub.
        output_stride: 8 or 16.
        encoder_depth: encoder stages used (smp: 3..5).
        decoder_channels: ASPP / decoder width.
        aux_classes: adds smp's classification head on the deepest features with this many outputs.

    Returns:
        the smp model; ``model(x)`` gives logits [B, num_classes, H, W] (and [B, aux_classes] with the
        auxiliary head) for H, W divisible by ``model.encoder.output_stride``.
    """
    import segmentation_models_pytorch as smp

    key = arch.lower().replace("_", "").replace("-", "")
    classes = {"deeplabv3": smp.DeepLabV3, "deeplabv3plus": smp.DeepLabV3Plus}
    if key not in classes:
        raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    encoder_weights = resolve_weights(encoder, encoder_weights)
    if encoder_weights == "imagenet":
        smp_weights: Any = True if encoder.startswith("tu-") else "imagenet"
    else:
        smp_weights = None
    model = classes[key](
        encoder_name=encoder,
        encoder_depth=encoder_depth,
        encoder_weights=smp_weights,
        encoder_output_stride=output_stride,
        decoder_channels=decoder_channels,
        classes=num_classes,
        aux_params=None if aux_classes is None else {"classes": aux_classes, "dropout": 0.0},
    )
    if _is_local_weights(encoder_weights):
        load_encoder_weights(model, encoder, encoder_weights)  # type: ignore[arg-type]
    return use_channels_last_max_pools(model)
