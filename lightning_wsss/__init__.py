"""lightning-wsss: a PyTorch Lightning suite for weakly supervised semantic segmentation."""

__version__ = "0.1.0"
