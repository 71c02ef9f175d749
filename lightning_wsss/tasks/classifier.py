"""The multi-label CAM classifier: the first stage of image-label WSSS."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (BinaryAveragePrecision, BinaryF1Score, MultilabelAveragePrecision,
                                         MultilabelF1Score)

from ..callbacks.writers import Artifact
from ..cam import CAMExtractor, add_background, cams_to_label, multiscale_cams
from ..metrics import SegmentationIoU
from ..models.backbones import build_backbone
from ..models.cam import POOLINGS, CAMNet
from ..models.trunk import Trunk
from .base import WSSSTask


def present_class_ids(labels: Tensor) -> Tensor:
    """Dataset class indices (1..C-1) of the present classes per image, padded with -1.

    Args:
        labels: multi-hot float [B, C-1].

    Returns:
        long [B, K] with K the largest number of present classes in the batch (at least 1).
    """
    counts = (labels > 0.5).sum(1)
    width = max(1, int(counts.max()) if labels.numel() else 1)
    out = torch.full((labels.shape[0], width), -1, dtype=torch.long, device=labels.device)
    for row in range(labels.shape[0]):
        ids = torch.nonzero(labels[row] > 0.5).flatten() + 1
        out[row, : len(ids)] = ids
    return out


class CAMClassifier(WSSSTask):
    """Multi-label classifier whose class activation maps seed the pseudo labels (as psa/irn train it).

    A timm backbone (any ``features_only`` model; ResNet-50 at output stride 16 for VOC), global average
    pooling and a bias-free 1x1 classifier; multi-label soft-margin loss; SGD with a 10x learning rate on the
    new head and a poly schedule. Logs multi-label mAP and F1, and on validation images with masks the
    single-scale CAM pseudo-label mIoU. ``predict`` writes, per image, the multi-scale + flip CAMs of its
    present classes (``cams/<id>.npz``: ``cams`` float16 [K, H, W], ``keys`` int [K] class indices) and the
    argmax pseudo label (``labels/<id>.png``).

    The network is a :class:`~lightning_wsss.models.cam.CAMNet` (``self.net``: ``net.features``, the CAM target
    layer, and ``net.head``).

    Hooks for subclasses (besides :class:`~lightning_wsss.tasks.base.WSSSTask`'s): :meth:`configure_backbone`,
    :meth:`configure_head`, :attr:`net_class` / :meth:`net_kwargs`, :meth:`loss`, :meth:`training_loss` (the loss from the backbone
    features, for methods that need more than the logits), :meth:`cam_weight` (the classifier rows a CAM projects
    the features on), :meth:`new_parameters` (the layers trained at ``head_lr_mult``), :meth:`compute_cams`.

    Args:
        num_classes: classes including background (the head predicts the ``num_classes - 1`` foreground ones).
        backbone: timm model name.
        weights: ``None``, ``"imagenet"`` or a local state-dict path (see :mod:`lightning_wsss.models.backbones`).
        output_stride: backbone output stride (16 as irn).
        cam_method: ``cam``, ``gradcam``, ``gradcam++``, ``xgradcam`` or ``layercam`` for prediction.
        cam_scales, cam_flip: multi-scale + flip inference at prediction.
        bg_mode: ``constant`` (``bg_threshold`` as background score, irn) or ``power`` ((1 - max cam) ** ``bg_alpha``, psa).
        bg_threshold, bg_alpha: background scoring.
        pooling: how the class score pools its activation map (:func:`~lightning_wsss.models.cam.pool_class_maps`):
            ``gap`` (global average, psa/irn), ``lse`` (log-sum-exp, ``pooling_param`` = r, default 5), ``topk``
            (mean of the top ``pooling_param`` fraction of cells, default 0.1) or ``gmp`` (max). Average pooling
            asks a class to be present everywhere: a small object's evidence is diluted by the whole map, so the
            classifier learns the context that co-occurs with it.
        feature_layer: the layer the classifier pools and the CAM reads: ``stage`` (the last stage of a timm
            ``features_only`` backbone) or ``forward_features`` (timm's whole trunk, with the 1x1 head convolution
            where the model has one, e.g. EfficientNet's 1280-channel ``conv_head``; :class:`~lightning_wsss.models.trunk.Trunk`).
        feature_level: with ``feature_layer: stage``, the ``features_only`` level the classifier pools and the CAM
            reads (``None``: the last); the backbone stops there, so its features see less of the image around each
            cell (EfficientNet-Lite0: level 3 is stride 16 with 112 channels, level 4 stride 32 with 320).
        positive_weight: per foreground class, the weight of its positive term in the loss (class imbalance: a
            class in few images can get ``(N - n_c) / n_c``, ``tools/positive_weights.py``); ``None``: the plain
            soft-margin loss.
        **kwargs: :class:`~lightning_wsss.tasks.base.WSSSTask` arguments (``lr``, ``head_lr_mult``,
            ``weight_decay``, ``momentum``, ``optimizer``, ``poly_power``).
    """

    artifact_patterns = ("cams/{id}.npz", "labels/{id}.png")
    net_class: Type[CAMNet] = CAMNet

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        weights: Optional[str] = None,
        output_stride: int = 16,
        cam_method: str = "cam",
        cam_scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
        cam_flip: bool = True,
        bg_mode: str = "constant",
        bg_threshold: float = 0.15,
        bg_alpha: float = 16.0,
        pooling: str = "gap",
        pooling_param: Optional[float] = None,
        feature_layer: str = "stage",
        feature_level: Optional[int] = None,
        positive_weight: Optional[Sequence[float]] = None,
        **kwargs: Any,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if feature_level is not None and feature_layer != "stage":
            raise ValueError(f"feature_level needs feature_layer 'stage', got {feature_layer!r}")
        if positive_weight is not None and (len(positive_weight) != num_classes - 1 or min(positive_weight) <= 0):
            raise ValueError(f"positive_weight needs {num_classes - 1} values > 0 (one per foreground class), "
                             f"got {list(positive_weight)}")
        super().__init__(num_classes, **kwargs)
        self._extractor: Optional[CAMExtractor] = None

    # ------------------------------------------------------------------ hooks
    def build_net(self) -> CAMNet:
        """A :attr:`net_class` network on :meth:`configure_backbone` with the :meth:`configure_head` classifier."""
        backbone = self.configure_backbone()
        head = self.configure_head(backbone.feature_info.channels()[-1], self.num_classes - 1)
        return self.net_class(backbone, head, self.hparams.get("pooling", "gap"), self.hparams.get("pooling_param"),
                              **self.net_kwargs())

    def net_kwargs(self) -> Dict[str, Any]:
        """Extra keyword arguments of :attr:`net_class` (none for the plain CAM network)."""
        return {}

    def configure_metrics(self) -> None:
        """Validation mAP and F1 (binary with one foreground class) and the single-scale CAM label mIoU."""
        classes = self.num_classes - 1
        if classes == 1:  # one foreground class (e.g. horse vs background): binary metrics
            metrics = {"mAP": BinaryAveragePrecision(), "F1": BinaryF1Score()}
        else:
            metrics = {"mAP": MultilabelAveragePrecision(num_labels=classes),
                       "F1": MultilabelF1Score(num_labels=classes)}
        self.val_metrics = MetricCollection(metrics, prefix="val/")
        self.val_cam_miou = SegmentationIoU(self.num_classes)

    def configure_backbone(self) -> nn.Module:
        """Build the timm ``features_only`` backbone (override for other feature extractors)."""
        hp = self.hparams
        if hp.get("feature_layer", "stage") == "forward_features":
            return Trunk(hp.backbone, hp.weights, output_stride=hp.output_stride)
        if hp.get("feature_layer", "stage") != "stage":
            raise ValueError(f"feature_layer must be 'stage' or 'forward_features', got {hp.feature_layer!r}")
        level = hp.get("feature_level")
        return build_backbone(hp.backbone, hp.weights, output_stride=hp.output_stride,
                              out_indices=None if level is None else (int(level),))

    def configure_head(self, in_channels: int, num_outputs: int) -> nn.Module:
        """The bias-free 1x1 classifier on pooled features."""
        head = nn.Conv2d(in_channels, num_outputs, kernel_size=1, bias=False)
        nn.init.xavier_uniform_(head.weight)
        return head

    def loss(self, logits: Tensor, labels: Tensor, batch: Optional[Dict[str, Any]] = None) -> Tensor:
        """Multi-label soft-margin loss (the mean binary cross-entropy over classes), its positive terms weighted by
        ``positive_weight`` when set; ``logits`` and ``labels`` [B, C-1]."""
        weight = self.hparams.get("positive_weight")
        if weight is None:
            return F.multilabel_soft_margin_loss(logits, labels)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=logits.new_tensor(weight))

    def training_loss(self, features: Tensor, batch: Dict[str, Any]) -> Tensor:
        """The training loss from backbone features [B, D, h, w] (default: :meth:`loss` of the class logits)."""
        return self.loss(self.classify(features), batch["labels"], batch)

    def cam_weight(self) -> Tensor:
        """The classifier rows [C-1, D] a CAM projects the features on (``cam_method: cam``, :meth:`raw_cams`)."""
        return self.net.cam_weight()

    def new_parameters(self) -> List[nn.Parameter]:
        """The parameters of the new layers, trained at ``lr * head_lr_mult`` (the backbone trains at ``lr``)."""
        return self.net.head_parameters()

    def param_groups(self) -> Tuple[Iterable[nn.Parameter], List[nn.Parameter]]:
        """The backbone and :meth:`new_parameters`."""
        return self.net.features.parameters(), self.new_parameters()

    def compute_cams(self, images: Tensor, class_ids: Tensor) -> Tensor:
        """Multi-scale + flip CAMs of ``class_ids`` (dataset indices 1..C-1, -1 padding).

        Returns:
            float [B, K, H, W] in [0, 1], each map divided by its max.
        """
        extractor = self.cam_extractor()
        logit_ids = torch.where(class_ids > 0, class_ids - 1, class_ids)
        with torch.inference_mode(False), torch.enable_grad():
            images = images.clone()
            return multiscale_cams(extractor, images, logit_ids, self.hparams.cam_scales, self.hparams.cam_flip)

    # ------------------------------------------------------------------ model
    def forward(self, images: Tensor) -> Tensor:
        """Class logits [B, C-1] for images [B, 3, H, W]."""
        return self.net(images)

    def classify(self, features: Tensor) -> Tensor:
        """Logits [B, C-1] from features [B, D, h, w] (:meth:`~lightning_wsss.models.cam.CAMNet.classify`)."""
        return self.net.classify(features)

    def raw_cams(self, features: Tensor) -> Tensor:
        """ReLU'd class activation maps [B, C-1, h, w] of every foreground class on the :meth:`cam_weight` rows,
        from features [B, D, h, w]."""
        return self.net.raw_cams(features, self.cam_weight())

    def predict_images_loader(self, needs: str, instead: str):
        """The DataModule's predict loader, read once by methods that build something from the prediction images
        before predicting (LPCAM's prototypes, ProbeCAM's probes); every DDP rank sees all images.

        Args:
            needs: what the images give (for the error); instead: the call to make without a DataModule.

        Raises:
            RuntimeError: the trainer has no DataModule.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise RuntimeError(f"{type(self).__name__} needs a DataModule at prediction (its predict_dataloader gives "
                               f"the {needs}), or call {instead} before predicting")
        return datamodule.predict_dataloader()

    def cam_extractor(self) -> CAMExtractor:
        """The extractor for ``cam_method`` on ``self.net`` (built once; hooks live as long as the module)."""
        if self._extractor is None or self._extractor.method != self.hparams.cam_method.lower():
            if self._extractor is not None:
                self._extractor.release()
            self._extractor = CAMExtractor(
                self.net, [self.net.features], method=self.hparams.cam_method, normalize="none",
                classifier_weight=self.cam_weight() if self.hparams.cam_method == "cam" else None,
            )
        return self._extractor

    def background(self, cams: Tensor) -> Tensor:
        """Prepend the background channel to CAMs [B, K, H, W] -> [B, K+1, H, W]."""
        hp = self.hparams
        return add_background(cams, mode=hp.bg_mode, bg_threshold=hp.bg_threshold, alpha=hp.bg_alpha)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.training_loss(self.net.features(batch["image"]), batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["id"]))
        return loss

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        features = self.net.features(batch["image"])
        logits = self.classify(features)
        batch_size = len(batch["id"])
        self.log("val/loss", self.loss(logits, batch["labels"], batch), batch_size=batch_size, sync_dist=True)
        probs, targets = torch.sigmoid(logits), batch["labels"].long()
        if probs.shape[1] == 1:
            probs, targets = probs[:, 0], targets[:, 0]
        self.val_metrics.update(probs, targets)
        self.log_dict(self.val_metrics, batch_size=batch_size)
        if "mask" in batch:
            self.val_cam_miou.update(self.single_scale_labels(features, batch["labels"], batch["image"].shape[-2:]),
                                     batch["mask"])
            self.log("val/cam_miou", self.val_cam_miou, batch_size=batch_size)

    def single_scale_labels(self, features: Tensor, labels: Tensor, size) -> Tensor:
        """CAM pseudo labels [B, H, W] from one forward's features [B, D, h, w] and multi-hot ``labels`` [B, C-1]."""
        class_ids = present_class_ids(labels)
        maps = self.raw_cams(features)
        gathered = torch.gather(maps, 1, (class_ids.clamp(min=1) - 1)[..., None, None].expand(-1, -1, *maps.shape[-2:]))
        gathered = gathered * (class_ids >= 1)[..., None, None]
        cams = F.interpolate(gathered, size=tuple(size), mode="bilinear", align_corners=False)
        cams = cams / (cams.flatten(2).amax(-1)[..., None, None] + 1e-5)
        return cams_to_label(self.background(cams), class_ids)

    def panel_predictions(self, batch: Dict[str, Any]) -> Tensor:
        """Single-scale CAM labels, for the W&B image panels."""
        return self.single_scale_labels(self.net.features(batch["image"]), batch["labels"], batch["image"].shape[-2:])

    def predict_artifacts(self, batch: Dict[str, Any], rows: List[int]) -> List[List[Artifact]]:
        """``cams/<id>.npz`` (:meth:`compute_cams` of the present classes) and ``labels/<id>.png`` per row."""
        index = torch.tensor(rows, device=batch["image"].device)
        class_ids = present_class_ids(batch["labels"][index])
        cams = self.compute_cams(batch["image"][index], class_ids)
        labels = cams_to_label(self.background(cams), class_ids)
        results = []
        for row, i in enumerate(rows):
            height, width = batch["size"][i].tolist()
            keep = class_ids[row] > 0
            image_id = batch["id"][i]
            results.append([
                Artifact(f"cams/{image_id}.npz", "npz", {
                    "cams": cams[row, keep, :height, :width].cpu().numpy().astype("float16"),
                    "keys": class_ids[row, keep].cpu().numpy(),
                }),
                Artifact(f"labels/{image_id}.png", "png", labels[row, :height, :width].cpu().numpy().astype("uint8")),
            ])
        return results
