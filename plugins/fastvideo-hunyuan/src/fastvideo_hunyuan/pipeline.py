"""The HunyuanVideo text-to-video pipeline, composed from the core stages.

validation -> text (Llama with HunyuanVideo's prompt template and crop, CLIP pooled) -> timesteps
(FlowMatchEuler on ``linspace(1, 0, n + 1)[:-1]``, shifted) -> latents -> denoising with embedded
guidance (no negative branch) -> decoding (``AutoencoderKLHunyuanVideo``, spatially tiled for large videos).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fastvideo.loader.components import torch_dtype
from fastvideo.models import LatentGeometry, default_dtypes, pick_device
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.compose import compile_if_asked, load_components, text_to_video
from fastvideo.pipelines.composed import ComposedPipeline
from fastvideo.pipelines.stages import (
    DenoisingStage,
    LanguageModelTextEncoder,
    PooledTextEncoder,
    PromptTemplate,
)
from fastvideo_hunyuan.model import HunyuanTransformer

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource

#: HunyuanVideo's Llama prompt template; its prefix is 95 tokens of the checkpoints' Llama-3 tokenizer
#: (``<|begin_of_text|>`` included), which are cropped from the text states.
PROMPT_TEMPLATE = PromptTemplate(
    text=(
        "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
        "1. The main content and theme of the video."
        "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
        "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
        "4. background environment, light, style and atmosphere."
        "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    ),
    crop_start=95,
)
LLAMA_HIDDEN_LAYER = -3  # the text states skip Llama's last two layers
CLIP_MAX_LENGTH = 77


def flow_sigmas(num_steps: int) -> list[float]:
    """HunyuanVideo's unshifted sigmas: ``n`` evenly spaced values from 1 down to ``1/n``."""
    return [1.0 - i / num_steps for i in range(num_steps)]


class HunyuanDenoisingStage(DenoisingStage):
    """The sampling loop with HunyuanVideo's inputs: the Llama states and mask, the CLIP pooled
    states, and the embedded guidance scale (x 1000, in the DiT's dtype, as diffusers passes it)."""

    def model_inputs(self, batch: ForwardBatch, latents: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        b = latents.shape[0]
        inputs = {"hidden_states": latents.to(self.dtype), "timestep": t.expand(b)}
        if self.transformer.config.guidance_embeds:
            scale = torch.full((b,), batch.params.guidance_scale, dtype=self.dtype, device=latents.device)
            inputs["guidance"] = scale * 1000.0
        return inputs

    def text_inputs(self, batch: ForwardBatch, negative: bool) -> dict[str, Any]:
        return {
            "encoder_hidden_states": batch.prompt_embeds[0],
            "encoder_attention_mask": batch.prompt_masks[0],
            "pooled_projections": batch.prompt_embeds[1],
        }


def build_hunyuan_pipeline(
    family: type[ModelFamily], source: ModelSource, config: PipelineConfig
) -> ComposedPipeline:
    """Load every component of a HunyuanVideo checkpoint, then compose the text-to-video stages."""
    device = pick_device(config)
    # bf16 DiT, fp16 text encoders and VAE on GPU: HunyuanVideo's release settings
    dit_dtype, text_dtype, vae_dtype = default_dtypes(config, device, text="fp16", vae="fp16")
    parts = load_components(
        source,
        device,
        tokenizer=None,
        text_encoder=text_dtype,
        tokenizer_2=None,
        text_encoder_2=text_dtype,
        vae=vae_dtype,
        scheduler=None,
    )
    transformer = HunyuanTransformer.from_pretrained(
        source.path / "transformer", dtype=torch_dtype(dit_dtype), device=device
    )
    compile_if_asked([transformer], config, device)
    encoders = [
        LanguageModelTextEncoder(
            parts["tokenizer"],
            parts["text_encoder"],
            template=PROMPT_TEMPLATE,
            hidden_layer=LLAMA_HIDDEN_LAYER,
        ),
        PooledTextEncoder(parts["tokenizer_2"], parts["text_encoder_2"], max_length=CLIP_MAX_LENGTH),
    ]
    steps = int(parts["scheduler"].config.get("num_train_timesteps", 1000))
    stages = text_to_video(
        family,
        source,
        text_encoders=encoders,
        cfg=False,  # guidance-distilled: the scale is a DiT input, no negative branch
        scheduler=parts["scheduler"],
        sigmas=flow_sigmas,
        geometry=LatentGeometry.from_vae(parts["vae"], channels=transformer.config.in_channels),
        denoising=HunyuanDenoisingStage(transformer, num_train_timesteps=steps, cfg=False),
        vae=parts["vae"],
        tiling=config.vae_tiling,  # None: tiled above 480x832
    )
    return ComposedPipeline(stages, {"device": device, **parts, "transformer": transformer})
