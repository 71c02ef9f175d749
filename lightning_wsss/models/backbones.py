"""timm backbones (``features_only``) and pretrained-weight loading that works offline.

``weights`` everywhere in the suite means: ``None`` (random init), ``"imagenet"`` (timm's hub weights, for
users online) or a path to a local state dict (the offline path used on clusters). A local state dict may use
timm's key names, or other names that match timm's parameters *in order and shape* (e.g. the lukemelas
EfficientNet checkpoints); :func:`remap_state_dict_by_order` maps those and fails loudly on any mismatch.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import timm
import torch
from torch import nn

from ..errors import DataError
from .pooling import use_channels_last_max_pools
from .pretrained import resolve_weights

_PREFIXES = ("module.", "model.", "backbone.", "encoder.")


def _is_buffer_key(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def load_state_dict_file(path: str, trust: Optional[bool] = None) -> "OrderedDict[str, torch.Tensor]":
    """Load a state dict from a ``.pth``/``.pt``/``.ckpt`` file (a Lightning checkpoint's ``state_dict`` too).

    Loads with ``weights_only=True`` and the allow-list of :mod:`lightning_wsss.serialization` (legacy
    ``OrderedDict`` pickles load); nothing in the file runs. ``trust=True`` (default: the ``WSSS_TRUST_PICKLES``
    environment variable) allows a full unpickle, for files from a trusted source only.

    Raises:
        DataError: the file is missing, unreadable, or holds no tensors;
            :class:`~lightning_wsss.serialization.UnsafePickleError` when it needs types outside the allow-list.
    """
    from ..serialization import safe_torch_load

    file = Path(path)
    obj = safe_torch_load(file, "weights file", trust=trust)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(file, "weights file holds no state dict of tensors")
    return OrderedDict((k, v) for k, v in obj.items() if isinstance(v, torch.Tensor))


def strip_prefixes(state_dict: Mapping[str, torch.Tensor], prefixes: Sequence[str] = _PREFIXES) -> "OrderedDict[str, torch.Tensor]":
    """Drop wrapper prefixes (``module.``, ``backbone.``...) shared by every key."""
    out = OrderedDict(state_dict)
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if out and all(k.startswith(prefix) for k in out):
                out = OrderedDict((k[len(prefix):], v) for k, v in out.items())
                changed = True
    return out


def remap_state_dict_by_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> "OrderedDict[str, torch.Tensor]":
    """Rename ``source`` tensors to ``target``'s keys by position (``num_batches_tracked`` left out of both).

    Returns:
        a state dict with ``target``'s key names and ``source``'s tensors.

    Raises:
        ValueError: the tensor counts differ, or any position has a different shape (the message names both keys).
    """
    src = [(k, v) for k, v in source.items() if not _is_buffer_key(k)]
    tgt = [(k, v) for k, v in target.items() if not _is_buffer_key(k)]
    if len(src) != len(tgt):
        raise ValueError(f"cannot remap by order: the source has {len(src)} tensors, the target {len(tgt)}")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for position, ((skey, sval), (tkey, tval)) in enumerate(zip(src, tgt)):
        if tuple(sval.shape) != tuple(tval.shape):
            raise ValueError(
                f"cannot remap by order: tensor {position} {skey!r} has shape {tuple(sval.shape)} but the target's "
                f"{tkey!r} has {tuple(tval.shape)}"
            )
        out[tkey] = sval
    return out


def timm_reference_state_dict(model_name: str, **kwargs) -> "OrderedDict[str, torch.Tensor]":
    """The state dict of the full (classification) timm model ``model_name``, with random weights."""
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    return OrderedDict(model.state_dict())


def to_timm_names(state_dict: Mapping[str, torch.Tensor], model_name: str) -> "OrderedDict[str, torch.Tensor]":
    """Return ``state_dict`` under timm's key names for ``model_name``: unchanged if the names already match
    (after stripping wrapper prefixes), else remapped by order and shape (:func:`remap_state_dict_by_order`)."""
    stripped = strip_prefixes(state_dict)
    reference = timm_reference_state_dict(model_name)
    ref_keys = {k for k in reference if not _is_buffer_key(k)}
    own_keys = {k for k in stripped if not _is_buffer_key(k)}
    if own_keys <= ref_keys and len(own_keys) >= 0.9 * len(ref_keys):
        for key in own_keys:
            if tuple(stripped[key].shape) != tuple(reference[key].shape):
                raise ValueError(f"{key!r}: shape {tuple(stripped[key].shape)} differs from timm's {tuple(reference[key].shape)}")
        return stripped
    return remap_state_dict_by_order(stripped, reference)


def load_backbone_weights(backbone: nn.Module, model_name: str, path: str) -> Dict[str, int]:
    """Load a local state dict into a timm ``features_only`` backbone.

    Every backbone parameter and buffer must be found (a missing key raises); keys of the classification head
    that the backbone does not have are dropped.

    Returns:
        ``{"loaded": n, "dropped": m}`` counts.
    """
    try:
        named = to_timm_names(load_state_dict_file(path), model_name)
    except ValueError as exc:
        raise DataError(path, str(exc)) from exc
    own = backbone.state_dict()
    # timm's FeatureListNet keeps the original module names, with '.' of nested modules sometimes as '_'
    lookup = {k: k for k in named}
    lookup.update({k.replace(".", "_", 1): k for k in named})
    mapped: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    missing = []
    for key, value in own.items():
        source_key = key if key in named else lookup.get(key)
        if source_key is None:
            if _is_buffer_key(key):
                continue
            missing.append(key)
            continue
        if tuple(named[source_key].shape) != tuple(value.shape):
            raise DataError(path, f"{source_key!r}: shape {tuple(named[source_key].shape)} differs from the backbone's {tuple(value.shape)}")
        mapped[key] = named[source_key]
    if missing:
        raise DataError(path, f"weights lack {len(missing)} backbone tensors, e.g. {missing[:3]}")
    backbone.load_state_dict(mapped, strict=False)
    return {"loaded": len(mapped), "dropped": len(named) - len(mapped)}


def build_backbone(
    name: str,
    weights: Optional[str] = None,
    output_stride: Optional[int] = None,
    out_indices: Optional[Tuple[int, ...]] = None,
    **kwargs,
) -> nn.Module:
    """Create a timm ``features_only`` backbone and load its weights.

    Args:
        name: any timm model that supports ``features_only`` (``resnet50``, ``efficientnet_lite0``, ``resnet18``...).
        weights: ``None``, ``"imagenet"`` or a local file path. ``"imagenet"`` loads a packaged file offline where
            one is installed (:mod:`lightning_wsss.models.pretrained`: EfficientNet-Lite0), else timm's hub.
        output_stride: 8, 16 or 32 (dilation in the last stages, as DeepLab and psa/irn use), ``None`` = model default.
        out_indices: feature levels to return (default: all).

    Returns:
        an nn.Module whose forward returns a list of feature maps [B, C_i, H / s_i, W / s_i]; its
        ``feature_info.channels()`` gives C_i.
    """
    weights = resolve_weights(name, weights)
    options = dict(features_only=True, pretrained=weights == "imagenet", **kwargs)
    if output_stride is not None and output_stride != 32:
        options["output_stride"] = output_stride
    if out_indices is not None:
        options["out_indices"] = tuple(out_indices)
    backbone = timm.create_model(name, **options)
    if weights not in (None, "imagenet"):
        load_backbone_weights(backbone, name, weights)
    return use_channels_last_max_pools(backbone)
