"""The distilled multi-scale chain of LTX-Video 0.9.7 / 0.9.8 as one pipeline.

As diffusers' documentation runs the distilled checkpoints (``LTXConditionPipeline`` twice around an
``LTXLatentUpsamplePipeline``):

1. first pass at ``downscale`` of the requested size (rounded down to the VAE stride) on the
   explicit distilled timestep list;
2. 2x spatial upsampling of the latents with ``LTXLatentUpsamplerModel`` (in the VAE's space:
   denormalised, upsampled, AdaIN to the first pass's statistics, tone-mapped, normalised again);
3. refine pass at twice the first pass's size: the upsampled latents re-noised to the first sigma
   kept by ``refine_strength`` of the refine timestep list, then denoised on the rest of it;
4. decoding, and a resize of the frames to the requested size.

Conditions (``--image``, as in :mod:`fastvideo_ltx.ltxv.condition`) apply to both passes, encoded at
each pass's size, as diffusers' documentation passes them to both ``LTXConditionPipeline`` calls.

The passes follow ``LTXConditionPipeline``'s conventions: T5 run with its attention mask, RoPE on
explicit coordinates (latent index x VAE stride, the causal first-frame fix, frames / frame rate),
and the Euler update on the timestep list (current sigma ``t / 1000``, next sigma the largest
schedule sigma below it). Every random draw (first-pass noise and conditions, refine noise and
conditions, decode noise) comes from the request's generator, in that order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastvideo import progress
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.composed import PipelineStage
from fastvideo.pipelines.stages import InputValidationStage, LatentPreparationStage, TextEncodingStage
from fastvideo_ltx.ltxv.condition import (
    LTXConditionDenoisingStage,
    LTXConditionLatentStage,
    TimestepListStage,
)
from fastvideo_ltx.ltxv.options import LTXVideoOptions
from fastvideo_ltx.ltxv.pipeline import FAMILY, LTXDecodingStage, LTXLatents, LTXTextEncoder

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource


# ---------------------------------------------------------------- sizes


def pass_sizes(
    height: int, width: int, downscale: float, stride: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(first pass, refine pass) sizes for a requested ``height x width``: the first at ``downscale``
    of it rounded down to ``stride`` (at least one stride), the refine pass twice that."""
    first = tuple(max(stride, int(s * downscale) // stride * stride) for s in (height, width))
    return first, (2 * first[0], 2 * first[1])  # type: ignore[return-value]


class PassSizeStage(PipelineStage):
    """Sets the size the next stages work at (the request's own is kept in ``extra["ltx"]["size"]``)."""

    def __init__(self, name: str, which: int, options: LTXVideoOptions, stride: int) -> None:
        self.name = name
        self.which = which  # 0: first pass, 1: refine pass
        self.options = options
        self.stride = stride

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        extra = batch.family_extra(FAMILY)
        size = extra.setdefault("size", (batch.params.height, batch.params.width))
        h, w = pass_sizes(*size, self.options.downscale, self.stride)[self.which]
        batch.params = dataclasses.replace(batch.params, height=h, width=w)
        return batch


# ---------------------------------------------------------------- upsampling


def adain(latents: torch.Tensor, reference: torch.Tensor, factor: float) -> torch.Tensor:
    """Per sample and channel, ``latents`` moved to ``reference``'s mean and std, blended by ``factor``."""
    dims = tuple(range(2, latents.ndim))
    r_std, r_mean = torch.std_mean(reference, dim=dims, keepdim=True)
    i_std, i_mean = torch.std_mean(latents, dim=dims, keepdim=True)
    return torch.lerp(latents, (latents - i_mean) / i_std * r_std + r_mean, factor)


def tone_map(latents: torch.Tensor, compression: float) -> torch.Tensor:
    """Sigmoid compression of large latent values (0.9.8): ``x * (1 - 0.8 s sigmoid(4 s (|x| - 1)))``
    with ``s = 0.75 * compression``."""
    s = compression * 0.75
    return latents * (1.0 - 0.8 * s * torch.sigmoid(4.0 * s * (latents.abs() - 1.0)))


class LTXUpsampleStage(PipelineStage):
    """2x spatial upsampling of the first pass's latents with ``LTXLatentUpsamplerModel``."""

    name = "upsample"

    def __init__(self, upsampler: Any, geometry: LTXLatents, options: LTXVideoOptions) -> None:
        self.upsampler = upsampler
        self.geometry = geometry
        self.options = options

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        assert batch.latents is not None
        param = next(self.upsampler.parameters())
        with progress.task("upsampling", 1) as advance, torch.no_grad():
            latents = self.geometry.denormalize(batch.latents.to(torch.float32))
            up = self.upsampler(latents.to(param.device, param.dtype)).to(batch.device, torch.float32)
            if self.options.adain_factor > 0:
                up = adain(up, latents, self.options.adain_factor)
            if self.options.tone_map_compression_ratio > 0:
                up = tone_map(up, self.options.tone_map_compression_ratio)
            batch.latents = self.geometry.normalize(up)
            advance(1)
        return batch


class ResizeFramesStage(PipelineStage):
    """Resizes the decoded frames to the requested size (bicubic, as PIL's default)."""

    name = "resize"

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        import numpy as np
        from PIL import Image

        assert batch.frames is not None
        h, w = batch.family_extra(FAMILY)["size"]
        batch.params = dataclasses.replace(batch.params, height=h, width=w)
        if batch.frames.shape[1:3] != (h, w):
            batch.frames = np.stack([np.asarray(Image.fromarray(f).resize((w, h))) for f in batch.frames])
        return batch


# ---------------------------------------------------------------- composition


def load_upsampler(source: ModelSource, options: LTXVideoOptions, device: Any, dtype: torch.dtype) -> Any:
    """The ``LTXLatentUpsamplerModel`` named by ``options.upsampler``: a folder holding it (or its
    ``latent_upsampler/``), a path relative to the checkpoint, or a Hub repo id."""
    from diffusers.pipelines.ltx.modeling_latent_upsampler import LTXLatentUpsamplerModel

    name = str(options.upsampler)
    folder = Path(name).expanduser()
    if not folder.is_absolute() and (source.path / name).exists():
        folder = source.path / name
    if not folder.exists():
        from fastvideo.loader.hub import fetch_model

        folder = Path(fetch_model(name))
    if (folder / "latent_upsampler" / "config.json").is_file():
        folder = folder / "latent_upsampler"
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"latent upsampler {name!r}: {folder} holds no config.json (nor latent_upsampler/config.json); "
            "point the 'upsampler' option at an LTXLatentUpsamplerModel folder"
        )
    model = LTXLatentUpsamplerModel.from_pretrained(folder, torch_dtype=dtype)
    return model.to(device).eval()


def multiscale_stages(
    family: type[ModelFamily],
    source: ModelSource,
    parts: dict[str, Any],
    options: LTXVideoOptions,
    config: PipelineConfig,
) -> list[PipelineStage]:
    vae, scheduler, transformer = parts["vae"], parts["scheduler"], parts["transformer"]
    geometry = LTXLatents.from_vae(vae)
    if parts.get("latent_upsampler") is None:  # a caller may hand one in (benchmarks build it in memory)
        parts["latent_upsampler"] = load_upsampler(source, options, parts["device"], transformer.dtype)
    steps = int(scheduler.config.get("num_train_timesteps", 1000))

    def denoise(name: str) -> LTXConditionDenoisingStage:
        stage = LTXConditionDenoisingStage(
            transformer,
            geometry,
            guidance_rescale=options.guidance_rescale,
            num_train_timesteps=steps,
            image_cond_noise_scale=options.image_cond_noise_scale,
        )
        stage.name = name
        return stage

    def conditions(name: str) -> LTXConditionLatentStage:
        stage = LTXConditionLatentStage(vae, geometry)  # a no-op without --image
        stage.name = name
        return stage

    return [
        InputValidationStage(family, source),
        TextEncodingStage([LTXTextEncoder(parts["tokenizer"], parts["text_encoder"], masked=True)]),
        PassSizeStage("first_pass_size", 0, options, geometry.spatial),
        TimestepListStage("first_pass_timesteps", scheduler, geometry, options.timesteps),
        LatentPreparationStage(geometry.shape),
        conditions("first_pass_conditions"),
        denoise("first_pass"),
        LTXUpsampleStage(parts["latent_upsampler"], geometry, options),
        PassSizeStage("refine_size", 1, options, geometry.spatial),
        TimestepListStage(
            "refine_timesteps",
            scheduler,
            geometry,
            options.refine_timesteps,
            strength=options.refine_strength,
        ),
        conditions("refine_conditions"),  # the same conditions, encoded again at the refine size
        denoise("refine"),
        LTXDecodingStage(vae, geometry, options, tiling=config.vae_tiling),
        ResizeFramesStage(),
    ]
