"""Stage declarations: what one pipeline stage is, and the registry the planner finds stages in.

A declaration names the stage's function, the artifacts (:mod:`.artifacts`) it reads and writes, its DataModule,
the options its config section takes and the metrics it reports into ``summary.json``. The built-in stages are
registered by :mod:`.builtin`; a stage from your own package is declared with :func:`stage` and named in a
pipeline YAML by its import path::

    stages:
      majority_filter:
        declaration: my_package.stages.majority_filter
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .config import import_object
from .runner import PipelineContext, StageResult

__all__ = ["StageSpec", "STAGES", "register_stage", "stage", "lookup", "DECLARATION_KEY", "parse_read"]

StageFn = Callable[[PipelineContext, Path, Dict[str, StageResult], Dict[str, Any]], Dict[str, Any]]
Section = Mapping[str, Any]
ReadsFn = Callable[[Section, Mapping[str, Any]], Sequence[str]]
DataModuleFn = Callable[[Section, Mapping[str, str]], Optional[str]]

DECLARATION_KEY = "declaration"
"""The key of a stage section that names the declaration to run (``my_package.stages.majority_filter``)."""


@dataclass(frozen=True)
class StageSpec:
    """One pipeline stage, declared once.

    Attributes:
        name: the registry name (and the default stage name in a pipeline's ``order``).
        run: ``(ctx, stage_dir, upstream, config) -> {"outputs": {...}, "metrics": {...}}``; ``upstream`` maps
            each artifact read to the result of the stage that wrote it, ``config`` is the stage's section.
        reads: artifact names, or ``(section, pipeline config) -> names``. ``name?``: optional; ``name@stage``:
            that stage's artifact rather than the latest one written before this stage.
        writes: artifact names (its results' ``outputs`` locate them, see :data:`.artifacts.ARTIFACTS`).
        datamodule: the DataModule class name its ``data`` section configures, or
            ``(section, inputs) -> name`` with ``inputs`` mapping each artifact read to the stage writing it.
        summary: metric name (a ``fnmatch`` pattern) -> its key in the summary's ``pseudo_miou`` (``"*"``: the
            metric's own name).
        options: section key -> a type annotation or a :class:`~.options.Check`; the section's keys are checked
            against them when the config is loaded.
        configure: ``(section, pipeline config) -> the stage config`` that is hashed and passed to ``run``
            (default: the section itself).
        folder: the output folder when it differs from the stage name (a stage that is another one's twin
            shares its folder and hash).
        unhashed: section keys that change how the stage runs, not what it writes (a worker count): passed to
            :attr:`run`, left out of the hash, so changing them reuses the stage.
    """

    name: str
    run: StageFn
    reads: Union[Sequence[str], ReadsFn] = ()
    writes: Tuple[str, ...] = ()
    datamodule: Union[None, str, DataModuleFn] = None
    summary: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    configure: Optional[Callable[[Dict[str, Any], Mapping[str, Any]], Dict[str, Any]]] = None
    folder: Optional[str] = None
    unhashed: Tuple[str, ...] = ()

    def read_names(self, section: Section, config: Mapping[str, Any]) -> List[str]:
        """The artifacts this stage reads under its section and the pipeline config."""
        return list(self.reads(section, config) if callable(self.reads) else self.reads)

    def datamodule_name(self, section: Section, inputs: Mapping[str, str]) -> Optional[str]:
        """The DataModule class its ``data`` section goes to (None: it takes no ``data`` section)."""
        return self.datamodule(section, inputs) if callable(self.datamodule) else self.datamodule

    def stage_config(self, section: Section, config: Mapping[str, Any]) -> Dict[str, Any]:
        """The stage's own config (hashed, passed to :attr:`run`)."""
        own = dict(section)
        return self.configure(own, config) if self.configure else own

    def summary_entries(self, metrics: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
        """Its metrics under their ``summary.json`` names (in the order the stage reported them)."""
        out: Dict[str, Any] = {}
        for metric, value in metrics.items():
            for pattern, key in self.summary.items():
                if fnmatch.fnmatchcase(metric, pattern):
                    out[prefix + (metric if key == "*" else key)] = value
                    break
        return out


STAGES: Dict[str, StageSpec] = {}


def register_stage(spec: StageSpec) -> StageSpec:
    """Make ``spec`` available by name to every pipeline's ``order`` (replacing a declaration of that name)."""
    STAGES[spec.name] = spec
    return spec


def stage(name: str, **declaration: Any) -> Callable[[StageFn], StageSpec]:
    """Declare a stage function: ``@stage("majority_filter", reads=("labels",), writes=("labels",))``.

    The keyword arguments are those of :class:`StageSpec`. The declaration is not registered: a pipeline YAML
    names it by its import path (``declaration: my_package.stages.majority_filter``).
    """

    def wrap(fn: StageFn) -> StageSpec:
        return StageSpec(name=name, run=fn, **declaration)

    return wrap


def lookup(name: str, section: Optional[Section]) -> StageSpec:
    """The declaration of stage ``name``: the section's ``declaration`` import path, else the registry's.

    Raises:
        KeyError: neither names one (the message lists the registered stages).
        ImportError, AttributeError, TypeError: ``declaration`` does not import, or is not a StageSpec.
    """
    path = (section or {}).get(DECLARATION_KEY)
    if path is not None:
        found = import_object(str(path))
        if not isinstance(found, StageSpec):
            raise TypeError(f"{path} is a {type(found).__name__}, not a StageSpec (declare it with "
                            "lightning_wsss.pipeline.registry.stage)")
        return found
    if name not in STAGES:
        raise KeyError(name)
    return STAGES[name]


def parse_read(read: str) -> Tuple[str, Optional[str], bool]:
    """``"labels@cams?"`` -> ``("labels", "cams", True)``: the artifact, the stage pinned (or None), optional."""
    optional = read.endswith("?")
    read = read.rstrip("?")
    artifact_name, _, producer = read.partition("@")
    return artifact_name, producer or None, optional
