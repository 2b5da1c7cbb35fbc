"""Wan sampling pipelines, composed from the core stages.

T2V and the Wan2.2 A14B MoE use the core stages as they are (the MoE through the denoising
stage's ``transformer_2`` / ``boundary_ratio``); I2V adds CLIP image encoding and the VAE-encoded
first frame; TI2V-5B uses per-token timesteps with the first latent frame taken from the image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fastvideo.loader.components import load_component, torch_dtype
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

from fastvideo_wan.model import WanTransformer
from fastvideo_wan.presets import NEGATIVE_PROMPT

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig, SamplingParams
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource


def pick_device(config: PipelineConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtypes(config: PipelineConfig, device: torch.device) -> tuple[str, str, str]:
    """(DiT, text encoder, VAE) dtypes: bf16/bf16/fp32 on GPU, fp32 everywhere on CPU."""
    gpu = device.type == "cuda"
    dit = config.dtype or ("bf16" if gpu else "fp32")
    text = config.text_encoder_dtype or ("bf16" if gpu else "fp32")
    vae = config.vae_dtype or "fp32"
    return dit, text, vae


class WanLatents:
    """Latent geometry of a Wan checkpoint: channels and VAE strides."""

    def __init__(self, vae: Any) -> None:
        cfg = vae.config
        self.channels = int(cfg.z_dim)
        self.spatial = int(getattr(cfg, "scale_factor_spatial", None) or (16 if cfg.z_dim == 48 else 8))
        self.temporal = int(getattr(cfg, "scale_factor_temporal", None) or 4)
        self.mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)

    def shape(self, p: SamplingParams) -> tuple[int, int, int, int]:
        return (self.channels, (p.num_frames - 1) // self.temporal + 1, p.height // self.spatial, p.width // self.spatial)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(latents.device, latents.dtype)
        inv_std = (1.0 / self.std).to(latents.device, latents.dtype)
        return latents / inv_std + mean


def _transformer(source: ModelSource, name: str, dtype: str, device: torch.device) -> WanTransformer | None:
    spec = source.model_index.get(name)
    if not spec or spec[0] is None:
        return None
    model = WanTransformer.from_pretrained(source.path / name, dtype=torch_dtype(dtype), device=device)
    return model.eval()


def build_wan_pipeline(family: type[ModelFamily], source: ModelSource, config: PipelineConfig) -> ComposedPipeline:
    """Load every component of a Wan checkpoint and compose the stages of its workload."""
    device = pick_device(config)
    dit_dtype, text_dtype, vae_dtype = default_dtypes(config, device)
    index = source.model_index
    if index.get("_class_name") == "WanImageToVideoPipeline" or index.get("expand_timesteps"):
        raise NotImplementedError("Wan I2V / TI2V pipelines are not wired yet")
    tokenizer = load_component(source.path, index, "tokenizer")
    text_encoder = load_component(source.path, index, "text_encoder", dtype=text_dtype, device=device)
    vae = load_component(source.path, index, "vae", dtype=vae_dtype, device=device)
    scheduler = load_component(source.path, index, "scheduler")
    transformer = _transformer(source, "transformer", dit_dtype, device)
    transformer_2 = _transformer(source, "transformer_2", dit_dtype, device)
    if transformer is None:  # Wan2.2 checkpoints may ship only the low-noise expert
        transformer, transformer_2 = transformer_2, None
    assert transformer is not None
    geometry = WanLatents(vae)
    stages = [
        InputValidationStage(family, source),
        TextEncodingStage([T5TextEncoder(tokenizer, text_encoder)], default_negative_prompt=NEGATIVE_PROMPT),
        TimestepPreparationStage(scheduler),
        LatentPreparationStage(geometry.shape),
        DenoisingStage(
            transformer,
            transformer_2=transformer_2,
            boundary_ratio=index.get("boundary_ratio"),
            num_train_timesteps=int(scheduler.config.get("num_train_timesteps", 1000)),
        ),
        DecodingStage(vae, geometry.denormalize),
    ]
    components = {
        "device": device,
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": scheduler,
        "transformer": transformer,
        "transformer_2": transformer_2,
    }
    return ComposedPipeline(stages, components)
