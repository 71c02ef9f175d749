"""Lightning callbacks: artifact writers for prediction stages, per-epoch seeding, atomic checkpoints, W&B
panels, speed options, and one log line per epoch where stdout is not a terminal."""

from .checkpointing import LastCheckpoint
from .epoch_log import EpochLog
from .panels import MaskPanelLogger
from .performance import SpeedOptions
from .seeding import EpochSeed
from .writers import ArtifactWriter

__all__ = ["ArtifactWriter", "EpochLog", "EpochSeed", "LastCheckpoint", "MaskPanelLogger", "SpeedOptions"]
