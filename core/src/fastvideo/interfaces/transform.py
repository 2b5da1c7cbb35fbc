"""Base class of pipeline transforms: changes applied to every built pipeline, from outside.

A transform may wrap components (FP8 linears, CPU offload, ``torch.compile``), replace or wrap
stages, or hook into the denoising loop (step caching). The core instantiates every registered
transform once per built pipeline and runs those whose :meth:`PipelineTransform.applies` is true,
in increasing ``order`` (then name): right after ``ModelFamily.build_pipeline`` in
``VideoGenerator.from_config``, on every rank of a parallel run. The core's CFG-parallel guidance
and parallel VAE decoding are built-in transforms (``order`` 0 and 10).

Hook points the denoising stage offers (:class:`fastvideo.pipelines.stages.DenoisingStage`):

* ``stage.guidance``: the object that turns the DiT into one guided prediction (classifier-free
  guidance in one process, one branch per rank group with CFG parallelism); replace or wrap it.
* ``stage.step_hooks``: a list of :class:`fastvideo.pipelines.stages.StepHook` objects. Each has
  ``before_step(stage, batch, step)``, ``predict(stage, batch, step, compute)`` (return a tensor to
  reuse instead of calling the model, or call ``compute()``), and ``after_step(stage, batch, step,
  pred, latents)``. ``step`` is a :class:`fastvideo.pipelines.stages.StepInfo`.

A complete tiny transform plugin (skips every other DiT call, reusing the previous prediction)::

    # my_cache/transform.py  (no torch import at module level)
    from fastvideo.interfaces import PipelineTransform
    from fastvideo.pipelines.stages import DenoisingStage, StepHook

    class ReuseOdd(StepHook):
        def before_step(self, stage, batch, step):
            if step.index == 0:
                self.last = None

        def predict(self, stage, batch, step, compute):
            if step.index % 2 and self.last is not None:
                return self.last                        # no DiT call on odd steps
            self.last = compute()
            return self.last

    class SkipOddSteps(PipelineTransform):
        name = "skip-odd-steps"
        order = 600

        def applies(self, pipeline, config):
            return any(isinstance(s, DenoisingStage) for s in pipeline.stages)

        def apply(self, pipeline, config):
            for stage in pipeline.stages:
                if isinstance(stage, DenoisingStage):
                    stage.step_hooks.append(ReuseOdd())

    # my_cache/plugin.py
    from fastvideo import hookimpl
    FASTVIDEO_PLUGIN_API = 1

    @hookimpl
    def fv_register_pipeline_transforms():
        from my_cache.transform import SkipOddSteps
        return [SkipOddSteps]

A transform decides for itself whether it runs (an environment variable, a field of the
configuration, the device); registering it is not enough to change anything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.loader.policy import LoadPolicy
    from fastvideo.pipelines.composed import ComposedPipeline


class PipelineTransform(ABC):
    """One change applied to built pipelines.

    Class attributes:
        name: lower-kebab name (``"first-block-cache"``).
        order: transforms run in increasing order (core: CFG-parallel guidance 0, parallel VAE
            decoding 10; plugins default to 500: caches ~600, FP8 ~700, offload ~800, compile ~900).
    """

    name: ClassVar[str]
    order: ClassVar[int] = 500

    @abstractmethod
    def applies(self, pipeline: ComposedPipeline, config: PipelineConfig) -> bool:
        """Whether to apply this transform to ``pipeline`` built with ``config``. Must not change
        anything; in a parallel run it is asked on every rank and must answer the same on all."""

    def prepare_load(self, config: PipelineConfig, policy: LoadPolicy) -> None:
        """Before the family loads its components (optional): set fields of ``policy`` to change how
        the DiTs' weights are read and placed (:class:`fastvideo.loader.policy.LoadPolicy`: e.g. blocks
        kept in CPU memory for offload, FP8 weights read from a pre-quantized file). Default: nothing."""
        return None

    @abstractmethod
    def apply(self, pipeline: ComposedPipeline, config: PipelineConfig) -> None:
        """Change ``pipeline`` in place (wrap components, stages, or add step hooks).

        Called once per pipeline, after the weights are loaded and before any generation (in a
        parallel run: before the parallel strategies shard the models). Raise ``ValueError`` with
        the fix when the pipeline cannot be changed this way.
        """
