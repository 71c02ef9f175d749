"""IRN's inter-pixel relations (Ahn, Cho and Kwak, CVPR 2019): a class-boundary map whose path affinities drive
the random walk. The displacement field (instances) is not implemented."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from ..models.affinity import BoundaryNet
from ..refine.affinity_labels import affinity_pairs, neighbor_offsets
from ..refine.path_affinity import boundary_loss, path_affinity
from ..errors import DataError
from .affinity import AffinityRefiner


class BoundaryRefiner(AffinityRefiner):
    """IRN's class-boundary branch trained from the confident labels' pair relations; walks on path affinities.

    Everything but the network and the affinities is :class:`~lightning_wsss.tasks.AffinityRefiner`'s: the data
    (confident labels through ``PseudoMaskDataModule``), the optimiser, ``backbone_init``, validation (loss and
    ``val/aff_*`` separation on the val masks) and prediction (walk modes ``psa`` / ``irn``, steps, ``labels/<id>.png``).

    * network (:meth:`build_net`, a :class:`~lightning_wsss.models.affinity.BoundaryNet`): a side output of each of
      ``feature_levels`` (1x1 conv to ``embed_dim`` channels, GroupNorm, ReLU), upsampled to the first level's
      stride, concatenated, a 1x1 conv to one channel and a sigmoid: the boundary map ``B`` [B, 1, h, w] (irn: 5
      levels, 32 channels each, stride 4); with ``freeze_backbone`` (irn) only the head trains, the backbone is
      kept in eval mode and no gradient flows into it;
    * :meth:`affinity`: the path affinities ``a_ij = 1 - max B`` on the segment from i to j over the walk's
      ``radius`` offsets (:func:`~lightning_wsss.refine.path_affinity.path_affinity`); the walk raises them to
      ``beta`` as for AffinityNet (irn: beta 10, 256 steps);
    * :meth:`training_loss`: irn's loss on path affinities over ``train_radius`` (irn: 10 at stride 4; default: the
      walk's ``radius``), 1/4 bg-positive + 1/4 fg-positive + 1/2 negative
      (:func:`~lightning_wsss.refine.path_affinity.boundary_loss`);
    * :meth:`walk_cams`: with ``boundary_cams`` (irn: on) the CAMs are multiplied by ``1 - B`` before the walk;
    * :meth:`param_groups`: the head only with ``freeze_backbone``.

    Args:
        feature_levels, embed_dim, beta: as :class:`~lightning_wsss.tasks.AffinityRefiner` with irn's defaults;
            ``embed_dim`` is the width of each side output.
        train_radius: radius of the training pairs (None: ``radius``).
        boundary_cams: multiply the CAMs by ``1 - B`` before the walk.
        freeze_backbone: train the boundary head only.
        **kwargs: :class:`~lightning_wsss.tasks.AffinityRefiner` arguments.
    """

    def __init__(
        self,
        num_classes: int,
        feature_levels: Sequence[int] = (1, 2, 3, 4),
        embed_dim: int = 32,
        beta: float = 10.0,
        train_radius: Optional[int] = None,
        boundary_cams: bool = True,
        freeze_backbone: bool = False,
        **kwargs: Any,
    ) -> None:
        if train_radius is not None and int(train_radius) < 2:
            raise ValueError(f"train_radius must be >= 2, got {train_radius}")
        super().__init__(num_classes, feature_levels=feature_levels, embed_dim=embed_dim, beta=beta, **kwargs)
        if train_radius is not None:
            self.register_buffer("train_offsets", neighbor_offsets(int(train_radius)), persistent=False)

    # ------------------------------------------------------------------ hooks
    def build_net(self) -> BoundaryNet:
        """The boundary network on :meth:`configure_backbone`'s ``feature_levels``."""
        hp = self.hparams
        return BoundaryNet(self.configure_backbone(), hp.feature_levels, int(hp.embed_dim), bool(hp.get("freeze_backbone")))

    def param_groups(self) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
        """As :class:`~lightning_wsss.tasks.AffinityRefiner`'s, without the backbone when it is frozen."""
        backbone = [] if self.net.freeze_backbone else list(self.net.backbone.parameters())
        return backbone, self.net.head_parameters()

    def affinity(self, embedding: Tensor) -> Tensor:
        """Path affinities [B, P, h, w] of the boundary map [B, 1, h, w] over the radius offsets."""
        return path_affinity(embedding[:, 0], self.offsets)

    def training_loss(self, embedding: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """irn's loss on the path affinities of pairs within ``train_radius`` (default: the walk's ``radius``)."""
        radius = self.hparams.get("train_radius")
        if radius is None:
            return super().training_loss(embedding, labels)
        bg_pos, fg_pos, neg = affinity_pairs(labels, int(radius))
        return boundary_loss(embedding[:, 0], bg_pos, fg_pos, neg, self.train_offsets)

    def walk_cams(self, cams_fg: Tensor, embedding: Tensor) -> Tensor:
        """CAMs [1, K, h, w] times ``1 - B`` with ``boundary_cams`` (irn), else unchanged."""
        if not self.hparams.get("boundary_cams", True):
            return cams_fg
        return cams_fg * (1.0 - embedding.to(cams_fg.dtype))


def refiner_class(path: str) -> type:
    """:class:`BoundaryRefiner` for a checkpoint with a boundary head (``net.boundary.*`` weights), else
    :class:`~lightning_wsss.tasks.AffinityRefiner` (for tools given a refiner checkpoint without its class path).

    Raises:
        DataError: unreadable file or no state_dict (naming the file).
    """
    from ..serialization import safe_torch_load

    checkpoint = safe_torch_load(path, "checkpoint")
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise DataError(path, "not a checkpoint with a state_dict")
    return BoundaryRefiner if any(k.startswith(("net.boundary.", "boundary.")) for k in state) else AffinityRefiner
