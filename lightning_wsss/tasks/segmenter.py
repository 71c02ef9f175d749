"""DeepLab segmentation network (segmentation_models_pytorch) trained on masks: the last stage of WSSS.

:class:`DeepLabSegmenter` trains DeepLabV3 / DeepLabV3+ on full or pseudo masks (``MaskDataModule`` /
``PseudoMaskDataModule``), validates and tests with mIoU, and predicts label PNGs. Method-specific tasks
(BoxSup, SEC, self-training) subclass it and override its hooks.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..callbacks.writers import Artifact
from ..datamodules.transforms import denormalize
from ..datasets.classes import IGNORE_INDEX
from ..metrics import SegmentationIoU
from ..models.deeplab import build_deeplab
from ..tensors import channel_argmax
from .base import WSSSTask


# ----------------------------------------------------------------------------------------------- functional core
def pad_to_multiple(images: Tensor, multiple: int, value: float = 0.0) -> Tensor:
    """Pad images [B, C, H, W] at the bottom and right so H and W are multiples of ``multiple``.

    Returns:
        float [B, C, H', W'] with H' = ceil(H / multiple) * multiple (the input itself when no padding is needed).
    """
    height, width = images.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h), value=value)


def multiscale_flip_probs(
    forward: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> Tensor:
    """Mean softmax over rescaled (bilinear) and optionally horizontally flipped copies of ``images``.

    Args:
        forward: maps images [B, 3, h, w] to logits [B, C, h, w].
        images: float [B, 3, H, W].

    Returns:
        float [B, C, H, W] probabilities (sum to 1 over C).
    """
    height, width = images.shape[-2:]
    total: Optional[Tensor] = None
    count = 0
    for scale in scales:
        size = (max(1, int(round(height * scale))), max(1, int(round(width * scale))))
        scaled = images if size == (height, width) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            logits = forward(scaled.flip(-1) if flipped else scaled)
            if flipped:
                logits = logits.flip(-1)
            if tuple(logits.shape[-2:]) != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probs = logits.float().softmax(dim=1)
            total = probs if total is None else total + probs
            count += 1
    if total is None:
        raise ValueError("scales must not be empty")
    return total / count


def masked_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Pixel cross-entropy averaged over the labelled pixels (0, not NaN, when every pixel is ignored).

    Args:
        logits: float [B, C, H, W].
        target: long [B, H, W] with ``ignore_index`` for unknown pixels.

    Returns:
        scalar tensor.
    """
    valid = target != ignore_index
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return total / valid.sum().clamp(min=1)


def denormalize_batch(images: Tensor, sizes: Tensor, mean: Sequence[float], std: Sequence[float]) -> List[np.ndarray]:
    """Undo normalisation of a padded batch and crop each image to its size.

    Args:
        images: float [B, 3, H, W] normalised images.
        sizes: long [B, 2] unpadded (height, width).

    Returns:
        list of B uint8 RGB arrays [h_i, w_i, 3].
    """
    out = []
    for image, (height, width) in zip(images.detach().float().cpu(), sizes.tolist()):
        out.append(denormalize(image[:, :height, :width].numpy(), mean, std))
    return out


def select_rows(batch: Dict[str, Any], rows: Sequence[int]) -> Dict[str, Any]:
    """The sub-batch of ``rows``: tensors indexed on their first dimension, lists picked; other values kept."""
    out: Dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == len(batch["id"]):
            out[key] = value[torch.as_tensor(list(rows), dtype=torch.long, device=value.device)]
        elif isinstance(value, (list, tuple)) and len(value) == len(batch["id"]):
            out[key] = [value[i] for i in rows]
        else:
            out[key] = value
    return out


