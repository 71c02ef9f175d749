"""LightningModules ("tasks"), one per method, each with overridable hooks."""

from .affinity import AffinityRefiner
from .boxsup import BoxSupTrainer
from .classifier import CAMClassifier
from .segmenter import DeepLabSegmenter

__all__ = ["CAMClassifier", "AffinityRefiner", "DeepLabSegmenter", "BoxSupTrainer"]
