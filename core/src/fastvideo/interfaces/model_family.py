"""Base class of model families (Wan, HunyuanVideo, ...).

A family ties together its presets, how to recognise its checkpoints, how to validate a request,
and how to build a runnable pipeline. A complete tiny family plugin::

    # my_family/family.py  (no torch import at module level)
    from fastvideo.interfaces import ModelFamily, Preset

    class MyFamily(ModelFamily):
        name = "mine"
        pipeline_class_names = ("MyPipeline",)         # model_index.json _class_name
        presets = (Preset(name="mine-1b", repo_id="me/Mine-1B-Diffusers",
                          sampling={"num_frames": 33, "height": 256, "width": 256}),)

        @classmethod
        def build_pipeline(cls, source, config):
            from my_family.pipeline import build      # torch imported here
            return build(source, config)

    # my_family/plugin.py
    from fastvideo import hookimpl
    FASTVIDEO_PLUGIN_API = 1

    @hookimpl
    def fv_register_model_families():
        from my_family.family import MyFamily
        return [MyFamily]
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from fastvideo.configs import PipelineConfig, SamplingParams
    from fastvideo.pipelines.composed import ComposedPipeline


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A named checkpoint with its sampling defaults.

    ``repo_id`` is the Hub repo in diffusers format; ``local_path`` (absolute, or relative to the
    family module's package) points at a checkpoint shipped inside a distribution instead.
    """

    name: str  # lower-kebab, carries the version: "wan2.1-t2v-1.3b"
    repo_id: str | None = None
    local_path: str | None = None
    workload: str = "t2v"  # t2v | i2v | ti2v
    sampling: Mapping[str, Any] = field(default_factory=dict)  # SamplingParams field overrides
    aliases: tuple[str, ...] = ()  # e.g. ("wan",)
    sampler: str | None = (
        None  # a registered sampler name (distilled students: "few-step"); None = the family's
    )
    description: str = ""

    def __post_init__(self) -> None:
        if (self.repo_id is None) == (self.local_path is None):
            raise ValueError(f"preset {self.name!r} needs exactly one of repo_id or local_path")


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """A resolved model: where its files are and which family and preset it belongs to."""

    family: type[ModelFamily]
    path: Path  # local folder holding model_index.json
    model_index: Mapping[str, Any]
    preset: Preset | None = None
    repo_id: str | None = None

    @property
    def class_name(self) -> str:
        return str(self.model_index.get("_class_name", ""))

    def read_json(self, rel: str) -> dict[str, Any] | None:
        """``path/rel`` parsed (a component's ``config.json``), or None where there is no such file
        (or no local folder yet: a Hub repo not downloaded). Invalid JSON, a value that is not an
        object, or a zero/negative divisor (``patch_size``, a VAE scale factor) is a one-line
        ``ValueError`` naming the file."""
        if str(self.path) in ("", "."):
            return None
        path = self.path / rel
        if not path.is_file():
            return None
        from fastvideo.loader.validate import check_config_values, read_json

        config: dict[str, Any] = read_json(path)
        check_config_values(config, path)
        return config


