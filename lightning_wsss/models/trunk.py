"""A timm model's whole convolutional trunk (``forward_features``) as a feature extractor, weights offline.

``features_only`` backbones stop at the last stage. Some models put more before their pooling: EfficientNet's
last stage is a 320-channel linear bottleneck (no activation), followed by a pretrained 1x1 ``conv_head`` to 1280
channels with BatchNorm and SiLU. :class:`Trunk` keeps that head, so a CAM can read the layer the ImageNet
classifier itself pooled.
"""

from __future__ import annotations

from typing import List, Optional

import timm
from torch import Tensor, nn

from ..errors import DataError
from .backbones import load_state_dict_file, to_timm_names
from .pooling import use_channels_last_max_pools
from .pretrained import resolve_weights


class _Info:
    def __init__(self, channels: int) -> None:
        self._channels = channels

    def channels(self) -> List[int]:
        return [self._channels]


class Trunk(nn.Module):
    """``model.forward_features`` of a timm classifier without its classification layer.

    ``forward`` returns a one-element list ``[features [B, D, h, w]]`` and ``feature_info.channels()`` gives
    ``[D]``, as a ``features_only`` backbone's last level does, so it stands in for one.
    """

    def __init__(self, name: str, weights: Optional[str] = None, output_stride: Optional[int] = None) -> None:
        super().__init__()
        weights = resolve_weights(name, weights)
        options = {"num_classes": 0, "pretrained": weights == "imagenet"}
        if output_stride is not None and output_stride != 32:
            options["output_stride"] = output_stride
        self.model = timm.create_model(name, **options)
        if weights not in (None, "imagenet"):
            self._load(name, weights)
        use_channels_last_max_pools(self.model)
        self.feature_info = _Info(self.model.num_features)

    def _load(self, name: str, path: str) -> None:
        try:
            named = to_timm_names(load_state_dict_file(path), name)
        except ValueError as exc:
            raise DataError(path, str(exc)) from exc
        own = self.model.state_dict()
        missing = [k for k in own if k not in named and not k.endswith("num_batches_tracked")]
        if missing:
            raise DataError(path, f"weights lack {len(missing)} trunk tensors, e.g. {missing[:3]}")
        self.model.load_state_dict({k: v for k, v in named.items() if k in own}, strict=False)

    def forward(self, images: Tensor) -> List[Tensor]:
        return [self.model.forward_features(images)]
