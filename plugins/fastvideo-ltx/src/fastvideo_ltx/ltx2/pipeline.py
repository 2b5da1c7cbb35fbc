"""LTX-2 text-to-audio-video: Gemma 3 -> text connectors -> our audio-video DiT (CFG, STG and
modality-isolation guidance in x0 space, guidance rescale) -> video VAE, audio VAE + vocoder.

Follows diffusers' ``LTX2Pipeline`` (0.42.1) step for step, so that the same checkpoint and noise
give the same frames and samples: the prompt's hidden states of every Gemma layer go through the
connectors; the schedule is the checkpoint's flow-matching scheduler with the resolution-dependent
shift (``mu`` from the number of video tokens), one copy per stream; latents are normalized by the
VAEs' statistics. Given noise (``generate_video(latents=..., audio_latents=...)``) is standard normal
in the VAEs' latent layouts, ``(1, C, T', H', W')`` and ``(1, C_a, L, M)``; it is normalized as
diffusers normalizes given latents.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastvideo.pipelines import ComposedPipeline, PipelineStage
from fastvideo.pipelines.stages import InputValidationStage
from fastvideo_ltx.ltx2.model import LTX2Transformer

FAMILY = "ltx2"


@dataclass(frozen=True)
class Guidance:
    """LTX-2's guidance terms beyond the request's ``guidance_scale`` (diffusers' defaults)."""

    audio_scale: float | None = 7.0  # CFG of the audio stream (None: guidance_scale)
    stg_scale: float = 1.0  # spatio-temporal guidance: self-attention of stg_blocks skipped
    audio_stg_scale: float | None = 1.0
    modality_scale: float = 3.0  # modality isolation: audio<->video attention off
    audio_modality_scale: float | None = 3.0
    rescale: float = 0.7  # guidance rescale (std matching)
    audio_rescale: float | None = 0.7
    stg_blocks: tuple[int, ...] = (28,)
    use_cross_timestep: bool = True


@dataclass
class Geometry:
    """Compression ratios and statistics of the two VAEs."""

    spatial: int
    temporal: int
    latent_channels: int
    audio_channels: int
    mel_bins: int  # latent mel bins
    audio_rate: int
    audio_hop: int
    audio_temporal: int
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    downscale: int = 1  # two-stage: the first stage runs at 1/2 the size, the upsampler doubles it

    def video_shape(self, p: Any) -> tuple[int, int, int, int]:
        s = self.spatial * self.downscale
        return (self.latent_channels, (p.num_frames - 1) // self.temporal + 1, p.height // s, p.width // s)

    def audio_shape(self, p: Any) -> tuple[int, int, int]:
        per_second = self.audio_rate / self.audio_hop / float(self.audio_temporal)
        return (self.audio_channels, round(p.num_frames / p.fps * per_second), self.mel_bins)


def pack_audio(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(2)  # (B, C, L, M) -> (B, L, C*M)


def unpack_audio(x: torch.Tensor, mel: int) -> torch.Tensor:
    return x.unflatten(2, (-1, mel)).transpose(1, 2)  # (B, L, C*M) -> (B, C, L, M)


class GemmaConnectorStage(PipelineStage):
    """Prompt (and negative prompt) -> Gemma 3 hidden states of every layer -> the connectors' video
    and audio text tokens and their mask (in ``batch.family_extra("ltx2")``)."""

    name = "text_encoding"

    def __init__(
        self, tokenizer: Any, text_encoder: Any, connectors: Any, guidance: Guidance, *, dtype: torch.dtype
    ) -> None:
        self.tokenizer, self.text_encoder, self.connectors, self.dtype = (
            tokenizer,
            text_encoder,
            connectors,
            dtype,
        )
        self.guidance = guidance

    def encode(
        self, prompts: list[str], max_length: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        inputs = tok([p.strip() for p in prompts], padding="max_length", max_length=max_length, truncation=True,
                     add_special_tokens=True, return_tensors="pt")  # fmt: skip
        ids, mask = inputs.input_ids.to(device), inputs.attention_mask.to(device)
        out = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = torch.stack(out.hidden_states, dim=-1).flatten(2, 3)  # (B, L, D * layers)
        return hidden.to(self.dtype), mask

    def forward(self, batch: Any) -> Any:
        p, device = batch.params, batch.device
        embeds, mask = self.encode([p.prompt], p.max_sequence_length, device)
        extra = batch.family_extra(FAMILY)
        cfg = extra["cfg"] = p.do_cfg or _or(self.guidance.audio_scale, p.guidance_scale) > 1.0
        if cfg:
            neg, neg_mask = self.encode([p.negative_prompt or ""], p.max_sequence_length, device)
            embeds, mask = torch.cat([neg, embeds]), torch.cat([neg_mask, mask])
        padding = getattr(self.tokenizer, "padding_side", "left")
        video, audio, text_mask = self.connectors(embeds, mask, padding_side=padding)
        extra.update(text=video, audio_text=audio, text_mask=text_mask)
        return batch


class LTX2LatentStage(PipelineStage):
    """The initial video and audio noise, normalized as diffusers does for given latents. With an
    image (I2AV) its VAE latent is the first latent frame, kept clean (``cond_mask``); the given video
    noise is then the raw noise of the other frames, as diffusers' image-to-video pipeline draws it. The
    image is first compressed as one H.264 frame at ``--image-crf`` (33; :mod:`fastvideo_ltx.media`)."""

    name = "latent_preparation"

    def __init__(self, geometry: Geometry, vae: Any) -> None:
        self.geometry, self.vae = geometry, vae

    def encode_image(self, batch: Any, shape: tuple[int, ...]) -> torch.Tensor:
        from diffusers.video_processor import VideoProcessor
        from PIL import Image

        from fastvideo_ltx.ltx2.family import LTX2Family
        from fastvideo_ltx.media import recompress_h264

        p, g = batch.params, self.geometry
        with Image.open(p.image) as im:  # through H.264 first, as in training (--image-crf; 0: as it is)
            image = recompress_h264(im, LTX2Family.option_values(p)["image_crf"])
        pixels = VideoProcessor(vae_scale_factor=g.spatial, resample="bilinear").preprocess(
            image, height=p.height // g.downscale, width=p.width // g.downscale
        )
        pixels = pixels.to(batch.device, self.vae.dtype).unsqueeze(2)  # (1, 3, 1, H, W)
        latent = self.vae.encode(pixels).latent_dist.mode().float()  # (1, C, 1, H', W')
        mean = g.stats["mean"].to(batch.device).view(1, -1, 1, 1, 1)
        std = g.stats["std"].to(batch.device).view(1, -1, 1, 1, 1)
        return ((latent - mean) / std).repeat(1, 1, shape[2], 1, 1)

    def forward(self, batch: Any) -> Any:
        p, g = batch.params, self.geometry
        vshape, ashape = (1, *g.video_shape(p)), (1, *g.audio_shape(p))
        stats = {k: v.to(batch.device) for k, v in g.stats.items()}
        if p.image is not None:
            image = self.encode_image(batch, vshape)
            if batch.latents is None:
                noise = torch.randn(vshape, generator=batch.generator, dtype=torch.float32).to(batch.device)
            else:
                _check("latents", batch.latents, vshape, "(1, C, T', H', W')")
                noise = batch.latents.float().to(batch.device)
            cond = torch.zeros((1, 1, *vshape[2:]), device=batch.device)
            cond[:, :, 0] = 1.0
            batch.family_extra(FAMILY)["cond_mask"] = cond
            video = image * cond + noise * (1 - cond)
        elif batch.latents is None:
            video = torch.randn(vshape, generator=batch.generator, dtype=torch.float32).to(batch.device)
        else:
            _check("latents", batch.latents, vshape, "(1, C, T', H', W')")
            mean, std = stats["mean"].view(1, -1, 1, 1, 1), stats["std"].view(1, -1, 1, 1, 1)
            video = (batch.latents.float().to(batch.device) - mean) * stats["scaling"] / std
        if batch.audio_latents is None:
            audio = torch.randn(ashape, generator=batch.generator, dtype=torch.float32).to(batch.device)
        else:
            _check("audio_latents", batch.audio_latents, ashape, "(1, C, L, M)")
            packed = pack_audio(batch.audio_latents.float().to(batch.device))
            audio = unpack_audio((packed - stats["audio_mean"]) / stats["audio_std"], g.mel_bins)
        batch.latents, batch.audio_latents = video, audio
        return batch


def _check(name: str, x: Any, shape: tuple[int, ...], layout: str) -> None:
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float tensor {layout} = {shape} for this request, got {got}")


def _rescale(guided: torch.Tensor, cond: torch.Tensor, factor: float) -> torch.Tensor:
    """Match the guided prediction's std to the conditional one's (per sample), blended by ``factor``."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return factor * rescaled + (1 - factor) * guided


class LTX2DenoisingStage(PipelineStage):
    """The joint denoising loop of both streams with LTX-2's guidance (CFG, STG, modality isolation),
    combined in x0 space, then one flow-matching Euler step per stream."""

    name = "denoising"

    def __init__(
        self, transformer: LTX2Transformer, scheduler: Any, guidance: Guidance, *, sigmas: Any = None,
        guided: bool = True, name: str = "denoising",
    ) -> None:  # fmt: skip
        self.transformer, self.scheduler, self.guidance = transformer, scheduler, guidance
        self.sigmas, self.guided, self.name = sigmas, guided, name

    def schedules(self, num_steps: int, num_video_tokens: int, device: torch.device) -> tuple[Any, Any]:
        cfg = self.scheduler.config
        base, top = cfg.get("base_image_seq_len", 1024), cfg.get("max_image_seq_len", 4096)
        lo, hi = cfg.get("base_shift", 0.95), cfg.get("max_shift", 2.05)
        mu = num_video_tokens * (hi - lo) / (top - base) + lo - (hi - lo) / (top - base) * base
        sigmas = (
            np.linspace(1.0, 1 / num_steps, num_steps) if self.sigmas is None else np.asarray(self.sigmas)
        )
        video, audio = copy.deepcopy(self.scheduler), copy.deepcopy(self.scheduler)
        for s in (video, audio):
            s.set_timesteps(sigmas=sigmas, device=device, mu=mu)
            s.set_begin_index(0)
        return video, audio

    def forward(self, batch: Any) -> Any:
        p, extra, gd = batch.params, batch.family_extra(FAMILY), self.guidance
        model = self.transformer
        dtype = model.dtype
        video, audio = batch.latents, batch.audio_latents
        b = video.shape[0]
        steps = p.num_inference_steps if self.sigmas is None else len(self.sigmas)
        sched_v, sched_a = self.schedules(steps, math.prod(video.shape[2:]), video.device)
        text, audio_text, mask = extra["text"].to(dtype), extra["audio_text"].to(dtype), extra["text_mask"]
        cfg = extra["cfg"] and self.guided
        scales = {
            "cfg": (p.guidance_scale, _or(gd.audio_scale, p.guidance_scale)),
            "stg": (gd.stg_scale, _or(gd.audio_stg_scale, gd.stg_scale)),
            "mod": (gd.modality_scale, _or(gd.audio_modality_scale, gd.modality_scale)),
        }
        rescale = (gd.rescale, _or(gd.audio_rescale, gd.rescale))
        if not self.guided:  # the distilled refinement: the conditional prediction alone
            scales = {"cfg": (1.0, 1.0), "stg": (0.0, 0.0), "mod": (1.0, 1.0)}
            rescale = (0.0, 0.0)
        # STG skips self-attention only where the DiT was built for it (perturbed_attn); elsewhere the
        # perturbed pass equals the conditional one (diffusers still runs it: a zero term), so it is skipped
        do_stg = (scales["stg"][0] > 0 or scales["stg"][1] > 0) and model.config.perturbed_attn
        do_mod = scales["mod"][0] > 1 or scales["mod"][1] > 1
        pos = slice(b, 2 * b) if extra["cfg"] else slice(0, b)
        grid = model.token_grid(video.shape)
        timesteps = sched_v.timesteps
        cond = extra.get("cond_mask")  # (1, 1, T', H', W') 1 on the image's latent frame (I2AV), or None
        keep = None if cond is None else video[:, :, :1].clone()
        for i, t in enumerate(timesteps):
            sigma_v, sigma_a = sched_v.sigmas[i], sched_a.sigmas[i]
            step = _Step(self, batch, i, len(timesteps), t, grid, cond)

            def run(v_in: torch.Tensor, a_in: torch.Tensor, sl: slice, step: _Step = step, **kw: Any) -> Any:
                return step.run(v_in, a_in, text[sl], audio_text[sl], mask[sl], **kw)

            def x0(sample: torch.Tensor, vel: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                return sample - vel * sigma

            if cfg:
                ov, oa = run(torch.cat([video, video]), torch.cat([audio, audio]), slice(0, 2 * b))
                uv, cv = ov.chunk(2)
                ua, ca = oa.chunk(2)
                cond_v, cond_a = x0(video, cv, sigma_v), x0(audio, ca, sigma_a)
                delta_v = (scales["cfg"][0] - 1) * (cond_v - x0(video, uv, sigma_v))
                delta_a = (scales["cfg"][1] - 1) * (cond_a - x0(audio, ua, sigma_a))
            else:
                cv, ca = run(video, audio, pos)
                cond_v, cond_a = x0(video, cv, sigma_v), x0(audio, ca, sigma_a)
                delta_v = delta_a = 0
            if do_stg:
                sv, sa = run(video, audio, pos, stg_blocks=gd.stg_blocks)
                delta_v = delta_v + scales["stg"][0] * (cond_v - x0(video, sv, sigma_v))
                delta_a = delta_a + scales["stg"][1] * (cond_a - x0(audio, sa, sigma_a))
            if do_mod:
                mv, ma = run(video, audio, pos, isolate_modalities=True)
                delta_v = delta_v + (scales["mod"][0] - 1) * (cond_v - x0(video, mv, sigma_v))
                delta_a = delta_a + (scales["mod"][1] - 1) * (cond_a - x0(audio, ma, sigma_a))
            guided_v, guided_a = cond_v + delta_v, cond_a + delta_a
            if rescale[0] > 0:
                guided_v = _rescale(guided_v, cond_v, rescale[0])
            if rescale[1] > 0:
                guided_a = _rescale(guided_a, cond_a, rescale[1])
            vel_v, vel_a = (video - guided_v) / sigma_v, (audio - guided_a) / sigma_a
            video = sched_v.step(vel_v, t, video, return_dict=False)[0]
            audio = sched_a.step(vel_a, t, audio, return_dict=False)[0]
            if keep is not None:  # the image's latent frame is never denoised (Euler steps are elementwise)
                video = torch.cat([keep, video[:, :, 1:]], dim=2)
        batch.latents, batch.audio_latents = video, audio
        return batch


class _Step:
    """One denoising step's DiT call: timesteps (per video token under image conditioning), the step
    context for attention backends."""

    def __init__(self, stage: LTX2DenoisingStage, batch: Any, i: int, n: int, t: torch.Tensor, grid: Any,
                 cond: torch.Tensor | None) -> None:  # fmt: skip
        self.stage, self.batch, self.i, self.n, self.t, self.grid, self.cond = (
            stage,
            batch,
            i,
            n,
            t,
            grid,
            cond,
        )

    def run(self, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor, audio_text: torch.Tensor,
            mask: torch.Tensor, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        from fastvideo.attention.context import StepContext, step_context

        model, p, gd = self.stage.transformer, self.batch.params, self.stage.guidance
        b = video.shape[0]
        tt = self.t.expand(b).to(video.device)
        vt = tt if self.cond is None else tt[:, None] * (1 - self.cond.flatten(1).to(video.device))  # (B, Lv)
        ctx = StepContext(grid=self.grid, step_index=self.i, num_steps=self.n, timestep=float(self.t),
                          options=p.backend_options)  # fmt: skip
        dtype = model.dtype
        with step_context(ctx):
            ov, oa = model(
                video.to(dtype), audio.to(dtype), text, audio_text, vt, audio_timestep=tt, sigma=tt,
                encoder_attention_mask=mask, audio_encoder_attention_mask=mask, fps=float(p.fps),
                use_cross_timestep=gd.use_cross_timestep, **kw,
            )  # fmt: skip
        return ov.float(), oa.float()


def _or(value: float | None, default: float) -> float:
    return default if not value else value  # diffusers: `audio_x = audio_x or x`


class LTX2DecodingStage(PipelineStage):
    """Video latents -> uint8 frames; audio latents -> mel spectrogram -> waveform (unless
    ``params.audio`` is off)."""

    name = "decoding"

    def __init__(self, vae: Any, audio_vae: Any, vocoder: Any, geometry: Geometry) -> None:
        self.vae, self.audio_vae, self.vocoder, self.geometry = vae, audio_vae, vocoder, geometry

    def forward(self, batch: Any) -> Any:
        g = self.geometry
        stats = {k: v.to(batch.device) for k, v in g.stats.items()}
        lat = batch.latents
        mean, std = stats["mean"].view(1, -1, 1, 1, 1), stats["std"].view(1, -1, 1, 1, 1)
        lat = lat * std / stats["scaling"] + mean
        video = self.vae.decode(lat.to(self.vae.dtype), None, return_dict=False)[0]  # (B, 3, T, H, W)
        video = (video[0].float() / 2 + 0.5).clamp(0, 1)
        batch.frames = (video.permute(1, 2, 3, 0) * 255).round().to(torch.uint8).cpu().numpy()
        if batch.params.audio:
            packed = pack_audio(batch.audio_latents) * stats["audio_std"] + stats["audio_mean"]
            mel = self.audio_vae.decode(
                unpack_audio(packed, g.mel_bins).to(self.audio_vae.dtype), return_dict=False
            )[0]
            wave = self.vocoder(mel.to(next(self.vocoder.parameters()).dtype))  # (B, channels, N)
            batch.audio = wave[0].float().T.contiguous().cpu().numpy()  # (N, channels)
            batch.sample_rate = int(self.vocoder.config.output_sampling_rate)
        return batch


#: diffusers' ``STAGE_2_DISTILLED_SIGMA_VALUES``: the refinement schedule of the two-stage path
STAGE_2_SIGMAS = (0.909375, 0.725, 0.421875)


def _packed_noise(shape: tuple[int, ...], generator: Any, device: torch.device, video: bool) -> torch.Tensor:
    """Standard-normal noise drawn in diffusers' packed token layout, returned in ours (so the same
    generator gives the same values per element as diffusers' ``_create_noised_state``)."""
    if video:
        b, c, t, h, w = shape
        flat = torch.randn((b, t * h * w, c), generator=generator, dtype=torch.float32)
        return flat.transpose(1, 2).reshape(shape).to(device)
    b, c, length, mel = shape
    flat = torch.randn((b, length, c * mel), generator=generator, dtype=torch.float32)
    return unpack_audio(flat, mel).to(device)


class LTX2UpsampleStage(PipelineStage):
    """Two-stage path: the first stage's video latents doubled in size by the latent upsampler
    (optionally AdaIN-matched to them), then both streams re-noised to the refinement's first sigma."""

    name = "latent_upsample"

    def __init__(
        self, upsampler: Any, geometry: Geometry, *, sigmas: Any = STAGE_2_SIGMAS, adain: float = 0.0
    ) -> None:
        self.upsampler, self.geometry, self.sigmas, self.adain = upsampler, geometry, sigmas, adain

    def forward(self, batch: Any) -> Any:
        g = self.geometry
        stats = {k: v.to(batch.device) for k, v in g.stats.items()}
        mean, std = stats["mean"].view(1, -1, 1, 1, 1), stats["std"].view(1, -1, 1, 1, 1)
        raw = batch.latents * std / stats["scaling"] + mean
        dtype = next(self.upsampler.parameters()).dtype
        up = self.upsampler(raw.to(dtype)).float()
        if self.adain > 0:
            dims = (2, 3, 4)
            r_std, r_mean = torch.std_mean(raw, dim=dims, keepdim=True)
            u_std, u_mean = torch.std_mean(up, dim=dims, keepdim=True)
            up = torch.lerp(up, (up - u_mean) / u_std * r_std + r_mean, self.adain)
        video = (up - mean) * stats["scaling"] / std
        packed = pack_audio(batch.audio_latents) * stats["audio_std"] + stats["audio_mean"]
        audio = unpack_audio((packed - stats["audio_mean"]) / stats["audio_std"], g.mel_bins)
        s = float(self.sigmas[0])
        noise_v = _packed_noise(tuple(video.shape), batch.generator, batch.device, video=True)
        noise_a = _packed_noise(tuple(audio.shape), batch.generator, batch.device, video=False)
        extra = batch.family_extra(FAMILY)
        sv: Any = s
        if extra.get("cond_mask") is not None:  # I2AV: the first latent frame stays clean at full size too
            cond = torch.zeros((1, 1, *video.shape[2:]), device=batch.device)
            cond[:, :, 0] = 1.0
            extra["cond_mask"] = cond
            sv = s * (1 - cond)
        batch.latents = sv * noise_v + (1 - sv) * video
        batch.audio_latents = s * noise_a + (1 - s) * audio
        return batch


def load_parts(source: Any, config: Any) -> dict[str, Any]:
    """Every component of an LTX-2 diffusers folder, on the config's device and dtypes."""
    import diffusers.pipelines.ltx2 as ltx2_pipelines

    from fastvideo.loader import load_component, torch_dtype
    from fastvideo.models import default_dtypes, pick_device

    device = pick_device(config)
    dit_dtype, text_dtype, vae_dtype = default_dtypes(config, device, text="bf16", vae="fp32")
    mi = source.model_index
    parts: dict[str, Any] = {"device": device}
    parts["tokenizer"] = load_component(source.path, mi, "tokenizer")
    parts["text_encoder"] = load_component(
        source.path, mi, "text_encoder", dtype=text_dtype, device=device
    ).eval()
    parts["scheduler"] = load_component(source.path, mi, "scheduler")
    parts["vae"] = load_component(source.path, mi, "vae", dtype=vae_dtype, device=device).eval()
    parts["audio_vae"] = load_component(source.path, mi, "audio_vae", dtype=vae_dtype, device=device).eval()
    for name in ("connectors", "vocoder"):
        cls = getattr(ltx2_pipelines, mi[name][1])
        dtype = text_dtype if name == "connectors" else vae_dtype
        parts[name] = (
            cls.from_pretrained(source.path / name, torch_dtype=torch_dtype(dtype), use_safetensors=True)
            .to(device)
            .eval()
        )
    parts["transformer"] = LTX2Transformer.from_pretrained(
        source.path / "transformer",
        dtype=torch_dtype(dit_dtype),
        device=device,
        attention_backend=config.attention_backend,
    )
    parts["text_dtype"] = torch_dtype(text_dtype)
    if (source.path / "latent_upsampler" / "config.json").is_file():  # the two-stage path
        from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel

        parts["latent_upsampler"] = LTX2LatentUpsamplerModel.from_pretrained(
            source.path / "latent_upsampler", torch_dtype=torch_dtype(vae_dtype), use_safetensors=True
        ).to(device).eval()  # fmt: skip
    return parts


def geometry_of(parts: dict[str, Any]) -> Geometry:
    vae, audio_vae = parts["vae"], parts["audio_vae"]
    acfg = audio_vae.config
    return Geometry(
        spatial=vae.spatial_compression_ratio,
        temporal=vae.temporal_compression_ratio,
        latent_channels=vae.config.latent_channels,
        audio_channels=acfg.latent_channels,
        mel_bins=acfg.mel_bins // audio_vae.mel_compression_ratio,
        audio_rate=acfg.sample_rate,
        audio_hop=acfg.mel_hop_length,
        audio_temporal=audio_vae.temporal_compression_ratio,
        stats={
            "mean": vae.latents_mean.float(),
            "std": vae.latents_std.float(),
            "scaling": torch.tensor(float(vae.config.scaling_factor)),
            "audio_mean": audio_vae.latents_mean.float(),
            "audio_std": audio_vae.latents_std.float(),
        },
    )


def build(family: Any, source: Any, config: Any, *, guidance: Guidance | None = None) -> ComposedPipeline:
    """The text/image-to-audio-video pipeline of an LTX-2 checkpoint; two-stage (half size, latent
    upsample, distilled refinement) when the folder holds a ``latent_upsampler``."""
    from fastvideo.pipelines.compose import compile_if_asked

    parts = load_parts(source, config)
    compile_if_asked([parts["transformer"]], config, parts["device"])
    return compose(family, source, parts, guidance=guidance)


def compose(
    family: Any, source: Any, parts: dict[str, Any], *, guidance: Guidance | None = None
) -> ComposedPipeline:
    """The stages over loaded components (``load_parts``' dict; benchmarks build it from random weights)."""
    guidance = guidance or Guidance()
    geometry = geometry_of(parts)
    upsampler = parts.get("latent_upsampler")
    if upsampler is not None:
        geometry.downscale = 2
    stages: list[PipelineStage] = [
        InputValidationStage(family, source),
        GemmaConnectorStage(
            parts["tokenizer"],
            parts["text_encoder"],
            parts["connectors"],
            guidance,
            dtype=parts["text_dtype"],
        ),
        LTX2LatentStage(geometry, parts["vae"]),
        LTX2DenoisingStage(parts["transformer"], parts["scheduler"], guidance),
    ]
    if upsampler is not None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        refine = FlowMatchEulerDiscreteScheduler.from_config(
            parts["scheduler"].config, use_dynamic_shifting=False, shift_terminal=None
        )
        stages += [
            LTX2UpsampleStage(upsampler, geometry),
            LTX2DenoisingStage(
                parts["transformer"], refine, guidance, sigmas=STAGE_2_SIGMAS, guided=False, name="refine"
            ),
        ]
    stages.append(LTX2DecodingStage(parts["vae"], parts["audio_vae"], parts["vocoder"], geometry))
    components = {k: v for k, v in parts.items() if k != "text_dtype"}
    return ComposedPipeline(stages, components)


def set_guidance(pipeline: ComposedPipeline, guidance: Guidance) -> None:
    """Use ``guidance`` from now on (every stage that reads it)."""
    for stage in pipeline.stages:
        if hasattr(stage, "guidance"):
            stage.guidance = guidance
