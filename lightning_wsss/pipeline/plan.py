"""Planning a pipeline: its stages in order (the supervision's preset or the config's ``order``), each artifact
read connected to the stage that wrote it, and each stage's hashed config."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from . import builtin  # noqa: F401  (registers the built-in stages)
from .config import ConfigError
from .registry import STAGES, StageSpec, lookup, parse_read
from .runner import Stage

__all__ = ["presets", "preset", "stage_order", "Step", "plan", "build_stages", "stage_names"]

SHARED_KEYS = ("dataset", "data", "trainer", "seed")
"""The pipeline settings every stage's hash covers (a change there reruns everything)."""


@lru_cache(maxsize=1)
def presets() -> Dict[str, Dict[str, Any]]:
    """The supervision presets of ``presets.yaml``: ``{supervision: {order, shared_with, summary_prefix}}``."""
    return yaml.safe_load((Path(__file__).with_name("presets.yaml")).read_text(encoding="utf-8"))


def preset(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The preset of the config's ``supervision``."""
    return presets()[config["supervision"]]


def stage_order(config: Mapping[str, Any]) -> List[str]:
    """The config's stages in order: its ``order``, else its supervision's."""
    return list(config.get("order") or preset(config)["order"])


@dataclass(frozen=True)
class Step:
    """A stage of a plan: its declaration, its section of the config, and the stage writing each artifact it
    reads (``inputs``: artifact -> stage name)."""

    name: str
    spec: StageSpec
    section: Mapping[str, Any]
    inputs: Mapping[str, str]
    root: Optional[str] = None


def _spec(name: str, section: Mapping[str, Any], index: int) -> StageSpec:
    try:
        return lookup(name, section)
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(STAGES), n=1)
        raise ConfigError(None, f"order[{index}]", f"unknown stage {name!r}" + (
            f"; did you mean {close[0]}?" if close else f" (built-in: {', '.join(sorted(STAGES))}; a stage of your own "
                                                        f"needs stages.{name}.declaration)")) from None
    except (ImportError, AttributeError, TypeError) as exc:
        raise ConfigError(None, f"stages.{name}.declaration", str(exc)) from None


def _inputs(step_name: str, spec: StageSpec, section: Mapping[str, Any], config: Mapping[str, Any],
            done: List["Step"]) -> Dict[str, str]:
    """The stage writing each artifact ``spec`` reads: the latest earlier one, or the one named after ``@``."""
    written = {name: step.name for step in done for name in step.spec.writes}
    before = {step.name: step for step in done}
    inputs: Dict[str, str] = {}
    for read in spec.read_names(section, config):
        name, pinned, optional = parse_read(read)
        if pinned is not None:
            if pinned not in before or name not in before[pinned].spec.writes:
                raise ConfigError(None, f"stages.{step_name}", f"reads {name} of {pinned!r}, which is not a stage "
                                  f"before {step_name} that writes {name} (before it: {', '.join(before) or 'none'})")
            inputs[name] = pinned
        elif name in written:
            inputs[name] = written[name]
        elif not optional:
            writers = sorted(n for n, s in STAGES.items() if name in s.writes)
            raise ConfigError(None, "order", f"{step_name} reads {name}, which no stage before it writes "
                                              f"(stages that write it: {', '.join(writers) or 'none'})")
    return inputs


def plan(config: Mapping[str, Any]) -> List[Step]:
    """The stages of a resolved config in order, each with the stages its reads come from.

    Raises:
        ConfigError: an unknown or repeated stage, a declaration that does not import, or a read no earlier stage
            writes (the key path names where; the caller adds the file).
    """
    sections = config.get("stages") or {}
    shared = {stage: folder for folder, names in (preset(config).get("shared_with") or {}).items() for stage in names}
    steps: List[Step] = []
    for index, name in enumerate(stage_order(config)):
        if any(step.name == name for step in steps):
            raise ConfigError(None, f"order[{index}]", f"{name} appears twice")
        section = sections.get(name) or {}
        spec = _spec(name, section, index)
        root = f"../{shared[name]}" if name in shared else None
        steps.append(Step(name, spec, section, _inputs(name, spec, section, config, steps), root))
    return steps


def build_stages(config: Mapping[str, Any]) -> List[Stage]:
    """The ordered stages of a resolved config, each with its hashed config (its own ``stage`` config and the
    ``shared`` settings), function and inputs.

    A change to the shared ``dataset``, ``data``, ``trainer`` or ``seed`` reruns everything; a change to one
    stage reruns it and the stages reading from it. In a ``hybrid`` pipeline the image-label stages live with
    the image pipeline's (``shared_with`` in ``presets.yaml``) and do not depend on the box fraction (unless the
    CAMs of box images are restricted to their boxes), so the points of a cost curve share them.
    """
    shared = {key: config.get(key) for key in SHARED_KEYS}
    return [Stage(step.name, {"stage": step.spec.stage_config(dict(step.section), config), "shared": shared},
                  _own_section(step.spec.run), folder=step.spec.folder, root=step.root, inputs=dict(step.inputs),
                  unhashed=step.spec.unhashed)
            for step in plan(config)]


def _own_section(fn):
    """Stage functions receive their own config; the hash covers the shared settings too."""

    def run(ctx, stage_dir, upstream, config):
        return fn(ctx, stage_dir, upstream, config["stage"])

    return run


def stage_names(config: Mapping[str, Any]) -> List[str]:
    """The names of a resolved config's stages, in order."""
    return [step.name for step in plan(config)]
