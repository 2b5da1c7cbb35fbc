"""LTX-Video's conditioning pipeline (diffusers' ``LTXConditionPipeline``): images or video clips at
given frames, each with a strength, on an explicit timestep list; also the passes of the distilled
multi-scale chain.

A request names its conditions in ``image`` (``--image``): ``PATH[@FRAME[:STRENGTH]]``, several
separated by ``;`` (``first.png;last.png@96:0.8``). An image is one frame, anything else is read as a
clip (its first 8k + 1 frames that fit). A condition at frame 0 replaces the first latent frames
(blended by its strength); one at a later frame becomes extra latent frames placed before the video
with their own RoPE positions (dropped after denoising), as diffusers does. Conditioning tokens run
at timestep ``(1 - strength) * 1000`` at most; hard ones (strength 1) get ``image_cond_noise_scale *
t^2`` of fresh noise at each step.

RoPE follows ``LTXConditionPipeline``: explicit coordinates, latent index times the VAE strides with
the causal first-frame fix ``max(8 t + 1 - 8, 0)`` (plus the condition's frame), frames divided by
the frame rate. The update is Euler on the timestep list as its scheduler steps per-token timesteps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from fastvideo.interfaces.sampler import Sampler
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.composed import PipelineStage
from fastvideo.pipelines.stages import InputValidationStage, LatentPreparationStage, TextEncodingStage
from fastvideo_ltx.ltxv.options import Condition, LTXVideoOptions, linear_quadratic_schedule, parse_conditions
from fastvideo_ltx.ltxv.pipeline import (
    FAMILY,
    LTXDecodingStage,
    LTXDenoisingStage,
    LTXLatents,
    LTXTextEncoder,
    load_image,
    request_scheduler,
)

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PREFIX_LATENT_FRAMES = 2  # a later clip keeps this many latent frames as extra tokens


# ---------------------------------------------------------------- schedules


class TimestepListSampler(Sampler):
    """Euler on an explicit timestep list as ``LTXConditionPipeline`` steps it: the checkpoint's
    scheduler gives the sigma table of the list; at timestep ``t`` (per token when ``token_timesteps``
    is set) the current sigma is ``t / 1000`` and the next one the largest table sigma below it.
    ``start`` skips the list's first timesteps (a refine pass that begins part-way)."""

    name = "ltx-timestep-list"

    def __init__(self, scheduler: Any, timesteps: tuple[float, ...], start: int = 0) -> None:
        super().__init__(scheduler)
        self.timesteps = timesteps
        self.start = start
        self.token_timesteps: torch.Tensor | None = None  # (B, L), set per step by the denoising stage

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
        t = (
            timestep
            if self.token_timesteps is None
            else self.token_timesteps.view(sample.shape[0], 1, *sample.shape[2:])
        )
        current = t.to(sample.device, torch.float32) / self.num_train_timesteps  # scalar or (B, 1, T, H, W)
        table = self.table.to(sample.device).view(-1, *([1] * current.ndim))
        lower = ((table < current - 1e-6) * table).max(dim=0).values
        return sample.to(torch.float32) + (lower - current) * model_output.to(torch.float32)


class TimestepListStage(PipelineStage):
    """This pass's sampler and timesteps: an explicit list (``timesteps``; None: the linear-quadratic
    schedule of the request's step count). A refine pass (``strength`` < 1) also re-noises
    ``batch.latents`` to the first kept sigma with noise from the request's generator."""

    def __init__(
        self,
        name: str,
        scheduler: Any,
        geometry: LTXLatents,
        timesteps: tuple[float, ...] | None,
        strength: float = 1.0,
    ) -> None:
        self.name = name
        self.scheduler = scheduler
        self.geometry = geometry
        self.timesteps = timesteps
        self.strength = strength

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        listed = self.timesteps
        if listed is None:
            sigmas = torch.tensor(
                linear_quadratic_schedule(batch.params.num_inference_steps)
            )  # fp32, as diffusers
            listed = tuple((sigmas * 1000).tolist())
        n = len(listed)
        start = n - min(int(n * self.strength), n)
        scheduler = request_scheduler(self.scheduler, self.geometry.tokens(batch.params))
        sampler = TimestepListSampler(scheduler, listed, start)
        batch.timesteps = sampler.set_timesteps(n, device=batch.device)
        batch.sampler = sampler
        if self.strength < 1:
            assert batch.latents is not None
            noise = torch.randn(batch.latents.shape, generator=batch.generator, dtype=torch.float32)
            sigma = sampler.first_sigma.to(batch.device)
            batch.latents = sigma * noise.to(batch.device) + (1 - sigma) * batch.latents
        return batch


