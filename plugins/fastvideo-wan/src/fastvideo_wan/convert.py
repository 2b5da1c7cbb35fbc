"""Checkpoint names: diffusers' ``WanTransformer3DModel`` <-> :class:`fastvideo_wan.model.WanTransformer`.

The mapping is declared once, in :data:`RULES`: an ordered list of one-to-one rules, each a pair of
templates (diffusers name, our name) whose placeholders ``{i}`` (a block index) and ``{p}``
(``weight`` or ``bias``) compile into regular expressions. Both directions come from the same
rules, so ``ours_to_diffusers(diffusers_to_ours(sd)) == sd`` by construction. Tensors are renamed,
never reshaped or split.

:class:`DiffusersCheckpoint` reads a diffusers folder (``diffusion_pytorch_model.safetensors`` or a
sharded ``...safetensors.index.json``) and checks names and shapes against a model before any
tensor data is read.
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

#: (diffusers name, our name), first match wins; ``{i}`` = block index, ``{p}`` = weight|bias.
RULES: tuple[tuple[str, str], ...] = (
    ("patch_embedding.{p}", "patch_embed.{p}"),
    ("condition_embedder.time_embedder.linear_1.{p}", "time_embed.fc1.{p}"),
    ("condition_embedder.time_embedder.linear_2.{p}", "time_embed.fc2.{p}"),
    ("condition_embedder.time_proj.{p}", "time_mod.{p}"),
    ("condition_embedder.text_embedder.linear_1.{p}", "text_embed.fc1.{p}"),
    ("condition_embedder.text_embedder.linear_2.{p}", "text_embed.fc2.{p}"),
    ("condition_embedder.image_embedder.norm1.{p}", "image_embed.norm_in.{p}"),
    ("condition_embedder.image_embedder.ff.net.0.proj.{p}", "image_embed.fc1.{p}"),
    ("condition_embedder.image_embedder.ff.net.2.{p}", "image_embed.fc2.{p}"),
    ("condition_embedder.image_embedder.norm2.{p}", "image_embed.norm_out.{p}"),
    ("condition_embedder.image_embedder.pos_embed", "image_embed.pos_embed"),
    ("blocks.{i}.scale_shift_table", "blocks.{i}.modulation"),
    ("blocks.{i}.attn1.to_q.{p}", "blocks.{i}.self_attn.q.{p}"),
    ("blocks.{i}.attn1.to_k.{p}", "blocks.{i}.self_attn.k.{p}"),
    ("blocks.{i}.attn1.to_v.{p}", "blocks.{i}.self_attn.v.{p}"),
    ("blocks.{i}.attn1.to_out.0.{p}", "blocks.{i}.self_attn.o.{p}"),
    ("blocks.{i}.attn1.norm_q.weight", "blocks.{i}.self_attn.norm_q.weight"),
    ("blocks.{i}.attn1.norm_k.weight", "blocks.{i}.self_attn.norm_k.weight"),
    ("blocks.{i}.norm2.{p}", "blocks.{i}.norm_cross.{p}"),
    ("blocks.{i}.attn2.to_q.{p}", "blocks.{i}.cross_attn.q.{p}"),
    ("blocks.{i}.attn2.to_k.{p}", "blocks.{i}.cross_attn.k.{p}"),
    ("blocks.{i}.attn2.to_v.{p}", "blocks.{i}.cross_attn.v.{p}"),
    ("blocks.{i}.attn2.to_out.0.{p}", "blocks.{i}.cross_attn.o.{p}"),
    ("blocks.{i}.attn2.norm_q.weight", "blocks.{i}.cross_attn.norm_q.weight"),
    ("blocks.{i}.attn2.norm_k.weight", "blocks.{i}.cross_attn.norm_k.weight"),
    ("blocks.{i}.attn2.add_k_proj.{p}", "blocks.{i}.cross_attn.k_img.{p}"),
    ("blocks.{i}.attn2.add_v_proj.{p}", "blocks.{i}.cross_attn.v_img.{p}"),
    ("blocks.{i}.attn2.norm_added_k.weight", "blocks.{i}.cross_attn.norm_k_img.weight"),
    ("blocks.{i}.ffn.net.0.proj.{p}", "blocks.{i}.ffn.fc1.{p}"),
    ("blocks.{i}.ffn.net.2.{p}", "blocks.{i}.ffn.fc2.{p}"),
    ("scale_shift_table", "head.modulation"),
    ("proj_out.{p}", "head.proj.{p}"),
)

#: diffusers keys dropped on load, as its ``_keys_to_ignore_on_load_unexpected`` drops them (an
#: unused image-query norm that some converted I2V checkpoints carry).
IGNORED_DIFFUSERS_KEYS: tuple[str, ...] = (r"blocks\.\d+\.attn2\.norm_added_q\.weight",)

_FIELDS = {"i": r"\d+", "p": r"weight|bias"}


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    body = "".join(re.escape(s) if n % 2 == 0 else f"(?P<{s}>{_FIELDS[s]})" for n, s in enumerate(parts))
    return re.compile(body)


#: Names beyond diffusers' class: the per-block VSA gate projection of FastVideo's VSA Wan checkpoints
#: (``blocks.N.to_gate_compress``, zero-initialised when absent; see ``WanTransformer.add_vsa_gates``).
VSA_RULES: tuple[tuple[str, str], ...] = (
    ("blocks.{i}.to_gate_compress.{p}", "blocks.{i}.self_attn.gate_compress.{p}"),
)
#: Read only: other ports nest the gate in the self-attention module.
VSA_ALIASES: tuple[tuple[str, str], ...] = (
    ("blocks.{i}.attn1.to_gate_compress.{p}", "blocks.{i}.self_attn.gate_compress.{p}"),
)

_TO_OURS = [(_pattern(d), o) for d, o in RULES]
_TO_DIFFUSERS = [(_pattern(o), d) for d, o in RULES]
_VSA_TO_OURS = [(_pattern(d), o) for d, o in VSA_RULES + VSA_ALIASES]
_VSA_TO_DIFFUSERS = [(_pattern(o), d) for d, o in VSA_RULES]
_IGNORED = [re.compile(p) for p in IGNORED_DIFFUSERS_KEYS]


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


def _convert(state_dict: Mapping[str, V], rules: list, ignored: list, source: str) -> dict[str, V]:
    out: dict[str, V] = {}
    unmapped = []
    for key, value in state_dict.items():
        new = _rename(key, rules)
        if new is not None:
            out[new] = value
        elif not any(p.fullmatch(key) for p in ignored):
            unmapped.append(key)
    if unmapped:
        raise UnmappedKeysError(
            f"{len(unmapped)} {source} name(s) match no rule of fastvideo_wan.convert.RULES: {_listing(unmapped)}. "
            "Expected a WanTransformer3DModel state dict; add a rule if diffusers renamed a module.",
            unmapped,
        )
    return out


def diffusers_to_ours(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Rename a diffusers state dict (values untouched) to ours; ignored keys are dropped.

    :raises UnmappedKeysError: listing every name that no rule matches.
    """
    return _convert(state_dict, _TO_OURS + _VSA_TO_OURS, _IGNORED, "diffusers")


def ours_to_diffusers(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Rename our state dict (values untouched) to diffusers' names.

    :raises UnmappedKeysError: listing every name that no rule matches.
    """
    return _convert(state_dict, _TO_DIFFUSERS + _VSA_TO_DIFFUSERS, [], "fastvideo_wan")


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
        common = sorted(set(expected) & set(self.shapes))
        mismatched = [n for n in common if tuple(expected[n]) != self.shapes[n]]
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
