"""The Python API: ``VideoGenerator.from_pretrained(model).generate_video(prompt)``."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastvideo.configs import ParallelConfig, PipelineConfig, SamplingParams

if TYPE_CHECKING:
    import numpy as np
    import torch

    from fastvideo.interfaces.model_family import ModelFamily, ModelSource, Preset
    from fastvideo.parallel.state import ParallelState
    from fastvideo.pipelines.composed import ComposedPipeline

_PARALLEL_FIELDS = {f.name for f in dataclasses.fields(ParallelConfig)}


def _launched() -> bool:
    """Whether this process is one rank of a multi-process run (torchrun or ``fv generate --num-gpus``)."""
    import os

    return "RANK" in os.environ and os.environ.get("WORLD_SIZE", "1") not in ("", "1")


@dataclass
class GenerationResult:
    """One generated video."""

    frames: np.ndarray  # uint8 (T, H, W, 3)
    fps: int
    path: Path | None  # the mp4 written, or None
    timings: dict[str, float] = field(default_factory=dict)  # per stage, seconds
    params: SamplingParams | None = None
    latents: torch.Tensor | None = None  # final denoised latents (B, C, T', H', W')
    audio: np.ndarray | None = None  # float32 (N, channels) in [-1, 1]; None: no soundtrack
    sample_rate: int | None = None  # of ``audio``, Hz

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary (what ``fv generate --json`` prints)."""
        t, h, w, _ = self.frames.shape
        summary = {
            "path": str(self.path) if self.path else None,
            "frames": t,
            "height": h,
            "width": w,
            "fps": self.fps,
            "seed": self.params.seed if self.params else None,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
        }
        if self.audio is not None and self.sample_rate:
            summary["audio"] = {"seconds": round(len(self.audio) / self.sample_rate, 4),
                                "channels": int(self.audio.shape[-1]), "sample_rate": self.sample_rate}  # fmt: skip
        return summary


def model_name(model: Any) -> str:
    """``model`` as the string :func:`~fastvideo.resolve.resolve` takes (a ``pathlib.Path`` is a local
    folder); TypeError for anything else."""
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a preset name, a Hub repo id or a local folder (str or pathlib.Path), "
            f"got {type(model).__name__} ({model!r:.40})"
        )
    return model


def check_latents(latents: Any) -> None:
    """``latents`` must be None or a floating-point tensor ``(B, C, T', H', W')`` (the exact sizes are
    checked against the request when the latents are prepared)."""
    if latents is None:
        return
    import torch

    if not isinstance(latents, torch.Tensor):
        raise TypeError(
            f"latents must be a torch.Tensor of shape (B, C, T', H', W'), got {type(latents).__name__}; "
            "use torch.as_tensor(...) or leave it unset"
        )
    if latents.ndim != 5 or not latents.is_floating_point():
        raise ValueError(
            f"latents must be a floating-point tensor of shape (B, C, T', H', W'), got {latents.dtype} "
            f"of shape {tuple(latents.shape)}"
        )


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
            from fastvideo.attention.options import moved_option_hint

            valid = sorted(pipe_fields | _PARALLEL_FIELDS | samp_fields)
            raise TypeError(
                f"unknown option {key!r}{moved_option_hint(key)}; valid options: {', '.join(valid)}"
            )
    return pipe, par, samp


