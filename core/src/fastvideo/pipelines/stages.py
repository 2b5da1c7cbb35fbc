"""The standard stages, written once for families to reuse and extend.

Order in a text-to-video pipeline: input validation -> text encoding -> timesteps -> latents ->
denoising (with classifier-free guidance) -> VAE decoding.
"""

from __future__ import annotations

import functools
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
    """Seeds the CPU generator of the request.

    The request itself was validated once, against this checkpoint, by the
    :class:`~fastvideo.generator.VideoGenerator` that runs the pipeline; stages trust it. (The stage
    keeps its name and arguments so that families' pipelines stay as they are.)
    """

    name = "input_validation"

    def __init__(self, family: type[ModelFamily], source: ModelSource) -> None:
        self.family = family
        self.source = source

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        import torch

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


class TimestepPreparationStage(PipelineStage):
    """Builds this request's sampler (``batch.sampler``) and its timesteps (``batch.timesteps``).

    ``scheduler`` is the checkpoint's diffusers scheduler, handed to the sampler for its defaults
    (and run as it is by the default ``checkpoint`` sampler). ``sampler`` names the registered
    :class:`~fastvideo.interfaces.Sampler` (None: ``checkpoint``); ``VideoGenerator`` sets it from
    the config, preset or family. ``sigmas(num_steps)``, when given, is the unshifted sigma schedule
    the family prefers (HunyuanVideo: ``linspace(1, 0, n + 1)[:-1]``), passed to the sampler. The
    request's ``flow_shift`` overrides the checkpoint's shift.
    """

    name = "timesteps"

    def __init__(
        self,
        scheduler: Any,
        *,
        sigmas: Callable[[int], Sequence[float]] | None = None,
        sampler: str | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.sigmas = sigmas
        self.sampler = sampler

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        from fastvideo.samplers import sampler_class

        sampler = sampler_class(self.sampler)(self.scheduler)
        n = batch.params.num_inference_steps
        batch.timesteps = sampler.set_timesteps(
            n,
            device=batch.device,
            shift=batch.params.flow_shift,
            sigmas=None if self.sigmas is None else list(self.sigmas(n)),
        )
        batch.sampler = sampler
        return batch


# ---------------------------------------------------------------- latents


class LatentPreparationStage(PipelineStage):
    """Draws the initial noise ``(B, C, T', H', W')`` from the seeded CPU generator, in fp32, scaled
    by the sampler's ``init_noise_sigma``.

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
        sigma = batch.sampler.init_noise_sigma if batch.sampler is not None else 1.0
        if sigma != 1.0:
            batch.latents = batch.latents * sigma
        return batch


# ---------------------------------------------------------------- denoising


class ClassifierFreeGuidance:
    """The guided prediction of one step in one process: ``uncond + scale * (cond - uncond)``.

    Called as ``guidance(model, inputs, cond, uncond, scale)``: ``inputs`` are the DiT keyword
    arguments both branches share (latents, timestep), ``cond`` / ``uncond`` each branch's text
    arguments (``uncond`` None: no guidance, one forward). A transform replaces the denoising
    stage's ``guidance`` to run the branches differently (CFG parallelism: one per rank group).
    """

    def __call__(
        self,
        model: Callable[..., torch.Tensor],
        inputs: dict[str, Any],
        cond: dict[str, Any],
        uncond: dict[str, Any] | None,
        scale: float,
    ) -> torch.Tensor:
        pred = model(**inputs, **cond)
        if uncond is not None:
            uncond_pred = model(**inputs, **uncond)
            pred = uncond_pred + scale * (pred - uncond_pred)
        return pred


@dataclass(kw_only=True)
class StepInfo:
    """What a step hook knows about the current step of the denoising loop."""

    index: int  # 0-based
    num_steps: int
    timestep: Any  # torch.Tensor, as the sampler returned it
    latents: Any  # (B, C, T, H, W) fp32, the input of this step
    model: Any  # the DiT of this step (the second expert below the MoE boundary)
    guidance_scale: float
    inputs: dict[str, Any] | None = None  # the DiT keyword arguments shared by both CFG branches


class StepHook:
    """Per-step callbacks of :class:`DenoisingStage` (``stage.step_hooks``), for transforms.

    Subclass and override what you need; the defaults do nothing. Hooks run in list order; for
    :meth:`predict` the first hook is the outermost: its ``compute()`` calls the next hook's
    ``predict``, and the last one's calls the guided DiT prediction.
    """

    def before_step(self, stage: DenoisingStage, batch: ForwardBatch, step: StepInfo) -> None:
        """Called before step ``step.index`` (``step.inputs`` is already set)."""

    def predict(
        self,
        stage: DenoisingStage,
        batch: ForwardBatch,
        step: StepInfo,
        compute: Callable[[], torch.Tensor],
    ) -> torch.Tensor:
        """The (guided) prediction of this step: ``compute()`` runs the DiT(s); return a cached
        tensor instead to skip them (step caching). Runs under the step's attention context."""
        return compute()

    def after_step(
        self,
        stage: DenoisingStage,
        batch: ForwardBatch,
        step: StepInfo,
        pred: torch.Tensor,
        latents: torch.Tensor,
    ) -> None:
        """Called after the sampler's update with the prediction used and the new latents."""


class DenoisingStage(PipelineStage):
    """The sampling loop: DiT forwards under the step context, guidance, sampler steps.

    Families override :meth:`model_inputs` (extra DiT arguments, per-token timesteps, image
    conditioning), :meth:`token_grid` and :meth:`after_step`. With ``transformer_2`` and
    ``boundary_ratio`` (Wan2.2 MoE) the second expert runs for ``t < boundary_ratio * 1000``
    with ``guidance_scale_2``. ``cfg=False`` runs no negative branch (guidance-distilled DiTs that
    take the guidance scale as an input, through :meth:`model_inputs`).

    Seams for transforms: ``guidance`` (:class:`ClassifierFreeGuidance` by default) turns the DiT
    into one guided prediction; ``step_hooks`` (:class:`StepHook`) run before and after each step
    and may return a prediction instead of calling the DiT. The update rule is ``batch.sampler``'s.
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
        self.guidance: Callable[..., torch.Tensor] = ClassifierFreeGuidance()
        self.step_hooks: list[StepHook] = []

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
        """The (guided) prediction of one step, through ``self.guidance``."""
        guided = self.cfg and batch.do_cfg
        cond = self.text_inputs(batch, negative=False)
        uncond = self.text_inputs(batch, negative=True) if guided else None
        return self.guidance(model, inputs, cond, uncond, scale)

    def _hooked_predict(self, batch: ForwardBatch, step: StepInfo) -> torch.Tensor:
        assert step.inputs is not None
        inputs = step.inputs

        def compute() -> torch.Tensor:
            return self.predict(step.model, inputs, batch, step.guidance_scale)

        for hook in reversed(self.step_hooks):
            compute = functools.partial(hook.predict, self, batch, step, compute)
        return compute()

    def forward(self, batch: ForwardBatch) -> ForwardBatch:
        import torch

        sampler = batch.sampler
        latents = batch.latents
        assert sampler is not None and latents is not None and batch.timesteps is not None
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
                step = StepInfo(
                    index=i,
                    num_steps=n,
                    timestep=t,
                    latents=latents,
                    model=model,
                    guidance_scale=scale,
                    inputs=inputs,
                )
                for hook in self.step_hooks:
                    hook.before_step(self, batch, step)
                with step_context(ctx):
                    pred = self._hooked_predict(batch, step)
                latents = sampler.step(pred, t, latents, step_index=i, generator=batch.generator)
                latents = self.after_step(batch, latents)
                for hook in self.step_hooks:
                    hook.after_step(self, batch, step, pred, latents)
                advance(1)
        batch.latents = self.finalize(batch, latents).to(torch.float32)
        return batch


# ---------------------------------------------------------------- decoding


def frames_to_uint8(video: torch.Tensor, chunk: int = 8) -> Any:
    """``(C, T, H, W)`` in [-1, 1] -> numpy uint8 ``(T, H, W, 3)``: ``round(clamp(x / 2 + 0.5, 0, 1) * 255)``
    in fp32, ``chunk`` frames at a time and in place, so that the conversion adds a uint8 copy and one
    chunk of fp32 to what the decoded video holds (whole-video fp32 temporaries were 4 bytes a value
    twice over: 0.7 GiB at 81x480x832, where a generation's memory peaks)."""
    import torch

    if chunk < 1:
        raise ValueError(f"frames_to_uint8: chunk must be >= 1 frame, got {chunk}")
    out = torch.empty(video.shape, dtype=torch.uint8, device=video.device)
    for t in range(0, video.shape[1], chunk):
        x = video[:, t : t + chunk].to(torch.float32, copy=True)  # a copy also of fp32 input (in place below)
        out[:, t : t + chunk] = x.div_(2).add_(0.5).clamp_(0, 1).mul_(255).round_()
    return out.permute(1, 2, 3, 0).cpu().numpy()


def vae_decode(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """``vae.decode(latents)`` as a tensor ``(B, 3, T, H, W)`` in [-1, 1]."""
    return vae.decode(latents, return_dict=False)[0]


class DecodingStage(PipelineStage):
    """Denormalises the latents and decodes them with the VAE into uint8 frames.

    ``denormalize(latents) -> latents`` is the family's (Wan: ``x * std + mean`` per channel).
    ``tiling``: decode in overlapping spatial tiles (the VAE's ``enable_tiling``) to bound memory;
    ``None`` tiles videos larger than ``tile_above`` pixels per frame. ``vae_decode(vae, latents)``
    is the decode call (:func:`vae_decode`); transforms wrap it (parallel VAE decoding splits the
    tiles over the ranks).
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
        self.vae_decode: Callable[[Any, torch.Tensor], torch.Tensor] = vae_decode

    def _set_tiling(self, batch: ForwardBatch) -> None:
        if not hasattr(self.vae, "enable_tiling"):
            return
        p = batch.params
        if self.tiling if self.tiling is not None else p.height * p.width > self.tile_above:
            self.vae.enable_tiling()  # keeps tile sizes set earlier on the VAE
        else:
            self.vae.disable_tiling()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode through ``self.vae_decode(vae, latents)`` (a transform may wrap it)."""
        return self.vae_decode(self.vae, latents)

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
