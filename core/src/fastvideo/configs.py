"""Typed configuration: sampling parameters, pipeline options and parallelism.

All are frozen dataclasses. Family presets supply defaults and explicit arguments override them
(:meth:`SamplingParams.with_overrides`); validation happens on construction, with messages that
say what was expected and what was received.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

DTYPES = ("bf16", "fp16", "fp32")
_DTYPE_ALIASES = {
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "fp16": "fp16",
    "float32": "fp32",
    "float": "fp32",
    "fp32": "fp32",
}


def normalize_dtype(value: str | None, what: str = "dtype") -> str | None:
    """``"bfloat16"`` -> ``"bf16"``; ``None`` stays ``None`` (meaning: the family default)."""
    if value is None:
        return None
    key = str(value).lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ValueError(f"{what} must be one of {', '.join(DTYPES)}, got {value!r}")
    return _DTYPE_ALIASES[key]


#: The largest seed (``torch.Generator.manual_seed`` takes unsigned 64-bit values).
MAX_SEED = 2**64 - 1
#: Upper bounds of the sampling parameters (a family may lower ``max_sequence_length`` further,
#: see :meth:`~fastvideo.interfaces.ModelFamily.max_sequence_length`).
MAX_INFERENCE_STEPS = 1000
MAX_SEQUENCE_LENGTH = 4096


@dataclass(frozen=True)
class _Range:
    """The allowed values of one numeric field: ``lo <= x`` and ``x <= hi`` (``x < hi`` when open)."""

    lo: float
    hi: float | None = None
    hi_open: bool = False

    def text(self) -> str:
        if self.hi is None:
            return f">= {self.lo}"
        hi = "2**64 - 1" if self.hi == MAX_SEED else str(self.hi)
        return f"in [{self.lo}, {hi}{')' if self.hi_open else ']'}"

    def __contains__(self, value: float) -> bool:
        if value < self.lo:
            return False
        if self.hi is None:
            return True
        return value < self.hi if self.hi_open else value <= self.hi


def _check_number(name: str, value: Any, kind: type, allowed: _Range) -> None:
    """ValueError unless ``value`` is an int (``kind`` int), or a finite int or float (``kind`` float), in range."""
    what = "an integer" if kind is int else "a number"
    ok = isinstance(value, int) or (kind is float and isinstance(value, float))
    try:
        finite = ok and math.isfinite(value)
    except OverflowError:  # an int too large for a float: fine as an integer, not as a float
        finite = kind is int
    if isinstance(value, bool) or not ok or (finite and value not in allowed):
        raise ValueError(f"{name} must be {what} {allowed.text()}, got {value!r}")
    if not finite:
        raise ValueError(f"{name} must be a finite number {allowed.text()}, got {value!r}")


def _type_name(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} ({text if len(text) <= 40 else text[:37] + '...'})"


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[Any, bool]]:
    """``{field: (type, optional)}`` of a config dataclass, from its annotations."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp)
        optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
        if optional:
            (tp,) = [a for a in args if a is not type(None)]
        out[f.name] = (tp, optional)
    return out


