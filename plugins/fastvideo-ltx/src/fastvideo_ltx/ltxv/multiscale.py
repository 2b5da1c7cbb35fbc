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

The passes follow ``LTXConditionPipeline``'s conventions: T5 run with its attention mask, RoPE on
explicit coordinates (latent index x VAE stride, the causal first-frame fix, frames / frame rate),
and the Euler update on the timestep list (current sigma ``t / 1000``, next sigma the largest
schedule sigma below it). Every random draw (first-pass noise, refine noise, decode noise) comes
from the request's generator, in that order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fastvideo import progress
from fastvideo.interfaces.sampler import Sampler
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.composed import PipelineStage
from fastvideo.pipelines.stages import InputValidationStage, LatentPreparationStage, TextEncodingStage
from fastvideo_ltx.ltxv.options import LTXVideoOptions
from fastvideo_ltx.ltxv.pipeline import (
    FAMILY,
    LTXDecodingStage,
    LTXDenoisingStage,
    LTXLatents,
    LTXTextEncoder,
    request_scheduler,
)

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


# ---------------------------------------------------------------- timestep lists


class TimestepListSampler(Sampler):
    """Euler on an explicit timestep list as ``LTXConditionPipeline`` steps it: the checkpoint's
    scheduler gives the sigma table of the list; at timestep ``t`` the current sigma is ``t / 1000``
    and the next one the largest table sigma below it. ``start`` skips the list's first timesteps
    (a refine pass that begins part-way)."""

    name = "ltx-timestep-list"

    def __init__(self, scheduler: Any, timesteps: tuple[float, ...], start: int = 0) -> None:
        super().__init__(scheduler)
        self.timesteps = timesteps
        self.start = start

    def set_timesteps(
        self, num_steps: int, *, device: Any = None, shift: Any = None, sigmas: Any = None
    ) -> torch.Tensor:
        sched = type(self.scheduler).from_config(self.scheduler.config)
        sched.set_timesteps(timesteps=list(self.timesteps), device=device)
        self.table = sched.sigmas.to(torch.float32)
        self.first_sigma = self.table[self.start]
        return sched.timesteps[self.start :]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        *,
        step_index: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        current = timestep.to(torch.float32) / self.num_train_timesteps
        table = self.table.to(sample.device)
        lower = torch.where(table < current - 1e-6, table, torch.zeros_like(table)).max()
        return sample.to(torch.float32) + (lower - current) * model_output.to(torch.float32)


class TimestepListStage(PipelineStage):
    """This pass's sampler and timesteps; a refine pass (``strength`` < 1) also re-noises the
    latents in ``batch.latents`` to the first kept sigma, with noise drawn from the request's generator."""

    def __init__(
        self,
        name: str,
        scheduler: Any,
        geometry: LTXLatents,
        timesteps: tuple[float, ...],
        strength: float = 1.0,
    ) -> None:
        self.name = name
        self.scheduler = scheduler
        self.geometry = geometry
        self.timesteps = timesteps
        self.strength = strength

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        n = len(self.timesteps)
        start = n - min(int(n * self.strength), n)
        scheduler = request_scheduler(self.scheduler, self.geometry.tokens(batch.params))
        sampler = TimestepListSampler(scheduler, self.timesteps, start)
        batch.timesteps = sampler.set_timesteps(n, device=batch.device)
        batch.sampler = sampler
        if self.strength < 1:
            assert batch.latents is not None
            noise = torch.randn(batch.latents.shape, generator=batch.generator, dtype=torch.float32)
            sigma = sampler.first_sigma.to(batch.device)
            batch.latents = sigma * noise.to(batch.device) + (1 - sigma) * batch.latents
        return batch


# ---------------------------------------------------------------- denoising with explicit coordinates


def causal_video_coords(
    shape: tuple[int, ...], geometry: LTXLatents, fps: float, device: Any
) -> torch.Tensor:
    """``LTXConditionPipeline``'s RoPE coordinates ``(1, 3, T*H*W)``: latent indices times the VAE
    strides, the first frame's causal fix ``max(8 t + 1 - 8, 0)``, frames divided by the frame rate."""
    t, h, w = shape[-3:]
    axes = [torch.arange(n, device=device) for n in (t, h, w)]
    ids = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).reshape(1, 3, -1)
    strides = torch.tensor([geometry.temporal, geometry.spatial, geometry.spatial], device=device)
    coords = ids * strides[None, :, None]
    coords[:, 0] = (coords[:, 0] + 1 - geometry.temporal).clamp(min=0)
    coords = coords.float()
    coords[:, 0] = coords[:, 0] * (1.0 / fps)
    return coords


class LTXConditionDenoisingStage(LTXDenoisingStage):
    """The sampling loop of one pass with ``LTXConditionPipeline``'s RoPE coordinates."""

    def model_inputs(self, batch: ForwardBatch, latents: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        inputs = super().model_inputs(batch, latents, t)
        del inputs["rope_interpolation_scale"]
        coords = causal_video_coords(latents.shape, self.geometry, batch.params.fps, latents.device)
        inputs["video_coords"] = coords.expand(latents.shape[0], -1, -1)
        return inputs


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
    if options.timesteps is None:
        raise ValueError("the multi-scale chain needs the first pass's timestep list (option 'timesteps')")
    vae, scheduler, transformer = parts["vae"], parts["scheduler"], parts["transformer"]
    geometry = LTXLatents.from_vae(vae)
    if parts.get("latent_upsampler") is None:  # a caller may hand one in (benchmarks build it in memory)
        parts["latent_upsampler"] = load_upsampler(source, options, parts["device"], transformer.dtype)
    steps = int(scheduler.config.get("num_train_timesteps", 1000))

    def denoise(name: str) -> LTXConditionDenoisingStage:
        stage = LTXConditionDenoisingStage(
            transformer, geometry, guidance_rescale=options.guidance_rescale, num_train_timesteps=steps
        )
        stage.name = name
        return stage

    return [
        InputValidationStage(family, source),
        TextEncodingStage([LTXTextEncoder(parts["tokenizer"], parts["text_encoder"], masked=True)]),
        PassSizeStage("first_pass_size", 0, options, geometry.spatial),
        TimestepListStage("first_pass_timesteps", scheduler, geometry, options.timesteps),
        LatentPreparationStage(geometry.shape),
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
        denoise("refine"),
        LTXDecodingStage(vae, geometry, options, tiling=config.vae_tiling),
        ResizeFramesStage(),
    ]
