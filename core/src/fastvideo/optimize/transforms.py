"""The speed and memory options as built-in pipeline transforms (no torch import at module level).

Each reads its own field of :class:`~fastvideo.configs.PipelineConfig` and acts on the DiTs of the
pipeline (the components that are :class:`fastvideo.models.DiT` s), the denoising stages' seams and
the other components, never on a family's internals:

* ``text-kv-cache`` (order 590, on unless ``text_kv_cache=False``): lossless;
* ``step-cache`` (order 600, ``cache=teacache|firstblock|magcache``);
* ``fp8`` (order 700, ``quantize=fp8|fp8-storage``);
* ``layer-offload`` (order 800, ``offload=layer``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastvideo.interfaces.transform import PipelineTransform

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.loader.policy import LoadPolicy
    from fastvideo.pipelines.composed import ComposedPipeline

logger = logging.getLogger(__name__)


def pipeline_dits(pipeline: ComposedPipeline) -> list[tuple[str, Any]]:
    """``(component name, model)`` of every DiT of ``pipeline`` (each model once)."""
    from fastvideo.models.dit import DiT

    seen: set[int] = set()
    out = []
    for key, value in pipeline.components.items():
        if isinstance(value, DiT) and id(value) not in seen:
            seen.add(id(value))
            out.append((key, value))
    return out


class FP8Transform(PipelineTransform):
    """FP8 linears in the DiT blocks (``quantize="fp8"`` or ``"fp8-storage"``)."""

    name = "fp8"
    order = 700

    def applies(self, pipeline: ComposedPipeline, config: PipelineConfig) -> bool:
        wanted = config.quantize is not None or config.fp8_checkpoint is not None
        return wanted and bool(pipeline_dits(pipeline))

    def prepare_load(self, config: PipelineConfig, policy: LoadPolicy) -> None:
        """With ``fp8_checkpoint``: the DiT's FP8 linears are filled from the file as it loads (the
        high-precision weights they replace are never read)."""
        if config.fp8_checkpoint is not None:
            policy.fp8_checkpoint, policy.fp8_mode = config.fp8_checkpoint, config.quantize or "fp8"

    def apply(self, pipeline: ComposedPipeline, config: PipelineConfig) -> None:
        from fastvideo.optimize.fp8 import load_prequantized, quantize_fp8

        dits = pipeline_dits(pipeline)
        path = None if config.fp8_checkpoint is None else str(config.fp8_checkpoint)
        if path is not None and len(dits) == 1 and getattr(dits[0][1], "fp8_checkpoint_loaded", None) == path:
            logger.info("%s: FP8 linears loaded from %s as it loaded", dits[0][0], config.fp8_checkpoint)
        elif config.fp8_checkpoint is not None:
            if len(dits) > 1:
                raise ValueError(
                    "--fp8-checkpoint holds one DiT; this pipeline has several (an MoE): quantize with --quantize fp8"
                )
            info = load_prequantized(dits[0][1], config.fp8_checkpoint, config.quantize or "fp8")
            logger.info(
                "%s: %d FP8 linears loaded from %s", dits[0][0], info["fp8_linears"], config.fp8_checkpoint
            )
        if config.quantize is None:
            return
        for key, model in dits:
            info = quantize_fp8(
                model, config.quantize, device=pipeline.components.get("device")
            )  # (after a file: what it left in high precision)
            logger.info("%s: %d linears in FP8 (%s via %s)", key, info["linears"], info["mode"], info["via"])


def _denoising_stages(pipeline: ComposedPipeline) -> list[Any]:
    from fastvideo.pipelines.stages import DenoisingStage

    return [s for s in pipeline.stages if isinstance(s, DenoisingStage)]


class TextKVCacheTransform(PipelineTransform):
    """Text-only projections (the DiT's ``text_kv_layers``) computed once per prompt; lossless."""

    name = "text-kv-cache"
    order = 750  # after fp8, which replaces the linears

    def applies(self, pipeline: ComposedPipeline, config: PipelineConfig) -> bool:
        return config.text_kv_cache and any(
            getattr(m, "text_kv_layers", ()) for _, m in pipeline_dits(pipeline)
        )

    def apply(self, pipeline: ComposedPipeline, config: PipelineConfig) -> None:
        from fastvideo.optimize.cache import enable_text_kv_cache, memo_reset_hook

        memos = [memo for _, model in pipeline_dits(pipeline) for memo in enable_text_kv_cache(model)]
        for stage in _denoising_stages(pipeline):
            stage.step_hooks.append(memo_reset_hook(memos))
        pipeline.components["text_kv_memos"] = memos


class StepCacheTransform(PipelineTransform):
    """A step cache on each denoising stage (``cache="teacache" | "firstblock" | "magcache"``)."""

    name = "step-cache"
    order = 600

    def applies(self, pipeline: ComposedPipeline, config: PipelineConfig) -> bool:
        return config.cache is not None and bool(_denoising_stages(pipeline))

    def apply(self, pipeline: ComposedPipeline, config: PipelineConfig) -> None:
        from fastvideo.optimize.cache import CachedGuidance, step_hook_for
        from fastvideo.parallel.state import current

        state = current()
        if config.cache == "firstblock" and state is not None and state.sp_size > 1:
            raise ValueError(
                "--cache firstblock compares a block's output, which sequence parallelism splits over the "
                "ranks; use --cache teacache or magcache with --sp-size/--ring-size"
            )
        assert config.cache is not None
        for stage in _denoising_stages(pipeline):
            guidance = CachedGuidance(stage.guidance, config.cache, config.cache_threshold)
            stage.guidance = guidance
            stage.step_hooks.insert(0, step_hook_for(guidance))
            stage.step_cache = guidance  # stats: stage.step_cache.stats


class LayerOffloadTransform(PipelineTransform):
    """``offload="layer"``: DiT blocks streamed from pinned CPU memory; encoders and VAE on the CPU
    except while their stage runs."""

    name = "layer-offload"
    order = 800

    def applies(self, pipeline: ComposedPipeline, config: PipelineConfig) -> bool:
        return config.offload == "layer"

    def prepare_load(self, config: PipelineConfig, policy: LoadPolicy) -> None:
        """The DiTs' blocks are read into (pinned) CPU memory, never onto the device (FSDP: refused in
        :meth:`apply`)."""
        if config.offload == "layer" and not config.parallel.fsdp:
            policy.stream_blocks = True

    def apply(self, pipeline: ComposedPipeline, config: PipelineConfig) -> None:
        import torch

        from fastvideo.optimize.offload import LayerOffload, offload_stage, referenced
        from fastvideo.pipelines.stages import DenoisingStage

        if config.parallel.fsdp:
            raise ValueError(
                "--offload layer keeps whole blocks on the CPU; it cannot run with --fsdp (drop one)"
            )
        dits = pipeline_dits(pipeline)
        if not dits:
            raise ValueError("--offload layer needs a pipeline with a fastvideo DiT")
        device = torch.device(pipeline.components.get("device") or next(dits[0][1].parameters()).device)
        offloads = {key: LayerOffload(model, device) for key, model in dits}
        dit_ids = {id(m) for _, m in dits}
        policy = getattr(pipeline, "load_policy", None)
        for model in getattr(
            policy, "streamed", ()
        ):  # loaded with its blocks in CPU memory, but no component
            if id(model) not in dit_ids:
                logger.warning(
                    "a DiT outside the pipeline's components is not offloaded: moved to %s", device
                )
                model.to(device)
        others = [
            v
            for k, v in pipeline.components.items()
            if isinstance(v, torch.nn.Module) and id(v) not in dit_ids and k != "device"
        ]
        idle = []
        for stage in pipeline.stages:
            if isinstance(stage, DenoisingStage):
                continue
            used = referenced(stage, others)
            if used:
                idle.append(offload_stage(stage, used, device))
        pipeline.components["offload"] = {"layers": offloads, "idle": idle}


BUILTIN = (TextKVCacheTransform, StepCacheTransform, FP8Transform, LayerOffloadTransform)
