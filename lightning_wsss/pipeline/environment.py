"""What a stage ran on, recorded in its ``stage.json`` next to its metrics.

Figures of the same stage can differ with the torch thread count, the library versions and the device (the README's
"Threads"); a stage that was not reproduced to the bit can then be traced to what changed. The record is
informational: it is not part of the stage hash, so a stage made on another machine is still reused.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any, Dict, Optional, Sequence

import torch

__all__ = ["RECORDED_PACKAGES", "package_versions", "run_environment"]

RECORDED_PACKAGES = ("torch", "torchvision", "lightning", "timm", "segmentation-models-pytorch", "numpy",
                     "albumentations", "opencv-python-headless", "pydensecrf2")
"""The distributions whose versions move a stage's numbers."""


def package_versions(names: Sequence[str] = RECORDED_PACKAGES) -> Dict[str, Optional[str]]:
    """``{distribution: version}``, None for one that is not installed."""
    versions: Dict[str, Optional[str]] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_environment(world_size: int = 1) -> Dict[str, Any]:
    """This process's torch threads, device, process count, Python and package versions."""
    cuda = torch.cuda.is_available()
    return {
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "processes": world_size,
        "python": platform.python_version(),
        "packages": package_versions(),
    }
