"""Hybrid supervision: which training images carry boxes, and which box initializer gives their masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional

from .config import ConfigError

__all__ = ["box_ids", "box_source"]


def box_ids(config: Mapping[str, Any]) -> Optional[List[str]]:
    """The box images of a ``hybrid`` pipeline (``hybrid.box_fraction`` + ``hybrid.seed``, or ``hybrid.box_list``),
    in split order; None under the other supervisions."""
    if config.get("supervision") != "hybrid":
        return None
    from ..datamodules.hybrid import select_box_images
    from .runner import PipelineContext
    from .stages import split_reader

    hybrid = config.get("hybrid") or {}
    ids = split_reader(PipelineContext(Path("."), config), "fit").ids
    fraction = hybrid.get("box_fraction") if hybrid.get("box_list") is None else None
    return select_box_images(ids, fraction, int(hybrid.get("seed", 0)), hybrid.get("box_list"))


def box_source(config: Mapping[str, Any]) -> str:
    """``hybrid.box_source``: one of the box initializers the pipeline runs (default ``grabcut``)."""
    source = (config.get("hybrid") or {}).get("box_source", "grabcut")
    initializers = ((config.get("stages") or {}).get("box_init") or {}).get("initializers", [])
    if source not in initializers:
        raise ConfigError(None, "hybrid.box_source", f"{source!r} must be one of stages.box_init.initializers "
                                                     f"({', '.join(map(str, initializers))})")
    return source
