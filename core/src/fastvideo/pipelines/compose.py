"""Composing a pipeline, apart from loading it: what every family's ``build_pipeline`` shares.

A family loads its components (:func:`load_components` for the library ones, its own DiT through
:class:`fastvideo.models.DiT`), then :func:`text_to_video` lays out the standard stages around them,
with the family's own stages where its workload needs them (image conditioning), and wraps them in a
:class:`~fastvideo.pipelines.composed.ComposedPipeline`::

    device = pick_device(config)
    dit_dtype, text_dtype, vae_dtype = default_dtypes(config, device)
    parts = load_components(source, device, tokenizer=None, text_encoder=text_dtype, vae=vae_dtype,
                            scheduler=None)
    transformer = compile_if_asked(MyDiT.from_pretrained(source.path / "transformer", ...), config, device)
    geometry = LatentGeometry.from_vae(parts["vae"])
    stages = text_to_video(family, source, text_encoders=[T5TextEncoder(parts["tokenizer"],
        parts["text_encoder"])], scheduler=parts["scheduler"], geometry=geometry,
        denoising=DenoisingStage(transformer), vae=parts["vae"], tiling=config.vae_tiling)
    return ComposedPipeline(stages, {"device": device, **parts, "transformer": transformer})
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from fastvideo.pipelines.stages import (
    DecodingStage,
    DenoisingStage,
    InputValidationStage,
    LatentPreparationStage,
    TextEncodingStage,
    TimestepPreparationStage,
)

if TYPE_CHECKING:
    import torch

    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource
    from fastvideo.models import LatentGeometry
    from fastvideo.pipelines.composed import PipelineStage


def load_components(source: ModelSource, device: Any, **dtypes: str | None) -> dict[str, Any]:
    """The library components of ``source`` named as keywords, each in its dtype (``None``: a
    tokenizer, scheduler or processor, which has none), loaded through
    :func:`fastvideo.loader.load_component` (strictly checked) onto ``device``."""
    from fastvideo.loader import load_component

    out: dict[str, Any] = {}
    for name, dtype in dtypes.items():
        if dtype is None:
            out[name] = load_component(source.path, source.model_index, name)
        else:
            out[name] = load_component(source.path, source.model_index, name, dtype=dtype, device=device)
    return out


def compile_if_asked(models: Sequence[Any], config: PipelineConfig, device: torch.device) -> None:
    """Regional ``torch.compile`` of each DiT's blocks when ``config.compile`` asks for it (default:
    on CUDA devices); each block compiles once and its shapes are reused at every step."""
    if config.compile or (config.compile is None and device.type == "cuda"):
        for model in models:
            if model is not None:
                model.compile_blocks()


def text_to_video(
    family: type[ModelFamily],
    source: ModelSource,
    *,
    text_encoders: Sequence[Callable[..., Any]],
    scheduler: Any,
    geometry: LatentGeometry,
    denoising: DenoisingStage,
    vae: Any,
    tiling: bool | None = None,
    default_negative_prompt: str = "",
    cfg: bool = True,
    sigmas: Callable[[int], Sequence[float]] | None = None,
    after_text: Sequence[PipelineStage] = (),
    after_latents: Sequence[PipelineStage] = (),
) -> list[PipelineStage]:
    """The stages of a text-to-video pipeline: input validation, text encoding, (``after_text``:
    e.g. image encoding), timesteps, latents, (``after_latents``: e.g. image latents), denoising,
    decoding. The arguments are those of each stage (:mod:`fastvideo.pipelines.stages`)."""
    return [
        InputValidationStage(family, source),
        TextEncodingStage(text_encoders, default_negative_prompt=default_negative_prompt, cfg=cfg),
        *after_text,
        TimestepPreparationStage(scheduler, sigmas=sigmas),
        LatentPreparationStage(geometry.shape),
        *after_latents,
        denoising,
        DecodingStage(vae, geometry.denormalize, tiling=tiling),
    ]
