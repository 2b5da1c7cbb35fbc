"""The pipeline transform that numbers a pipeline's sparse attention layers for ``sta``.

``sta``'s windows differ per layer, so the backend must know which layer calls it. When a pipeline is
built with ``--attention-backend sta``, this transform attaches the backend's parameter-free
``sta_layer`` module to every sparse attention layer of the pipeline's DiTs (core's
:func:`fastvideo.attention.layers.attach_layer_modules`, which numbers them in module order). Training
gets the same from ``ModelFamily.load_transformer(attention_backend="sta")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastvideo.interfaces import PipelineTransform

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.pipelines.composed import ComposedPipeline


class STALayers(PipelineTransform):
    name = "sta-layers"
    order = 50  # before caches, compile or offload wrap the models

    def applies(self, pipeline: ComposedPipeline, config: PipelineConfig) -> bool:
        from fastvideo.attention import resolve_backend_name

        try:
            return resolve_backend_name(config.attention_backend) == "sta"
        except Exception:  # an unknown or unavailable backend fails elsewhere, with its own message
            return False

    def apply(self, pipeline: ComposedPipeline, config: PipelineConfig) -> None:
        from fastvideo.attention.layers import attach_layer_modules
        from fastvideo.pipelines.stages import DenoisingStage

        for stage in pipeline.stages:
            if isinstance(stage, DenoisingStage):
                for model in (stage.transformer, stage.transformer_2):
                    if model is not None:
                        attach_layer_modules(getattr(model, "_orig_mod", model), "sta")
