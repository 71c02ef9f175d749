"""Hypercolumn features for CAM methods that re-read the cells with other features than the classifier's last stage.

ProbeCAM fits its probes on them and LPCAM (with ``cluster_features: imagenet``) clusters them: the levels of an
ImageNet backbone of the classifier's architecture, or of the trained classifier's own backbone, each L2-normalised
and resized to the first level's grid (:func:`~lightning_wsss.cam.cell_probe.hypercolumn`).
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

from torch import Tensor, nn

from ..cam.cell_probe import hypercolumn
from ..models.backbones import build_backbone

__all__ = ["HypercolumnFeatures", "HYPERCOLUMN_SOURCES"]

HYPERCOLUMN_SOURCES = ("imagenet", "classifier")
"""Where the hypercolumn's levels come from: an ImageNet backbone, or the trained classifier's own backbone."""


class HypercolumnFeatures:
    """Mixin for :class:`~lightning_wsss.tasks.classifier.CAMClassifier` subclasses: :meth:`hypercolumn_of`.

    The ImageNet backbone is built once per instance and set of levels, kept outside the module tree (not a
    registered submodule, so not in checkpoints nor in the optimiser) and moved to the task's device.
    """

    def hypercolumn_backbone(self, source: str, levels: Sequence[int],
                             options: Tuple[str, str] = ("features", "levels")) -> nn.Module:
        """The backbone whose ``levels`` make the hypercolumn; ``options`` name the source's and the levels'
        settings in error messages."""
        option = options[0]
        if source not in HYPERCOLUMN_SOURCES:
            raise ValueError(f"{option} must be one of {HYPERCOLUMN_SOURCES}, got {source!r}")
        if source == "classifier":
            return self.net.features.backbone
        key = tuple(int(level) for level in levels)
        cache: Dict[Tuple[int, ...], nn.Module] = self.__dict__.setdefault("_hypercolumn_backbones", {})
        if key not in cache:
            try:
                backbone = build_backbone(self.hparams.backbone, "imagenet", output_stride=self.hparams.output_stride,
                                          out_indices=key)
            except Exception as exc:  # timm's hub lookup fails offline, or the model has no pretrained weights
                raise RuntimeError(f"{option}: imagenet needs ImageNet weights for {self.hparams.backbone!r}, and none "
                                   f"could be loaded ({type(exc).__name__}: {exc}); set {option}: classifier to read "
                                   "the trained classifier's own backbone") from exc
            cache[key] = backbone.eval()
        return cache[key].to(self.device)

    def hypercolumn_of(self, images: Tensor, source: str, levels: Sequence[int],
                       options: Tuple[str, str] = ("features", "levels")) -> Tensor:
        """Hypercolumn float [B, D, h, w] of ``levels`` (timm ``features_only`` indices) on the first level's grid."""
        backbone = self.hypercolumn_backbone(source, levels, options)
        outputs = backbone(images)
        if source == "classifier":
            wanted = [int(level) for level in levels]
            if max(wanted) >= len(outputs):
                raise ValueError(f"{options[1]} {wanted} need {max(wanted) + 1} backbone levels, the classifier's "
                                 f"backbone returns {len(outputs)} (feature_level set?)")
            outputs = [outputs[level] for level in wanted]
        return hypercolumn(outputs, tuple(outputs[0].shape[-2:]))
