"""LightningModules ("tasks"), one per method, each with overridable hooks, all on :class:`WSSSTask`.

The networks they train are plain ``nn.Module`` objects in :mod:`lightning_wsss.models` (a task's ``self.net``).
"""

from .affinity import AffinityRefiner
from .base import WSSSTask
from .boxsup import BoxSupSegmenter, BoxSupTrainer
from .classifier import CAMClassifier
from .erasing import ErasingCAMClassifier
from .irn import BoundaryRefiner
from .lpcam import LPCAMClassifier
from .probecam import ProbeCAMClassifier
from .recam import ReCAMClassifier
from .sec import SECSegmenter
from .segmenter import DeepLabSegmenter
from .self_training import SelfTrainingSegmenter

__all__ = ["WSSSTask", "CAMClassifier", "ErasingCAMClassifier", "LPCAMClassifier", "ProbeCAMClassifier",
           "ReCAMClassifier", "AffinityRefiner",
           "BoundaryRefiner", "DeepLabSegmenter", "SECSegmenter", "SelfTrainingSegmenter", "BoxSupSegmenter",
           "BoxSupTrainer"]
