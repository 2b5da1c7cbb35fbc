"""Checkpoint names: diffusers' ``HunyuanVideoTransformer3DModel`` <-> :class:`~fastvideo_hunyuan.model.HunyuanTransformer`.

The mapping is declared once, in :data:`RULES`: an ordered list of one-to-one rules, each a pair of
templates (diffusers name, our name) whose placeholders ``{i}`` (a block index) and ``{p}``
(``weight`` or ``bias``) compile into regular expressions. Both directions come from the same rules,
so ``ours_to_diffusers(diffusers_to_ours(sd)) == sd`` by construction. Tensors are renamed, never
reshaped or split.

:class:`DiffusersCheckpoint` reads a diffusers folder (``diffusion_pytorch_model.safetensors`` or a
sharded ``...safetensors.index.json``) and checks names and shapes against a model before any tensor
data is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastvideo.errors import CheckpointError

if TYPE_CHECKING:
    import torch

V = TypeVar("V")

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"

_REFINER = "context_embedder.token_refiner.refiner_blocks.{i}"
_DOUBLE = "transformer_blocks.{i}"
_SINGLE = "single_transformer_blocks.{i}"

#: (diffusers name, our name), first match wins; ``{i}`` = block index, ``{p}`` = weight|bias.
RULES: tuple[tuple[str, str], ...] = (
    ("x_embedder.proj.{p}", "patch_embed.{p}"),
    # token refiner over the Llama states
    ("context_embedder.time_text_embed.timestep_embedder.linear_1.{p}", "text_refiner.time_embed.fc1.{p}"),
    ("context_embedder.time_text_embed.timestep_embedder.linear_2.{p}", "text_refiner.time_embed.fc2.{p}"),
    ("context_embedder.time_text_embed.text_embedder.linear_1.{p}", "text_refiner.pool_embed.fc1.{p}"),
    ("context_embedder.time_text_embed.text_embedder.linear_2.{p}", "text_refiner.pool_embed.fc2.{p}"),
    ("context_embedder.proj_in.{p}", "text_refiner.proj_in.{p}"),
    (f"{_REFINER}.norm1.{{p}}", "text_refiner.blocks.{i}.norm1.{p}"),
    (f"{_REFINER}.attn.to_q.{{p}}", "text_refiner.blocks.{i}.q.{p}"),
    (f"{_REFINER}.attn.to_k.{{p}}", "text_refiner.blocks.{i}.k.{p}"),
    (f"{_REFINER}.attn.to_v.{{p}}", "text_refiner.blocks.{i}.v.{p}"),
    (f"{_REFINER}.attn.to_out.0.{{p}}", "text_refiner.blocks.{i}.o.{p}"),
    (f"{_REFINER}.norm2.{{p}}", "text_refiner.blocks.{i}.norm2.{p}"),
    (f"{_REFINER}.ff.net.0.proj.{{p}}", "text_refiner.blocks.{i}.mlp.fc1.{p}"),
    (f"{_REFINER}.ff.net.2.{{p}}", "text_refiner.blocks.{i}.mlp.fc2.{p}"),
    (f"{_REFINER}.norm_out.linear.{{p}}", "text_refiner.blocks.{i}.gate.{p}"),
    # conditioning vector
    ("time_text_embed.timestep_embedder.linear_1.{p}", "time_embed.fc1.{p}"),
    ("time_text_embed.timestep_embedder.linear_2.{p}", "time_embed.fc2.{p}"),
    ("time_text_embed.guidance_embedder.linear_1.{p}", "guidance_embed.fc1.{p}"),
    ("time_text_embed.guidance_embedder.linear_2.{p}", "guidance_embed.fc2.{p}"),
    ("time_text_embed.text_embedder.linear_1.{p}", "pooled_embed.fc1.{p}"),
    ("time_text_embed.text_embedder.linear_2.{p}", "pooled_embed.fc2.{p}"),
    # dual-stream blocks
    (f"{_DOUBLE}.norm1.linear.{{p}}", "double_blocks.{i}.video_mod.{p}"),
    (f"{_DOUBLE}.norm1_context.linear.{{p}}", "double_blocks.{i}.text_mod.{p}"),
    (f"{_DOUBLE}.attn.to_q.{{p}}", "double_blocks.{i}.attn.q.{p}"),
    (f"{_DOUBLE}.attn.to_k.{{p}}", "double_blocks.{i}.attn.k.{p}"),
    (f"{_DOUBLE}.attn.to_v.{{p}}", "double_blocks.{i}.attn.v.{p}"),
    (f"{_DOUBLE}.attn.to_out.0.{{p}}", "double_blocks.{i}.attn.o.{p}"),
    (f"{_DOUBLE}.attn.norm_q.weight", "double_blocks.{i}.attn.norm_q.weight"),
    (f"{_DOUBLE}.attn.norm_k.weight", "double_blocks.{i}.attn.norm_k.weight"),
    (f"{_DOUBLE}.attn.add_q_proj.{{p}}", "double_blocks.{i}.attn.text_q.{p}"),
    (f"{_DOUBLE}.attn.add_k_proj.{{p}}", "double_blocks.{i}.attn.text_k.{p}"),
    (f"{_DOUBLE}.attn.add_v_proj.{{p}}", "double_blocks.{i}.attn.text_v.{p}"),
    (f"{_DOUBLE}.attn.to_add_out.{{p}}", "double_blocks.{i}.attn.text_o.{p}"),
    (f"{_DOUBLE}.attn.norm_added_q.weight", "double_blocks.{i}.attn.text_norm_q.weight"),
    (f"{_DOUBLE}.attn.norm_added_k.weight", "double_blocks.{i}.attn.text_norm_k.weight"),
    (f"{_DOUBLE}.ff.net.0.proj.{{p}}", "double_blocks.{i}.video_mlp.fc1.{p}"),
    (f"{_DOUBLE}.ff.net.2.{{p}}", "double_blocks.{i}.video_mlp.fc2.{p}"),
    (f"{_DOUBLE}.ff_context.net.0.proj.{{p}}", "double_blocks.{i}.text_mlp.fc1.{p}"),
    (f"{_DOUBLE}.ff_context.net.2.{{p}}", "double_blocks.{i}.text_mlp.fc2.{p}"),
    # single-stream blocks
    (f"{_SINGLE}.norm.linear.{{p}}", "single_blocks.{i}.mod.{p}"),
    (f"{_SINGLE}.attn.to_q.{{p}}", "single_blocks.{i}.attn.q.{p}"),
    (f"{_SINGLE}.attn.to_k.{{p}}", "single_blocks.{i}.attn.k.{p}"),
    (f"{_SINGLE}.attn.to_v.{{p}}", "single_blocks.{i}.attn.v.{p}"),
    (f"{_SINGLE}.attn.norm_q.weight", "single_blocks.{i}.attn.norm_q.weight"),
    (f"{_SINGLE}.attn.norm_k.weight", "single_blocks.{i}.attn.norm_k.weight"),
    (f"{_SINGLE}.proj_mlp.{{p}}", "single_blocks.{i}.mlp_in.{p}"),
    (f"{_SINGLE}.proj_out.{{p}}", "single_blocks.{i}.out.{p}"),
    # output
    ("norm_out.linear.{p}", "head.mod.{p}"),
    ("proj_out.{p}", "head.proj.{p}"),
)

_FIELDS = {"i": r"\d+", "p": r"weight|bias"}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    body = "".join(re.escape(s) if n % 2 == 0 else f"(?P<{s}>{_FIELDS[s]})" for n, s in enumerate(parts))
    return re.compile(body)


_TO_OURS = [(_pattern(d), o) for d, o in RULES]
_TO_DIFFUSERS = [(_pattern(o), d) for d, o in RULES]


class UnmappedKeysError(CheckpointError):
    """Names that no rule of :data:`RULES` matches."""

    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(message)
        self.keys = keys


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        m = pattern.fullmatch(key)
        if m:
            return template.format(**m.groupdict())
    return None


def _listing(keys: list[str], limit: int = 12) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _convert(state_dict: Mapping[str, V], rules: list, source: str, expected: str) -> dict[str, V]:
    out: dict[str, V] = {}
    unmapped = []
    for key, value in state_dict.items():
        new = _rename(key, rules)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    if unmapped:
        raise UnmappedKeysError(
            f"{len(unmapped)} {source} name(s) match no rule of fastvideo_hunyuan.convert.RULES: "
            f"{_listing(unmapped)}. Expected {expected}; add a rule if diffusers renamed a module.",
            unmapped,
        )
    return out


def diffusers_to_ours(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Rename a diffusers state dict (values untouched) to ours.

    :raises UnmappedKeysError: listing every name that no rule matches.
    """
    return _convert(state_dict, _TO_OURS, "diffusers", "a HunyuanVideoTransformer3DModel state dict")


