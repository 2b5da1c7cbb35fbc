"""Cosmos sampling pipelines, composed from the core stages.

Predict2 Text2Image and Video2World sample with ``cosmos-edm`` (EDM preconditioning, guidance on the
clean estimate, the conditioning latent frames re-imposed on it every step); Predict2.5 samples with
``cosmos-unipc`` on flow velocities (the conditioning frames get the ground-truth velocity). The
guardrail (:mod:`fastvideo_cosmos.guardrail`) checks the prompt first and the frames last.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fastvideo.loader.components import torch_dtype
from fastvideo.models import LatentGeometry, default_dtypes, pick_device
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.compose import compile_if_asked, load_components, text_to_video
from fastvideo.pipelines.composed import ComposedPipeline, PipelineStage
from fastvideo.pipelines.stages import DecodingStage, DenoisingStage, T5TextEncoder, TimestepPreparationStage
from fastvideo_cosmos.family import workload
from fastvideo_cosmos.guardrail import GuardrailTextStage, load_guardrail, on_device
from fastvideo_cosmos.model import CosmosTransformer
from fastvideo_cosmos.presets import DEFAULT_NEGATIVE_PROMPT
from fastvideo_cosmos.samplers import edm_scalings

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig
    from fastvideo.interfaces.model_family import ModelFamily, ModelSource

#: The noise level of the conditioning frames (Predict2: ``sigma_conditioning``; Predict2.5: the
#: ``conditional_frame_timestep`` it passes as the frames' timestep).
SIGMA_CONDITIONING = 1e-4
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif")


# ---------------------------------------------------------------- text


def identity(text: str) -> str:
    return text


class ReasonTextEncoder:
    """Predict2.5's text features: the prompt in Qwen2.5-VL's chat template, every layer's hidden
    state (after the embeddings) normalised per token to zero mean and unit std, concatenated
    (Cosmos-Reason1-7B: 28 x 3584 = 100352 features). Padding is kept, as the checkpoints see it."""

    SYSTEM = "You are a helpful assistant who will provide prompts to an image generator."

    def __init__(self, tokenizer: Any, model: Any) -> None:
        self.tokenizer = tokenizer
        self.model = model

    def __call__(self, prompts: Any, max_length: int, device: Any) -> tuple[torch.Tensor, None]:
        ids = []
        for prompt in prompts:
            chat = [
                {"role": "system", "content": [{"type": "text", "text": self.SYSTEM}]},
                {"role": "user", "content": [{"type": "text", "text": prompt}]},
            ]
            out = self.tokenizer.apply_chat_template(
                chat,
                tokenize=True,
                add_generation_prompt=False,
                add_vision_id=False,
                max_length=max_length,
                truncation=True,
                padding="max_length",
            )
            out = out["input_ids"] if not isinstance(out, list) and "input_ids" in out else out
            ids.append(torch.as_tensor(out, dtype=torch.long))
        model_device = next(self.model.parameters()).device
        hidden = self.model(torch.stack(ids).to(model_device), output_hidden_states=True).hidden_states
        layers = [(h - h.mean(-1, keepdim=True)) / (h.std(-1, keepdim=True) + 1e-8) for h in hidden[1:]]
        return torch.cat(layers, dim=-1).to(device), None  # (B, L, n_layers * hidden)


# ---------------------------------------------------------------- conditioning frames


def load_frames(path: str) -> list[Any]:
    """The conditioning image, or every frame of a video file, as PIL images."""
    from PIL import Image

    try:
        if path.lower().endswith(VIDEO_SUFFIXES):
            import imageio.v3 as iio

            return [Image.fromarray(frame).convert("RGB") for frame in iio.imread(path)]
        return [Image.open(path).convert("RGB")]
    except (OSError, ValueError) as exc:
        raise ValueError(f"--image {path!r} is not a readable image or video ({exc})") from None


class CosmosConditionStage(PipelineStage):
    """VAE latents of the conditioning frames and which latent frames they fix.

    Predict2 Video2World: the image (or the clip's last ``num_frames`` frames) padded with its last
    frame to ``num_frames``, encoded with a sample of the latent distribution (the request's
    generator), normalised; an image fixes one latent frame, a clip of ``n`` frames ``(n-1)//4 + 1``.
    Predict2.5: an image is followed by black frames and encoded at the distribution's mode; a clip's
    last 5 frames (two latent frames) condition; without ``--image`` nothing is fixed (text-to-world).
    """

    name = "conditioning"

    def __init__(self, vae: Any, geometry: LatentGeometry, *, predict25: bool) -> None:
        from diffusers.video_processor import VideoProcessor

        self.vae = vae
        self.geometry = geometry
        self.predict25 = predict25
        resample = "bilinear" if predict25 else "lanczos"
        self.processor = VideoProcessor(vae_scale_factor=geometry.spatial, resample=resample)

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        p, extra = batch.params, batch.family_extra("cosmos")
        assert batch.latents is not None
        b, _, t_lat = batch.latents.shape[:3]
        extra["noise"] = batch.latents
        if p.image is None:
            extra["indicator"] = torch.zeros(b, 1, t_lat, 1, 1, device=batch.device)
            extra["cond"] = torch.zeros_like(batch.latents)
            return batch
        video, n_cond = self._pixels(load_frames(p.image), p)
        vae_param = next(self.vae.parameters())
        dist = self.vae.encode(video.to(vae_param.device, vae_param.dtype)).latent_dist
        latents = dist.mode() if self.predict25 else dist.sample(batch.generator)
        cond = self.geometry.normalize(latents.to(batch.device, torch.float32))
        indicator = torch.zeros(b, 1, t_lat, 1, 1, device=batch.device)
        indicator[:, :, : (n_cond - 1) // self.geometry.temporal + 1] = 1
        extra["cond"], extra["indicator"] = cond, indicator
        return batch

    def _pixels(self, frames: list[Any], p: Any) -> tuple[torch.Tensor, int]:
        """``(1, 3, num_frames, H, W)`` in [-1, 1] and how many of them are given."""
        if self.predict25 and len(frames) == 1:
            image = torch.from_numpy(np.asarray(frames[0], dtype=np.float32) / 255.0).permute(2, 0, 1)
            clip = torch.cat([image[None], image.new_zeros(p.num_frames - 1, *image.shape)])  # (F, 3, h, w)
            return self.processor.preprocess_video(clip[None], p.height, p.width), 1
        if len(frames) == 1:
            video = self.processor.preprocess(frames[0], p.height, p.width).unsqueeze(2)  # (1, 3, 1, H, W)
        else:
            video = self.processor.preprocess_video([frames], p.height, p.width)  # (1, 3, F, H, W)
        if self.predict25:
            video = video[:, :, -5:]  # two latent frames
        given = min(video.shape[2], p.num_frames)
        video = video[:, :, -p.num_frames :]
        pad = video[:, :, -1:].repeat(1, 1, p.num_frames - video.shape[2], 1, 1)
        return torch.cat([video, pad], dim=2), given


# ---------------------------------------------------------------- denoising


@dataclass
class _Precondition:
    """What turns the DiT output into the step's prediction (both guidance branches share it)."""

    latents: torch.Tensor  # (B, C, T, H, W) fp32, this step's input
    c_skip: Any
    c_out: Any
    cond: torch.Tensor  # (B, C, T, H, W) conditioning latents (zeros where none)
    indicator: torch.Tensor  # (B, 1, T, 1, 1) 1 on the conditioning frames
    velocity: torch.Tensor | None  # Predict2.5: the conditioning frames' ground-truth velocity


class CosmosDenoiser:
    """The DiT as the sampler sees it: Predict2's clean estimate ``x0 = c_skip x + c_out F`` with the
    conditioning frames pasted in, or Predict2.5's velocity with theirs. Called like the DiT, with
    the shared ``cosmos`` entry of the inputs."""

    def __init__(self, model: Any, dtype: torch.dtype) -> None:
        self.model = model
        self.dtype = dtype

    def __call__(self, *, cosmos: _Precondition, **inputs: Any) -> torch.Tensor:
        out = self.model(**inputs)  # (B, C, T, H, W)
        ind = cosmos.indicator
        if cosmos.velocity is not None:  # Predict2.5: flow velocity
            return cosmos.velocity + out.float() * (1 - ind)
        x0 = (cosmos.c_skip * cosmos.latents + cosmos.c_out * out.float()).to(self.dtype)
        return ind * cosmos.cond + (1 - ind) * x0


class CosmosDenoisingStage(DenoisingStage):
    """Cosmos' loop: per-frame timesteps with the conditioning frames at ``SIGMA_CONDITIONING``, the
    preconditioned denoiser, and guidance as Cosmos defines it, ``p_c + g (p_c - p_u)`` (the core's
    ``p_u + s (p_c - p_u)`` with ``s = g + 1``)."""

    def __init__(self, transformer: Any, *, predict25: bool, video: bool) -> None:
        super().__init__(transformer)
        self.predict25 = predict25
        self.video = video  # the DiT takes a condition-mask channel and per-frame timesteps

    def select_model(self, t: torch.Tensor, batch: ForwardBatch) -> tuple[Any, float]:
        return CosmosDenoiser(self.transformer, self.dtype), batch.params.guidance_scale + 1.0

    def model_inputs(self, batch: ForwardBatch, latents: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        extra = batch.family_extra("cosmos")
        step = extra["step"] = extra.get("step", -1) + 1
        sampler = batch.sampler
        if not hasattr(sampler, "sigma"):
            raise ValueError(
                f"sampler {getattr(sampler, 'name', sampler)!r} cannot run Cosmos: it samples with "
                f"{'cosmos-unipc' if self.predict25 else 'cosmos-edm'} (leave --sampler unset)"
            )
        sigma = sampler.sigma(step)
        b = latents.shape[0]
        if not self.video:  # Predict2 Text2Image: one timestep, no conditioning
            c_in, c_skip, c_out, tt = edm_scalings(sigma)
            ind = latents.new_zeros(b, 1, latents.shape[2], 1, 1)
            pre = _Precondition(latents, c_skip, c_out, torch.zeros_like(latents), ind, None)
            hidden, timestep = latents * c_in, tt.expand(b).to(self.dtype)
            return {"hidden_states": hidden.to(self.dtype), "timestep": timestep, "cosmos": pre}
        cond, ind = extra["cond"], extra["indicator"]
        frames = ind.expand(b, 1, latents.shape[2], 1, 1)
        if self.predict25:
            velocity = (extra["noise"] - cond) * frames
            pre = _Precondition(latents, None, None, cond, frames, velocity)
            hidden = frames * cond + (1 - frames) * latents
            timestep = frames * SIGMA_CONDITIONING + (1 - frames) * sigma
            fps = None
        else:
            c_in, c_skip, c_out, tt = edm_scalings(sigma)
            pre = _Precondition(latents, c_skip, c_out, cond, frames, None)
            hidden = frames * cond + (1 - frames) * (latents * c_in)
            t_cond = SIGMA_CONDITIONING / (SIGMA_CONDITIONING + 1)
            timestep = (frames * t_cond + (1 - frames) * tt).to(self.dtype)
            fps = batch.params.fps
        mask = frames.expand(b, 1, *latents.shape[2:]).to(self.dtype)
        return {
            "hidden_states": hidden.to(self.dtype),
            "timestep": timestep,
            "condition_mask": mask,
            "fps": fps,
            "cosmos": pre,
        }


# ---------------------------------------------------------------- decoding and the guardrail


class CosmosDecodingStage(DecodingStage):
    """Decodes, converts to uint8 and runs the guardrail's video check.

    ``floor``: diffusers' Predict2 pipelines always pass the frames through the safety checker as
    ``(x * 255).astype(uint8)`` (truncation); Predict2.5 does so only when the guardrail runs, and
    rounds otherwise. Matching that keeps the frames equal to diffusers'.
    """

    def __init__(self, *args: Any, guardrail: Any = None, floor: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guardrail = guardrail
        self.floor = floor or guardrail is not None

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        from fastvideo import progress

        assert batch.latents is not None
        self._set_tiling(batch)
        vae_param = next(self.vae.parameters())
        latents = self.denormalize(batch.latents.to(device=vae_param.device, dtype=vae_param.dtype))
        with progress.task("decoding", 1) as advance:
            video = self.decode(latents)[0]  # (3, T, H, W) in [-1, 1]
            advance(1)
        video = (video.float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0) * 255  # (T, H, W, 3)
        frames = (video if self.floor else video.round()).to(torch.uint8).cpu().numpy()
        if self.guardrail is not None:
            with on_device(self.guardrail, batch.device):
                frames = np.asarray(self.guardrail.check_video_safety(frames), dtype=np.uint8)
        batch.frames = frames
        return batch


# ---------------------------------------------------------------- loading


def rope_fps_enabled() -> bool:
    """``FASTVIDEO_COSMOS_ROPE_FPS``: ``diffusers`` (default) scales the temporal RoPE by ``24 / fps``
    as diffusers does; ``checkpoint`` (or ``0`` / ``off``) leaves it unscaled, as the released
    Predict2 checkpoints were trained (docs/cosmos.md)."""
    value = os.environ.get("FASTVIDEO_COSMOS_ROPE_FPS", "diffusers").strip().lower()
    if value in ("diffusers", "1", "on", ""):
        return True
    if value in ("checkpoint", "0", "off"):
        return False
    raise ValueError(f"FASTVIDEO_COSMOS_ROPE_FPS={value!r} must be 'diffusers' or 'checkpoint'")


def cosmos_latents(vae: Any) -> LatentGeometry:
    """Latent geometry of the Wan VAE (strides 8 / 4), normalised per channel (sigma_data = 1)."""
    return LatentGeometry.from_vae(vae, spatial=8, temporal=4)


def build_cosmos_pipeline(
    family: type[ModelFamily], source: ModelSource, config: PipelineConfig
) -> ComposedPipeline:
    """Load a Cosmos checkpoint, then compose the stages of its workload."""
    kind = workload(source)
    predict25 = kind == "predict2.5"
    guardrail = load_guardrail(getattr(config, "guardrail", None))
    device = pick_device(config)
    dit_dtype, text_dtype, vae_dtype = default_dtypes(config, device)
    parts = load_components(
        source, device, tokenizer=None, text_encoder=text_dtype, vae=vae_dtype, scheduler=None
    )
    transformer = CosmosTransformer.from_pretrained(
        source.path / "transformer", dtype=torch_dtype(dit_dtype), device=device
    ).eval()
    transformer.rope_fps = rope_fps_enabled()
    compile_if_asked([transformer], config, device)
    vae = parts["vae"]
    geometry = cosmos_latents(vae)
    if predict25:
        encoder: Any = ReasonTextEncoder(parts["tokenizer"], parts["text_encoder"])
    else:
        encoder = T5TextEncoder(parts["tokenizer"], parts["text_encoder"], preprocess=identity)
    video = kind != "t2i"
    after_latents = [CosmosConditionStage(vae, geometry, predict25=predict25)] if video else []
    stages = text_to_video(
        family,
        source,
        text_encoders=[encoder],
        default_negative_prompt=DEFAULT_NEGATIVE_PROMPT,
        scheduler=parts["scheduler"],
        geometry=geometry,
        after_latents=after_latents,
        denoising=CosmosDenoisingStage(transformer, predict25=predict25, video=video),
        vae=vae,
    )
    for stage in stages:
        if isinstance(stage, TimestepPreparationStage):  # --sampler or a preset's may replace it
            stage.sampler = "cosmos-unipc" if predict25 else "cosmos-edm"
    stages[-1] = CosmosDecodingStage(
        vae, geometry.denormalize, tiling=config.vae_tiling, guardrail=guardrail, floor=not predict25
    )
    if guardrail is not None:
        stages.insert(1, GuardrailTextStage(guardrail))
    return ComposedPipeline(stages, {"device": device, **parts, "transformer": transformer})
