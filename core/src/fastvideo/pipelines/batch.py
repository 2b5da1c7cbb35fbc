"""``ForwardBatch``: the state one generation carries from stage to stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fastvideo.configs import SamplingParams
    from fastvideo.interfaces.sampler import Sampler


@dataclass(kw_only=True)
class ForwardBatch:
    """Mutable per-request state. Family-specific fields go in ``extra`` under the family's name
    (``batch.extra["wan"]["image_latents"]``), so the core dataclass stays small."""

    params: SamplingParams
    device: Any = None  # torch.device of the denoiser
    generator: torch.Generator | None = None
    # text
    prompt_embeds: list[torch.Tensor] = field(default_factory=list)  # one per text encoder
    negative_prompt_embeds: list[torch.Tensor] = field(default_factory=list)
    prompt_masks: list[torch.Tensor | None] = field(default_factory=list)
    negative_prompt_masks: list[torch.Tensor | None] = field(default_factory=list)
    # schedule and latents
    sampler: Sampler | None = None  # this request's schedule and update rule (the timestep stage's)
    timesteps: torch.Tensor | None = None
    latents: torch.Tensor | None = None  # (B, C, T, H, W) noise in, denoised latents out
    audio_latents: torch.Tensor | None = None  # audio-video families: the audio noise in, latents out
    # output
    frames: np.ndarray | None = None  # uint8 (T, H, W, 3)
    audio: np.ndarray | None = None  # float32 (N, channels) in [-1, 1]; None: a silent video
    sample_rate: int | None = None  # of ``audio``, Hz
    extra: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # stage name -> seconds

    @property
    def do_cfg(self) -> bool:
        return self.params.do_cfg

    def family_extra(self, family: str) -> dict[str, Any]:
        """The namespaced dict for ``family``'s own fields (created on first use)."""
        return self.extra.setdefault(family, {})