def ours_to_diffusers(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Rename our state dict (values untouched) to diffusers' names.

    :raises UnmappedKeysError: listing every name that no rule matches.
    """
    return _convert(state_dict, _TO_DIFFUSERS, "fastvideo_hunyuan", "a HunyuanTransformer state dict")


# --------------------------------------------------------------------------------------------------
# Reading diffusers folders
# --------------------------------------------------------------------------------------------------


def _open(path: Path, device: str = "cpu") -> Any:  # safetensors' handle has no public type
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt", device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e} (truncated or corrupt? download it again)") from e


class DiffusersCheckpoint:
    """The safetensors files of a diffusers transformer folder, indexed by our parameter names.

    Opening reads only the headers: names, shapes and which file holds each tensor.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.files = self._weight_files()
        self.source: dict[str, tuple[str, Path]] = {}  # our name -> (diffusers name, file)
        self.shapes: dict[str, tuple[int, ...]] = {}  # our name -> shape
        for path in self.files:
            with _open(path) as f:
                try:
                    names = diffusers_to_ours({k: k for k in f.keys()})
                except UnmappedKeysError as e:
                    raise UnmappedKeysError(f"{path}: {e}", e.keys) from None
                for ours, theirs in names.items():
                    self.source[ours] = (theirs, path)
                    self.shapes[ours] = tuple(f.get_slice(theirs).get_shape())

    def _weight_files(self) -> list[Path]:
        single, index = self.folder / WEIGHTS_NAME, self.folder / INDEX_NAME
        if single.is_file():
            return [single]
        if not index.is_file():
            raise CheckpointError(f"no weights in {self.folder}: expected {WEIGHTS_NAME} or {INDEX_NAME}")
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(
                f"cannot read {index}: {e} (expected a 'weight_map' of name -> shard)"
            ) from e
        missing = [s for s in shards if not (self.folder / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard(s) missing from {self.folder}: {_listing(missing)}")
        return [self.folder / s for s in shards]

    def _where(self, name: str) -> str:
        theirs, path = self.source[name]
        return f"{theirs} ({path.name})"

    def check_against(self, expected: Mapping[str, tuple[int, ...]]) -> None:
        """Compare with a model's ``{our name: shape}``.

        :raises CheckpointError: naming missing, unexpected and mis-shaped tensors.
        """
        missing = sorted(set(expected) - set(self.shapes))
        unexpected = sorted(set(self.shapes) - set(expected))
        mismatched = [
            n for n in sorted(set(expected) & set(self.shapes)) if tuple(expected[n]) != self.shapes[n]
        ]
        problems = []
        if missing:
            names = list(ours_to_diffusers({n: n for n in missing}))
            problems.append(f"missing {len(missing)} tensor(s) the config needs: {_listing(names)}")
        if unexpected:
            problems.append(
                f"{len(unexpected)} unexpected tensor(s) the config has no place for: "
                f"{_listing([self._where(n) for n in unexpected])}"
            )
        for n in mismatched:
            problems.append(
                f"tensor {self._where(n)} has shape {self.shapes[n]}, the config needs {expected[n]}"
            )
        if problems:
            raise CheckpointError(
                f"checkpoint {self.folder} does not match its config.json: " + "; ".join(problems)
            )

    def tensors(self, device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(our name, tensor)`` for every mapped tensor, file by file, on ``device``."""
        by_file: dict[Path, list[tuple[str, str]]] = {}
        for ours, (theirs, path) in self.source.items():
            by_file.setdefault(path, []).append((ours, theirs))
        for path, names in by_file.items():
            with _open(path, str(device)) as f:
                for ours, theirs in names:
                    try:
                        tensor = f.get_tensor(theirs)
                    except Exception as e:  # safetensors raises its own error types for bad data
                        raise CheckpointError(f"cannot read tensor {theirs} from {path}: {e}") from e
                    yield ours, tensor
