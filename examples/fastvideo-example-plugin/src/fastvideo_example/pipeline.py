"""The example text-to-video pipeline: loading, then the core's composition.

Nothing here is specific to a kernel or a device layout: the library components are loaded with
:func:`fastvideo.pipelines.compose.load_components`, our DiT by its own ``from_pretrained``, and
:func:`fastvideo.pipelines.compose.text_to_video` lays out the core stages around them. The latent
geometry and the VAE's latent normalisation are read from the VAE's config by
:class:`fastvideo.models.LatentGeometry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fastvideo.errors import CheckpointError
from fastvideo.loader.components import torch_dtype
from fastvideo.models import LatentGeometry, default_dtypes, pick_device
from fastvideo.pipelines.compose import load_components, text_to_video
from fastvideo.pipelines.composed import ComposedPipeline
from fastvideo.pipelines.stages import DenoisingStage, T5TextEncoder
from fastvideo_example.model import ExampleTransformer

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource


def load_transformer(source: ModelSource, dtype: str, device: torch.device) -> ExampleTransformer:
    """Our DiT is not a diffusers class, so ``load_component`` cannot build it: load it ourselves."""
    spec = list(source.model_index.get("transformer") or [])
    if spec[-1:] != ["ExampleTransformer"]:
        raise CheckpointError(
            f"{source.path}/model_index.json: transformer must be ['fastvideo_example', 'ExampleTransformer'], "
            f"got {spec}"
        )
    return ExampleTransformer.from_pretrained(
        source.path / "transformer", dtype=torch_dtype(dtype), device=device
    )


def build_example_pipeline(
    family: type[ModelFamily], source: ModelSource, config: PipelineConfig
) -> ComposedPipeline:
    """Load every component of an example checkpoint, then compose the core's text-to-video stages."""
    device = pick_device(config)
    dit_dtype, text_dtype, vae_dtype = default_dtypes(config, device)  # bf16/bf16/fp32 on GPU, fp32 on CPU
    parts = load_components(
        source, device, tokenizer=None, text_encoder=text_dtype, vae=vae_dtype, scheduler=None
    )
    transformer = load_transformer(source, dit_dtype, device)
    scheduler = parts["scheduler"]
    stages = text_to_video(
        family,
        source,
        text_encoders=[T5TextEncoder(parts["tokenizer"], parts["text_encoder"])],
        scheduler=scheduler,
        geometry=LatentGeometry.from_vae(
            parts["vae"]
        ),  # channels, strides and normalisation of its (Wan) VAE
        denoising=DenoisingStage(transformer, num_train_timesteps=int(scheduler.config.num_train_timesteps)),
        vae=parts["vae"],
    )
    return ComposedPipeline(stages, {"device": device, **parts, "transformer": transformer})
