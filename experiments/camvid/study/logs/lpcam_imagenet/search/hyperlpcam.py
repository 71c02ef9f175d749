"""Feasibility: LPCAM clustering the ImageNet hypercolumn (ProbeCAM's features) instead of the classifier's."""
from typing import Any, Dict, Iterable, List, Optional
import torch
import torch.nn.functional as F
from lightning_wsss.tasks.lpcam import LPCAMClassifier
from lightning_wsss.cam.cell_probe import hypercolumn, valid_cells
from lightning_wsss.cam.prototypes import prototype_map
from lightning_wsss.models.backbones import build_backbone


class HyperLPCAM(LPCAMClassifier):
    _hb = None

    def cluster_map(self, images):
        hp = self.hparams
        if HyperLPCAM._hb is None:
            levels = tuple(int(x) for x in str(hp.get("levels", "2-3-4")).split("-"))
            HyperLPCAM._hb = build_backbone(hp.backbone, "imagenet", output_stride=hp.output_stride,
                                            out_indices=levels).eval()
        feats = HyperLPCAM._hb(images)
        return hypercolumn(feats, tuple(feats[0].shape[-2:]))

    @torch.no_grad()
    def collect_features(self, batches, pool=None):
        collected = {}
        threshold = float(self.hparams.select_threshold)
        generator = torch.Generator().manual_seed(int(self.hparams.kmeans_seed))
        for batch in batches:
            images = batch["image"]
            features = self.cluster_map(images)
            grid = tuple(features.shape[-2:])
            maps = self.raw_cams(self.net.features(images))
            maps = maps / (maps.flatten(2).amax(-1)[..., None, None] + 1e-5)
            maps = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)
            valid = valid_cells(batch["size"], tuple(images.shape[-2:]), grid)
            for row in range(images.shape[0]):
                flat = features[row].flatten(1).T[valid[row]].float()
                if pool is not None:
                    cells = torch.randperm(flat.shape[0], generator=generator)[: int(self.hparams.negatives_per_image)]
                    pool.append((flat[cells], batch["labels"][row] > 0.5))
                for index in torch.nonzero(batch["labels"][row] > 0.5).flatten().tolist():
                    inside = maps[row, index].flatten()[valid[row]] > threshold
                    slot = collected.setdefault(index + 1, {"object": [], "context": []})
                    slot["object"].append(flat[inside])
                    slot["context"].append(flat[~inside])
        return collected

    def _prototype_maps(self, images, class_ids):
        features = self.cluster_map(images)
        out = features.new_zeros(class_ids.shape[0], class_ids.shape[1], *features.shape[-2:])
        for class_id in torch.unique(class_ids[class_ids > 0]).tolist():
            prototypes = self.prototypes.get(class_id)
            if prototypes is None:
                continue
            rows, slots = torch.nonzero(class_ids == class_id, as_tuple=True)
            if self.hparams.get("aggregate", "mean") == "max":
                unit = F.normalize(features[rows], dim=1)
                sim = torch.einsum("bdhw,pd->bphw", unit, F.normalize(prototypes, dim=1)).amax(1)
                ctx = self.context.get(class_id)
                if ctx is not None and ctx.shape[0] > 0:
                    sim = sim - torch.einsum("bdhw,qd->bqhw", unit, F.normalize(ctx, dim=1)).amax(1)
                out[rows, slots] = sim
            else:
                out[rows, slots] = prototype_map(features[rows], prototypes, self.context.get(class_id))
        return F.relu(out)
