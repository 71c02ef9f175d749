"""The base of every task: hyper-parameters, the network, the optimiser and the prediction template.

:class:`WSSSTask` follows torchgeo's trainers: ``__init__`` saves the hyper-parameters (of every class in the
chain, so a subclass needs no ``save_hyperparameters`` of its own), then calls :meth:`~WSSSTask.configure_model`,
:meth:`~WSSSTask.configure_losses` and :meth:`~WSSSTask.configure_metrics`. The network is a plain
``nn.Module`` (:mod:`lightning_wsss.models`) held as ``self.net``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import lightning as L
from torch import nn

from ..callbacks.writers import Artifact, find_writer
from ..datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from .optim import configure_poly

__all__ = ["WSSSTask"]


class WSSSTask(L.LightningModule):
    """A LightningModule whose network ``self.net`` is a plain ``nn.Module``, trained by SGD / AdamW with a poly
    schedule, and whose ``predict`` returns artifacts for :class:`~lightning_wsss.callbacks.ArtifactWriter`.

    Hooks for subclasses:

    * :meth:`build_net` (the network; :meth:`configure_model` calls it once), :meth:`configure_losses`,
      :meth:`configure_metrics`: run by ``__init__`` in that order;
    * :meth:`param_groups`: ``(backbone, new layers)``; the new layers train at ``lr * head_lr_mult``;
    * :meth:`schedule_restart`: a restart of the poly schedule (none by default; ReCAM's fine-tuning);
    * :meth:`predict_artifacts`: the artifacts of the images the writer does not have yet (:meth:`predict_step`
      skips the others).

    Checkpoints written before the tasks held ``self.net`` (its weights at the top level, or under
    :attr:`legacy_net_prefix`) load: their keys are renamed when loaded.

    Args:
        num_classes: classes including background.
        lr: base learning rate (of the backbone).
        head_lr_mult: learning-rate multiplier of the new layers.
        weight_decay: weight decay of every parameter.
        momentum: SGD momentum.
        optimizer: ``sgd`` or ``adamw``.
        poly_power: power of the per-step poly schedule ``(1 - step / total) ** poly_power``.
    """

    artifact_patterns: Tuple[str, ...] = ()
    legacy_net_prefix: str = ""
    ddp_find_unused_parameters: bool = False
    """True for a task some of whose trainable parameters get no gradient in some steps (a head whose loss starts
    at a later epoch): DDP must then look for them, ``strategy: ddp_find_unused_parameters_true`` (the pipeline
    picks it for such a task)."""

    def __init__(
        self,
        num_classes: int,
        lr: float = 0.01,
        head_lr_mult: float = 10.0,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        optimizer: str = "sgd",
        poly_power: float = 0.9,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.net: Optional[nn.Module] = None
        self.configure_model()
        self.configure_losses()
        self.configure_metrics()

    # ------------------------------------------------------------------ hooks
    def build_net(self) -> nn.Module:
        """The network (override)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_net")

    def configure_model(self) -> None:
        """Build ``self.net`` with :meth:`build_net` unless it exists (Lightning calls this hook again)."""
        if self.net is None:
            self.net = self.build_net()

    def configure_losses(self) -> None:
        """Build loss modules (none by default: the losses are functions)."""

    def configure_metrics(self) -> None:
        """Build the torchmetrics objects (none by default)."""

    def param_groups(self) -> Tuple[Iterable[nn.Parameter], Iterable[nn.Parameter]]:
        """``(backbone, new layers)`` parameters: the optimiser trains the new layers at ``lr * head_lr_mult``."""
        raise NotImplementedError(f"{type(self).__name__} must implement param_groups")

    def predict_artifacts(self, batch: Dict[str, Any], rows: List[int]) -> List[List[Artifact]]:
        """The artifacts of the batch rows ``rows`` (images not written yet), one list per row."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict_artifacts")

    # ------------------------------------------------------------------ shared
    def normalization(self) -> Tuple[Sequence[float], Sequence[float]]:
        """The (mean, std) the images were normalised with: the datamodule's, else ImageNet's."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        mean = getattr(datamodule, "mean", None)
        std = getattr(datamodule, "std", None)
        if mean is None or std is None:
            return IMAGENET_MEAN, IMAGENET_STD
        return tuple(mean), tuple(std)

    def pending_rows(self, batch: Dict[str, Any]) -> List[int]:
        """The batch rows whose artifacts the trainer's writer does not have yet (all without a writer)."""
        writer = find_writer(self._trainer)
        return [i for i, image_id in enumerate(batch["id"]) if writer is None or not writer.is_done(image_id, self)]

    def predict_step(self, batch: Dict[str, Any], batch_idx: int,
                     dataloader_idx: int = 0) -> List[Optional[List[Artifact]]]:
        """Per image, its artifacts (:meth:`predict_artifacts`), or None where the writer has them already."""
        results: List[Optional[List[Artifact]]] = [None] * len(batch["id"])
        rows = self.pending_rows(batch)
        if rows:
            for i, artifacts in zip(rows, self.predict_artifacts(batch, rows)):
                results[i] = artifacts
        return results

    def configure_optimizers(self):
        hp = self.hparams
        backbone, new = self.param_groups()
        return configure_poly(self, backbone, new, hp.lr, hp.head_lr_mult, hp.weight_decay, hp.optimizer,
                              hp.momentum, hp.poly_power, **self.schedule_restart())

    def schedule_restart(self) -> Dict[str, Any]:
        """``restart_step`` / ``restart_mult`` of the poly schedule (:func:`~lightning_wsss.tasks.optim.poly_factor`:
        a fresh schedule at a factor of the rates from that step on); none by default."""
        return {}

    # ------------------------------------------------------------------ checkpoints
    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        rename_legacy_keys(state_dict, prefix, self.legacy_net_prefix, self.net)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def rename_legacy_keys(state_dict: Dict[str, Any], prefix: str, legacy: str, net: nn.Module) -> None:
    """Rename, in place, the keys ``prefix + legacy + K`` of ``net``'s tensors to ``prefix + "net." + K`` (the
    layout of checkpoints written before the tasks held ``self.net``); keys of other modules stay."""
    expected = {f"{prefix}net.{key}" for key in net.state_dict()}
    for key in [k for k in state_dict if k.startswith(prefix + legacy)]:
        renamed = f"{prefix}net.{key[len(prefix) + len(legacy):]}"
        if renamed in expected and renamed not in state_dict:
            state_dict[renamed] = state_dict.pop(key)