class VideoGenerator:
    """Generates videos with one model. Build it with :meth:`from_pretrained`.

    Parallel runs (``num_gpus > 1``) need one process per GPU, each building its generator: use
    ``fv generate --num-gpus N`` or start the script with torchrun (docs/parallel.md).
    """

    parallel_state: ParallelState | None = None  # this rank's groups in a parallel run
    _parallelized: bool = False

    def __init__(
        self,
        source: ModelSource,
        pipeline: ComposedPipeline,
        config: PipelineConfig,
        sampling_defaults: SamplingParams,
        *,
        backend: str | None = None,
    ) -> None:
        from fastvideo.attention import resolve_backend_name

        self.source = source
        self.pipeline = pipeline
        self.config = config
        self.sampling_defaults = sampling_defaults
        self.backend = backend or resolve_backend_name(config.attention_backend)
        self._validated: SamplingParams | None = None  # the last request validated for this checkpoint
        self._loras: dict[str, dict[str, Any]] = {}  # name -> {"path", "scale", "base": {component: scales}}
        self._lora_merged = False

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike[str], **overrides: Any) -> VideoGenerator:
        """Resolve ``model`` (preset, Hub repo id or local diffusers folder) and load it.

        ``overrides`` may set any :class:`PipelineConfig` field (``device``, ``dtype``,
        ``attention_backend``, ...), any :class:`ParallelConfig` field (``num_gpus``, ...) and any
        :class:`SamplingParams` field, which then becomes this generator's default; e.g.
        ``attention_backend="vsa", backend_options={"vsa": {"sparsity": 0.9}}`` (the options that
        the selected backend declares, checked here).
        """
        model = model_name(model)
        pipe, par, samp = split_overrides(overrides)
        config = PipelineConfig(parallel=ParallelConfig(**par)).with_overrides(pipe)
        return cls.from_config(model, config, sampling_overrides=samp)

    @classmethod
    def from_config(
        cls,
        model: str | os.PathLike[str],
        config: PipelineConfig,
        *,
        sampling_overrides: dict[str, Any] | None = None,
        plan: Plan | None = None,
    ) -> VideoGenerator:
        """Like :meth:`from_pretrained`, with the options already in a :class:`PipelineConfig`.

        ``plan`` is what :func:`preflight` checked for the same model, config and overrides (``fv
        generate`` does that before anything loads): its family, backend and validated parameters are
        used as they are, so a request is resolved and validated once.
        """
        from fastvideo import progress
        from fastvideo.parallel.strategies import check_strategies
        from fastvideo.resolve import fetch_source
        from fastvideo.samplers import use_sampler
        from fastvideo.transforms import apply_transforms, load_policy

        if not isinstance(config, PipelineConfig):
            raise TypeError(f"config must be a PipelineConfig, got {type(config).__name__}")
        state = None
        if config.parallel.num_gpus > 1 or _launched():  # one rank of a parallel run (docs/parallel.md)
            from fastvideo.parallel.launch import join_run

            state, config = join_run(config)
        progress.set_enabled(config.progress)
        check_strategies(config.parallel, parallel=state is not None)
        if plan is None:
            plan = preflight(model, sampling_overrides or {}, config, validate=False)
        source = fetch_source(
            plan.family,
            plan.preset,
            plan.where,
            revision=config.revision,
            token=config.token,
            local_files_only=config.local_files_only,
        )
        # transforms may place or read the DiTs' weights as they load (offload, FP8 checkpoints)
        with load_policy(config).active() as policy:
            pipeline = source.family.build_pipeline(source, config)
        pipeline.load_policy = policy  # type: ignore[attr-defined]
        use_sampler(pipeline, config, source)
        apply_transforms(pipeline, config)  # step caches, FP8, offload; CFG-parallel guidance, parallel VAE
        defaults = source.family.sampling_defaults(source).with_overrides(sampling_overrides or {})
        generator = cls(source, pipeline, config, defaults, backend=plan.backend)
        if plan.validated:
            generator._validated = plan.params
        generator.parallel_state = state
        return generator

    def _parallelize(self) -> ParallelState | None:
        """Apply the parallel strategies once, before the first generation (after LoRAs are merged)."""
        state = self.parallel_state
        if state is not None and not self._parallelized:
            from fastvideo.parallel.strategies import parallelize

            parallelize(self.pipeline, state)
            self._parallelized = True
        return state

    def sampling_params(self, prompt: str | None = None, **overrides: Any) -> SamplingParams:
        """This generator's defaults with ``prompt`` and ``overrides`` applied, validated.

        ``backend_options`` are merged option by option into the generator's, checked against the
        selected attention backend's declarations and completed with its defaults.
        """
        from fastvideo.attention.options import moved_option_hint, resolve_options

        if prompt is not None:
            overrides["prompt"] = prompt
        fields = {f.name for f in dataclasses.fields(SamplingParams)}
        for key in (k for k in overrides if k not in fields):
            hint = moved_option_hint(key)  # a backend's option given as a keyword: say where it goes
            if hint:
                raise TypeError(f"unknown sampling parameter {key!r}{hint}")
        params = self.sampling_defaults.with_overrides(overrides)
        if params != self._validated:  # a request checked already (by preflight) is not checked again
            self.source.family.validate(params, self.source)
            self._validated = params
        return dataclasses.replace(
            params, backend_options=resolve_options(self.backend, params.backend_options)
        )

    def generate_video(
        self,
        prompt: str | None = None,
        *,
        latents: torch.Tensor | None = None,
        audio_latents: torch.Tensor | None = None,
        output_path: str | Path | None = None,
        overwrite: bool = False,
        lossless: bool = False,
        **sampling_overrides: Any,
    ) -> GenerationResult:
        """Generate one video.

        ``sampling_overrides`` are :class:`SamplingParams` fields, e.g. ``num_frames=33`` or
        ``backend_options={"<backend>": {"<option>": value}}`` for the selected attention backend.

        :param latents: fixes the initial noise ``(1, C, T', H', W')`` (parity tests use it).
        :param audio_latents: the same for the audio of audio-video families, in the layout of their
            audio VAE's latents; families without audio refuse it.
        :param output_path: where to write the mp4 (checked before any work); None writes nothing.
        :param overwrite: replace an existing ``output_path``.
        :param lossless: write RGB H.264 at CRF 0 (bit-exact frames; larger files).
        """
        from fastvideo.attention import use_backend
        from fastvideo.pipelines.batch import ForwardBatch
        from fastvideo.video import check_output_path, write_mp4

        params = self.sampling_params(prompt, **sampling_overrides)
        check_latents(latents)
        if audio_latents is not None and not self.source.family.audio:
            name = self.source.family.name
            raise ValueError(
                f"audio_latents were given, but family {name!r} makes no audio; leave them unset"
            )
        state = self._parallelize()
        if state is not None and not state.is_main:
            output_path = None  # rank 0 writes the video
        if output_path is not None:
            check_output_path(output_path, overwrite=overwrite)
        batch = ForwardBatch(
            params=params, device=self.pipeline.components.get("device"), latents=latents,
            audio_latents=audio_latents,
        )  # fmt: skip
        start = time.perf_counter()
        with use_backend(self.backend):
            batch = self.pipeline(batch)
        assert batch.frames is not None
        path = None
        if output_path is not None:
            t0 = time.perf_counter()
            path = write_mp4(
                batch.frames, output_path, params.fps, overwrite=overwrite, lossless=lossless,
                audio=batch.audio if params.audio else None, sample_rate=batch.sample_rate,
            )  # fmt: skip
            batch.timings["write_mp4"] = time.perf_counter() - t0
        batch.timings["total"] = time.perf_counter() - start
        audio = batch.audio if params.audio else None
        return GenerationResult(
            batch.frames, params.fps, path, batch.timings, params, batch.latents, audio,
            batch.sample_rate if audio is not None else None,
        )  # fmt: skip

    def set_transformer(self, model: Any, component: str = "transformer") -> None:
        """Run the pipeline with ``model`` as its ``component`` DiT from now on (training validation
        swaps in the model being trained; a distilled student replaces its teacher).

        Every stage that holds the component (an attribute of the same name) gets the new one.
        :raises ValueError: the pipeline has no such component.
        """
        if self.pipeline.components.get(component) is None:
            have = sorted(k for k, v in self.pipeline.components.items() if hasattr(v, "parameters"))
            raise ValueError(f"this pipeline has no {component!r} to replace; it has: {', '.join(have)}")
        for stage in self.pipeline.stages:
            if hasattr(stage, component):
                setattr(stage, component, model)
        self.pipeline.components[component] = model

    # ---- LoRA adapters (diffusers/peft files, or the family's original naming)

    @property
    def loras(self) -> dict[str, float]:
        """Loaded adapters: name -> scale."""
        return {name: info["scale"] for name, info in self._loras.items()}

    def load_lora(self, path: str | Path, scale: float | None = None, *, name: str | None = None) -> str:
        """Add a LoRA to the DiT(s) and return its adapter name (the file stem, made unique).

        ``path`` is a ``.safetensors`` file or a folder holding ``pytorch_lora_weights.safetensors``;
        a string may carry the scale as ``PATH:scale`` (``fv generate --lora``). Several adapters add
        up; :meth:`merge_loras` folds them into the weights for full-speed inference.
        """
        from fastvideo.training.lora import attach_lora, parse_lora, read_lora_file

        if scale is None:
            path, scale = parse_lora_spec(str(path))
        tensors, metadata = read_lora_file(path)
        by_component = parse_lora(tensors, metadata, self.source.family)
        missing = [c for c in by_component if self.pipeline.components.get(c) is None]
        if missing:
            raise ValueError(
                f"LoRA {str(path)!r} has weights for {missing[0]!r}, which this model does not have"
            )
        stem = Path(path).stem if Path(path).suffix else Path(path).name
        name = name or stem
        base, n = name, 1
        while name in self._loras:
            name, n = f"{base}-{n}", n + 1
        bases = {}
        for component, weights in by_component.items():
            bases[component] = attach_lora(
                self.pipeline.components[component], weights, name=name, scale=scale
            )
        self._loras[name] = {"path": str(path), "scale": float(scale), "base": bases}
        if self._lora_merged:
            self.merge_loras()
        return name

    def set_lora_scale(self, name: str, scale: float) -> None:
        """Change adapter ``name``'s scale (re-merging when merged)."""
        from fastvideo.training.lora import set_adapter_scale

        info = self._lora(name)
        for component, base in info["base"].items():
            set_adapter_scale(self.pipeline.components[component], name, scale, base_scales=base)
        info["scale"] = float(scale)

    def unload_lora(self, name: str | None = None) -> None:
        """Remove adapter ``name`` (every adapter when None); the weights return to the base model's."""
        from fastvideo.training.lora import remove_adapter

        for n in [name] if name is not None else list(self._loras):
            for component in self._lora(n)["base"]:
                remove_adapter(self.pipeline.components[component], n)
            del self._loras[n]

    def merge_loras(self) -> None:
        """Fold the loaded adapters into the DiT weights (no per-layer LoRA cost at inference)."""
        from fastvideo.training.lora import merge_adapters

        for component in self._lora_components():
            merge_adapters(self.pipeline.components[component])
        self._lora_merged = True

    def unmerge_loras(self) -> None:
        """Undo :meth:`merge_loras`, restoring the exact base weights (adapters stay loaded)."""
        from fastvideo.training.lora import unmerge_adapters

        for component in self._lora_components():
            unmerge_adapters(self.pipeline.components[component])
        self._lora_merged = False

    def _lora(self, name: str) -> dict[str, Any]:
        if name not in self._loras:
            raise ValueError(f"no LoRA named {name!r}; loaded: {', '.join(self._loras) or 'none'}")
        return self._loras[name]

    def _lora_components(self) -> list[str]:
        return sorted({c for info in self._loras.values() for c in info["base"]})


