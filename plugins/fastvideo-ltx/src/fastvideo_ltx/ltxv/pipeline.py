"""The LTX-Video 0.9.x pipelines, composed from the core stages and LTX-Video's own.

text-to-video: validation -> text (T5, unmasked encoder, the mask kept for the DiT) -> timesteps
(``linspace(1, 1/n, n)`` sigmas, the 0.9.0/0.9.1 resolution-dependent shift resolved per request, or
an explicit timestep list for the distilled checkpoints) -> latents -> denoising (CFG with optional
rescale; RoPE scaled by the frame rate) -> decoding (``AutoencoderKLLTXVideo``; the timestep-
conditioned decoder of >= 0.9.1 gets the decode timestep and decode-time noise).

image-to-video adds the first frame's VAE latents (frame 0 kept clean, its tokens at timestep 0). The
distilled multi-scale chain (first pass, 2x latent upsampling, refine pass) is in
:mod:`fastvideo_ltx.ltxv.multiscale`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fastvideo import progress
from fastvideo.loader.components import torch_dtype
from fastvideo.models import default_dtypes, pick_device
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.compose import compile_if_asked, load_components
from fastvideo.pipelines.composed import ComposedPipeline, PipelineStage
from fastvideo.pipelines.stages import (
    DecodingStage,
    DenoisingStage,
    InputValidationStage,
    LatentPreparationStage,
    TextEncodingStage,
    TimestepPreparationStage,
    frames_to_uint8,
)
from fastvideo_ltx.ltxv.model import LTXVideoTransformer
from fastvideo_ltx.ltxv.options import LTXVideoOptions, options_for

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig, SamplingParams
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource

FAMILY = "ltx"


# ---------------------------------------------------------------- latent space


@dataclass(frozen=True, eq=False)
class LTXLatents:
    """The latent space of an ``AutoencoderKLLTXVideo``: per-channel statistics stored as checkpoint
    buffers (``latents_mean`` / ``latents_std``, not config entries) and its strides."""

    channels: int
    spatial: int
    temporal: int
    mean: torch.Tensor  # (1, C, 1, 1, 1)
    std: torch.Tensor
    scaling_factor: float = 1.0

    @classmethod
    def from_vae(cls, vae: Any) -> LTXLatents:
        mean, std = (
            getattr(vae, n).detach().float().cpu().view(1, -1, 1, 1, 1)
            for n in ("latents_mean", "latents_std")
        )
        return cls(
            channels=int(vae.config.latent_channels),
            spatial=int(vae.spatial_compression_ratio),
            temporal=int(vae.temporal_compression_ratio),
            mean=mean,
            std=std,
            scaling_factor=float(vae.config.scaling_factor),
        )

    def shape(self, p: SamplingParams) -> tuple[int, int, int, int]:
        return (
            self.channels,
            (p.num_frames - 1) // self.temporal + 1,
            p.height // self.spatial,
            p.width // self.spatial,
        )

    def tokens(self, p: SamplingParams) -> int:
        return math.prod(self.shape(p)[1:])

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(latents), self.std.to(latents)
        return (latents - mean) * self.scaling_factor / std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(latents), self.std.to(latents)
        return latents * std / self.scaling_factor + mean


# ---------------------------------------------------------------- text


class LTXTextEncoder:
    """T5 as LTX-Video's pipelines run it: the prompt padded to ``max_length``, the encoder run
    without an attention mask (``LTXPipeline``, ``LTXImageToVideoPipeline``) or with it (``masked``:
    ``LTXConditionPipeline``); padding positions keep their values, the mask is returned for the DiT."""

    def __init__(self, tokenizer: Any, model: Any, *, masked: bool = False) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.masked = masked

    def __call__(self, prompts: list[str], max_length: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        model_device = next(self.model.parameters()).device
        mask = tokens.attention_mask.bool().to(model_device)
        hidden = self.model(tokens.input_ids.to(model_device), attention_mask=mask if self.masked else None)[
            0
        ]
        return hidden.to(device), mask.to(device)  # (B, L, D), (B, L)


# ---------------------------------------------------------------- timesteps


def calculate_shift(tokens: int, config: Any) -> float:
    """The resolution-dependent shift exponent ``mu``: linear in the token count between
    (``base_image_seq_len``, ``base_shift``) and (``max_image_seq_len``, ``max_shift``)."""
    lo, hi = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (top - base) / (hi - lo)
    return tokens * slope + (base - slope * lo)


def request_scheduler(scheduler: Any, tokens: int) -> Any:
    """The scheduler of one request: a dynamic-shift scheduler (0.9.0 / 0.9.1) becomes the static
    shift ``exp(mu)`` it applies at this token count (the same sigmas, for every sampler)."""
    cfg = scheduler.config
    if not cfg.get("use_dynamic_shifting", False):
        return scheduler
    mu = calculate_shift(tokens, cfg)
    return type(scheduler).from_config({**cfg, "use_dynamic_shifting": False, "shift": math.exp(mu)})


class LTXTimestepStage(TimestepPreparationStage):
    """Timesteps of one request: sigmas ``linspace(1, 1/n, n)`` (or ``timesteps / 1000`` of an explicit
    list), on the checkpoint's scheduler with its dynamic shift resolved for the request's size."""

    def __init__(
        self, scheduler: Any, geometry: LTXLatents, timesteps: tuple[float, ...] | None = None
    ) -> None:
        super().__init__(scheduler)
        self.base_scheduler = scheduler
        self.geometry = geometry
        self.explicit = timesteps

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        self.scheduler = request_scheduler(self.base_scheduler, self.geometry.tokens(batch.params))
        if self.explicit is not None:
            listed = [t / 1000.0 for t in self.explicit]
            self.sigmas = lambda n: listed
        else:
            self.sigmas = lambda n: np.linspace(1.0, 1.0 / n, n).tolist()  # as diffusers' pipelines
        return super().forward(batch)


# ---------------------------------------------------------------- image conditioning (I2V)


def load_image(path: str) -> Any:
    from PIL import Image

    try:
        return Image.open(path).convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValueError(f"--image {path!r} is not a readable image ({exc})") from None


class LTXImageLatentStage(PipelineStage):
    """The first frame's VAE latents (sampled from the posterior with the request's generator, as
    diffusers does), normalised, replacing latent frame 0; its tokens are marked as conditioning."""

    name = "image_latents"

    def __init__(self, vae: Any, geometry: LTXLatents) -> None:
        from diffusers.video_processor import VideoProcessor

        self.vae = vae
        self.geometry = geometry
        self.video_processor = VideoProcessor(vae_scale_factor=geometry.spatial)

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        p, latents = batch.params, batch.latents
        assert latents is not None
        if p.image is None:  # text-to-video
            return batch
        vae_param = next(self.vae.parameters())
        image = self.video_processor.preprocess(load_image(p.image), height=p.height, width=p.width)
        image = image.to(device=vae_param.device, dtype=vae_param.dtype).unsqueeze(2)  # (1, 3, 1, H, W)
        cond = self.vae.encode(image).latent_dist.sample(batch.generator)  # (1, C, 1, h, w)
        cond = self.geometry.normalize(cond.to(batch.device, torch.float32))
        mask = torch.zeros(1, 1, *latents.shape[2:], device=batch.device)
        mask[:, :, 0] = 1.0
        batch.latents = cond * mask + latents * (1 - mask)  # frame 0 clean, the rest noise
        extra = batch.family_extra(FAMILY)
        extra["condition"], extra["condition_mask"] = cond, mask
        return batch


# ---------------------------------------------------------------- denoising


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, factor: float) -> torch.Tensor:
    """CFG rescale: the guided prediction scaled to the conditional one's std over all but the
    batch dim, mixed with it by ``factor``."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return factor * rescaled + (1 - factor) * guided


