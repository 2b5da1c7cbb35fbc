"""``example-skip-steps``: an example pipeline transform, registered through
``fv_register_pipeline_transforms``.

It is the simplest possible step cache: on every odd step the denoising stage reuses the previous
step's (guided) prediction instead of calling the DiT, halving the DiT calls. Real step caches
(TeaCache, first-block cache) decide per step from how much the input changed; the mechanics are the
same: a :class:`fastvideo.pipelines.stages.StepHook` whose ``predict`` returns a cached tensor
instead of calling ``compute()``.

A transform decides for itself whether it runs: this one only when ``FASTVIDEO_EXAMPLE_SKIP_STEPS=1``
is set, so installing the plugin changes no other generation. This module imports no torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastvideo.interfaces import PipelineTransform

if TYPE_CHECKING:
    import torch

    from fastvideo.configs import PipelineConfig
    from fastvideo.pipelines.batch import ForwardBatch
    from fastvideo.pipelines.composed import ComposedPipeline

ENV_VAR = "FASTVIDEO_EXAMPLE_SKIP_STEPS"


def _reuse_hook() -> Any:
    from fastvideo.pipelines.stages import StepHook

    class ReuseOddSteps(StepHook):
        """Compute the prediction on even steps; reuse the last one on odd steps."""

        def __init__(self) -> None:
            self.last: torch.Tensor | None = None
            self.skipped = 0

        def before_step(self, stage: Any, batch: ForwardBatch, step: Any) -> None:
            if step.index == 0:
                self.last = None  # a new request

        def predict(
            self, stage: Any, batch: ForwardBatch, step: Any, compute: Callable[[], torch.Tensor]
        ) -> torch.Tensor:
            if step.index % 2 == 1 and self.last is not None:
                self.skipped += 1
                return self.last
            self.last = compute()
            return self.last

    return ReuseOddSteps()


class SkipAlternateSteps(PipelineTransform):
    """Adds the reuse hook to every denoising stage when ``FASTVIDEO_EXAMPLE_SKIP_STEPS=1``."""

    name = "example-skip-steps"
    order = 600  # after the core's parallel transforms: the cache sees the guided prediction

    def applies(self, pipeline: ComposedPipeline, config: PipelineConfig) -> bool:
        from fastvideo.pipelines.stages import DenoisingStage

        wanted = os.environ.get(ENV_VAR, "") == "1"
        return wanted and any(isinstance(s, DenoisingStage) for s in pipeline.stages)

    def apply(self, pipeline: ComposedPipeline, config: PipelineConfig) -> None:
        from fastvideo.pipelines.stages import DenoisingStage

        for stage in pipeline.stages:
            if isinstance(stage, DenoisingStage):
                stage.step_hooks.append(_reuse_hook())