def parse_lora_spec(value: str) -> tuple[str, float]:
    """``"PATH[:scale]"`` -> ``(PATH, scale)``; the scale defaults to 1.0."""
    path, sep, tail = value.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return value, 1.0


@dataclass(frozen=True)
class Plan:
    """A request checked without loading weights (:func:`preflight`): where the model is, its family
    and preset, the attention backend that will run, and the sampling parameters that will be used."""

    family: type[ModelFamily]
    preset: Preset | None
    where: str | Path  # a Hub repo id (downloaded by from_config) or a local folder
    backend: str
    params: SamplingParams
    validated: bool  # params passed the family's checks, with the checkpoint's own configs on disk


def preflight(
    model: str | os.PathLike[str],
    sampling_overrides: dict[str, Any],
    config: PipelineConfig,
    *,
    validate: bool = True,
) -> Plan:
    """Check a request without loading weights: the model name (resolved to its family, downloading
    at most ``model_index.json``), the attention backend and its options, the sampler, and (unless
    ``validate`` is false) the sampling parameters against the family's rules."""
    from fastvideo.attention import resolve_backend_name
    from fastvideo.attention.options import check_options
    from fastvideo.interfaces.model_family import ModelSource
    from fastvideo.resolve import resolve_family
    from fastvideo.samplers import sampler_name

    model = model_name(model)
    backend = resolve_backend_name(config.attention_backend)
    check_options(backend, sampling_overrides.get("backend_options"))
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
    sampler_name(config, source)  # an unknown sampler fails before loading
    _check_heads(family, source, config)
    params = family.sampling_defaults(source).with_overrides(sampling_overrides)
    if validate:
        family.validate(params, source)
    # a Hub repo's configs are not here yet: the generator checks again once they are downloaded
    local = validate and not isinstance(where, str)
    return Plan(family=family, preset=preset, where=where, backend=backend, params=params, validated=local)


def _check_heads(family: type[ModelFamily], source: ModelSource, config: PipelineConfig) -> None:
    """A Ulysses degree that does not divide the DiT's heads fails here, before any worker starts
    (the sequence-parallel strategy checks the loaded model again)."""
    par = config.parallel
    found = family.attention_heads(source) if par.ulysses_size > 1 else None
    if found is not None and found[1] % par.ulysses_size:
        from types import SimpleNamespace

        from fastvideo.parallel.sequence import head_message  # torch: only on this error path

        layout = SimpleNamespace(
            ulysses_size=par.ulysses_size, world_size=par.num_gpus, cfg_size=par.cfg_degree
        )
        raise ValueError(head_message(found[0], found[1], layout))  # type: ignore[arg-type]
