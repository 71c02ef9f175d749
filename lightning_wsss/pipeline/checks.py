"""Checking a pipeline config when it is loaded, before any stage runs.

Every key must be known (a misspelt one is reported with the closest known key), every value of the type its
consumer takes (the Trainer's signature, the model class's, the stage's DataModule's, the options a stage
declares), every class importable and every stage's reads written by an earlier stage. A problem is one
:class:`~.config.ConfigError` naming the file and the key path::

    pipeline.yaml: stages.classifier.trainer.max_epoch: unknown key; did you mean max_epochs?
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ..errors import PathLike
from .config import ConfigError, read_config
from .costs import BOX_SECONDS_PER_BOX
from .defaults import resolve
from .options import Check, Data, Fields, OneOf, Trainer, Where, check_fields, check_mapping, check_value, unknown_key
from .plan import Step, plan, presets
from .registry import DECLARATION_KEY, STAGES

__all__ = ["load_config", "check_config", "TOP_LEVEL"]


class Logger(Check):
    """``logger``: csv (default), wandb or none (null and false are none)."""

    def __call__(self, value: Any, where: Where) -> None:
        if value is None or value is False:
            return
        OneOf(("csv", "wandb", "none"))(str(value).lower(), where)


class SharedData(Check):
    """The top-level ``data``: settings every stage's DataModule takes (those of :class:`WSSSDataModule`)."""

    def __call__(self, value: Any, where: Where) -> None:
        Data()(value, Where(where.key, {}, {}, {}, "WSSSDataModule"))


class BoxSource(Check):
    """``hybrid.box_source``: one of the initializers the hybrid pipeline's box stage runs."""

    def __call__(self, value: Any, where: Where) -> None:
        from .hybrid import box_source

        check_value(value, str, where)
        if where.config.get("supervision") == "hybrid":
            box_source(where.config)


class Stages(Check):
    """``stages``: a section per stage; a name that is neither a registered stage nor one of the pipeline's
    own (declared with ``declaration:``) is refused."""

    def __call__(self, value: Any, where: Where) -> None:
        order = list(where.config.get("order") or presets()[where.config["supervision"]]["order"])
        for name, section in check_mapping(value, where).items():
            section = check_mapping(section, where.at(name))
            if name not in STAGES and name not in order:
                close = difflib.get_close_matches(str(name), list(STAGES) + order, n=1)
                hint = f"; did you mean {close[0]}?" if close else (
                    "; add it to order" if DECLARATION_KEY in section else f" (built-in: {', '.join(sorted(STAGES))})")
                where.at(name).fail(f"unknown stage{hint}")


TOP_LEVEL: Dict[str, Any] = {
    "name": str,
    "out": str,
    "base": str,
    "summary_key": str,
    "supervision": str,  # checked first, against the presets
    "order": List[str],
    "dataset": Fields({"root": Union[str, Path], "name": str}),
    "seed": int,
    "logger": Logger(),
    "wandb": Dict[str, Any],
    "progress_bar": bool,
    "trainer": Trainer(),
    "data": SharedData(),
    "costs": Fields({"box_protocol": OneOf(sorted(BOX_SECONDS_PER_BOX))}),
    "hybrid": Fields({"box_fraction": Optional[float], "seed": int, "box_list": Optional[str], "box_source": BoxSource(),
                      "restrict_cams_to_boxes": bool}),
    "stages": Stages(),
}
"""The keys of a pipeline config and their checks (the stage sections are checked against their declarations)."""


def _check_required(config: Mapping[str, Any]) -> None:
    OneOf(tuple(presets()))(config.get("supervision"), Where("supervision"))
    root = (config.get("dataset") or {}).get("root") if isinstance(config.get("dataset"), Mapping) else None
    if not root:
        raise ConfigError(None, "dataset.root", "is required (the data set's folder)")


def check_step(step: Step, config: Mapping[str, Any]) -> None:
    """A stage's section against the options its declaration lists (``declaration`` is always allowed)."""
    where = Where(f"stages.{step.name}", config, step.section, step.inputs,
                  step.spec.datamodule_name(step.section, step.inputs))
    options = {**step.spec.options, DECLARATION_KEY: str}
    for key in step.section:
        if key not in options:
            if not step.spec.options:
                where.at(key).fail(f"unknown key; stage {step.name} takes no settings")
            unknown_key(key, options, where)
    check_fields(step.section, options, where)


def check_config(config: Mapping[str, Any], path: PathLike = None) -> List[Step]:
    """Check a pipeline config (as loaded: the defaults are filled in here); returns its planned stages.

    Raises:
        ConfigError: the first problem, naming ``path`` (when given) and the key path.
    """
    try:
        if not isinstance(config, Mapping):
            raise ConfigError(None, "", "a pipeline config must be a mapping")
        _check_required(config)
        resolved = resolve(config)
        check_fields(resolved, TOP_LEVEL, Where("", resolved))
        steps = plan(resolved)
        for step in steps:
            check_step(step, resolved)
        return steps
    except ConfigError as exc:
        raise (exc.in_file(path) if path is not None else exc) from None


def load_config(path: PathLike) -> Dict[str, Any]:
    """Read a pipeline YAML (following its ``base`` chain) and check it.

    Raises:
        DataError: the file is missing or not YAML; ConfigError: a key or value problem (file and key path).
    """
    config = read_config(path)
    check_config(config, path)
    return config