class RescaledGuidance:
    """Classifier-free guidance in fp32 with optional rescale, as LTX-Video's pipelines combine it."""

    def __init__(self, rescale: float) -> None:
        self.rescale = rescale

    def __call__(
        self,
        model: Any,
        inputs: dict[str, Any],
        cond: dict[str, Any],
        uncond: dict[str, Any] | None,
        scale: float,
    ) -> torch.Tensor:
        pred = model(**inputs, **cond).float()
        if uncond is None:
            return pred
        uncond_pred = model(**inputs, **uncond).float()
        guided = uncond_pred + scale * (pred - uncond_pred)
        return rescale_guidance(guided, pred, self.rescale) if self.rescale > 0 else guided


class LTXDenoisingStage(DenoisingStage):
    """The sampling loop with LTX-Video's inputs: the T5 mask, the frame-rate-scaled RoPE, and for
    image conditioning per-token timesteps (conditioning tokens at 0) with frame 0 kept clean."""

    def __init__(
        self, transformer: Any, geometry: LTXLatents, *, guidance_rescale: float = 0.0, **kw: Any
    ) -> None:
        super().__init__(transformer, **kw)
        self.geometry = geometry
        self.guidance = RescaledGuidance(guidance_rescale)

    def model_inputs(self, batch: ForwardBatch, latents: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        b = latents.shape[0]
        timestep = t.expand(b)
        mask = batch.family_extra(FAMILY).get("condition_mask")
        if mask is not None:  # (1, 1, T, H, W) -> per token (B, L)
            timestep = timestep[:, None] * (1 - mask.flatten(1).expand(b, -1))
        g = self.geometry
        return {
            "hidden_states": latents.to(self.dtype),
            "timestep": timestep,
            "rope_interpolation_scale": (g.temporal / batch.params.fps, g.spatial, g.spatial),
        }

    def text_inputs(self, batch: ForwardBatch, negative: bool) -> dict[str, Any]:
        embeds = batch.negative_prompt_embeds if negative else batch.prompt_embeds
        masks = batch.negative_prompt_masks if negative else batch.prompt_masks
        return {"encoder_hidden_states": embeds[0], "encoder_attention_mask": masks[0]}

    def after_step(self, batch: ForwardBatch, latents: torch.Tensor) -> torch.Tensor:
        extra = batch.family_extra(FAMILY)
        if "condition_mask" in extra:  # the conditioning frame is never updated
            mask = extra["condition_mask"]
            latents = extra["condition"] * mask + latents * (1 - mask)
        return latents


# ---------------------------------------------------------------- decoding


class LTXDecodingStage(DecodingStage):
    """Denormalises and decodes; a timestep-conditioned decoder (>= 0.9.1) gets ``decode_timestep``
    and the latents mixed with fresh noise, ``(1 - s) z + s noise`` (noise from the request's generator)."""

    def __init__(
        self, vae: Any, geometry: LTXLatents, options: LTXVideoOptions, *, tiling: bool | None
    ) -> None:
        super().__init__(vae, geometry.denormalize, tiling=tiling)
        self.options = options
        self.conditioned = bool(getattr(vae.config, "timestep_conditioning", False))
        self._temb: torch.Tensor | None = None
        self.vae_decode = self._decode

    def _decode(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(latents, self._temb, return_dict=False)[0]

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        assert batch.latents is not None
        self._set_tiling(batch)
        vae_param = next(self.vae.parameters())
        latents = self.denormalize(batch.latents.to(device=vae_param.device, dtype=torch.float32))
        self._temb = None
        if self.conditioned:
            noise = torch.randn(latents.shape, generator=batch.generator, dtype=torch.float32).to(
                latents.device
            )
            s = self.options.noise_scale
            latents = (1 - s) * latents + s * noise
            self._temb = torch.tensor(
                [self.options.decode_timestep], device=vae_param.device, dtype=vae_param.dtype
            )
        with progress.task("decoding", 1) as advance:
            video = self.decode(latents.to(vae_param.dtype))  # (B, 3, T, H, W)
            advance(1)
        batch.frames = frames_to_uint8(video[0])
        return batch


# ---------------------------------------------------------------- loading and composition


def load_ltx_components(source: ModelSource, config: PipelineConfig) -> dict[str, Any]:
    """Device, T5, VAE, scheduler (diffusers / transformers) and our DiT of an LTX-Video folder."""
    device = pick_device(config)
    # bf16 DiT and T5, fp32 VAE on GPU (the VAE decodes in bf16 in diffusers' examples; fp32 is safer)
    dit_dtype, text_dtype, vae_dtype = default_dtypes(config, device, text="bf16", vae="bf16")
    parts = load_components(
        source, device, tokenizer=None, text_encoder=text_dtype, vae=vae_dtype, scheduler=None
    )
    transformer = LTXVideoTransformer.from_pretrained(
        source.path / "transformer", dtype=torch_dtype(dit_dtype), device=device
    )
    compile_if_asked([transformer], config, device)
    return {"device": device, **parts, "transformer": transformer}


def ltx_stages(
    family: type[ModelFamily],
    source: ModelSource,
    parts: dict[str, Any],
    options: LTXVideoOptions,
    config: PipelineConfig,
) -> list[PipelineStage]:
    geometry = LTXLatents.from_vae(parts["vae"])
    steps = int(parts["scheduler"].config.get("num_train_timesteps", 1000))
    return [
        InputValidationStage(family, source),
        TextEncodingStage([LTXTextEncoder(parts["tokenizer"], parts["text_encoder"])]),
        LTXTimestepStage(parts["scheduler"], geometry, options.timesteps),
        LatentPreparationStage(geometry.shape),
        LTXImageLatentStage(parts["vae"], geometry),  # a no-op without --image
        LTXDenoisingStage(
            parts["transformer"],
            geometry,
            guidance_rescale=options.guidance_rescale,
            num_train_timesteps=steps,
        ),
        LTXDecodingStage(parts["vae"], geometry, options, tiling=config.vae_tiling),
    ]


def build_ltx_pipeline(
    family: type[ModelFamily], source: ModelSource, config: PipelineConfig
) -> ComposedPipeline:
    """Load an LTX-Video checkpoint and compose its stages: text-to-video, image-to-video when the
    request has an image, and the distilled multi-scale chain when the options name a latent upsampler."""
    options = options_for(source)
    parts = load_ltx_components(source, config)
    if options.upsampler is not None:
        from fastvideo_ltx.ltxv.multiscale import multiscale_stages

        stages = multiscale_stages(family, source, parts, options, config)
    elif source.class_name == "LTXConditionPipeline":
        from fastvideo_ltx.ltxv.condition import condition_stages

        stages = condition_stages(family, source, parts, options, config)
    else:
        stages = ltx_stages(family, source, parts, options, config)
    return ComposedPipeline(stages, parts)
