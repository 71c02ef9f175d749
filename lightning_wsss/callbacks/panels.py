"""W&B image panels: images with ground-truth, pseudo and predicted masks, a handful per epoch, rank zero only."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ..datamodules.transforms import denormalize
from ..datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..tensors import channel_argmax


def panel_predictions(pl_module: L.LightningModule, batch: Dict[str, Any]) -> Optional[torch.Tensor]:
    """Predicted label maps [B, H, W] for a batch: the segmenter's argmax, or the classifier's CAM labels.

    A task can define ``panel_predictions(batch)`` to choose for itself.
    """
    if hasattr(pl_module, "panel_predictions"):
        return pl_module.panel_predictions(batch)
    if hasattr(pl_module, "predict_logits"):
        return channel_argmax(pl_module.predict_logits(batch["image"]), dim=1)
    return None


def _masks(class_labels: Dict[int, str], **maps: Optional[np.ndarray]) -> Dict[str, Dict[str, Any]]:
    return {name: {"mask_data": m.astype(np.uint8), "class_labels": class_labels} for name, m in maps.items() if m is not None}


class MaskPanelLogger(Callback):
    """Log ``num_images`` images per epoch to W&B with their masks overlaid (``wandb.Image(..., masks=...)``).

    Validation panels show ground truth and prediction; training panels show the pseudo mask the model is trained
    on and, where the datamodule keeps it, the ground truth. Does nothing without a ``WandbLogger``.
    """

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images

    def _wandb_logger(self, trainer: L.Trainer):
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                return logger
        return None

    def _images(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Dict[str, Any],
                prediction: Optional[torch.Tensor], pseudo_key: Optional[str], gt_key: Optional[str]) -> List[Any]:
        import wandb

        datamodule = getattr(trainer, "datamodule", None)
        names = list(getattr(datamodule, "class_names", [])) or [str(i) for i in range(getattr(pl_module, "num_classes", 256))]
        class_labels = {i: n for i, n in enumerate(names)}
        class_labels[255] = "ignore"
        mean, std = getattr(datamodule, "mean", IMAGENET_MEAN), getattr(datamodule, "std", IMAGENET_STD)
        images = []
        for i in range(min(self.num_images, len(batch["id"]))):
            height, width = batch["size"][i].tolist()
            crop = (slice(0, height), slice(0, width))
            image = denormalize(batch["image"][i, :, :height, :width].detach().cpu().numpy(), mean, std)

            def get(key: Optional[str]) -> Optional[np.ndarray]:
                return batch[key][i][crop].cpu().numpy() if key and key in batch else None

            pred = prediction[i][crop].cpu().numpy() if prediction is not None else None
            masks = _masks(class_labels, ground_truth=get(gt_key), pseudo=get(pseudo_key), prediction=pred)
            images.append(wandb.Image(image, masks=masks, caption=batch["id"][i]))
        return images

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        logger = self._wandb_logger(trainer)
        if logger is None or batch_idx != 0 or not trainer.is_global_zero or trainer.sanity_checking:
            return
        with torch.no_grad():
            prediction = panel_predictions(pl_module, batch)
        logger.experiment.log({"val/panels": self._images(trainer, pl_module, batch, prediction, None, "mask"),
                               "trainer/global_step": trainer.global_step})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        logger = self._wandb_logger(trainer)
        if logger is None or batch_idx != 0 or not trainer.is_global_zero or "mask" not in batch:
            return
        logger.experiment.log({"train/panels": self._images(trainer, pl_module, batch, None, "mask", "gt_mask"),
                               "trainer/global_step": trainer.global_step})
