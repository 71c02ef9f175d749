"""LightningModules ("tasks"), one per method, each with overridable hooks."""

from .affinity import AffinityRefiner
from .boxsup import BoxSupTrainer
from .classifier import CAMClassifier
from .erasing import ErasingCAMClassifier
from .irn import BoundaryRefiner
from .lpcam import LPCAMClassifier
from .recam import ReCAMClassifier
from .sec import SECSegmenter
from .segmenter import DeepLabSegmenter
from .self_training import SelfTrainingSegmenter

__all__ = ["CAMClassifier", "ErasingCAMClassifier", "LPCAMClassifier", "ReCAMClassifier", "AffinityRefiner", "BoundaryRefiner", "DeepLabSegmenter", "SECSegmenter",
           "SelfTrainingSegmenter", "BoxSupTrainer"]
