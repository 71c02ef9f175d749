"""Multi-stage pipelines (image labels, boxes, full masks), the demo, and the supervision comparison report."""

from .pipelines import build_stages, run_pipeline
from .runner import PipelineContext, Stage, StageResult, run_stages

__all__ = ["run_pipeline", "build_stages", "run_stages", "Stage", "StageResult", "PipelineContext"]
