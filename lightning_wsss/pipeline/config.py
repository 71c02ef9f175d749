"""Pipeline configuration: reading YAML, merging of shared and per-stage settings, stage hashing, class imports."""

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

class ConfigError(DataError):
    """A pipeline config mistake: the file (when known), the key path and what is wrong, on one line."""

    def __init__(self, path: PathLike, key: str, problem: str) -> None:
        self.key = key
        self.key_problem = problem
        super().__init__(path, f"{key}: {problem}" if key else problem)

    def __reduce__(self):
        return (type(self), (self.path, self.key, self.key_problem))

    def in_file(self, path: PathLike) -> "ConfigError":
        """The same error naming ``path``."""
        return type(self)(path, self.key, self.key_problem)


def deep_merge(base: Mapping[str, Any], override: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in (override or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config(path: PathLike) -> Dict[str, Any]:
    """Read a pipeline YAML; a ``base`` key names a config (relative path) it extends (mappings merge).

    Unchecked: :func:`~lightning_wsss.pipeline.checks.load_config` reads and checks.

    Raises:
        DataError: the file (or a base) is missing or not a YAML mapping, or the ``base`` chain loops.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "pipeline config is missing")
    config = read_yaml(path)
    seen = [path.resolve()]
    while config.get("base"):  # `base: pipeline_image.yaml`: start from that file (relative to this one), override it
        base_path = (path.parent / config.pop("base")).resolve()
        if base_path in seen:
            raise DataError(path, f"'base' chain loops back to {base_path}")
        seen.append(base_path)
        if not base_path.is_file():
            raise DataError(path, f"base config {base_path} is missing")
        config = deep_merge(read_yaml(base_path), config)
        path = base_path
    return config


def read_yaml(path: Path) -> Dict[str, Any]:
    try:
        config = yaml.safe_load(read_text_file(path, "pipeline config")) or {}
    except yaml.YAMLError as exc:
        raise DataError(path, f"not valid YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise DataError(path, "a pipeline config must be a mapping")
    return config


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


def import_object(path: str) -> Any:
    """The object a dotted path names (``my_package.stages.majority_filter``)."""
    module, _, attr = path.rpartition(".")
    if not module:
        raise ImportError(f"{path!r} is not an import path (package.module.name)")
    return getattr(importlib.import_module(module), attr)


def resolve_class(name: str, kind: str):
    """Import ``name``: a full ``module.Class`` path, or a short class name of the suite (``CAMClassifier``)."""
    if "." in name:
        return import_object(name)
    module = importlib.import_module(SHORT_NAMES[kind])
    if not hasattr(module, name):
        raise ValueError(f"unknown {kind} class {name!r} in {SHORT_NAMES[kind]}")
    return getattr(module, name)
