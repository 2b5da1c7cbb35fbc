"""The Python API: ``VideoGenerator.from_pretrained(model).generate_video(prompt)``."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastvideo.configs import ParallelConfig, PipelineConfig, SamplingParams

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fastvideo.interfaces.model_family import ModelSource
    from fastvideo.pipelines.composed import ComposedPipeline

_PARALLEL_FIELDS = {f.name for f in dataclasses.fields(ParallelConfig)}


@dataclass
class GenerationResult:
    """One generated video."""

    frames: np.ndarray  # uint8 (T, H, W, 3)
    fps: int
    path: Path | None  # the mp4 written, or None
    timings: dict[str, float] = field(default_factory=dict)  # per stage, seconds
    params: SamplingParams | None = None
    latents: torch.Tensor | None = None  # final denoised latents (B, C, T', H', W')

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary (what ``fv generate --json`` prints)."""
        t, h, w, _ = self.frames.shape
        return {
            "path": str(self.path) if self.path else None,
            "frames": t,
            "height": h,
            "width": w,
            "fps": self.fps,
            "seed": self.params.seed if self.params else None,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Split keyword overrides into (pipeline, parallel, sampling) fields."""
    pipe_fields = {f.name for f in dataclasses.fields(PipelineConfig)} - {"parallel"}
    samp_fields = {f.name for f in dataclasses.fields(SamplingParams)}
    pipe, par, samp = {}, {}, {}
    for key, value in overrides.items():
        if key in pipe_fields:
            pipe[key] = value
        elif key in _PARALLEL_FIELDS:
            par[key] = value
        elif key in samp_fields:
            samp[key] = value
        else:
            valid = sorted(pipe_fields | _PARALLEL_FIELDS | samp_fields)
            raise TypeError(f"unknown option {key!r}; valid options: {', '.join(valid)}")
    return pipe, par, samp


class VideoGenerator:
    """Generates videos with one model. Build it with :meth:`from_pretrained`."""

    def __init__(self, source: ModelSource, pipeline: ComposedPipeline, config: PipelineConfig,
                 sampling_defaults: SamplingParams) -> None:
        self.source = source
        self.pipeline = pipeline
        self.config = config
        self.sampling_defaults = sampling_defaults

    @classmethod
    def from_pretrained(cls, model: str, **overrides: Any) -> VideoGenerator:
        """Resolve ``model`` (preset, Hub repo id or local diffusers folder) and load it.

        ``overrides`` may set any :class:`PipelineConfig` field (``device``, ``dtype``,
        ``attention_backend``, ...), any :class:`ParallelConfig` field (``num_gpus``, ...) and any
        :class:`SamplingParams` field, which then becomes this generator's default.
        """
        pipe, par, samp = split_overrides(overrides)
        config = PipelineConfig(parallel=ParallelConfig(**par)).with_overrides(pipe)
        return cls.from_config(model, config, sampling_overrides=samp)

    @classmethod
    def from_config(
        cls, model: str, config: PipelineConfig, *, sampling_overrides: dict[str, Any] | None = None
    ) -> VideoGenerator:
        """Like :meth:`from_pretrained`, with the options already in a :class:`PipelineConfig`."""
        from fastvideo import progress
        from fastvideo.attention import resolve_backend_name
        from fastvideo.resolve import resolve

        if config.parallel.num_gpus > 1:
            raise ValueError(
                f"num_gpus={config.parallel.num_gpus}: multi-GPU generation needs the parallel strategies, "
                f"which this release does not include yet; use num_gpus=1"
            )
        progress.set_enabled(config.progress)
        resolve_backend_name(config.attention_backend)  # fail before loading anything
        source = resolve(model, revision=config.revision, token=config.token, local_files_only=config.local_files_only)
        defaults = source.family.sampling_defaults(source).with_overrides(sampling_overrides or {})
        pipeline = source.family.build_pipeline(source, config)
        return cls(source, pipeline, config, defaults)

    def sampling_params(self, prompt: str | None = None, **overrides: Any) -> SamplingParams:
        """This generator's defaults with ``prompt`` and ``overrides`` applied, validated."""
        if prompt is not None:
            overrides["prompt"] = prompt
        params = self.sampling_defaults.with_overrides(overrides)
        self.source.family.validate(params, self.source)
        return params

    def generate_video(
        self,
        prompt: str | None = None,
        *,
        latents: torch.Tensor | None = None,
        output_path: str | Path | None = None,
        overwrite: bool = False,
        lossless: bool = False,
        **sampling_overrides: Any,
    ) -> GenerationResult:
        """Generate one video.

        :param latents: fixes the initial noise ``(1, C, T', H', W')`` (parity tests use it).
        :param output_path: where to write the mp4 (checked before any work); None writes nothing.
        :param overwrite: replace an existing ``output_path``.
        :param lossless: write RGB H.264 at CRF 0 (bit-exact frames; larger files).
        """
        from fastvideo.attention import use_backend
        from fastvideo.pipelines.batch import ForwardBatch
        from fastvideo.video import check_output_path, write_mp4

        params = self.sampling_params(prompt, **sampling_overrides)
        if output_path is not None:
            check_output_path(output_path, overwrite=overwrite)
        batch = ForwardBatch(params=params, device=self.pipeline.components.get("device"), latents=latents)
        start = time.perf_counter()
        with use_backend(self.config.attention_backend):
            batch = self.pipeline(batch)
        assert batch.frames is not None
        path = None
        if output_path is not None:
            t0 = time.perf_counter()
            path = write_mp4(batch.frames, output_path, params.fps, overwrite=overwrite, lossless=lossless)
            batch.timings["write_mp4"] = time.perf_counter() - t0
        batch.timings["total"] = time.perf_counter() - start
        return GenerationResult(batch.frames, params.fps, path, batch.timings, params, batch.latents)


def preflight(model: str, sampling_overrides: dict[str, Any], config: PipelineConfig) -> SamplingParams:
    """Check a request without loading weights: the backend, the model name and the sampling
    parameters against the family's rules. Returns the parameters that would be used."""
    from fastvideo.attention import resolve_backend_name
    from fastvideo.interfaces.model_family import ModelSource
    from fastvideo.resolve import resolve_family

    resolve_backend_name(config.attention_backend)
    family, preset, where, index = resolve_family(model, revision=config.revision, token=config.token)
    if index is None and not isinstance(where, str) and (Path(where) / "model_index.json").is_file():
        from fastvideo.loader.components import read_model_index

        index = read_model_index(where)
    source = ModelSource(
        family=family,
        path=Path(where) if not isinstance(where, str) else Path(),
        model_index=index or {},
        preset=preset,
        repo_id=where if isinstance(where, str) else None,
    )
    params = family.sampling_defaults(source).with_overrides(sampling_overrides)
    family.validate(params, source)
    if config.parallel.num_gpus > 1:
        raise ValueError(
            f"num_gpus={config.parallel.num_gpus}: multi-GPU generation needs the parallel strategies, "
            f"which this release does not include yet; use --num-gpus 1"
        )
    return params