# ---------------------------------------------------------------- coordinates


def causal_video_coords(
    frames: int, height: int, width: int, geometry: LTXLatents, device: Any, frame_offset: int = 0
) -> torch.Tensor:
    """RoPE coordinates ``(1, 3, T*H*W)`` in pixels and frames (not yet divided by the frame rate):
    latent indices times the VAE strides, the causal first-frame fix ``max(8 t + 1 - 8, 0)``, plus
    ``frame_offset`` (a condition's frame index)."""
    axes = [torch.arange(n, device=device) for n in (frames, height, width)]
    ids = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).reshape(1, 3, -1)
    strides = torch.tensor([geometry.temporal, geometry.spatial, geometry.spatial], device=device)
    coords = ids * strides[None, :, None]
    coords[:, 0] = (coords[:, 0] + 1 - geometry.temporal).clamp(min=0) + frame_offset
    return coords


def per_fps(coords: torch.Tensor, fps: float) -> torch.Tensor:
    coords = coords.float()
    coords[:, 0] = coords[:, 0] * (1.0 / fps)
    return coords


# ---------------------------------------------------------------- conditions


def read_clip(path: str) -> list[Any]:
    """The frames of a video (or animated image) file as PIL images."""
    import imageio.v3 as iio
    from PIL import Image

    try:
        frames = iio.imread(path, index=None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--image {path!r} is not a readable image or video ({exc})") from None
    if frames.ndim == 3:
        frames = frames[None]
    return [Image.fromarray(f).convert("RGB") for f in frames]


class LTXConditionLatentStage(PipelineStage):
    """Encodes the request's conditions (``image``) and lays them into the latents as
    ``LTXConditionPipeline.prepare_latents`` does; records per-token strengths and RoPE positions."""

    name = "conditions"

    def __init__(self, vae: Any, geometry: LTXLatents) -> None:
        from diffusers.video_processor import VideoProcessor

        self.vae = vae
        self.geometry = geometry
        self.video_processor = VideoProcessor(vae_scale_factor=geometry.spatial)

    def pixels(self, cond: Condition, p: Any) -> torch.Tensor:
        """``(1, 3, F, H, W)`` in [-1, 1] at the request's size, F = 8k + 1 frames that fit the video."""
        if cond.path.lower().endswith(IMAGE_SUFFIXES):
            return self.video_processor.preprocess(load_image(cond.path), p.height, p.width).unsqueeze(2)
        frames = read_clip(cond.path)
        video = self.video_processor.preprocess_video(frames, p.height, p.width)
        t = self.geometry.temporal
        n = (min(video.shape[2], p.num_frames - cond.frame) - 1) // t * t + 1
        if n < 1:
            raise ValueError(
                f"--image {cond.path!r} at frame {cond.frame} leaves no frame of the video to condition"
            )
        return video[:, :, :n]

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        p, latents = batch.params, batch.latents
        assert latents is not None
        if p.image is None:
            return batch
        g = self.geometry
        _, _, t, h, w = latents.shape
        vae_param = next(self.vae.parameters())
        frame_mask = torch.zeros(1, t, device=batch.device)
        extra_latents, extra_coords, extra_masks = [], [], []
        for cond in parse_conditions(p.image):
            pixels = self.pixels(cond, p).to(vae_param.device, vae_param.dtype)
            lat = self.vae.encode(pixels).latent_dist.sample(batch.generator)
            lat = (lat.to(batch.device, torch.float32) - g.mean.to(batch.device)) / g.std.to(batch.device)
            n = lat.shape[2]
            if cond.frame == 0:
                latents[:, :, :n] = torch.lerp(latents[:, :, :n], lat, cond.strength)
                frame_mask[:, :n] = cond.strength
                continue
            if pixels.shape[2] > 1:  # a clip: beyond its first latent frames it is laid into the video
                if n < PREFIX_LATENT_FRAMES:
                    raise ValueError(
                        f"--image {cond.path!r}: a clip needs at least {PREFIX_LATENT_FRAMES} latent frames"
                    )
                if n > PREFIX_LATENT_FRAMES:
                    start = cond.frame // g.temporal + PREFIX_LATENT_FRAMES
                    end = start + n - PREFIX_LATENT_FRAMES
                    latents[:, :, start:end] = torch.lerp(
                        latents[:, :, start:end], lat[:, :, PREFIX_LATENT_FRAMES:], cond.strength
                    )
                    frame_mask[:, start:end] = cond.strength
                    lat = lat[:, :, :PREFIX_LATENT_FRAMES]
            noise = torch.randn(lat.shape, generator=batch.generator, dtype=torch.float32).to(batch.device)
            extra_latents.append(torch.lerp(noise, lat, cond.strength))
            extra_coords.append(causal_video_coords(lat.shape[2], h, w, g, batch.device, cond.frame))
            extra_masks.append(torch.full((1, lat.shape[2] * h * w), cond.strength, device=batch.device))
        grid_mask = frame_mask.repeat_interleave(h * w, dim=1)  # (1, T*H*W), tokens in raster order
        coords = torch.cat([*extra_coords, causal_video_coords(t, h, w, g, batch.device)], dim=2)
        batch.latents = torch.cat([*extra_latents, latents], dim=2)
        batch.family_extra(FAMILY)["cond"] = {
            "mask": torch.cat([*extra_masks, grid_mask], dim=1),  # (1, L) strengths
            "coords": per_fps(coords, p.fps),  # (1, 3, L)
            "init": batch.latents.clone(),
            "extra_frames": sum(x.shape[2] for x in extra_latents),
        }
        return batch


# ---------------------------------------------------------------- denoising


class LTXConditionDenoisingStage(LTXDenoisingStage):
    """The sampling loop of ``LTXConditionPipeline``: explicit RoPE coordinates; with conditions,
    per-token timesteps ``min(t, (1 - strength) * 1000)``, noise re-added to hard conditioning
    tokens each step, conditioning tokens kept until ``t`` falls below their level, and the extra
    condition frames dropped at the end."""

    def __init__(self, *args: Any, image_cond_noise_scale: float = 0.0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.image_cond_noise_scale = image_cond_noise_scale

    def model_inputs(self, batch: ForwardBatch, latents: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        b, p = latents.shape[0], batch.params
        cond = batch.family_extra(FAMILY).get("cond")
        if cond is None:
            coords = per_fps(causal_video_coords(*latents.shape[2:], self.geometry, latents.device), p.fps)
            return {
                "hidden_states": latents.to(self.dtype),
                "timestep": t.expand(b),
                "video_coords": coords.expand(b, -1, -1),
            }
        mask = cond["mask"].expand(b, -1)  # (B, L)
        if self.image_cond_noise_scale > 0:
            c = latents.shape[1]
            noise = torch.randn((b, mask.shape[1], c), generator=batch.generator, dtype=torch.float32)
            noise = (
                noise.to(latents.device).transpose(1, 2).reshape(latents.shape)
            )  # drawn in diffusers' token layout
            hard = (mask > 1.0 - 1e-6).view(b, 1, *latents.shape[2:])
            noised = cond["init"] + self.image_cond_noise_scale * noise * (t / 1000.0) ** 2
            latents = torch.where(hard, noised, latents)
        timestep = torch.min(t.expand(b)[:, None].float(), (1 - mask) * 1000.0)  # (B, L)
        batch.sampler.token_timesteps = timestep  # type: ignore[union-attr]
        cond["current"], cond["t"] = latents, t
        return {
            "hidden_states": latents.to(self.dtype),
            "timestep": timestep,
            "video_coords": cond["coords"].expand(b, -1, -1),
        }

    def after_step(self, batch: ForwardBatch, latents: torch.Tensor) -> torch.Tensor:
        cond = batch.family_extra(FAMILY).get("cond")
        if cond is None:
            return latents
        keep = (cond["t"] / 1000 - 1e-6 < (1.0 - cond["mask"])).view(1, 1, *latents.shape[2:])
        return torch.where(keep, latents, cond["current"])

    def finalize(self, batch: ForwardBatch, latents: torch.Tensor) -> torch.Tensor:
        cond = batch.family_extra(FAMILY).get("cond")
        return latents if cond is None else latents[:, :, cond["extra_frames"] :]


def condition_stages(
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
        TextEncodingStage([LTXTextEncoder(parts["tokenizer"], parts["text_encoder"], masked=True)]),
        TimestepListStage("timesteps", parts["scheduler"], geometry, options.timesteps),
        LatentPreparationStage(geometry.shape),
        LTXConditionLatentStage(parts["vae"], geometry),
        LTXConditionDenoisingStage(
            parts["transformer"],
            geometry,
            guidance_rescale=options.guidance_rescale,
            num_train_timesteps=steps,
            image_cond_noise_scale=options.image_cond_noise_scale,
        ),
        LTXDecodingStage(parts["vae"], geometry, options, tiling=config.vae_tiling),
    ]
