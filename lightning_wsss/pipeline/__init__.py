"""Multi-stage pipelines (image labels, boxes, full masks, hybrids), the demo, and the supervision comparison report.

A pipeline is an ordered list of declared stages (:mod:`.registry`, :mod:`.builtin`; presets in ``presets.yaml``),
planned from one YAML (:mod:`.plan`, checked by :mod:`.checks`) and run with hashed, resumable stage folders
(:mod:`.runner`), in one process or in every process torchrun / srun started (:mod:`.distributed`; one rank's
error ends them all, :mod:`.failures`). Submodules are imported lazily so that light commands (``wsss compare``) do not pay for torch
and Lightning.
"""

from typing import Any

__all__ = ["run_pipeline", "load_config", "build_stages", "run_stages", "Stage", "StageResult", "PipelineContext",
           "StageSpec", "stage", "register_stage"]

_HOMES = {"run_pipeline": "pipelines", "load_config": "checks", "build_stages": "plan", "run_stages": "runner",
          "Stage": "runner", "StageResult": "runner", "PipelineContext": "runner", "StageSpec": "registry",
          "stage": "registry", "register_stage": "registry"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(name)
