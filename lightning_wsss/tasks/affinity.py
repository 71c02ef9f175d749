"""AffinityNet (Ahn and Kwak, CVPR 2018): learn pixel affinities from confident CAM labels, then random-walk."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..callbacks.writers import Artifact
from ..cam.files import load_cams
from ..models.affinity import AffinityNet
from ..models.backbones import build_backbone
from ..errors import DataError
from ..refine.crf import crf_from_scores, crf_params_for
from ..refine.label_bounds import bound_changes
from ..refine.affinity_labels import affinity_loss, affinity_pairs, neighbor_offsets  # affinity_loss: re-exported
from ..refine.random_walk import affinity_from_features, irn_scores, random_walk
from ..refine.separation import affinity_separation_sums, separation_means
from ..tensors import channel_argmax
from .base import WSSSTask

WALK_MODES = ("psa", "irn")


def downsample_labels(mask: Tensor, stride: int, size: Tuple[int, int]) -> Tensor:
    """Subsample label maps [B, H, W] at the centre of every ``stride`` cell to ``size`` (padding 255)."""
    sub = mask[:, stride // 2 :: stride, stride // 2 :: stride]
    sub = sub[:, : size[0], : size[1]]
    return F.pad(sub, (0, size[1] - sub.shape[-1], 0, size[0] - sub.shape[-2]), value=255)


BACKBONE_PREFIXES = ("net.features.backbone.", "net.backbone.", "features.backbone.", "backbone.")


def backbone_state_from_checkpoint(path: str, prefixes: Sequence[str] = BACKBONE_PREFIXES) -> Dict[str, Tensor]:
    """The backbone weights of a Lightning checkpoint (a CAM classifier's ``net.features.backbone.*``, or another
    refiner's ``net.backbone.*``; ``features.backbone.*`` / ``backbone.*`` in checkpoints written before the tasks
    held ``self.net``), prefix stripped.

    Raises:
        DataError: unreadable file, or no key with any of the prefixes (naming the file).
    """
    from ..serialization import safe_torch_load

    checkpoint = safe_torch_load(path, "checkpoint")
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise DataError(path, "not a checkpoint with a state_dict")
    for prefix in prefixes:
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    raise DataError(path, f"no backbone weights in the checkpoint (no key starts with {' or '.join(prefixes)})")


PSA_REFERENCE_CELLS = 56  # psa walks 2 ** 8 steps on 448 px crops at stride 8


class AffinityRefiner(WSSSTask):
    """AffinityNet: multi-level backbone features fused into an embedding whose L1 distances give affinities.

    Trains on confident label maps (``mask``: class, background 0, 255 unknown) written from the CAM stage and
    read through :class:`~lightning_wsss.datamodules.PseudoMaskDataModule`; pairs of pixels within ``radius``
    at the embedding's stride are bg-positive, fg-positive or negative. ``predict`` reads each image's CAMs
    from ``cams_dir`` and walks them with the sparse random walk ``(D^-1 A^beta)^t`` (:meth:`walk_scores`):

    * ``walk_mode="psa"``: the background channel ``(1 - max cam) ** bg_alpha`` is walked with the classes;
    * ``walk_mode="irn"``: the foreground CAMs alone are walked, each walked map is divided by its maximum and
      the constant ``bg_threshold`` is the background score after the walk (irn's ``make_sem_seg_labels``);

    and writes the argmax at image resolution to ``labels/<id>.png`` (optionally dense-CRF refined). With
    ``walk_flip`` the walk also reads the mirror image (:meth:`walk_affinity`; irn averages its boundary map over
    the image and its mirror at inference).

    Validation (on the ground-truth masks of the val split) logs, besides the loss on them, the mean ``a^beta``
    of pairs inside one region (``val/aff_same``; ``val/aff_bg``, ``val/aff_fg``) and across a region boundary
    (``val/aff_cross``) and their ratio ``val/aff_ratio``: whether the affinities separate objects, which the
    loss does not show (:mod:`lightning_wsss.refine.separation`).

    The network is an :class:`~lightning_wsss.models.affinity.AffinityNet` (``self.net``: ``net.backbone``, a
    projection per level and ``net.fuse``).

    Hooks for subclasses (besides :class:`~lightning_wsss.tasks.base.WSSSTask`'s): :meth:`configure_backbone`,
    :meth:`build_net`, :meth:`embed`, :meth:`walk_affinity`, :meth:`affinity`, :meth:`loss`, :meth:`training_loss`,
    :meth:`walk_cams`, :meth:`propagate`, :meth:`walk_scores` (:class:`~lightning_wsss.tasks.irn.BoundaryRefiner`
    overrides some).

    Args:
        num_classes: classes including background.
        backbone, weights, output_stride: as :class:`~lightning_wsss.tasks.CAMClassifier`.
        feature_levels: backbone levels fused into the embedding; the first sets the embedding stride.
        embed_dim: channels of the affinity embedding.
        radius: neighbourhood radius of the pairs and of the random walk.
        beta: random-walk exponent (psa: 8).
        log_t: number of steps ``2 ** log_t``; ``None`` (default) scales psa's 256 steps on a 56-cell map (448 px at
            stride 8) to the map at hand, ``t = 256 * (min(h, w) / 56) ** 2``: a walk diffuses about ``r * sqrt(t)``
            cells, so a fixed ``t`` over-smooths small maps across object boundaries.
        t: the number of steps itself (any integer >= 0; overrides ``log_t`` and the scaling).
        bg_alpha: background power of the CAMs before the walk (``walk_mode="psa"``).
        walk_mode: ``"psa"`` or ``"irn"`` (see above).
        bg_threshold: background score after an irn walk (irn: 0.25).
        irn_normalize: ``"class"`` (each walked class map by its max) or ``"global"`` (by the image's max, irn's code).
        walk_flip: ``False`` (default), ``"affinity"`` (walk on the mean of the affinities of the image and of its
            mirror image, :meth:`mirror_embedding`) or ``"embedding"`` (on the affinities of the mean embedding,
            irn's boundary-map average); ``True`` means ``"affinity"``.
        backbone_init: a checkpoint whose backbone weights (a CAM classifier's ``features.backbone.*``) start the
            backbone when training begins (loaded in ``setup("fit")``, so a resumed run keeps its own weights);
            where the names or shapes do not match the backbone, a warning says so and ``weights`` is kept.
        cams_dir: folder of the CAM stage's ``<id>.npz`` files (needed by ``predict``).
        crf: dense-CRF post-processing of the walked probabilities: ``False`` (none), ``True`` (psa's parameters)
            or a mapping of :class:`~lightning_wsss.refine.crf.CRFParams` fields plus ``scale_params`` (spatial
            widths scaled from 500 px to the image, :func:`~lightning_wsss.refine.crf.crf_params_for`).
        crf_max_growth, crf_min_kept: bounds on what the CRF changes in the walk's labels
            (:func:`~lightning_wsss.refine.label_bounds.bound_changes`: no class grows past ``crf_max_growth`` times
            its walked area, every walked region keeps ``crf_min_kept`` of its pixels; ``None``: no bound).
        **kwargs: :class:`~lightning_wsss.tasks.base.WSSSTask` arguments (``lr``, ``head_lr_mult``,
            ``weight_decay``, ``momentum``, ``optimizer``, ``poly_power``).
    """

    artifact_patterns = ("labels/{id}.png",)
    walk_flips = (False, True, "affinity", "embedding")  # the values of walk_flip

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        weights: Optional[str] = None,
        output_stride: int = 16,
        feature_levels: Sequence[int] = (2, 3, 4),
        embed_dim: int = 128,
        radius: int = 5,
        beta: float = 8.0,
        log_t: Optional[int] = None,
        bg_alpha: float = 16.0,
        cams_dir: Optional[str] = None,
        t: Optional[int] = None,
        walk_mode: str = "psa",
        bg_threshold: float = 0.25,
        irn_normalize: str = "class",
        walk_flip: Union[bool, str] = False,
        backbone_init: Optional[str] = None,
        crf: Union[bool, Dict[str, Any]] = False,
        crf_max_growth: Optional[float] = None,
        crf_min_kept: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        if walk_mode not in WALK_MODES:
            raise ValueError(f"walk_mode must be one of {WALK_MODES}, got {walk_mode!r}")
        if irn_normalize not in ("class", "global"):
            raise ValueError(f"irn_normalize must be 'class' or 'global', got {irn_normalize!r}")
        if walk_flip not in self.walk_flips:
            raise ValueError(f"walk_flip must be one of {self.walk_flips}, got {walk_flip!r}")
        if t is not None and int(t) < 0:
            raise ValueError(f"t must be >= 0, got {t}")
        crf_params_for(crf, (1, 1))  # an unknown CRF setting fails here, not after training
        super().__init__(num_classes, **kwargs)
        self._separation: Optional[Dict[str, Tensor]] = None
        self.register_buffer("offsets", neighbor_offsets(radius), persistent=False)

    # ------------------------------------------------------------------ hooks
    def configure_backbone(self) -> nn.Module:
        """The timm ``features_only`` backbone."""
        hp = self.hparams
        return build_backbone(hp.backbone, hp.weights, output_stride=hp.output_stride)

    def build_net(self) -> AffinityNet:
        """The embedding network on :meth:`configure_backbone`'s ``feature_levels``."""
        return AffinityNet(self.configure_backbone(), self.hparams.feature_levels, self.hparams.embed_dim)

    def param_groups(self) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
        """``(backbone, head)`` parameters: the optimiser trains the head at ``lr * head_lr_mult``."""
        return list(self.net.backbone.parameters()), self.net.head_parameters()

    @property
    def stride(self) -> int:
        """The network's output stride (of its first feature level)."""
        return self.net.stride

    def embed(self, images: Tensor) -> Tensor:
        """Affinity embedding [B, D, H / stride, W / stride]."""
        return self.net(images)

    def walk_affinity(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """``(embedding [B, D, h, w], affinities [B, P, h, w])`` the walk reads for ``images`` [B, 3, H, W]:
        :meth:`embed` and :meth:`affinity`; with ``walk_flip`` the affinities are the mean of the image's and of
        its mirror image's (:meth:`mirror_embedding`)."""
        embedding = self.embed(images)
        if not self.hparams.get("walk_flip"):
            return embedding, self.affinity(embedding)
        mirrored = self.mirror_embedding(images, embedding.shape[-1])
        if self.hparams.walk_flip == "embedding":
            embedding = (embedding + mirrored) / 2
            return embedding, self.affinity(embedding)
        return embedding, (self.affinity(embedding) + self.affinity(mirrored)) / 2

    def mirror_embedding(self, images: Tensor, width: int) -> Tensor:
        """The embedding of the mirrored ``images`` [B, 3, H, W], flipped back [B, D, h, width]: the images are
        padded on the right to ``width * stride`` first, so that the mirrored cells cover the same pixels."""
        padded = F.pad(images, (0, width * self.stride - images.shape[-1]))
        return self.embed(padded.flip(-1)).flip(-1)[..., :width]

    def affinity(self, embedding: Tensor) -> Tensor:
        """Pair affinities a_ij = exp(-mean |f_i - f_j|) [B, P, h, w] over the radius offsets."""
        return affinity_from_features(embedding, self.offsets)

    def loss(self, aff: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """AffinityNet loss from affinities [B, P, h, w] and confident labels at the embedding stride [B, h, w]."""
        bg_pos, fg_pos, neg = affinity_pairs(labels, self.hparams.radius)
        return affinity_loss(aff, bg_pos, fg_pos, neg)

    def training_loss(self, embedding: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """The training step's loss: :meth:`loss` of :meth:`affinity` (a subclass may train on other pairs)."""
        return self.loss(self.affinity(embedding), labels)

    def walk_cams(self, cams_fg: Tensor, embedding: Tensor) -> Tensor:
        """Foreground CAMs [1, K, h, w] at the embedding size as they enter the walk (here unchanged), given the
        image's embedding [1, D, h, w]."""
        return cams_fg

    def propagate(self, cams_with_bg: Tensor, aff: Tensor) -> Tensor:
        """Random walk of [B, C, h, w] scores (all channels as given) over affinities [B, P, h, w]."""
        hp = self.hparams
        return random_walk(cams_with_bg, aff, self.offsets, beta=hp.beta, t=self.walk_steps(tuple(aff.shape[-2:])))

    def walk_scores(self, cams_fg: Tensor, aff: Tensor) -> Tensor:
        """Walked scores [1, K+1, h, w] (background first) of foreground CAMs [1, K, h, w] at the affinity size.

        ``psa``: :meth:`propagate` of ``[(1 - max) ** bg_alpha, cams]``; ``irn``: :meth:`propagate` of the CAMs,
        then :func:`~lightning_wsss.refine.random_walk.irn_scores` (normalised maps, constant background).
        """
        hp = self.hparams
        if hp.get("walk_mode", "psa") == "irn":
            walked = self.propagate(cams_fg, aff) if cams_fg.shape[1] else cams_fg
            return irn_scores(walked, hp.get("bg_threshold", 0.25), hp.get("irn_normalize", "class"))
        if cams_fg.shape[1] == 0:  # no foreground class: background everywhere
            return cams_fg.new_ones(cams_fg.shape[0], 1, *cams_fg.shape[-2:])
        bg = (1.0 - cams_fg.amax(dim=1, keepdim=True)).clamp(min=0) ** hp.bg_alpha
        return self.propagate(torch.cat([bg, cams_fg], dim=1), aff)

    def walk_steps(self, size: Tuple[int, int]) -> int:
        """Number of random-walk steps for a map of ``size`` cells (``t``, else ``2 ** log_t``, else scaled)."""
        if self.hparams.get("t") is not None:
            return int(self.hparams.t)
        if self.hparams.log_t is not None:
            return 2 ** int(self.hparams.log_t)
        return max(1, int(round(256 * (min(size) / PSA_REFERENCE_CELLS) ** 2)))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.get("backbone_init"):
            self.init_backbone(self.hparams.backbone_init)

    def init_backbone(self, path: str) -> bool:
        """Load the backbone weights of checkpoint ``path`` (see ``backbone_init``). Returns whether they loaded."""
        from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

        state = backbone_state_from_checkpoint(path)
        own = self.net.backbone.state_dict()
        mismatched = sorted(k for k in own if k not in state or state[k].shape != own[k].shape)
        if mismatched:
            rank_zero_warn(f"AffinityRefiner: the backbone of {path} does not match {self.hparams.backbone!r} "
                           f"({len(mismatched)} of {len(own)} tensors differ, e.g. {mismatched[0]}); "
                           f"keeping weights={self.hparams.weights!r}")
            return False
        self.net.backbone.load_state_dict({k: state[k] for k in own})
        rank_zero_info(f"AffinityRefiner: backbone initialised from {path}")
        return True

    # ------------------------------------------------------------------ steps
    def _step(self, batch: Dict[str, Any], stage: str) -> Tensor:
        embedding = self.embed(batch["image"])
        labels = downsample_labels(batch["mask"], self.stride, tuple(embedding.shape[-2:]))
        losses = self.training_loss(embedding, labels)
        batch_size = len(batch["id"])
        self.log(f"{stage}/loss", losses["loss"], prog_bar=stage == "train", batch_size=batch_size, sync_dist=stage != "train")
        for key in ("bg", "fg", "neg"):
            self.log(f"{stage}/loss_{key}", losses[key], batch_size=batch_size, sync_dist=stage != "train")
        return losses["loss"]

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Dict[str, Any], batch_idx: int) -> None:
        # validation images carry ground truth: the loss on it, and how well a^beta separates regions
        embedding = self.embed(batch["image"])
        aff = self.affinity(embedding)
        labels = downsample_labels(batch["mask"], self.stride, tuple(embedding.shape[-2:]))
        losses = self.loss(aff, labels)
        batch_size = len(batch["id"])
        self.log("val/loss", losses["loss"], batch_size=batch_size, sync_dist=True)
        for key in ("bg", "fg", "neg"):
            self.log(f"val/loss_{key}", losses[key], batch_size=batch_size, sync_dist=True)
        sums = affinity_separation_sums(aff, labels, self.offsets, self.hparams.beta)
        if self._separation is None:
            self._separation = sums
        else:
            self._separation = {k: self._separation[k] + sums[k] for k in sums}

    def on_validation_epoch_start(self) -> None:
        self._separation = None

    def on_validation_epoch_end(self) -> None:
        sums = self._separation
        if sums is None:
            sums = {"sum": torch.zeros(4, dtype=torch.float64, device=self.device),
                    "count": torch.zeros(4, dtype=torch.int64, device=self.device)}
        strategy = self.trainer.strategy
        sums = {k: strategy.reduce(v.to(self.device), reduce_op="sum") if self.trainer.world_size > 1 else v
                for k, v in sums.items()}
        means = separation_means(sums)
        self._separation = None
        if int(sums["count"].sum()) == 0:
            return
        for key, value in means.items():
            self.log(f"val/aff_{key}", float(value))
        if not self.trainer.sanity_checking:
            from lightning.pytorch.utilities import rank_zero_info

            beta = self.hparams.beta
            rank_zero_info(f"{type(self).__name__} epoch {self.current_epoch}: mean a^{beta:g} on val masks: same region "
                           f"{means['same']:.3f} (bg {means['bg']:.3f}, object {means['fg']:.3f}), across a "
                           f"boundary {means['cross']:.3f}, ratio {means['ratio']:.1f}")

    def on_predict_start(self) -> None:
        if not self.hparams.cams_dir:
            raise ValueError("AffinityRefiner.predict needs cams_dir (the CAM stage's cams folder)")

    def predict_artifacts(self, batch: Dict[str, Any], rows: List[int]) -> List[List[Artifact]]:
        """``labels/<id>.png`` per row: its ``cams_dir`` CAMs walked on the image's affinities (:meth:`walk_scores`)."""
        embedding, aff = self.walk_affinity(batch["image"][rows])
        h, w = embedding.shape[-2:]
        results = []
        for row, i in enumerate(rows):
            image_id = batch["id"][i]
            height, width = batch["size"][i].tolist()
            data = load_cams(Path(self.hparams.cams_dir) / f"{image_id}.npz")
            cams = torch.from_numpy(data["cams"]).to(aff.device, aff.dtype)[None]
            keys = np.concatenate([[0], data["keys"]]).astype(np.uint8)
            small = self.walk_cams(self.downsample_cams(cams, (h, w), (height, width)), embedding[row : row + 1])
            walked = self.walk_scores(small, aff[row : row + 1])
            probs = self.upsample_scores(walked, (h * self.stride, w * self.stride))[:, :, :height, :width]
            label = self.crf_labels(batch, i, probs, keys) if self.hparams.crf else self.labels_of(probs, keys)
            results.append([Artifact(f"labels/{image_id}.png", "png", label)])
        return results

    def downsample_cams(self, cams: Tensor, size: Tuple[int, int], image_size: Tuple[int, int]) -> Tensor:
        """CAMs [1, K, H, W] at image size -> [1, K, h, w] at the embedding size (K may be 0)."""
        height, width = image_size
        if cams.shape[1] == 0:
            return cams.new_zeros(1, 0, *size)
        padded = F.pad(cams, (0, size[1] * self.stride - width, 0, size[0] * self.stride - height))
        return F.interpolate(padded, size=size, mode="bilinear", align_corners=False)

    def cams_with_background(self, cams: Tensor, size: Tuple[int, int], image_size: Tuple[int, int]) -> Tensor:
        """CAMs [1, K, H, W] at image size -> [1, K+1, h, w] at the embedding size with the psa background."""
        small = self.downsample_cams(cams, size, image_size)
        if small.shape[1] == 0:  # no foreground class: background everywhere
            return small.new_ones(1, 1, *size)
        bg = (1.0 - small.amax(dim=1, keepdim=True)).clamp(min=0) ** self.hparams.bg_alpha
        return torch.cat([bg, small], dim=1)

    @staticmethod
    def upsample_scores(scores: Tensor, size: Tuple[int, int]) -> Tensor:
        """Bilinear upsampling of walked scores [1, C, h, w] to ``size``."""
        return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)

    @staticmethod
    def labels_of(scores: Tensor, keys: np.ndarray) -> np.ndarray:
        """uint8 labels [H, W] of scores [1, C, H, W]: the class ``keys`` [C] of each pixel's highest channel."""
        return keys[channel_argmax(scores[0], dim=0).cpu().numpy()]

    def crf_labels(self, batch: Dict[str, Any], index: int, probs: Tensor, keys: np.ndarray) -> np.ndarray:
        """uint8 labels [H, W] of walked scores [1, C, H, W] after the CRF (:meth:`crf_refine`), its changes to the
        walk's own labels bounded by ``crf_max_growth`` / ``crf_min_kept`` where either is set."""
        label = self.labels_of(self.crf_refine(batch, index, probs), keys)
        max_growth, min_kept = self.hparams.crf_max_growth, self.hparams.crf_min_kept
        if max_growth is None and min_kept is None:
            return label
        return bound_changes(self.labels_of(probs, keys), label, max_growth, min_kept)

    def crf_refine(self, batch: Dict[str, Any], index: int, probs: Tensor) -> Tensor:
        """Dense-CRF of walked scores [1, C, H, W] on the denormalised image (``crf``: its setting)."""
        from ..datamodules.transforms import denormalize

        height, width = probs.shape[-2:]
        mean, std = self.normalization()
        image = denormalize(batch["image"][index, :, :height, :width].cpu().numpy(), mean, std)
        scores = probs[0].float().cpu().numpy()
        return torch.from_numpy(crf_from_scores(image, scores, self.hparams.crf))[None]
