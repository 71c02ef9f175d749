"""Multi-stage pipelines (image labels, boxes, full masks), the demo, and the supervision comparison report.

Submodules are imported lazily so that light commands (``wsss compare``) do not pay for torch and Lightning.
"""

from typing import Any

__all__ = ["run_pipeline", "build_stages", "run_stages", "Stage", "StageResult", "PipelineContext"]


def __getattr__(name: str) -> Any:
    if name in ("run_pipeline", "build_stages"):
        from . import pipelines

        return getattr(pipelines, name)
    if name in ("run_stages", "Stage", "StageResult", "PipelineContext"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
