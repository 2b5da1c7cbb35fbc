"""The parallel strategies that act on stages, as pipeline transforms (applied on every rank).

* ``cfg-parallel`` (order 0): replaces each denoising stage's ``guidance`` with
  :class:`fastvideo.parallel.cfg.CFGParallelGuidance` when the run has CFG parallelism (the ``cfg``
  mesh dim of :class:`~fastvideo.parallel.strategies.CFGParallelStrategy`).
* ``parallel-vae`` (order 10): wraps each decoding stage's ``vae_decode`` with
  :class:`fastvideo.parallel.vae.ParallelVAEDecode` whenever several ranks run: the tiles of a tiled
  decode are spread over the ranks for VAE classes with a registered splitter (Wan's comes from
  fastvideo-wan); other VAEs decode whole on every rank, as before.

Both apply only in a parallel run; in one process they leave the pipeline unchanged. This module
does not import torch (the registry loads it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastvideo.interfaces.transform import PipelineTransform

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.pipelines.composed import ComposedPipeline


def _parallel_state():  # type: ignore[no-untyped-def]
    from fastvideo.parallel.state import current

    return current()


class CFGParallelTransform(PipelineTransform):
    """The conditional and unconditional branches of each step on different rank groups."""

    name = "cfg-parallel"
    order = 0

    def applies(self, pipeline: ComposedPipeline, config: PipelineConfig) -> bool:
        state = _parallel_state()
        return state is not None and state.cfg_size > 1

    def apply(self, pipeline: ComposedPipeline, config: PipelineConfig) -> None:
        from fastvideo.parallel.cfg import CFGParallelGuidance
        from fastvideo.pipelines.stages import DenoisingStage

        state = _parallel_state()
        for stage in pipeline.stages:
            if isinstance(stage, DenoisingStage):
                stage.guidance = CFGParallelGuidance(state)


class ParallelVAETransform(PipelineTransform):
    """The tiles of a tiled VAE decode spread over the ranks (every rank gets the whole video)."""

    name = "parallel-vae"
    order = 10

    def applies(self, pipeline: ComposedPipeline, config: PipelineConfig) -> bool:
        state = _parallel_state()
        return state is not None and state.world_size > 1

    def apply(self, pipeline: ComposedPipeline, config: PipelineConfig) -> None:
        from fastvideo.parallel.vae import ParallelVAEDecode
        from fastvideo.pipelines.stages import DecodingStage

        state = _parallel_state()
        for stage in pipeline.stages:
            if isinstance(stage, DecodingStage):
                stage.vae_decode = ParallelVAEDecode(state, stage.vae_decode)