def metric_key(name: str) -> str:
    """A class name made safe for a metric key (``"tv/monitor"`` -> ``"tv_monitor"``)."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name)


# ----------------------------------------------------------------------------------------------- the task
class DeepLabSegmenter(WSSSTask):
    """DeepLabV3 / DeepLabV3+ (smp) trained with pixel cross-entropy on (pseudo) masks.

    Training: cross-entropy with 255 ignored, optional auxiliary multi-label classification head (smp's
    ``aux_params`` on the deepest encoder features; ``BCEWithLogits`` on the image labels, weight
    ``aux_weight``), SGD (or AdamW) with ``head_lr_mult`` on everything but the encoder and a per-step poly
    schedule. Validation: single-scale mIoU (``val/miou``) and, at epoch end, per-class IoU
    (``val/iou/<class>``). Test: ``predict_logits`` (multi-scale + flip) and ``postprocess`` (optional dense
    CRF), mIoU ``test/miou`` and ``test/iou/<class>``. Predict: ``labels/<id>.png`` (argmax at the image's
    original size), skipping images already written by the :class:`~lightning_wsss.callbacks.ArtifactWriter`.

    Any input size works: images are padded inside :meth:`forward` to a multiple of the encoder's output
    stride and the logits cropped back; batches padded by the collate are cropped to ``size`` before writing.

    The network ``self.net`` is the smp model (:func:`~lightning_wsss.models.deeplab.build_deeplab`).

    Hooks for subclasses (besides :class:`~lightning_wsss.tasks.base.WSSSTask`'s): :meth:`build_net`,
    :meth:`loss`, :meth:`aux_loss`, :meth:`predict_logits`, :meth:`postprocess`.

    Args:
        num_classes: classes including background.
        arch: ``deeplabv3`` or ``deeplabv3plus``.
        encoder: smp encoder (``resnet50``) or ``tu-<timm name>`` (``tu-resnet18``, ``tu-efficientnet_lite0``).
        encoder_weights: ``None``, ``"imagenet"`` or a local state-dict path.
        encoder_depth: encoder stages (3..5).
        output_stride: 8 or 16.
        decoder_channels: ASPP / decoder width.
        aux_weight: weight of the auxiliary classification loss; 0 builds no auxiliary head.
        test_scales, test_flip: multi-scale + flip inference at test and prediction time.
        crf: dense-CRF post-processing at test and prediction time.
        crf_params: keyword arguments of :class:`lightning_wsss.refine.crf.CRFParams`.
        crf_processes: CRF worker processes (0 = in this process).
        class_names: names for per-class IoU keys (default: the datamodule's ``class_names``).
        **kwargs: :class:`~lightning_wsss.tasks.base.WSSSTask` arguments (``lr``, ``head_lr_mult``,
            ``weight_decay``, ``momentum``, ``optimizer``, ``poly_power``).
    """

    artifact_patterns: Tuple[str, ...] = ("labels/{id}.png",)
    legacy_net_prefix = "model."

    def __init__(
        self,
        num_classes: int,
        arch: str = "deeplabv3plus",
        encoder: str = "resnet50",
        encoder_weights: Optional[str] = None,
        encoder_depth: int = 5,
        output_stride: int = 16,
        decoder_channels: int = 256,
        aux_weight: float = 0.0,
        test_scales: Sequence[float] = (1.0,),
        test_flip: bool = False,
        crf: bool = False,
        crf_params: Optional[Dict[str, float]] = None,
        crf_processes: int = 0,
        class_names: Optional[List[str]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, **kwargs)

    # ------------------------------------------------------------------ hooks
    def build_net(self) -> nn.Module:
        """The smp DeepLab (with the auxiliary classification head when ``aux_weight > 0``)."""
        hp = self.hparams
        return build_deeplab(
            hp.arch, hp.encoder, self.num_classes, hp.encoder_weights, hp.output_stride, hp.encoder_depth,
            hp.decoder_channels, aux_classes=self.num_classes - 1 if hp.aux_weight > 0 else None,
        )

    def configure_metrics(self) -> None:
        """Validation and test mIoU and per-class IoU."""
        self.val_miou = SegmentationIoU(self.num_classes)
        self.val_iou = SegmentationIoU(self.num_classes, reduction="none")
        self.test_miou = SegmentationIoU(self.num_classes)
        self.test_iou = SegmentationIoU(self.num_classes, reduction="none")

    def param_groups(self) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
        """The encoder, and every other parameter (decoder, heads) at the head learning rate."""
        encoder = list(self.net.encoder.parameters())
        encoder_ids = {id(p) for p in encoder}
        return encoder, [p for p in self.parameters() if id(p) not in encoder_ids]

    def loss(self, logits: Tensor, batch: Dict[str, Any]) -> Tensor:
        """Pixel cross-entropy of ``logits`` [B, C, H, W] against ``batch["mask"]`` [B, H, W] (255 ignored)."""
        if "mask" not in batch:
            raise ValueError("DeepLabSegmenter trains on masks: the training batch has none (use MaskDataModule or "
                             "PseudoMaskDataModule, or a task that builds masks such as BoxSupSegmenter)")
        return masked_cross_entropy(logits, batch["mask"])

    def aux_loss(self, aux_logits: Tensor, batch: Dict[str, Any]) -> Tensor:
        """Multi-label BCE of the auxiliary head's logits [B, C-1] against ``batch["labels"]`` [B, C-1]."""
        return F.binary_cross_entropy_with_logits(aux_logits, batch["labels"].to(aux_logits.dtype))

    def predict_logits(self, images: Tensor) -> Tensor:
        """Inference logits at input resolution, with ``test_scales`` / ``test_flip``.

        Returns:
            float [B, C, H, W]: the logits for a single scale without flip, else the log of the mean softmax.
        """
        scales = tuple(float(s) for s in self.hparams.test_scales) or (1.0,)
        if scales == (1.0,) and not self.hparams.test_flip:
            return self(images)
        probs = multiscale_flip_probs(self, images, scales, bool(self.hparams.test_flip))
        return probs.clamp_min(1e-8).log()

    def postprocess(self, probs: Tensor, batch: Dict[str, Any]) -> Tensor:
        """Refine probabilities before the argmax: a dense CRF on each unpadded image when ``crf`` is set.

        Args:
            probs: float [B, C, H, W] (padded batch).
            batch: the batch (``image``, ``size``).

        Returns:
            float [B, C, H, W]; the padding keeps the input probabilities.
        """
        if not self.hparams.crf:
            return probs
        from ..refine.crf import CRFParams, batch_crf

        mean, std = self.normalization()
        images = denormalize_batch(batch["image"], batch["size"], mean, std)
        crops = [probs[i, :, :h, :w].detach().float().cpu().numpy() for i, (h, w) in enumerate(batch["size"].tolist())]
        refined = batch_crf(images, crops, CRFParams(**(self.hparams.crf_params or {})), processes=self.hparams.crf_processes)
        out = probs.clone()
        for i, (height, width) in enumerate(batch["size"].tolist()):
            out[i, :, :height, :width] = torch.from_numpy(refined[i]).to(out)
        return out

    # ------------------------------------------------------------------ model
    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (the encoder's output stride)."""
        return int(getattr(self.net.encoder, "output_stride", 32))

    def forward_outputs(self, images: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Segmentation logits [B, C, H, W] at input size and auxiliary logits [B, C-1] (None without the head)."""
        height, width = images.shape[-2:]
        padded = pad_to_multiple(images, self.size_multiple)
        outputs = self.net(padded)
        logits, aux = outputs if isinstance(outputs, (tuple, list)) else (outputs, None)
        if logits.shape[-2:] != padded.shape[-2:]:  # decoders that stop short of the input resolution
            logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width], aux

    def forward(self, images: Tensor) -> Tensor:
        """Logits [B, C, H, W] for images [B, 3, H, W] of any size."""
        return self.forward_outputs(images)[0]

    def class_names(self) -> Optional[List[str]]:
        """Class names for per-class IoU: the ``class_names`` argument, else the datamodule's."""
        if self.hparams.class_names:
            return list(self.hparams.class_names)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(datamodule, "class_names", None)
        return list(names) if names is not None and len(names) == self.num_classes else None

    def segment(self, batch: Dict[str, Any]) -> Tensor:
        """Test/predict labels: ``predict_logits`` -> softmax -> ``postprocess`` -> argmax. Returns long [B, H, W]."""
        probs = self.predict_logits(batch["image"]).float().softmax(dim=1)
        return channel_argmax(self.postprocess(probs, batch), dim=1)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        logits, aux = self.forward_outputs(batch["image"])
        batch_size = len(batch["id"])
        loss = self.loss(logits, batch)
        self.log("train/seg_loss", loss, batch_size=batch_size)
        if aux is not None and self.hparams.aux_weight > 0:
            aux_loss = self.aux_loss(aux, batch)
            self.log("train/aux_loss", aux_loss, batch_size=batch_size)
            loss = loss + self.hparams.aux_weight * aux_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        if "mask" not in batch:
            return
        logits = self(batch["image"])
        batch_size = len(batch["id"])
        self.log("val/loss", masked_cross_entropy(logits, batch["mask"]), batch_size=batch_size, sync_dist=True)
        preds = channel_argmax(logits, dim=1)
        self.val_miou.update(preds, batch["mask"])
        self.val_iou.update(preds, batch["mask"])
        self.log("val/miou", self.val_miou, prog_bar=True, batch_size=batch_size)

    def on_validation_epoch_end(self) -> None:
        self._log_per_class(self.val_iou, "val")

    def test_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        if "mask" not in batch:
            return
        preds = self.segment(batch)
        self.test_miou.update(preds, batch["mask"])
        self.test_iou.update(preds, batch["mask"])
        self.log("test/miou", self.test_miou, batch_size=len(batch["id"]))

    def on_test_epoch_end(self) -> None:
        self._log_per_class(self.test_iou, "test")

    def _log_per_class(self, metric: SegmentationIoU, stage: str) -> None:
        names = self.class_names()
        if metric.update_count == 0:
            return
        per_class = metric.compute()
        metric.reset()
        if names is None or self._trainer is None or self.trainer.sanity_checking:
            return
        for name, value in zip(names, per_class):
            if not torch.isnan(value):
                self.log(f"{stage}/iou/{metric_key(name)}", value, sync_dist=True)

    def predict_artifacts(self, batch: Dict[str, Any], rows: List[int]) -> List[List[Artifact]]:
        """``labels/<id>.png`` per row: :meth:`segment` cropped to the image's size."""
        labels = self.segment(select_rows(batch, rows)).cpu().numpy().astype(np.uint8)
        results = []
        for row, i in enumerate(rows):
            height, width = batch["size"][i].tolist()
            results.append([Artifact(f"labels/{batch['id'][i]}.png", "png", labels[row, :height, :width])])
        return results
