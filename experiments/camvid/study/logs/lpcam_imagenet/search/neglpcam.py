"""Feasibility: LPCAM whose context prototypes are clusters of the images without the class."""
import torch
from lightning_wsss.tasks.lpcam import LPCAMClassifier
from lightning_wsss.cam.prototypes import negative_ratios


class NegLPCAM(LPCAMClassifier):
    def select_by_negatives(self, objects, context, parts, pool, class_id):
        hp = self.hparams
        others = [cells for cells, labels in pool if not bool(labels[class_id - 1])]
        if not others:
            return objects, objects.new_zeros(0, objects.shape[1])
        negatives = self._subset(torch.cat(others), class_id)
        neg_means = self._cluster(negatives, class_id + 1000)
        if hp.get("keep", "all") == "all":
            return objects, neg_means
        positives = self._subset(torch.cat(parts["object"] + parts["context"]), class_id)
        ratios = negative_ratios(objects, positives, negatives)
        chosen = objects[ratios <= float(hp.negative_ratio)]
        if chosen.shape[0] == 0:
            chosen = objects[ratios.argmin()][None]
        return chosen, neg_means
