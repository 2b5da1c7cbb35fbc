"""The typed training configuration: frozen dataclasses, loaded from YAML with dotted overrides.

``fv train --config train.yaml --optim.lr 1e-4 --data.batch_size=8`` builds a :class:`TrainConfig`
from the file, then applies each ``--section.field value`` (values are parsed by the field's type).
Every section and field is documented below; an unknown key or a value of the wrong type is a
one-line ``ValueError`` that names the key and what it accepts. This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastvideo.configs import normalize_dtype

ALGORITHM_DEFAULT = "finetune"
SCHEDULERS = ("constant", "linear", "cosine")
TIMESTEP_SAMPLING = ("uniform", "logit_normal")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    """Which checkpoint to train."""

    path: str = ""  # preset name, Hub repo id or local diffusers folder (required)
    component: str = "transformer"  # the DiT to train (Wan2.2 A14B: transformer or transformer_2)
    revision: str | None = None  # Hub revision


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """The dataset written by ``fv preprocess`` and how it is batched."""

    path: str = ""  # folder with manifest.json and shards (required)
    batch_size: int = 1  # samples per optimizer step, over all data-parallel ranks and accumulation steps
    grad_accum_steps: int = 1  # micro-batches per optimizer step on each rank
    shuffle: bool = True  # a new seeded permutation every epoch

    def __post_init__(self) -> None:
        _positive("data.batch_size", self.batch_size)
        _positive("data.grad_accum_steps", self.grad_accum_steps)


@dataclass(frozen=True, kw_only=True)
class OptimSection:
    """AdamW, gradient clipping and the learning-rate schedule."""

    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # 0 disables clipping (the norm is still logged)
    scheduler: str = "constant"  # constant | linear | cosine (after warmup)
    warmup_steps: int = 0  # linear warmup from 0
    min_lr_ratio: float = 0.0  # final lr / lr for linear and cosine decay

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        _positive("optim.eps", self.eps)
        _positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        _positive("optim.max_grad_norm", self.max_grad_norm, allow_zero=True)
        _positive("optim.warmup_steps", self.warmup_steps, allow_zero=True)
        _choice("optim.scheduler", self.scheduler, SCHEDULERS)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)!r}")


@dataclass(frozen=True, kw_only=True)
class ObjectiveSection:
    """Overrides of the family's training objective (flow matching for Wan)."""

    shift: float | None = None  # timestep shift; None = the family's (Wan: the scheduler's flow_shift)
    timestep_sampling: str = "uniform"  # uniform | logit_normal, before the shift
    logit_mean: float = 0.0
    logit_std: float = 1.0
    text_dropout: float = 0.0  # probability of training a sample on the empty prompt (for CFG)

    def __post_init__(self) -> None:
        _choice("objective.timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLING)
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"objective.text_dropout must be in [0, 1), got {self.text_dropout!r}")
        if self.shift is not None:
            _positive("objective.shift", self.shift)
        _positive("objective.logit_std", self.logit_std)


