"""Pipeline composition: a ``ComposedPipeline`` runs stages that pass a ``ForwardBatch`` along."""

from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.composed import ComposedPipeline, PipelineStage

__all__ = ["ComposedPipeline", "ForwardBatch", "PipelineStage"]
