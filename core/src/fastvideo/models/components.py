"""What every family's pipeline builder needs besides its DiT: the device and per-component dtypes
of a run, and the latent geometry of its VAE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig, SamplingParams


def pick_device(config: PipelineConfig | str | torch.device | None = None) -> torch.device:
    """The requested device (``config.device``, or the string itself), else CUDA when available, else CPU."""
    requested = config if config is None or isinstance(config, (str, torch.device)) else config.device
    if requested is not None:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtypes(
    config: PipelineConfig, device: torch.device, *, text: str = "bf16", vae: str = "fp32"
) -> tuple[str, str, str]:
    """(DiT, text encoder, VAE) dtypes: what ``config`` says, else on GPU bf16 for the DiT and the
    family's ``text`` / ``vae`` release settings, and fp32 everywhere on CPU."""
    gpu = device.type == "cuda"
    return (
        config.dtype or ("bf16" if gpu else "fp32"),
        config.text_encoder_dtype or (text if gpu else "fp32"),
        config.vae_dtype or (vae if gpu else "fp32"),
    )


@dataclass(frozen=True, eq=False)
class LatentGeometry:
    """The latent space of a checkpoint's VAE: channels, strides and normalisation.

    The DiT works on normalised latents; the VAE decodes :meth:`denormalize` of them: per-channel
    ``x * std + mean`` when the VAE declares ``latents_mean`` / ``latents_std`` (Wan), else
    ``x / scaling_factor`` (HunyuanVideo).
    """

    channels: int
    spatial: int  # pixels per latent cell along H and W
    temporal: int  # frames per latent frame (after the first)
    mean: torch.Tensor | None = None  # (1, C, 1, 1, 1)
    std: torch.Tensor | None = None  # (1, C, 1, 1, 1)
    scaling_factor: float = 1.0

    @classmethod
    def from_vae(
        cls,
        vae: Any,
        *,
        channels: int | None = None,
        spatial: int | None = None,
        temporal: int | None = None,
    ) -> LatentGeometry:
        """Read a diffusers VAE's config: ``z_dim`` / ``latent_channels`` (``channels`` wins),
        ``scale_factor_spatial`` / ``spatial_compression_ratio`` and ``scale_factor_temporal`` /
        ``temporal_compression_ratio`` (``spatial`` / ``temporal`` are the fallbacks where the config
        has none), ``latents_mean`` / ``latents_std``, ``scaling_factor``."""
        cfg = vae.config

        def read(*keys: str) -> Any:
            for key in keys:
                value = getattr(cfg, key, None) if not isinstance(cfg, dict) else cfg.get(key)
                if value is not None:
                    return value
            return None

        channels = channels or read("z_dim", "latent_channels")
        spatial = read("scale_factor_spatial", "spatial_compression_ratio") or spatial
        temporal = read("scale_factor_temporal", "temporal_compression_ratio") or temporal
        if channels is None or spatial is None or temporal is None:
            raise ValueError(
                f"{type(vae).__name__}'s config gives no latent channels / spatial / temporal stride "
                f"(got {channels}, {spatial}, {temporal}); pass them to LatentGeometry.from_vae"
            )
        mean, std = read("latents_mean"), read("latents_std")
        return cls(
            channels=int(channels),
            spatial=int(spatial),
            temporal=int(temporal),
            mean=None if mean is None else torch.tensor(mean).view(1, -1, 1, 1, 1),
            std=None if std is None else torch.tensor(std).view(1, -1, 1, 1, 1),
            scaling_factor=float(read("scaling_factor") or 1.0),
        )

    def shape(self, p: SamplingParams) -> tuple[int, int, int, int]:
        """``(C, T', H', W')`` of the latents of a request."""
        frames = (p.num_frames - 1) // self.temporal + 1
        return (self.channels, frames, p.height // self.spatial, p.width // self.spatial)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> what the VAE decodes."""
        if self.mean is None or self.std is None:
            return latents / self.scaling_factor
        inv_std = (1.0 / self.std).to(latents.device, latents.dtype)
        return latents / inv_std + self.mean.to(latents.device, latents.dtype)

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """What the VAE encodes -> normalised latents (the inverse of :meth:`denormalize`)."""
        if self.mean is None or self.std is None:
            return latents * self.scaling_factor
        return (latents - self.mean.to(latents)) / self.std.to(latents)
