"""The example text-to-video pipeline, composed from the core stages.

Nothing here is specific to a kernel or a device layout: the components are loaded with
:mod:`fastvideo.loader`, and the stages of :mod:`fastvideo.pipelines.stages` are reused as they are.
The family supplies only what differs between families: the latent geometry and the VAE's
latent normalisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fastvideo.errors import CheckpointError
from fastvideo.loader import load_component
from fastvideo.loader.components import torch_dtype
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
    from fastvideo.configs import PipelineConfig, SamplingParams
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource


class ExampleLatents:
    """Latent geometry of a checkpoint: channels and strides of its (Wan) VAE, and its normalisation."""

    def __init__(self, vae_config: Any) -> None:
        self.channels = int(vae_config.z_dim)
        self.spatial = int(vae_config.scale_factor_spatial)
        self.temporal = int(vae_config.scale_factor_temporal)
        self.mean = torch.tensor(vae_config.latents_mean).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(vae_config.latents_std).view(1, -1, 1, 1, 1)

    def shape(self, p: SamplingParams) -> tuple[int, int, int, int]:
        """``(C, T', H', W')`` of the latents for a request."""
        frames = (p.num_frames - 1) // self.temporal + 1
        return self.channels, frames, p.height // self.spatial, p.width // self.spatial

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """The DiT works on normalised latents; the VAE decodes ``x * std + mean``."""
        return latents * self.std.to(latents) + self.mean.to(latents)


def _device_and_dtypes(config: PipelineConfig) -> tuple[torch.device, str, str, str]:
    """The device, then (DiT, text encoder, VAE) dtypes: bf16/bf16/fp32 on GPU, fp32 on CPU."""
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    low = "bf16" if device.type == "cuda" else "fp32"
    return device, config.dtype or low, config.text_encoder_dtype or low, config.vae_dtype or "fp32"


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
    device, dit_dtype, text_dtype, vae_dtype = _device_and_dtypes(config)
    folder, index = source.path, source.model_index
    tokenizer = load_component(folder, index, "tokenizer")
    text_encoder = load_component(folder, index, "text_encoder", dtype=text_dtype, device=device)
    vae = load_component(folder, index, "vae", dtype=vae_dtype, device=device)
    scheduler = load_component(folder, index, "scheduler")
    transformer = load_transformer(source, dit_dtype, device)
    latents = ExampleLatents(vae.config)
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
