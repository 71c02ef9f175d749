"""Lightning callbacks: artifact writers for prediction stages, per-epoch seeding."""

from .checkpointing import LastCheckpoint
from .panels import MaskPanelLogger
from .performance import SpeedOptions
from .seeding import EpochSeed
from .writers import ArtifactWriter

__all__ = ["ArtifactWriter", "EpochSeed", "LastCheckpoint", "MaskPanelLogger", "SpeedOptions"]