@dataclass(frozen=True, kw_only=True)
class LoRASection:
    """LoRA adapters (algorithm ``lora``)."""

    rank: int = 16
    alpha: float | None = None  # the update is scaled by alpha / rank; None = rank (scale 1)
    dropout: float = 0.0  # on the adapter's input
    targets: tuple[str, ...] = ()  # globs over our module names; empty = the family's defaults
    base_dtype: str = "fp32"  # dtype of the frozen base weights (bf16 halves their memory)

    def __post_init__(self) -> None:
        _positive("lora.rank", self.rank)
        if self.alpha is not None:
            _positive("lora.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "base_dtype", normalize_dtype(self.base_dtype, "lora.base_dtype"))


@dataclass(frozen=True, kw_only=True)
class EMASection:
    """Exponential moving average of the trainable weights (kept in fp32)."""

    decay: float = 0.0  # 0 disables EMA; typical 0.999-0.9999
    start_step: int = 0  # copy the weights at this step, average after it
    every_steps: int = 1
    #: keep the averages in CPU memory (each rank's shards): 4 bytes a parameter of the GPU's shard saved,
    #: one device-to-host copy of the weights per update (Wan 14B DMD2 on 8 GPUs needs it)
    offload: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {self.decay!r}")
        _positive("ema.every_steps", self.every_steps)
        _positive("ema.start_step", self.start_step, allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class CheckpointSection:
    """torch.distributed.checkpoint snapshots under ``<output_dir>/checkpoints``."""

    every_steps: int = 0  # 0 = only at the end
    keep_last: int = 2  # older complete checkpoints are deleted

    def __post_init__(self) -> None:
        _positive("checkpoint.every_steps", self.every_steps, allow_zero=True)
        _positive("checkpoint.keep_last", self.keep_last)


@dataclass(frozen=True, kw_only=True)
class ValidationSection:
    """Validation videos written to ``<output_dir>/validation``."""

    every_steps: int = 0  # 0 disables
    prompts: tuple[str, ...] = ()
    num_frames: int | None = None  # None = the checkpoint's defaults
    height: int | None = None
    width: int | None = None
    num_inference_steps: int = 20
    guidance_scale: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("validation.every_steps", self.every_steps, allow_zero=True)
        if self.every_steps and not self.prompts:
            raise ValueError("validation.every_steps is set but validation.prompts is empty; add prompts")


@dataclass(frozen=True, kw_only=True)
class LoggingSection:
    """Metrics go to stdout and ``<output_dir>/metrics.jsonl``, and to W&B when configured."""

    every_steps: int = 1  # stdout lines (JSONL gets every step)
    wandb_project: str | None = None  # None = $WANDB_PROJECT; W&B is used only when wandb is installed
    wandb_entity: str | None = None
    wandb_run_name: str | None = None

    def __post_init__(self) -> None:
        _positive("logging.every_steps", self.every_steps)


@dataclass(frozen=True, kw_only=True)
class ParallelSection:
    """Sharding and memory savers. Process count comes from torchrun (``WORLD_SIZE``)."""

    fsdp: bool | None = None  # FSDP2 over the data-parallel ranks; None = on when there are several
    hsdp_shard_size: int | None = (
        None  # FSDP shard group size (HSDP replicas across groups); None = all ranks
    )
    sp_size: int = 1  # sequence-parallel degree inside each data-parallel replica (a "ulysses" strategy)
    activation_checkpointing: bool = False  # recompute each block in the backward pass

    def __post_init__(self) -> None:
        _positive("parallel.sp_size", self.sp_size)
        if self.hsdp_shard_size is not None:
            _positive("parallel.hsdp_shard_size", self.hsdp_shard_size)


@dataclass(frozen=True, kw_only=True)
class AttentionSection:
    """The attention backend and its options.

    Every other key of the section is an option that the backend declares (``vsa``: ``sparsity`` and
    the training ramp ``sparsity_ramp_steps``, ``sparsity_increment``), checked against the
    declaration; they are kept in ``options``.
    """

    backend: str | None = None  # None = FASTVIDEO_ATTENTION_BACKEND, then the best available
    options: Mapping[str, Any] = field(default_factory=dict)  # the backend's options, by name

    @classmethod
    def fold_keys(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """``raw`` with the keys that are not fields moved into ``options``."""
        fields = {f.name for f in dataclasses.fields(cls)}
        out = {k: v for k, v in raw.items() if str(k).replace("-", "_") in fields}
        extra = {str(k): v for k, v in raw.items() if str(k).replace("-", "_") not in fields}
        if extra:
            options = out.get("options") or {}
            if not isinstance(options, Mapping):
                raise ValueError(f"attention.options must be a mapping of option values, got {options!r}")
            out["options"] = {**options, **extra}
        return out

    def __post_init__(self) -> None:
        if not self.options:
            return
        if self.backend is None:
            first = next(iter(self.options))
            raise ValueError(
                f"attention.{first} is an option of an attention backend, but attention.backend is not set; "
                "set attention.backend (e.g. in the config or with --attention.backend NAME)"
            )
        from fastvideo.attention.options import check_options

        backend = self.backend.strip().lower().replace("_", "-")
        checked = check_options(backend, {backend: self.options}, training=True, where="attention")
        object.__setattr__(self, "options", checked)


@dataclass(frozen=True, kw_only=True)
class ExportSection:
    """What is written at the end of training, under ``<output_dir>/export``."""

    enabled: bool = True
    use_ema: bool = False  # export the EMA weights (needs ema.decay > 0)
    dtype: str = "bf16"  # dtype of the exported transformer weights
    merge_lora: bool = False  # lora: also write a full diffusers folder with the adapters merged

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype, "export.dtype"))


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything ``fv train`` needs. ``model.path``, ``data.path`` and ``max_steps`` are required."""

    algorithm: str = ALGORITHM_DEFAULT  # finetune | lora | a plugin's (dmd2)
    output_dir: str = "outputs/train"
    max_steps: int = 0
    max_minutes: float = 0.0  # > 0: also stop after the step that passes this much training time
    seed: int = 0  # seeds data order, noise, timesteps and adapter init
    mixed_precision: str = "bf16"  # compute dtype under autocast; master weights stay fp32
    device: str | None = None  # None = cuda:LOCAL_RANK when available, else cpu
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    lora: LoRASection = field(default_factory=LoRASection)
    ema: EMASection = field(default_factory=EMASection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    attention: AttentionSection = field(default_factory=AttentionSection)
    export: ExportSection = field(default_factory=ExportSection)
    algorithm_options: Mapping[str, Any] = field(default_factory=dict)  # free-form, read by plugin algorithms
    #: Per-role overrides of ``optim`` and ``ema`` (``roles: {critic: {optim: {lr: 2.0e-6}}}``), for
    #: algorithms with several models (DMD2's student, teacher and critic); see :meth:`optim_for`.
    roles: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("max_steps", self.max_steps)
        _positive("max_minutes", self.max_minutes, allow_zero=True)
        _positive("seed", self.seed, allow_zero=True)
        object.__setattr__(self, "mixed_precision", normalize_dtype(self.mixed_precision, "mixed_precision"))
        if not self.model.path:
            raise ValueError("model.path is required: a preset name, Hub repo id or diffusers folder")
        if not self.data.path:
            raise ValueError(
                "data.path is required: a folder written by `fv preprocess` (or the algorithm's data)"
            )
        for role, section in self.roles.items():
            if not str(role).isidentifier() or not isinstance(section, Mapping):
                raise ValueError(
                    f"roles.{role} must be a role name mapped to {{optim: ..., ema: ...}}, got {section!r}"
                )
            unknown = sorted(set(section) - {"optim", "ema"})
            if unknown:
                raise _unknown(f"roles.{role}.{unknown[0]}", unknown[0], ["optim", "ema"])
            self.optim_for(role)
            self.ema_for(role)
        if self.export.use_ema and self.ema.decay == 0 and not any(self.ema_for(r).decay for r in self.roles):
            raise ValueError(
                "export.use_ema needs EMA: set ema.decay (or roles.<role>.ema.decay; e.g. 0.999)"
            )

    def _role_section(self, role: str | None, name: str) -> Any:
        base = getattr(self, name)
        override = (self.roles.get(role) or {}).get(name) if role is not None else None
        if not override:
            return base
        if not isinstance(override, Mapping):
            raise ValueError(f"roles.{role}.{name} must be a mapping of {name} fields, got {override!r}")
        try:
            return _build(
                type(base), {**dataclasses.asdict(base), **override}, prefix=f"roles.{role}.{name}."
            )
        except ValueError as exc:
            raise ValueError(f"roles.{role}: {exc}") from None

    def optim_for(self, role: str | None) -> OptimSection:
        """``optim`` with ``roles.<role>.optim`` applied (the run-wide section for ``None``)."""
        return self._role_section(role, "optim")  # type: ignore[no-any-return]

    def ema_for(self, role: str | None) -> EMASection:
        """``ema`` with ``roles.<role>.ema`` applied."""
        return self._role_section(role, "ema")  # type: ignore[no-any-return]

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists for tuples), as :func:`load_config` reads it back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ---------------------------------------------------------------- loading and overrides


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` (from YAML, or a string from the command line) as type ``tp``, or a ValueError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ValueError(f"{key} must be a mapping of its fields, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if origin is tuple or tp is tuple:
        if isinstance(value, str):
            value = _parse_scalar(value)
            value = [value] if not isinstance(value, list) else value
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"{key} must be a list of {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (Mapping, dict) or tp in (dict, Mapping):
        if isinstance(value, str):
            value = _parse_scalar(value)
        if not isinstance(value, Mapping):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ValueError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(number):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{key} must be a string, got {value!r}")
    if tp is Any:
        return value
    raise ValueError(f"{key}: unsupported field type {_type_name(tp)}")  # pragma: no cover - config bug


def _parse_scalar(text: str) -> Any:
    """A command-line value: YAML/JSON syntax for lists and mappings (``[1, 2]``), else the text."""
    text = text.strip()
    if text[:1] in "[{":
        try:
            return _yaml().safe_load(text)
        except Exception as exc:
            raise ValueError(f"cannot parse {text!r} as a list or mapping ({exc})") from None
    return text


def _unknown(key: str, name: str, valid: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {key[: len(key) - len(name)]}{close[0]}?" if close else ""
    return ValueError(f"unknown config key {key!r}{hint} (valid here: {', '.join(sorted(valid))})")


def _build(cls: type, raw: Mapping[str, Any], *, prefix: str = "") -> Any:
    fold = getattr(cls, "fold_keys", None)  # a section that collects free keys (attention options)
    if fold is not None:
        raw = fold(raw)
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        attr = str(name).replace("-", "_")
        if attr not in names:
            raise _unknown(f"{prefix}{name}", attr, names)
        kwargs[attr] = _coerce(f"{prefix}{attr}", value, hints[attr])
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - every field has a default
        raise ValueError(f"{prefix or 'config'}: {exc}") from None


def parse_algorithm_options(cls: type, options: Mapping[str, Any]) -> Any:
    """``options`` (the config's ``algorithm_options``) as the frozen dataclass ``cls`` of an algorithm,
    with the same typing, command-line string parsing and one-line errors as the config's sections."""
    return _build(cls, options, prefix="algorithm_options.")


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - transformers and huggingface_hub depend on it
        raise ValueError(
            "reading YAML configs needs PyYAML: pip install pyyaml (or use a .json config)"
        ) from None
    return yaml


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping in a ``.yaml``/``.yml``/``.json`` file, with a clear error when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        raw = json.loads(text) if path.suffix == ".json" else _yaml().safe_load(text)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({first})"
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping of config sections, got {type(raw).__name__}")
    return dict(raw)


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """``["--optim.lr", "1e-4", "--data.batch_size=8"]`` -> ``{"optim.lr": "1e-4", "data.batch_size": "8"}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ValueError(f"expected a --section.key value override, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or (args[i + 1].startswith("--") and not _is_number(args[i + 1])):
                raise ValueError(f"override --{key} has no value; write --{key} VALUE or --{key}=VALUE")
            value = args[i + 1]
            i += 1
        out[key.replace("-", "_")] = value
        i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``raw`` with each dotted key of ``overrides`` set (sections created as needed)."""
    out = json.loads(json.dumps(raw, default=list))
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = out
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ValueError(f"override {dotted!r}: {part!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> TrainConfig:
    """Build a :class:`TrainConfig` from a YAML/JSON file and overrides.

    ``overrides`` is a mapping of dotted keys (``{"optim.lr": 1e-4}``) or command-line arguments
    (``["--optim.lr", "1e-4"]``).
    """
    raw = read_config_file(path) if path is not None else {}
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    raw = apply_overrides(raw, overrides or {})
    return config_from_dict(raw)


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from nested plain data; one-line ``ValueError`` on any problem."""
    cfg = _build(TrainConfig, raw)
    assert isinstance(cfg, TrainConfig)
    return cfg


def dump_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write ``cfg`` as YAML (the file :func:`load_config` reads back to an equal config)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_yaml().safe_dump(cfg.to_dict(), sort_keys=False))
    return path
