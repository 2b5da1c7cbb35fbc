"""LTX-Video options beyond the generic sampling parameters (no torch: presets import this module)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastvideo.interfaces.model_family import ModelSource


@dataclass(frozen=True, kw_only=True)
class LTXVideoOptions:
    """LTX-Video settings beyond the generic sampling parameters: a preset's (``PRESET_OPTIONS``),
    with a folder's ``fastvideo.json`` ``"ltx"`` entries on top. Defaults are diffusers' pipelines'.
    """

    decode_timestep: float = 0.0  # timestep of the conditioned decoder (>= 0.9.1 VAEs)
    decode_noise_scale: float | None = None  # decode-time noise mix; None = decode_timestep
    guidance_rescale: float = 0.0  # CFG rescale (arXiv 2305.08891), 0 = off
    image_cond_noise_scale: float = 0.15  # conditioning pipeline: noise re-added to hard conditions
    timesteps: tuple[float, ...] | None = None  # explicit first-pass timesteps (distilled), replaces steps
    # ---- distilled multi-scale chain (runs when upsampler is set)
    upsampler: str | None = None  # repo id or folder of the LTXLatentUpsamplerModel (latent_upsampler/)
    downscale: float = 2 / 3  # first pass at this fraction of the requested size
    refine_timesteps: tuple[float, ...] = (1000.0, 909.0, 725.0, 421.0, 0.0)
    refine_strength: float = 0.999  # the refine pass starts at this fraction of its schedule
    tone_map_compression_ratio: float = 0.0  # 0.9.8: compress upsampled latents' peaks
    adain_factor: float = 0.0  # blend of AdaIN to the first pass's statistics after upsampling

    def __post_init__(self) -> None:
        for name in ("timesteps", "refine_timesteps"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if not 0 < self.downscale <= 1:
            raise ValueError(f"downscale={self.downscale} must be in (0, 1]")
        for name in ("refine_strength", "tone_map_compression_ratio", "adain_factor"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")

    @property
    def noise_scale(self) -> float:
        return self.decode_timestep if self.decode_noise_scale is None else self.decode_noise_scale

    def with_overrides(self, overrides: dict[str, Any], where: str) -> LTXVideoOptions:
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(
                f"{where}: unknown LTX-Video option(s) {unknown}; valid: {', '.join(sorted(names))}"
            )
        try:
            return replace(self, **overrides)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None


def options_for(source: ModelSource) -> LTXVideoOptions:
    """The options of ``source``: its preset's, then its folder's ``fastvideo.json`` ``"ltx"`` entries."""
    from fastvideo_ltx.ltxv.presets import PRESET_OPTIONS

    opts = PRESET_OPTIONS.get(source.preset.name, LTXVideoOptions()) if source.preset else LTXVideoOptions()
    path = source.path / "fastvideo.json" if str(source.path) not in ("", ".") else None
    if path is not None and path.is_file():
        extra = json.loads(path.read_text()).get("ltx") or {}
        if not isinstance(extra, dict):
            raise ValueError(f'{path}: "ltx" must be an object of LTX-Video options, got {extra!r}')
        opts = opts.with_overrides(extra, str(path))
    return opts


def linear_quadratic_schedule(num_steps: int, threshold: float = 0.025) -> list[float]:
    """``LTXConditionPipeline``'s default sigmas: linear from 1 to ``1 - threshold`` over the first
    half of the steps, then quadratic down towards 0 (the final 0 not included)."""
    if num_steps < 2:
        return [1.0]
    lin = num_steps // 2
    schedule = [i * threshold / lin for i in range(lin)]
    diff = lin - threshold * num_steps
    quad = num_steps - lin
    a = diff / (lin * quad**2)
    b = threshold / lin - 2 * diff / quad**2
    c = a * lin**2
    schedule += [a * i**2 + b * i + c for i in range(lin, num_steps)]
    return [1.0 - x for x in schedule]


@dataclass(frozen=True)
class Condition:
    """An image or clip to condition on: its file, the frame it starts at, and its strength."""

    path: str
    frame: int = 0
    strength: float = 1.0


def parse_conditions(spec: str) -> list[Condition]:
    """``PATH[@FRAME[:STRENGTH]]``, several separated by ``;``, as :class:`Condition` s."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        path, _, rest = item.rpartition("@") if "@" in item else (item, "", "")
        frame, _, strength = rest.partition(":")
        try:
            cond = Condition(path, int(frame or 0), float(strength or 1.0))
        except ValueError:
            raise ValueError(
                f"--image {item!r} is not PATH[@FRAME[:STRENGTH]] (e.g. first.png or clip.mp4@32:0.8)"
            ) from None
        if cond.frame < 0 or not 0.0 <= cond.strength <= 1.0:
            raise ValueError(f"--image {item!r}: FRAME must be >= 0 and STRENGTH in [0, 1]")
        out.append(cond)
    return out
