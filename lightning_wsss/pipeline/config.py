"""Pipeline configuration: loading, merging of shared and per-stage settings, and stage hashing."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import yaml

from ..errors import DataError, PathLike
from ..io import read_text_file

SUPERVISIONS = ("image", "box", "full", "hybrid")


def deep_merge(base: Mapping[str, Any], override: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: PathLike) -> Dict[str, Any]:
    """Read a pipeline YAML; a ``base`` key names a config (relative path) it extends (mappings merge).

    Raises:
        DataError: the file is missing, not YAML, or lacks ``supervision``/``dataset.root``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "pipeline config is missing")
    config = _read_yaml(path)
    seen = [path.resolve()]
    while config.get("base"):  # `base: pipeline_image.yaml`: start from that file (relative to this one), override it
        base_path = (path.parent / config.pop("base")).resolve()
        if base_path in seen:
            raise DataError(path, f"'base' chain loops back to {base_path}")
        seen.append(base_path)
        if not base_path.is_file():
            raise DataError(path, f"base config {base_path} is missing")
        config = deep_merge(_read_yaml(base_path), config)
        path = base_path
    validate_config(config, seen[0])
    return config


def _read_yaml(path: Path) -> Dict[str, Any]:
    try:
        config = yaml.safe_load(read_text_file(path, "pipeline config")) or {}
    except yaml.YAMLError as exc:
        raise DataError(path, f"not valid YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise DataError(path, "a pipeline config must be a mapping")
    return config


def validate_config(config: Mapping[str, Any], path: PathLike = None) -> None:
    """Check the keys every pipeline needs."""
    supervision = config.get("supervision")
    if supervision not in SUPERVISIONS:
        raise DataError(path, f"'supervision' must be one of {SUPERVISIONS}, got {supervision!r}")
    if not (config.get("dataset") or {}).get("root"):
        raise DataError(path, "'dataset.root' is required")


def stage_hash(stage_config: Mapping[str, Any], upstream: Mapping[str, str]) -> str:
    """A short stable hash of a stage's resolved config and the hashes of the stages it reads from.

    A change to a stage's config changes its hash and, through ``upstream``, the hash of every later stage;
    earlier stages keep theirs, so only the changed stage and the ones after it rerun.
    """
    payload = json.dumps({"config": stage_config, "upstream": dict(sorted(upstream.items()))}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


SHORT_NAMES = {
    "model": "lightning_wsss.tasks",
    "data": "lightning_wsss.datamodules",
}


def resolve_class(name: str, kind: str):
    """Import ``name``: a full ``module.Class`` path, or a short class name of the suite (``CAMClassifier``)."""
    if "." in name:
        module, _, attr = name.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    module = importlib.import_module(SHORT_NAMES[kind])
    if not hasattr(module, name):
        raise ValueError(f"unknown {kind} class {name!r} in {SHORT_NAMES[kind]}")
    return getattr(module, name)
