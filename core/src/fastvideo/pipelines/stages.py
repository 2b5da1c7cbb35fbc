"""The standard stages, written once for families to reuse and extend.

Order in a text-to-video pipeline: input validation -> text encoding -> timesteps -> latents ->
denoising (with classifier-free guidance) -> VAE decoding.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastvideo import progress
from fastvideo.attention.context import StepContext, step_context
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.composed import PipelineStage

if TYPE_CHECKING:
    import torch

    from fastvideo.interfaces.model_family import ModelFamily, ModelSource


# ---------------------------------------------------------------- input validation


class InputValidationStage(PipelineStage):
    """Checks the request against the checkpoint and seeds the CPU generator."""

    name = "input_validation"

    def __init__(self, family: type[ModelFamily], source: ModelSource) -> None:
        self.family = family
        self.source = source

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        import torch

        self.family.validate(batch.params, self.source)
        batch.generator = torch.Generator(device="cpu").manual_seed(batch.params.seed)
        return batch


# ---------------------------------------------------------------- text encoding


def clean_prompt(text: str) -> str:
    """Fix mojibake (with ftfy when installed), unescape HTML twice and collapse whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class T5TextEncoder:
    """A tokenizer + encoder pair producing ``(embeds [B, L, D], mask [B, L])``.

    Embeddings past each prompt's length are zeroed (as the Wan and Cosmos checkpoints were
    trained), the sequence is padded to ``max_length``.
    """

    def __init__(
        self, tokenizer: Any, model: Any, *, preprocess: Callable[[str], str] = clean_prompt
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.preprocess = preprocess

    def __call__(
        self, prompts: Sequence[str], max_length: int, device: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            [self.preprocess(p) for p in prompts],
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        model_device = next(self.model.parameters()).device
        ids, mask = tokens.input_ids.to(model_device), tokens.attention_mask.to(model_device)
        hidden = self.model(ids, mask).last_hidden_state  # (B, L, D)
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)  # zero the padding
        return hidden.to(device), mask.to(device)


@dataclass(frozen=True)
class PromptTemplate:
    """Text wrapped around each prompt before a language model encodes it (HunyuanVideo's Llama).

    ``text`` holds one ``{}`` where the prompt goes; ``crop_start`` leading tokens (the template's
    prefix, as the checkpoint's tokenizer splits it) are dropped from the embeddings and the mask.
    """

    text: str
    crop_start: int = 0

    def __post_init__(self) -> None:
        if self.text.count("{}") != 1 or self.crop_start < 0:
            raise ValueError(
                f"a prompt template needs exactly one '{{}}' and crop_start >= 0, got {self.text!r} "
                f"with crop_start={self.crop_start}"
            )


class LanguageModelTextEncoder:
    """A decoder-only language model used as text encoder: ``(embeds [B, L, D], mask [B, L])``.

    Each prompt is wrapped in ``template``, tokenized and right-padded to ``max_length +
    template.crop_start`` tokens; the hidden state at ``hidden_layer`` (``-3``: skip the last two
    layers, as HunyuanVideo does) is taken and the first ``crop_start`` tokens are dropped.
    Padding positions keep the model's values; the mask marks them.
    """

    def __init__(
        self,
        tokenizer: Any,
        model: Any,
        *,
        template: PromptTemplate | None = None,
        hidden_layer: int = -1,
        preprocess: Callable[[str], str] = str,
    ) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.template = template or PromptTemplate(text="{}")
        self.hidden_layer = hidden_layer
        self.preprocess = preprocess

    def __call__(
        self, prompts: Sequence[str], max_length: int, device: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.template.crop_start
        tokens = self.tokenizer(
            [self.template.text.format(self.preprocess(p)) for p in prompts],
            padding="max_length",
            padding_side="right",  # the crop and the DiT's text mask assume right padding
            max_length=max_length + crop,
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        model_device = next(self.model.parameters()).device
        ids, mask = tokens.input_ids.to(model_device), tokens.attention_mask.to(model_device)
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[self.hidden_layer][:, crop:]  # (B, L, D)
        return hidden.to(device), mask[:, crop:].to(device)


class PooledTextEncoder:
    """A text model's pooled output (CLIP's end-of-text token state): ``(pooled [B, D], None)``.

    It always tokenizes to its own ``max_length`` (CLIP: 77), whatever the request's text length.
    """

    def __init__(self, tokenizer: Any, model: Any, *, max_length: int = 77) -> None:
        self.tokenizer = tokenizer
        self.model = model
        self.max_length = max_length

    def __call__(self, prompts: Sequence[str], max_length: int, device: Any) -> tuple[torch.Tensor, None]:
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(next(self.model.parameters()).device)
        return self.model(ids, output_hidden_states=False).pooler_output.to(device), None


class TextEncodingStage(PipelineStage):
    """Encodes the prompt (and the negative prompt when CFG is on) with each text encoder.

    ``cfg=False`` is for guidance-distilled DiTs that take the guidance scale as an input
    (HunyuanVideo's embedded guidance): no negative prompt is encoded, whatever the scale.
    """

    name = "text_encoding"

    def __init__(
        self, encoders: Sequence[Callable[..., Any]], *, default_negative_prompt: str = "", cfg: bool = True
    ) -> None:
        self.encoders = list(encoders)
        self.default_negative_prompt = default_negative_prompt
        self.cfg = cfg

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        p = batch.params
        for enc in self.encoders:
            emb, mask = enc([p.prompt], p.max_sequence_length, batch.device)
            batch.prompt_embeds.append(emb)
            batch.prompt_masks.append(mask)
            if self.cfg and batch.do_cfg:
                neg = p.negative_prompt if p.negative_prompt is not None else self.default_negative_prompt
                nemb, nmask = enc([neg], p.max_sequence_length, batch.device)
                batch.negative_prompt_embeds.append(nemb)
                batch.negative_prompt_masks.append(nmask)
        return batch


# ---------------------------------------------------------------- timesteps


def scheduler_with_shift(scheduler: Any, shift: float | None) -> Any:
    """A copy of a diffusers flow scheduler with its shift replaced (``flow_shift`` or ``shift``)."""
    if shift is None:
        return scheduler
    config = dict(scheduler.config)
    key = "flow_shift" if "flow_shift" in config else "shift"
    if config.get(key) == shift:
        return scheduler
    config[key] = shift
    return type(scheduler).from_config(config)


class TimestepPreparationStage(PipelineStage):
    """Sets the scheduler's timesteps (applying ``flow_shift`` when the request gives one).

    ``sigmas(num_steps)``, when given, is the unshifted sigma schedule passed to the scheduler
    (HunyuanVideo: ``linspace(1, 0, n + 1)[:-1]``) instead of the scheduler's own.
    """

    name = "timesteps"

    def __init__(self, scheduler: Any, *, sigmas: Callable[[int], Sequence[float]] | None = None) -> None:
        self.scheduler = scheduler
        self.sigmas = sigmas

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        scheduler = scheduler_with_shift(self.scheduler, batch.params.flow_shift)
        n = batch.params.num_inference_steps
        if self.sigmas is None:
            scheduler.set_timesteps(n, device=batch.device)
        else:
            scheduler.set_timesteps(sigmas=list(self.sigmas(n)), device=batch.device)
        batch.extra["scheduler"] = scheduler
        batch.timesteps = scheduler.timesteps
        return batch


# ---------------------------------------------------------------- latents


class LatentPreparationStage(PipelineStage):
    """Draws the initial noise ``(B, C, T', H', W')`` from the seeded CPU generator, in fp32.

    ``latent_shape(params) -> (C, T', H', W')`` is supplied by the family. Latents given in the
    request (``generate_video(latents=...)``) are used as they are, after a shape check.
    """

    name = "latents"

    def __init__(self, latent_shape: Callable[[Any], tuple[int, int, int, int]]) -> None:
        self.latent_shape = latent_shape

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        import torch

        shape = (1, *self.latent_shape(batch.params))
        if batch.latents is not None:
            if tuple(batch.latents.shape) != shape:
                raise ValueError(
                    f"latents must have shape {shape} for this request, got {tuple(batch.latents.shape)}"
                )
            batch.latents = batch.latents.to(device=batch.device, dtype=torch.float32)
        else:
            noise = torch.randn(shape, generator=batch.generator, dtype=torch.float32)
            batch.latents = noise.to(batch.device)
        sigma = getattr(batch.extra["scheduler"], "init_noise_sigma", 1.0)
        if sigma != 1.0:
            batch.latents = batch.latents * sigma
        return batch


# ---------------------------------------------------------------- denoising


class DenoisingStage(PipelineStage):
    """The sampling loop: DiT forwards under the step context, CFG, scheduler steps.

    Families override :meth:`model_inputs` (extra DiT arguments, per-token timesteps, image
    conditioning), :meth:`token_grid` and :meth:`after_step`. With ``transformer_2`` and
    ``boundary_ratio`` (Wan2.2 MoE) the second expert runs for ``t < boundary_ratio * 1000``
    with ``guidance_scale_2``. ``cfg=False`` runs no negative branch (guidance-distilled DiTs that
    take the guidance scale as an input, through :meth:`model_inputs`).
    """

    name = "denoising"

    def __init__(
        self,
        transformer: torch.nn.Module,
        *,
        transformer_2: torch.nn.Module | None = None,
        boundary_ratio: float | None = None,
        num_train_timesteps: int = 1000,
        cfg: bool = True,
    ) -> None:
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.boundary_ratio = boundary_ratio
        self.num_train_timesteps = num_train_timesteps
        self.cfg = cfg

    # -- hooks for families
    def token_grid(self, latents: torch.Tensor) -> tuple[int, int, int] | None:
        grid = getattr(self.transformer, "token_grid", None)
        return grid(tuple(latents.shape)) if callable(grid) else None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def model_inputs(self, batch: ForwardBatch, latents: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments of the DiT call shared by both CFG branches (``latents`` are fp32)."""
        return {"hidden_states": latents.to(self.dtype), "timestep": t.expand(latents.shape[0])}

    def text_inputs(self, batch: ForwardBatch, negative: bool) -> dict[str, Any]:
        embeds = batch.negative_prompt_embeds if negative else batch.prompt_embeds
        return {"encoder_hidden_states": embeds[0]}

    def after_step(self, batch: ForwardBatch, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def finalize(self, batch: ForwardBatch, latents: torch.Tensor) -> torch.Tensor:
        """Called once after the loop (e.g. to paste conditioning frames back in)."""
        return latents

    # -- loop
    def select_model(self, t: torch.Tensor, batch: ForwardBatch) -> tuple[torch.nn.Module, float]:
        p = batch.params
        if self.transformer_2 is None or self.boundary_ratio is None:
            return self.transformer, p.guidance_scale
        if float(t) >= self.boundary_ratio * self.num_train_timesteps:
            return self.transformer, p.guidance_scale
        g2 = p.guidance_scale_2 if p.guidance_scale_2 is not None else p.guidance_scale
        return self.transformer_2, g2

    def predict(self, model: Any, inputs: dict[str, Any], batch: ForwardBatch, scale: float) -> torch.Tensor:
        """The (guided) prediction of one step; with CFG parallelism each rank group runs one branch."""
        from fastvideo.parallel.state import current

        guided = self.cfg and batch.do_cfg
        state = current()
        if state is not None and state.cfg_size > 1:
            from fastvideo.parallel.cfg import cfg_parallel_predict

            cond = self.text_inputs(batch, negative=False)
            uncond = self.text_inputs(batch, negative=True) if guided else None
            return cfg_parallel_predict(model, inputs, cond, uncond, scale, state)
        pred = model(**inputs, **self.text_inputs(batch, negative=False))
        if guided:
            uncond_pred = model(**inputs, **self.text_inputs(batch, negative=True))
            pred = uncond_pred + scale * (pred - uncond_pred)
        return pred

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        import torch

        scheduler = batch.extra["scheduler"]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        latents = batch.latents
        assert latents is not None and batch.timesteps is not None
        dtype = self.dtype
        batch.prompt_embeds = [e.to(dtype) for e in batch.prompt_embeds]
        batch.negative_prompt_embeds = [e.to(dtype) for e in batch.negative_prompt_embeds]
        n = len(batch.timesteps)
        with progress.task("denoising", n) as advance:
            for i, t in enumerate(batch.timesteps):
                model, scale = self.select_model(t, batch)
                ctx = StepContext(
                    grid=self.token_grid(latents),
                    step_index=i,
                    num_steps=n,
                    timestep=float(t),
                    options=batch.params.backend_options,
                )
                inputs = self.model_inputs(batch, latents, t)
                with step_context(ctx):
                    pred = self.predict(model, inputs, batch, scale)
                latents = scheduler.step(pred, t, latents, return_dict=False)[0]
                latents = self.after_step(batch, latents)
                advance(1)
        batch.latents = self.finalize(batch, latents).to(torch.float32)
        return batch


# ---------------------------------------------------------------- decoding


def frames_to_uint8(video: torch.Tensor) -> Any:
    """``(C, T, H, W)`` in [-1, 1] -> numpy uint8 ``(T, H, W, 3)``."""
    import torch

    video = (video.float() / 2 + 0.5).clamp(0, 1)
    return (video.permute(1, 2, 3, 0) * 255).round().to(torch.uint8).cpu().numpy()


class DecodingStage(PipelineStage):
    """Denormalises the latents and decodes them with the VAE into uint8 frames.

    ``denormalize(latents) -> latents`` is the family's (Wan: ``x * std + mean`` per channel).
    ``tiling``: decode in overlapping spatial tiles (the VAE's ``enable_tiling``) to bound memory;
    ``None`` tiles videos larger than ``tile_above`` pixels per frame.
    """

    name = "decoding"

    def __init__(
        self,
        vae: Any,
        denormalize: Callable[[torch.Tensor], torch.Tensor],
        *,
        tiling: bool | None = None,
        tile_above: int = 480 * 832,
    ) -> None:
        self.vae = vae
        self.denormalize = denormalize
        self.tiling = tiling
        self.tile_above = tile_above

    def _set_tiling(self, batch: ForwardBatch) -> None:
        if not hasattr(self.vae, "enable_tiling"):
            return
        p = batch.params
        if self.tiling if self.tiling is not None else p.height * p.width > self.tile_above:
            self.vae.enable_tiling()  # keeps tile sizes set earlier on the VAE
        else:
            self.vae.disable_tiling()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode; in a parallel run the tiles of a tiled decode are split across ranks."""
        from fastvideo.parallel.state import current

        state = current()
        if state is not None and state.world_size > 1:
            from fastvideo.parallel.vae import parallel_decode

            video = parallel_decode(self.vae, latents, state)
            if video is not None:
                return video
        return self.vae.decode(latents, return_dict=False)[0]

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        assert batch.latents is not None
        self._set_tiling(batch)
        vae_param = next(self.vae.parameters())
        latents = self.denormalize(batch.latents.to(device=vae_param.device, dtype=vae_param.dtype))
        with progress.task("decoding", 1) as advance:
            video = self.decode(latents)  # (B, 3, T, H, W)
            advance(1)
        batch.frames = frames_to_uint8(video[0])
        return batch
