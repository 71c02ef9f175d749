"""LPCAM (Chen and Sun, "Extracting Class Activation Maps from Non-Discriminative Features as Well", CVPR 2023)
on top of :class:`~lightning_wsss.tasks.classifier.CAMClassifier`.

Training is the plain classifier's; only the maps change. Before prediction the task builds, for every
foreground class, *local prototypes* from the images labelled with it (:meth:`LPCAMClassifier.build_prototypes`):

1. every training image's last-layer features [D, h, w] and its single-scale CAM of each present class, divided
   by its max, at the feature resolution;
2. per class: the features where the CAM exceeds ``select_threshold`` are clustered into ``num_clusters``
   (cosine k-means); the clusters whose mean feature the classifier assigns to the class with softmax
   probability above ``class_threshold`` are its prototypes. The features below the threshold are clustered too;
   those with probability in ``(context_low, context_high]`` are its context prototypes;
3. a class's map (:func:`~lightning_wsss.cam.prototypes.prototype_map`) is the mean cosine similarity of every
   pixel's feature to the class's prototypes minus that to its context prototypes, ReLU'd; multi-scale + flip
   and max-normalised as the plain CAM.

``prototype_rule: negatives`` (this suite's, not the paper's) replaces step 2's judge: where the image labels are
predicted by the context (street tiles: road under cars, sky around trees), the classifier assigns context
clusters to the class with high probability, so they become its prototypes. Instead, a cluster is a prototype
when the images *without* the class hold few features like it
(:func:`~lightning_wsss.cam.prototypes.negative_ratios` at most ``negative_ratio``), and a context prototype when
they hold as many (ratio at least ``context_ratio``); ``negatives_per_image`` random cells of every image make the
pool the ratios are counted on.

Three more options of this suite's, measured on the CamVid street tiles (README "LPCAM on the ImageNet
hypercolumn"): ``cluster_features: imagenet`` clusters and scores the hypercolumn of an ImageNet backbone of the
classifier's architecture (``cluster_levels``, ProbeCAM's features, which fine-tuning on image labels has not taught
the context) instead of the classifier's last layer; the class's CAM still chooses which cells are its object
features, and the ``negatives`` rule judges the clusters. ``context_from: other_images`` takes the context prototypes
from the cells of the images without the class (k-means). ``prototype_score: nearest`` scores a pixel by its most
similar prototype minus its most similar context prototype instead of the means.

The prototypes come from the images of the predict loader (the training split in the pipeline's CAM stage, as
in the paper), read once through the DataModule's ``predict_dataloader`` (every DDP rank sees all images, so
all ranks build the same prototypes), or from any loader passed to :meth:`build_prototypes`. A class with no
prototype (no training image, or no cluster above ``class_threshold``) falls back to its most confident
cluster.

Hooks overridden: :meth:`compute_cams` (prototype maps), ``on_predict_start`` (builds the prototypes). Its own
hooks: :meth:`cluster_feature_map`, :meth:`collect_features`, :meth:`select_by_classifier` /
:meth:`select_by_negatives` (which clusters are prototypes and context prototypes).
Because only prediction differs, a plain :class:`CAMClassifier` checkpoint loads into this class, so LPCAM and
the plain CAM are compared on the same classifier (the pipeline's ``cams`` stage takes ``class_path:
LPCAMClassifier``).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from ..cam import multiscale_cams
from ..cam.cell_probe import valid_cells
from ..cam.prototypes import (PROTOTYPE_SCORES, cluster_means, negative_ratios, prototype_map, select_prototypes,
                              spherical_kmeans)
from .classifier import CAMClassifier
from .hypercolumn import HypercolumnFeatures

__all__ = ["LPCAMClassifier", "PROTOTYPE_RULES", "CONTEXT_SOURCES", "CLUSTER_FEATURES"]

PROTOTYPE_RULES = ("classifier", "negatives")
"""How LPCAM picks a class's prototypes among its clusters (see the module docstring)."""

CONTEXT_SOURCES = ("class_images", "other_images")
"""Where the ``negatives`` rule takes its context prototypes from (see :meth:`LPCAMClassifier.select_by_negatives`)."""

OTHER_IMAGES_SEED_OFFSET = 1000
"""Added to a class's k-means seed when the images without it are clustered."""

CLUSTER_FEATURES = ("classifier", "imagenet")
"""Which features LPCAM clusters and scores: the classifier's last layer (the paper's) or an ImageNet hypercolumn."""

Pool = List[Tuple[Tensor, Tensor]]
"""Random cells of every image, float [n, D], with its image labels, bool [C - 1]."""


