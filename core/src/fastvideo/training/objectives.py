"""Training objectives. Families return one from ``ModelFamily.training_objective``.

Flow matching (rectified flow), as Wan, HunyuanVideo and LTX-Video were trained: for clean
latents ``x0``, noise ``e`` and ``sigma`` in (0, 1),

    x_t = (1 - sigma) * x0 + sigma * e,      target v = e - x0,      loss = mean((model(x_t, 1000 sigma) - v)^2)

``sigma`` is drawn uniformly (or logit-normally) and then *shifted* towards noise as the sampling
schedulers shift it: ``sigma' = shift * s / (1 + (shift - 1) * s)``. Randomness comes from
per-sample generators that the trainer seeds from (seed, step, sample position), so a resumed or
re-sharded run draws exactly the same noise and timesteps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from fastvideo.training.config import ObjectiveSection


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """``shift * s / (1 + (shift - 1) * s)``: the timestep shift of flow-matching schedulers."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclass(frozen=True, kw_only=True)
class FlowMatchingObjective:
    """Velocity-prediction flow matching with shifted timestep sampling.

    :param shift: timestep shift (Wan2.1 480P: 3.0); 1 = no shift.
    :param timestep_sampling: ``uniform`` or ``logit_normal`` (``sigmoid(N(mean, std))``), before the shift.
    :param num_train_timesteps: the DiT sees ``timestep = sigma * num_train_timesteps``.
    :param text_dropout: probability that a sample's text is replaced by the empty prompt's
        embedding (``batch["null_text"]``, zeros when absent), so that the model also learns the
        unconditional prediction classifier-free guidance needs. Drawn after noise and timestep.
    """

    shift: float = 1.0
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    num_train_timesteps: int = 1000
    text_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.timestep_sampling not in ("uniform", "logit_normal"):
            raise ValueError(
                f"timestep_sampling must be uniform or logit_normal, got {self.timestep_sampling!r}"
            )

    def with_options(self, options: ObjectiveSection) -> FlowMatchingObjective:
        """This objective with the training config's overrides applied."""
        changes: dict[str, Any] = {
            "timestep_sampling": options.timestep_sampling,
            "logit_mean": options.logit_mean,
            "logit_std": options.logit_std,
            "text_dropout": options.text_dropout,
        }
        if options.shift is not None:
            changes["shift"] = options.shift
        return dataclasses.replace(self, **changes)

    def sample_sigmas(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One shifted sigma per sample ``(B,)`` fp32 on the CPU, drawn from each sample's generator."""
        import torch

        if self.timestep_sampling == "uniform":
            raw = torch.cat([torch.rand(1, generator=g) for g in generators])
        else:
            normal = torch.cat([torch.randn(1, generator=g) for g in generators])
            raw = torch.sigmoid(normal * self.logit_std + self.logit_mean)
        return shift_sigmas(raw, self.shift)

    def model_inputs(
        self, batch: dict[str, Any], noisy: torch.Tensor, timesteps: torch.Tensor
    ) -> dict[str, Any]:
        """Keyword arguments of the DiT call (diffusers' convention); families override for extras."""
        return {"hidden_states": noisy, "timestep": timesteps, "encoder_hidden_states": batch["text"]}

    def __call__(
        self, model: Any, batch: dict[str, Any], generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The mean loss over the micro-batch and per-batch metrics.

        :param batch: ``latents`` ``(B, C, T, H, W)`` fp32 and ``text`` ``(B, L, D)`` on the model's device.
        :param generators: one seeded CPU generator per sample; noise first, then the timestep.
        """
        import torch

        x0 = batch["latents"]
        if len(generators) != x0.shape[0]:
            raise ValueError(
                f"need one generator per sample: {x0.shape[0]} samples, {len(generators)} generators"
            )
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g, dtype=torch.float32) for g in generators])
        noise = noise.to(x0.device)
        sigmas = self.sample_sigmas(generators).to(x0.device)  # (B,)
        s = sigmas.view(-1, *([1] * (x0.ndim - 1)))
        noisy = (1 - s) * x0 + s * noise  # (B, C, T, H, W)
        target = noise - x0
        if self.text_dropout > 0:
            batch = {**batch, "text": self._drop_text(batch, generators)}
        pred = model(**self.model_inputs(batch, noisy, sigmas * self.num_train_timesteps))
        per_sample = (pred.float() - target).pow(2).flatten(1).mean(1)  # (B,)
        return per_sample.mean(), {"sigma_mean": float(sigmas.mean())}

    def _drop_text(self, batch: dict[str, Any], generators: Sequence[torch.Generator]) -> torch.Tensor:
        import torch

        text = batch["text"]
        drop = torch.cat([torch.rand(1, generator=g) for g in generators]) < self.text_dropout
        null = batch.get("null_text")
        null = torch.zeros_like(text[0]) if null is None else null.to(text.device, text.dtype)
        keep = (~drop).to(text.device).view(-1, *([1] * (text.ndim - 1)))
        return torch.where(keep, text, null.expand_as(text))
