"""The example text-to-video pipeline, composed from the core stages.

Nothing here is specific to a kernel or a device layout: the components are loaded with
:mod:`fastvideo.loader`, and the stages of :mod:`fastvideo.pipelines.stages` are reused as they are.
The family supplies only what differs between families; the latent geometry and the VAE's latent
normalisation are read from the VAE's config by :class:`fastvideo.models.LatentGeometry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fastvideo.errors import CheckpointError
from fastvideo.loader import load_component
from fastvideo.loader.components import torch_dtype
from fastvideo.models import LatentGeometry, default_dtypes, pick_device
from fastvideo.pipelines.composed import ComposedPipeline
from fastvideo.pipelines.stages import (
    DecodingStage,
    DenoisingStage,
    InputValidationStage,
    LatentPreparationStage,
    T5TextEncoder,
    TextEncodingStage,
    TimestepPreparationStage,
)
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
    """Load every component of an example checkpoint and compose the text-to-video stages."""
    device = pick_device(config)
    dit_dtype, text_dtype, vae_dtype = default_dtypes(config, device)  # bf16/bf16/fp32 on GPU, fp32 on CPU
    folder, index = source.path, source.model_index
    tokenizer = load_component(folder, index, "tokenizer")
    text_encoder = load_component(folder, index, "text_encoder", dtype=text_dtype, device=device)
    vae = load_component(folder, index, "vae", dtype=vae_dtype, device=device)
    scheduler = load_component(folder, index, "scheduler")
    transformer = load_transformer(source, dit_dtype, device)
    latents = LatentGeometry.from_vae(vae)  # channels, strides and normalisation of its (Wan) VAE
    stages = [
        InputValidationStage(family, source),
        TextEncodingStage([T5TextEncoder(tokenizer, text_encoder)]),
        TimestepPreparationStage(scheduler),
        LatentPreparationStage(latents.shape),
        DenoisingStage(transformer, num_train_timesteps=int(scheduler.config.num_train_timesteps)),
        DecodingStage(vae, latents.denormalize),
    ]
    components = {
        "device": device,
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": scheduler,
        "transformer": transformer,
    }
    return ComposedPipeline(stages, components)