def _check_fields(config: Any, ranges: Mapping[str, _Range]) -> None:
    """The one validation layer of the config dataclasses: every field has its annotated type
    (numbers are finite and in ``ranges``), else a one-line TypeError/ValueError naming it."""
    for name, (tp, optional) in _field_types(type(config)).items():  # type: ignore[arg-type]
        value = getattr(config, name)
        if value is None and optional:
            continue
        none = " or None" if optional else ""
        if tp is int or tp is float:
            _check_number(name, value, tp, ranges.get(name, _Range(-math.inf)))
        elif tp is str and not isinstance(value, str):
            raise TypeError(f"{name} must be a string{none}, got {_type_name(value)}")
        elif tp is bool and not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False{none}, got {_type_name(value)}")
        elif typing.get_origin(tp) is tuple:
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise TypeError(f"{name} must be a list of names, got {_type_name(value)}")
            bad = [v for v in value if not isinstance(v, str)]
            if bad:
                raise TypeError(f"{name} must be a list of names (strings), got {_type_name(bad[0])} in it")
            object.__setattr__(config, name, tuple(value))
        elif isinstance(tp, type) and tp not in (int, float, str, bool) and not isinstance(value, tp):
            raise TypeError(f"{name} must be a {tp.__name__}{none}, got {_type_name(value)}")


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """What to generate. Defaults are FastVideo's generic ones; model presets override them."""

    prompt: str = ""
    negative_prompt: str | None = None  # None = the family's default negative prompt
    num_frames: int = 125  # video frames (Wan: 4k+1)
    height: int = 720  # pixels
    width: int = 1280  # pixels
    num_inference_steps: int = 50
    guidance_scale: float = 1.0  # classifier-free guidance; <= 1 disables the negative branch
    guidance_scale_2: float | None = None  # second expert of an MoE (Wan2.2 A14B); None = guidance_scale
    seed: int = 1024
    fps: int = 24
    flow_shift: float | None = None  # None = the checkpoint scheduler's own shift
    image: str | None = None  # conditioning image path (I2V, TI2V)
    max_sequence_length: int = 512  # text tokens
    audio: bool = True  # decode and write the soundtrack of families that generate one (--no-audio)
    # options of the attention backend, {backend: {option: value}}, checked against its declaration
    # when a generation starts (fastvideo.attention.options); merged option by option on override
    backend_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # a model family's own settings, {family: {option: value}} (ModelFamily.sampling_options, e.g.
    # stepvideo's motion_score), checked against the family's declaration by its validate
    family_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    _RANGES: ClassVar[dict[str, _Range]] = {
        "num_frames": _Range(1),
        "height": _Range(1),
        "width": _Range(1),
        "num_inference_steps": _Range(1, MAX_INFERENCE_STEPS),
        "guidance_scale": _Range(0.0),
        "guidance_scale_2": _Range(0.0),
        "seed": _Range(0, MAX_SEED),
        "fps": _Range(1),
        "flow_shift": _Range(0.0),
        "max_sequence_length": _Range(1, MAX_SEQUENCE_LENGTH),
    }

    def __post_init__(self) -> None:
        if isinstance(self.image, os.PathLike):
            object.__setattr__(self, "image", os.fspath(self.image))
        _check_fields(self, self._RANGES)
        from fastvideo.attention.options import check_shape

        object.__setattr__(self, "backend_options", check_shape(self.backend_options))
        object.__setattr__(
            self, "family_options", check_shape(self.family_options, "family_options", "model family")
        )

    def with_overrides(self, overrides: Mapping[str, Any]) -> SamplingParams:
        """A copy with the given fields replaced; ``None`` values and unknown keys are rejected
        (unknown) or ignored (None), so CLI options left unset keep the preset's value."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown sampling parameter(s) {unknown}; valid: {', '.join(sorted(names))}")
        changes = {k: v for k, v in overrides.items() if v is not None}
        if "backend_options" in changes:
            from fastvideo.attention.options import check_shape, merge

            changes["backend_options"] = merge(self.backend_options, check_shape(changes["backend_options"]))
        if "family_options" in changes:
            from fastvideo.attention.options import check_shape, merge

            given = check_shape(changes["family_options"], "family_options", "model family")
            changes["family_options"] = merge(self.family_options, given)
        return dataclasses.replace(self, **changes)

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """How one generation is spread over processes (one per GPU); see docs/parallel.md.

    The ranks form a mesh ``dp x cfg x ring x ulysses`` whose product is ``num_gpus``: ``dp_size``
    data-parallel replicas (training runs; a generation uses 1), each splitting the DiT's work over
    CFG branches and sequence shards. Text encoders are tensor-parallel over groups of ``tp_size``
    consecutive ranks; FSDP shards weights over groups of ``hsdp_shard_size`` ranks (HSDP when fewer
    than ``num_gpus``).
    """

    num_gpus: int = 1
    dp_size: int = 1  # data-parallel replicas (training); each holds cfg x ring x ulysses ranks
    sp_size: int | None = None  # Ulysses degree; None = num_gpus / (dp_size * ring_size * cfg degree)
    ring_size: int = 1  # ring-attention degree (USP when sp_size > 1 too)
    cfg_parallel: bool = False  # conditional and unconditional branches on different ranks
    fsdp: bool = False  # shard DiT weights with FSDP2
    hsdp_shard_size: int | None = None  # FSDP shard group size; None = num_gpus; fewer = HSDP replicas
    tp_size: int = 1  # tensor parallelism of the text encoders
    timeout_s: float = 600.0  # collective timeout of the process group, seconds
    strategies: tuple[str, ...] = ()  # extra (plugin) parallel strategies to apply, by name

    _RANGES: ClassVar[dict[str, _Range]] = {
        name: _Range(1)
        for name in ("num_gpus", "dp_size", "sp_size", "ring_size", "hsdp_shard_size", "tp_size")
    } | {"timeout_s": _Range(1.0)}

    def __post_init__(self) -> None:
        _check_fields(self, self._RANGES)
        n, ring, cfg, dp = self.num_gpus, self.ring_size, self.cfg_degree, self.dp_size
        outer = ring * cfg * dp
        named = f"ring_size={ring} x cfg degree={cfg}" + (f" x dp_size={dp}" if dp > 1 else "")
        if self.sp_size is None and n % outer:
            raise ValueError(
                f"num_gpus={n} is not divisible by {named}; use a num_gpus that is a multiple of {outer}"
            )
        if self.sp_size is not None and self.sp_size * outer != n:
            raise ValueError(
                f"sp_size={self.sp_size} x {named} = {self.sp_size * outer} "
                f"must equal num_gpus={n}; e.g. sp_size={max(1, n // outer)} or leave sp_size unset"
            )
        for name in ("tp_size", "hsdp_shard_size"):
            value = getattr(self, name)
            if value is not None and n % value:
                raise ValueError(f"{name}={value} must divide num_gpus={n}; use a divisor of {n}")

    @property
    def cfg_degree(self) -> int:
        """2 with CFG parallelism (one rank group per branch), else 1."""
        return 2 if self.cfg_parallel else 1

    @property
    def ulysses_size(self) -> int:
        """The Ulysses degree: ``sp_size``, or what is left of ``num_gpus`` after ring and CFG."""
        if self.sp_size is not None:
            return self.sp_size
        return self.num_gpus // (self.ring_size * self.cfg_degree * self.dp_size)


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """How to load and run a pipeline. ``None`` fields take the family's or the device's default."""

    device: str | None = None  # "cuda", "cuda:1", "cpu"; None = cuda when available
    dtype: str | None = None  # DiT compute dtype: bf16 | fp16 | fp32
    vae_dtype: str | None = None
    text_encoder_dtype: str | None = None
    attention_backend: str | None = None  # None = FASTVIDEO_ATTENTION_BACKEND, then best available
    vae_tiling: bool | None = None  # None = tile when the video is large
    revision: str | None = None  # Hub revision (branch, tag or commit)
    token: str | None = None  # Hub token; None = HF_TOKEN / HF_API_KEY
    local_files_only: bool = False
    progress: bool = True  # rich progress bars
    compile: bool | None = None  # regional torch.compile of the DiT blocks; None = on for CUDA devices
    sampler: str | None = None  # registered sampler name; None = the preset's, family's or "checkpoint"
    guardrail: bool | None = None  # a family's safety checker; None = the family's default, False = off
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # speed and memory options (fastvideo.optimize; docs/speed.md)
    quantize: str | None = None  # "fp8" (FP8 linears in the DiT blocks) | "fp8-storage" (weights only)
    fp8_checkpoint: str | None = None  # a pre-quantized FP8 DiT file (LightX2V / Kijai) loaded over the DiT
    cache: str | None = None  # step cache: "teacache" | "firstblock" | "magcache"
    cache_threshold: float | None = None  # the step cache's threshold; None = its published default
    text_kv_cache: bool = True  # reuse text-only projections (cross-attention k/v) per prompt; lossless
    offload: str | None = None  # "layer": DiT blocks streamed from pinned CPU memory, encoders/VAE when idle

    def __post_init__(self) -> None:
        from fastvideo.optimize import CACHES, OFFLOAD, QUANTIZE, check_choice

        for name in ("dtype", "vae_dtype", "text_encoder_dtype"):
            object.__setattr__(self, name, normalize_dtype(getattr(self, name), name))
        check_choice("quantize", self.quantize, QUANTIZE, "--quantize")
        check_choice("cache", self.cache, CACHES, "--cache")
        check_choice("offload", self.offload, OFFLOAD, "--offload")
        if self.cache_threshold is not None and self.cache is None:
            raise ValueError(
                f"cache_threshold={self.cache_threshold} needs a cache; pass --cache teacache (or another)"
            )
        if type(self.device).__module__ == "torch" and type(self.device).__name__ == "device":
            object.__setattr__(self, "device", str(self.device))  # torch.device("cuda", 1) -> "cuda:1"
        _check_fields(self, {"cache_threshold": _Range(0.0)})

    def with_overrides(self, overrides: Mapping[str, Any]) -> PipelineConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown pipeline option(s) {unknown}; valid: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


_C = TypeVar("_C", bound="DiffusersConfigMixin")


class DiffusersConfigMixin:
    """For a model config dataclass whose fields mirror a diffusers ``config.json``."""

    @classmethod
    def from_diffusers_config(cls: type[_C], config: Mapping[str, Any]) -> _C:
        """Build from a diffusers ``config.json`` dict; ``_private`` and unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in config.items() if k in names and not k.startswith("_")})

    def to_diffusers_config(self) -> dict[str, Any]:
        """The diffusers ``config.json`` contents (without ``_class_name``) that describe this model."""
        cfg = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