class ModelFamily(ABC):
    """A model family. Subclasses set the class attributes and implement :meth:`build_pipeline`.

    Class attributes:
        name: lower-kebab family name (``"wan"``).
        presets: the family's named checkpoints.
        pipeline_class_names: ``_class_name`` values of ``model_index.json`` this family loads.
        spatial_factor: height and width must be multiples of it (VAE stride x patch size).
        temporal_factor: ``num_frames`` must be ``k * temporal_factor + 1`` (1 = any count).
        default_sampling: defaults for checkpoints that match no preset.
        default_sampler: the registered :class:`~fastvideo.interfaces.Sampler` its checkpoints use
            unless the config or preset names one (None: ``"checkpoint"``, the checkpoint's own
            diffusers scheduler).
        vae_splitters: VAE class name -> ``"module:attr"`` of a
            :class:`fastvideo.parallel.vae.VAESplitter`, for parallel tiled decoding of that VAE
            class (in any family's pipeline).
        sampling_options: the family's own request settings, declared as attention backends declare
            theirs (:class:`fastvideo.interfaces.attention.BackendOption`: name, type, default, help,
            ``cli_flags`` added to ``fv generate``, validate). Requests carry them in
            ``SamplingParams.family_options`` (``{family: {option: value}}``); :meth:`validate` checks
            them and the pipeline reads them with :meth:`option_values`.
    """

    name: ClassVar[str]
    presets: ClassVar[tuple[Preset, ...]] = ()
    pipeline_class_names: ClassVar[tuple[str, ...]] = ()
    spatial_factor: ClassVar[int] = 8
    temporal_factor: ClassVar[int] = 1
    default_sampling: ClassVar[Mapping[str, Any]] = {}
    default_sampler: ClassVar[str | None] = None
    vae_splitters: ClassVar[Mapping[str, str]] = {}
    sampling_options: ClassVar[tuple[Any, ...]] = ()  # BackendOption s
    audio: ClassVar[bool] = False  # its pipelines also make a soundtrack (batch.audio, audio_latents)

    @classmethod
    def detect(cls, model_index: Mapping[str, Any]) -> bool:
        """Whether a diffusers ``model_index.json`` belongs to this family."""
        return model_index.get("_class_name") in cls.pipeline_class_names

    @classmethod
    def sampling_defaults(cls, source: ModelSource) -> SamplingParams:
        """Defaults for this checkpoint: generic ones, then the family's, then the preset's."""
        from fastvideo.configs import SamplingParams

        params = SamplingParams().with_overrides(dict(cls.default_sampling))
        if source.preset is not None:
            params = params.with_overrides(dict(source.preset.sampling))
        return params

    @classmethod
    def factors(cls, source: ModelSource) -> tuple[int, int]:
        """``(spatial_factor, temporal_factor)`` for this checkpoint (may depend on its configs)."""
        return cls.spatial_factor, cls.temporal_factor

    @classmethod
    def max_sequence_length(cls, source: ModelSource) -> int | None:
        """The most text tokens this checkpoint's text encoder takes, or None when it has no limit.

        By default the smaller of ``text_encoder/config.json``'s ``max_position_embeddings`` and
        ``tokenizer/tokenizer_config.json``'s ``model_max_length`` (values of a million or more, which
        tokenizers write for "no limit", are ignored); :class:`SamplingParams` caps it at 4096 anyway.
        """
        limits = []
        for rel, key in (
            ("text_encoder/config.json", "max_position_embeddings"),
            ("tokenizer/tokenizer_config.json", "model_max_length"),
        ):
            path = source.path / rel if str(source.path) not in ("", ".") else None
            try:
                value = json.loads(path.read_text()).get(key) if path is not None and path.is_file() else None
            except (OSError, ValueError):
                value = None
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000:
                limits.append(value)
        return min(limits, default=None)

    @classmethod
    def attention_heads(cls, source: ModelSource) -> tuple[str, int] | None:
        """``(DiT class name, attention heads)`` read from the checkpoint's ``transformer/config.json``
        (``num_attention_heads`` or ``num_heads``), or None where it is not on disk yet. A parallel
        run checks the Ulysses degree against it before any worker starts."""
        config = source.read_json("transformer/config.json")
        if config is None:
            return None
        heads = config.get("num_attention_heads", config.get("num_heads"))
        if not isinstance(heads, int) or isinstance(heads, bool):
            return None
        return str(config.get("_class_name") or "the DiT"), heads

    @classmethod
    def image_files(cls, image: str) -> list[str]:
        """The files a request's ``image`` names (``fv generate`` checks that each exists). A family
        whose ``--image`` takes more (several files, frame positions) parses its syntax here."""
        return [image]

    @classmethod
    def validate(cls, params: SamplingParams, source: ModelSource) -> None:
        """Raise ``ValueError`` for a request this checkpoint cannot serve (before any weights load)."""
        spatial, temporal = cls.factors(source)
        for dim in ("height", "width"):
            value = getattr(params, dim)
            if value % spatial:
                lower = max(spatial, value - value % spatial)
                raise ValueError(
                    f"{dim}={value} is not divisible by {spatial}, which {cls.name} requires; "
                    f"use {lower} or {lower + spatial}"
                )
        cls.option_values(params)
        limit = cls.max_sequence_length(source)
        if limit is not None and params.max_sequence_length > limit:
            raise ValueError(
                f"max_sequence_length={params.max_sequence_length} is more than this checkpoint's text encoder "
                f"takes ({limit} tokens); use at most {limit}"
            )
        if temporal > 1 and (params.num_frames - 1) % temporal:
            k = (params.num_frames - 1) // temporal
            raise ValueError(
                f"num_frames={params.num_frames} is invalid for {cls.name}: it must be "
                f"{temporal}*k+1 (e.g. {temporal * k + 1} or {temporal * (k + 1) + 1})"
            )

    @classmethod
    def option_values(cls, params: SamplingParams) -> dict[str, Any]:
        """Every :attr:`sampling_options` value of this request, checked and typed (defaults filled in).

        :raises ValueError: options given for another family, an option the family does not declare,
            or a value its declaration refuses (one line, naming the flag).
        """
        given = dict(getattr(params, "family_options", None) or {})
        others = sorted(k for k in given if k != cls.name and given[k])
        if others:
            raise ValueError(
                f"options of model family {', '.join(others)} were given ({given[others[0]]}), but this "
                f"checkpoint is a {cls.name} model; drop them"
            )
        declared = {o.name: o for o in cls.sampling_options}
        mine = given.get(cls.name, {})
        unknown = sorted(set(mine) - set(declared))
        if unknown:
            raise ValueError(
                f"model family {cls.name} has no option {unknown[0]!r} (its options: "
                f"{', '.join(sorted(declared)) or 'none'})"
            )
        return {
            name: o.check(mine[name], cls.name) if name in mine else o.default for name, o in declared.items()
        }

    @classmethod
    @abstractmethod
    def build_pipeline(cls, source: ModelSource, config: PipelineConfig) -> ComposedPipeline:
        """Load the components of ``source`` and return a runnable pipeline."""

    # ---------------------------------------------------------------- training (optional)
    # Families that support ``fv train`` / ``fv preprocess`` / ``--lora`` implement these. Each
    # default raises a one-line NotImplementedError naming the family and the missing hook.

    #: Default LoRA targets: ``fnmatch`` globs over the DiT's module names (ours), matching Linear layers.
    lora_target_modules: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _no_training(cls, hook: str) -> NotImplementedError:
        return NotImplementedError(
            f"the {cls.name!r} model family does not support training: {cls.__module__}.{cls.__qualname__}"
            f" does not implement ModelFamily.{hook}; update the plugin or use a family that does (wan)"
        )

    @classmethod
    def load_transformer(
        cls,
        source: ModelSource,
        *,
        component: str = "transformer",
        dtype: str = "fp32",
        device: Any = "cpu",
        attention_backend: str | None = None,
    ) -> Any:
        """Our DiT for ``component`` of ``source`` (a ``torch.nn.Module``), loaded in ``dtype``.

        Its ``forward`` follows diffusers' call convention (``hidden_states``, ``timestep``,
        ``encoder_hidden_states``) and its ``config`` describes it (see :meth:`transformer_config`).
        ``attention_backend`` is the backend it will train with: attach the per-layer modules it
        declares (``fastvideo.attention.layers.attach_layer_modules``, e.g. ``vsa``'s gate projections).

        The default loads :meth:`dit_class` from ``source.path / component`` with its
        ``from_pretrained`` (a :class:`fastvideo.models.DiT` does all of the above).
        """
        dit = cls.dit_class()
        if dit is None:
            raise cls._no_training("load_transformer")
        from fastvideo.loader.components import torch_dtype

        folder = source.path / component
        if not (folder / "config.json").is_file():
            listed = sorted(k for k, v in source.model_index.items() if isinstance(v, list) and v and v[0])
            raise ValueError(
                f"{source.path} has no component {component!r} to train (it has {', '.join(listed) or 'none'})"
            )
        return dit.from_pretrained(
            folder, dtype=torch_dtype(dtype), device=device, attention_backend=attention_backend
        )

    @classmethod
    def dit_class(cls) -> Any:
        """The family's DiT class (a :class:`fastvideo.models.DiT` subclass, imported inside this
        method: registration must not import torch), or None; :meth:`load_transformer` loads it."""
        return None

    @classmethod
    def training_objective(cls, source: ModelSource) -> Any:
        """The loss the family was trained with, e.g. a
        :class:`fastvideo.training.objectives.FlowMatchingObjective` with the checkpoint's shift."""
        raise cls._no_training("training_objective")

    @classmethod
    def training_encoders(cls, source: ModelSource, config: PipelineConfig) -> Any:
        """The VAE and text encoders for ``fv preprocess``: a
        :class:`fastvideo.training.preprocess.Encoders` (``encode_video``, ``encode_text``)."""
        raise cls._no_training("training_encoders")

    @classmethod
    def to_diffusers_names(cls, names: Iterable[str]) -> dict[str, str]:
        """Map our DiT parameter names to diffusers' (export, LoRA files). Raise on unknown names."""
        raise cls._no_training("to_diffusers_names")

    @classmethod
    def from_diffusers_names(cls, names: Iterable[str]) -> dict[str, str]:
        """Map diffusers' DiT parameter names to ours (loading LoRA files). Raise on unknown names."""
        raise cls._no_training("from_diffusers_names")

    @classmethod
    def from_original_names(cls, names: Iterable[str]) -> dict[str, str]:
        """Map the upstream repository's DiT module names (LoRA files published in that naming,
        ``diffusion_model.`` prefix removed) to ours; names it does not know are left out."""
        return {}

    @classmethod
    def transformer_config(cls, model: Any) -> dict[str, Any]:
        """The diffusers ``config.json`` (with ``_class_name``) that describes ``model``."""
        raise cls._no_training("transformer_config")