class LPCAMClassifier(HypercolumnFeatures, CAMClassifier):
    """A CAM classifier whose maps come from local class prototypes (see the module docstring).

    Args:
        num_classes: classes including background.
        num_clusters: k-means clusters per class, for the object and for the context features (paper: 12).
        select_threshold: max-normalised CAM above which a feature counts as the class's (paper: 0.1). The
            classifier has no background class, so its softmax over the foreground classes cannot reject a
            background cluster that leans towards the class: at 0.1 much of the "object" set is context that
            then becomes prototypes. Measured on the synthetic set (README): 0.1 falls below the plain CAM,
            0.5 beats it; the default is 0.5.
        class_threshold: softmax probability above which a cluster is a prototype (paper: 0.9).
        context_low, context_high: probability range of context clusters (paper: 0.05, 0.9).
        max_features: at most this many features per class and kind are clustered (a fixed-seed random subset).
        max_cells_per_image: at most this many object cells and this many context cells of every image are kept per
            class while the images are read (a fixed-seed random subset of each); ``None`` (the default, the paper's)
            keeps every cell until ``max_features`` sub-samples them, which holds every cell of the class's images in
            memory at once: ``images x cells per image x D x 4`` bytes per class (a 500 x 375 image at stride 8 with
            the 472-channel hypercolumn: 5.6 MB per class it is labelled with). Set it on large sets.
        kmeans_seed: seeds k-means and the subset.
        prototype_rule: ``"classifier"`` (the paper's: the softmax thresholds above) or ``"negatives"`` (the
            images without the class judge the clusters, see the module docstring).
        negative_ratio, context_ratio: ``"negatives"`` rule: the largest ratio of a prototype, the smallest of a
            context prototype.
        negatives_per_image: ``"negatives"`` rule: random cells of every image kept for the pool of negatives.
        context_from: ``"negatives"`` rule: ``"class_images"``, the clusters of the class's images that the
            images without it hold as often (ratio at least ``context_ratio``), or ``"other_images"``, k-means
            (``num_clusters``) of the pool's cells of the images without the class: what a pixel must be more
            like an object prototype than.
        cluster_features: ``"classifier"`` (the paper's: the features the CAM projects) or ``"imagenet"`` (the
            hypercolumn of an ImageNet backbone of the classifier's architecture at ``cluster_levels``, as ProbeCAM
            reads; needs ``prototype_rule: negatives``, since the classifier cannot judge those features).
        cluster_levels: backbone levels of that hypercolumn (timm ``features_only`` indices; its grid is the
            first level's).
        prototype_score: ``"mean"`` (the paper's: mean similarity to the prototypes minus mean to the context
            prototypes) or ``"nearest"`` (the most similar of each, :func:`~lightning_wsss.cam.prototypes.
            prototype_map`).
        **kwargs: :class:`CAMClassifier` arguments.
    """

    def __init__(
        self,
        num_classes: int,
        num_clusters: int = 12,
        select_threshold: float = 0.5,
        class_threshold: float = 0.9,
        context_low: float = 0.05,
        context_high: float = 0.9,
        max_features: int = 50000,
        kmeans_seed: int = 0,
        prototype_rule: str = "classifier",
        negative_ratio: float = 0.5,
        context_ratio: float = 1.0,
        negatives_per_image: int = 16,
        context_from: str = "class_images",
        cluster_features: str = "classifier",
        cluster_levels: Sequence[int] = (2, 3, 4),
        prototype_score: str = "mean",
        max_cells_per_image: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        if max_cells_per_image is not None and max_cells_per_image < 1:
            raise ValueError(f"max_cells_per_image must be >= 1 or None, got {max_cells_per_image}")
        if cluster_features not in CLUSTER_FEATURES:
            raise ValueError(f"cluster_features must be one of {CLUSTER_FEATURES}, got {cluster_features!r}")
        if cluster_features == "imagenet" and prototype_rule != "negatives":
            raise ValueError("cluster_features: imagenet needs prototype_rule: negatives (the classifier's rows "
                             "cannot judge clusters of ImageNet features)")
        if context_from not in CONTEXT_SOURCES:
            raise ValueError(f"context_from must be one of {CONTEXT_SOURCES}, got {context_from!r}")
        if not cluster_levels:
            raise ValueError("cluster_levels is empty")
        if prototype_score not in PROTOTYPE_SCORES:
            raise ValueError(f"prototype_score must be one of {PROTOTYPE_SCORES}, got {prototype_score!r}")
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        if prototype_rule not in PROTOTYPE_RULES:
            raise ValueError(f"prototype_rule must be one of {PROTOTYPE_RULES}, got {prototype_rule!r}")
        if not 0.0 <= negative_ratio < context_ratio:
            raise ValueError(f"need 0 <= negative_ratio < context_ratio, got {negative_ratio} and {context_ratio}")
        if negatives_per_image < 1:
            raise ValueError(f"negatives_per_image must be >= 1, got {negatives_per_image}")
        if not 0.0 <= select_threshold < 1.0:
            raise ValueError(f"select_threshold must be in [0, 1), got {select_threshold}")
        super().__init__(num_classes, **kwargs)
        self.prototypes: Dict[int, Tensor] = {}
        self.context: Dict[int, Tensor] = {}

    # ------------------------------------------------------------------ features
    def _clusters_classifier_features(self) -> bool:
        return self.hparams.get("cluster_features", "classifier") == "classifier"

    def cluster_feature_map(self, images: Tensor) -> Tensor:
        """The features LPCAM clusters and scores, float [B, D, h, w] (``cluster_features``)."""
        if self._clusters_classifier_features():
            return self.net.features(images)
        return self.hypercolumn_of(images, "imagenet", self.hparams.get("cluster_levels", (2, 3, 4)),
                                   ("cluster_features", "cluster_levels"))

    # ------------------------------------------------------------------ prototypes
    @torch.no_grad()
    def collect_features(self, batches: Iterable[Dict[str, Any]],
                         pool: Optional[Pool] = None) -> Dict[int, Dict[str, List[Tensor]]]:
        """Per foreground class index (1..C-1): the features inside (``"object"``) and outside (``"context"``)
        its max-normalised single-scale CAM, over the images labelled with it; each a list of float [n, D].
        ``pool``: a list that gets ``negatives_per_image`` random cells of every image and its labels
        (:data:`Pool`)."""
        collected: Dict[int, Dict[str, List[Tensor]]] = {}
        threshold = float(self.hparams.select_threshold)
        generator = torch.Generator().manual_seed(int(self.hparams.kmeans_seed))
        for batch in batches:
            images = batch["image"].to(self.device)
            features = self.cluster_feature_map(images)
            maps = self.raw_cams(features if self._clusters_classifier_features() else self.net.features(images))
            maps = maps / (maps.flatten(2).amax(-1)[..., None, None] + 1e-5)
            if maps.shape[-2:] != features.shape[-2:]:
                maps = F.interpolate(maps, size=features.shape[-2:], mode="bilinear", align_corners=False)
            valid = valid_cells(batch["size"], tuple(images.shape[-2:]), tuple(features.shape[-2:])).to(images.device)
            for row in range(images.shape[0]):
                flat = features[row].flatten(1).T[valid[row]].float().cpu()
                if pool is not None:
                    cells = torch.randperm(flat.shape[0], generator=generator)[: int(self.hparams.negatives_per_image)]
                    pool.append((flat[cells], batch["labels"][row].cpu() > 0.5))
                for index in torch.nonzero(batch["labels"][row] > 0.5).flatten().tolist():
                    inside = (maps[row, index].flatten()[valid[row]] > threshold).cpu()
                    slot = collected.setdefault(index + 1, {"object": [], "context": []})
                    slot["object"].append(self._cap_cells(flat[inside], generator))
                    slot["context"].append(self._cap_cells(flat[~inside], generator))
        return collected

    def _cap_cells(self, cells: Tensor, generator: torch.Generator) -> Tensor:
        """At most ``max_cells_per_image`` rows of ``cells`` [n, D] (a random subset drawn from ``generator``);
        all of them when the cap is unset or not reached."""
        cap = self.hparams.get("max_cells_per_image")
        if cap is None or cells.shape[0] <= int(cap):
            return cells
        return cells[torch.randperm(cells.shape[0], generator=generator)[: int(cap)]]

    def build_prototypes(self, batches: Iterable[Dict[str, Any]]) -> Dict[str, Dict[int, int]]:
        """Cluster the collected features of every class into its prototypes and context prototypes.

        Returns:
            ``{"prototypes": {class: count}, "context": {class: count}}`` (also kept in ``self.prototypes`` /
            ``self.context``, float [P, D] each).
        """
        hp = self.hparams
        was_training = self.training
        self.eval()
        pool: Optional[Pool] = [] if hp.get("prototype_rule", "classifier") == "negatives" else None
        if pool is None and not self._clusters_classifier_features():
            raise ValueError("cluster_features: imagenet needs prototype_rule: negatives")
        collected = self.collect_features(batches, pool)
        self.train(was_training)
        self.prototypes, self.context = {}, {}
        for class_id, parts in sorted(collected.items()):
            objects = self._cluster(torch.cat(parts["object"]), class_id)
            context = self._cluster(torch.cat(parts["context"]), class_id)
            if pool is None:
                chosen, around = self.select_by_classifier(objects, context, class_id)
            else:
                chosen, around = self.select_by_negatives(objects, context, parts, pool, class_id)
            self.prototypes[class_id], self.context[class_id] = chosen, around
        counts = {"prototypes": {k: int(v.shape[0]) for k, v in self.prototypes.items()},
                  "context": {k: int(v.shape[0]) for k, v in self.context.items()}}
        rank_zero_info(f"LPCAM: prototypes per class {counts['prototypes']}, context prototypes {counts['context']}")
        return counts

    def select_by_classifier(self, objects: Tensor, context: Tensor, class_id: int) -> Tuple[Tensor, Tensor]:
        """The paper's rule: ``(prototypes, context prototypes)`` among the object / context cluster means by the
        classifier's softmax (at least the class's most confident object cluster)."""
        hp = self.hparams
        weight = self.cam_weight().detach().float().cpu()
        chosen = select_prototypes(objects, weight, class_id - 1, hp.class_threshold)
        if chosen.shape[0] == 0 and objects.shape[0] > 0:  # keep the class's most confident cluster
            probs = (objects @ weight.T).softmax(1)[:, class_id - 1]
            chosen = objects[probs.argmax()][None]
        return chosen, select_prototypes(context, weight, class_id - 1, hp.context_low, hp.context_high)

    def select_by_negatives(self, objects: Tensor, context: Tensor, parts: Dict[str, List[Tensor]], pool: Pool,
                            class_id: int) -> Tuple[Tensor, Tensor]:
        """``prototype_rule: negatives``: object clusters the images without the class rarely hold are prototypes
        (at least the rarest); the context prototypes are the clusters they hold as often (``context_from:
        class_images``) or the clusters of their own cells (``other_images``)."""
        hp = self.hparams
        means = torch.cat([objects, context])
        if means.shape[0] == 0:
            return objects, context
        positives = self._subset(torch.cat(parts["object"] + parts["context"]), class_id)
        others = [cells for cells, labels in pool if not bool(labels[class_id - 1])]
        negatives = self._subset(torch.cat(others) if others else means.new_zeros(0, means.shape[1]), class_id)
        from_others = hp.get("context_from", "class_images") == "other_images"
        ratios = negative_ratios(objects if from_others else means, positives, negatives)
        own = ratios[: objects.shape[0]]
        chosen = objects[own <= float(hp.negative_ratio)]
        if chosen.shape[0] == 0 and objects.shape[0] > 0:
            chosen = objects[own.argmin()][None]
        if from_others:  # k-means of the other images' cells, on a seed stream apart from the class's own clusters
            return chosen, self._cluster(negatives, class_id + OTHER_IMAGES_SEED_OFFSET)
        return chosen, means[ratios >= float(hp.context_ratio)]

    def _subset(self, features: Tensor, class_id: int) -> Tensor:
        """A fixed-seed random subset of at most ``max_features`` rows of ``features`` [N, D]."""
        if features.shape[0] <= int(self.hparams.max_features):
            return features
        generator = torch.Generator().manual_seed(int(self.hparams.kmeans_seed) + class_id)
        return features[torch.randperm(features.shape[0], generator=generator)[: int(self.hparams.max_features)]]

    def _cluster(self, features: Tensor, class_id: int) -> Tensor:
        """Cluster means [K, D] of ``features`` [N, D] (a fixed-seed subset of ``max_features`` at most)."""
        hp = self.hparams
        if features.shape[0] == 0:
            return features
        features = self._subset(features, class_id)
        centres, assignment = spherical_kmeans(features, int(hp.num_clusters), seed=int(hp.kmeans_seed) + class_id)
        return cluster_means(features, assignment, centres.shape[0])

    # ------------------------------------------------------------------ hooks
    def on_predict_start(self) -> None:
        self.build_prototypes(self.predict_images_loader("prototype images", "build_prototypes(loader)"))

    def compute_cams(self, images: Tensor, class_ids: Tensor) -> Tensor:
        """Multi-scale + flip prototype maps of ``class_ids`` (dataset indices, -1 padding): float [B, K, H, W]
        in [0, 1], each divided by its max."""
        if not self.prototypes:
            raise RuntimeError("LPCAMClassifier has no prototypes: call build_prototypes(loader) first")
        with torch.no_grad():
            return multiscale_cams(self._prototype_maps, images, class_ids.to(images.device), self.hparams.cam_scales,
                                   self.hparams.cam_flip)

    def _prototype_maps(self, images: Tensor, class_ids: Tensor) -> Tensor:
        """Raw prototype maps [B, K, h, w] of ``class_ids`` [B, K] on ``images`` [B, 3, h', w'] (zeros for -1)."""
        features = self.cluster_feature_map(images)
        score = self.hparams.get("prototype_score", "mean")
        out = features.new_zeros(class_ids.shape[0], class_ids.shape[1], *features.shape[-2:])
        for class_id in torch.unique(class_ids[class_ids > 0]).tolist():
            prototypes = self.prototypes.get(class_id)
            if prototypes is None:
                continue
            rows, slots = torch.nonzero(class_ids == class_id, as_tuple=True)
            maps = prototype_map(features[rows], prototypes, self.context.get(class_id), score)
            out[rows, slots] = maps
        return F.relu(out)
