"""One validation layer for checkpoints on disk: JSON files, config values, shard indexes, tensor sizes.

Every component built from a ``config.json`` plus safetensors (our DiTs, diffusers VAEs, transformers
text and image encoders) goes through the same two checks before any tensor is allocated:

1. :func:`meta_build` builds the model on the ``meta`` device while counting the parameters it
   registers; a config that describes far more than the weights on disk hold stops at once.
2. :func:`compare_tensors` compares the model's tensor names and shapes with the safetensors
   headers (read without the data) and the two parameter counts; any difference is one line naming
   the tensor, the file and both shapes.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastvideo.errors import CheckpointError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


class CheckpointMismatchError(CheckpointError, ValueError):
    """A config that does not describe the weights stored beside it (names, shapes or sizes)."""


# ---------------------------------------------------------------- JSON files and config values


def read_json(path: str | Path, *, expect: type | None = dict) -> Any:
    """The parsed content of ``path``; an unreadable file or invalid JSON names the file and the position.

    :param expect: the type the top level must have (``dict``: a JSON object); ``None`` accepts any.
    :raises CheckpointError: missing, unreadable, invalid, or of another top-level type.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; fix or re-download the file"
        ) from None
    if expect is not None and not isinstance(data, expect):
        want = "a JSON object {...}" if expect is dict else f"a JSON {expect.__name__}"
        raise CheckpointError(f"{path}: expected {want}, got a JSON {_json_type(data)}")
    return data


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def check_json_files(folder: str | Path) -> None:
    """Parse every ``*.json`` file of a component folder (configs, tokenizer files, shard indexes)."""
    for path in sorted(Path(folder).glob("*.json")):
        read_json(path, expect=None)


#: Config keys that divide sizes (strides, patch sizes, compression ratios): 0 or less is never valid.
_DIVISOR_KEY = re.compile(
    r"(^|_)(patch_size(_t)?|scale_factor(_\w+)?|compression_ratio|\w+_compression_ratio)$"
)


def check_config_values(config: Mapping[str, Any], path: str | Path) -> None:
    """Refuse divisor-like values (``patch_size``, ``scale_factor_*``, ``*_compression_ratio``) below 1.

    ``None`` (the library's default) is accepted; lists must hold only positive numbers.
    :raises ValueError: naming the file, the key and the value.
    """
    for key, value in config.items():
        if not _DIVISOR_KEY.search(key) or value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(_positive(v) for v in values):
            raise CheckpointMismatchError(
                f"{path}: {key}={json.dumps(value)} must be a positive integer (or a list of them); "
                "fix the config or re-download it"
            )


def _positive(value: Any) -> bool:
    """A number above 0 (some libraries store float factors; only 0, negatives and non-numbers are refused)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


# ---------------------------------------------------------------- shard indexes


def shard_files(index: str | Path) -> list[Path]:
    """The shard files a ``*.safetensors.index.json`` lists, each inside the index's folder.

    :raises CheckpointError: invalid JSON, no ``weight_map``, a shard path that leaves the folder
        (``../``, absolute, or a symlink resolving elsewhere), or a missing shard.
    """
    index = Path(index)
    data = read_json(index)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"{index}: not a valid shard index (expected a 'weight_map' object of tensor name -> shard file)"
        )
    files = []
    for name in sorted(set(weight_map.values())):
        path = index.parent / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not _inside(path, index.parent):
            raise CheckpointError(
                f"{index}: shard {name!r} is outside {index.parent}; an index may only list files in its own "
                "folder (re-download the checkpoint)"
            )
        files.append(path)
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise CheckpointError(f"{index} lists shards that are missing: {', '.join(missing)}")
    return files


def _inside(path: Path, folder: Path) -> bool:
    """``path`` (after symlinks) is in ``folder``, or is a Hugging Face cache blob of the snapshot holding it."""
    real = path.resolve()
    if real.is_relative_to(folder.resolve()):
        return True
    for parent in path.absolute().parents:  # snapshots/<revision>/... link to the repo's blobs/<hash>
        if parent.name == "snapshots":
            return real.parent == (parent.parent / "blobs").resolve()
    return False


# ---------------------------------------------------------------- stored tensors


@dataclass
class StoredTensors:
    """Names, shapes and files of the tensors in a set of safetensors files, read from their headers."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def read(cls, paths: Iterable[Path]) -> StoredTensors:
        from fastvideo.loader.weights import verify_safetensors

        out = cls()
        for path in paths:
            for name, info in verify_safetensors(path).items():
                if name == "__metadata__":
                    continue
                if name in out.files:
                    raise CheckpointError(f"{path}: tensor {name} is also stored in {out.files[name].name}")
                out.shapes[name] = tuple(int(s) for s in info["shape"])
                out.files[name] = path
        return out

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def renamed(self, rename: Callable[[str], str]) -> StoredTensors:
        out = StoredTensors()
        for name, shape in self.shapes.items():
            new = rename(name)
            out.shapes[new], out.files[new] = shape, self.files[name]
        return out


# ---------------------------------------------------------------- building on meta with a size guard


class _TooLarge(Exception):
    def __init__(self, count: int) -> None:
        self.count = count


def size_limit(stored_numel: int) -> int:
    """How many parameters a meta build may register before it is stopped: twice the weights, plus slack
    for tensors a checkpoint may legitimately lack (zero-initialised gates, tied copies)."""
    return 2 * stored_numel + 1_000_000


def meta_build(build: Callable[[], T], *, stored_numel: int, config: str | Path, weights: str) -> T:
    """``build()`` on the meta device, stopped as soon as its parameters outgrow :func:`size_limit`.

    :param config: the config file, named in the error.
    :param weights: the weight files (or folder), named in the error.
    :raises CheckpointMismatchError: the config describes far more parameters than ``weights`` hold.
    :raises CheckpointError: the config is rejected by the model class (bad values).
    """
    import torch
    from torch.nn.modules.module import register_module_parameter_registration_hook

    limit = size_limit(stored_numel)
    seen: dict[int, torch.Tensor] = {}  # unique tensors (a tied parameter registered twice counts once)
    total = 0

    def count(module: torch.nn.Module, name: str, param: torch.Tensor | None) -> None:
        nonlocal total
        if param is not None and id(param) not in seen:
            seen[id(param)] = param
            total += param.numel()
            if total > limit:
                raise _TooLarge(total)

    handle = register_module_parameter_registration_hook(count)
    try:
        with torch.device("meta"):
            return build()
    except _TooLarge as exc:
        raise CheckpointMismatchError(
            f"{config} describes at least {exc.count:,} parameters, the weights ({weights}) hold "
            f"{stored_numel:,}: the config does not match the weights; fix the config or re-download the checkpoint"
        ) from None
    except CheckpointError:
        raise
    except (TypeError, ValueError, AssertionError, KeyError, AttributeError, ZeroDivisionError) as exc:
        raise CheckpointError(
            f"{config}: the model cannot be built from it ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        handle.remove()


# ---------------------------------------------------------------- comparing names and shapes


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def compare_tensors(
    expected: Mapping[str, tuple[int, ...]],
    stored: StoredTensors,
    *,
    config: str | Path,
    ties: Mapping[str, str] | None = None,
    optional: Callable[[str], bool] = lambda name: False,
    ignored: Callable[[str], bool] = lambda name: False,
    display: Callable[[str], str] = lambda name: name,
    renames: bool = False,
) -> None:
    """Refuse a checkpoint whose tensors differ from what the model built from ``config`` expects.

    :param expected: the model's ``{name: shape}`` (its state dict, built on meta).
    :param ties: ``{name: representative}`` for tensors that share storage; a tie group is present
        when any of its names is stored, and counts once.
    :param optional: names the checkpoint may lack (declared by the model class).
    :param ignored: stored names the model drops on load (non-persistent buffers, declared patterns).
    :param display: how a model name is spelled in the checkpoint (for messages).
    :param renames: the loading library renames legacy names itself: names that differ while both
        counts agree and no shape differs are left to it (its loading report is checked afterwards).
    :raises CheckpointMismatchError: one line with both parameter counts and the first differences,
        each naming the tensor, its file and both shapes.
    """
    group = {name: (ties or {}).get(name, name) for name in expected}
    members: dict[str, list[str]] = {}
    for name, rep in group.items():
        members.setdefault(rep, []).append(name)
    present = {group[n] for n in expected if n in stored.shapes}
    required = {rep for rep, names in members.items() if not all(optional(n) for n in names)}
    missing = [rep for rep in members if rep not in present and rep in required]
    unexpected = [n for n in stored.shapes if n not in expected and not ignored(n)]
    mismatched = [n for n in expected if n in stored.shapes and tuple(stored.shapes[n]) != tuple(expected[n])]
    if not (missing or unexpected or mismatched):
        return
    wanted = {rep: math.prod(expected[rep]) for rep in members if rep in present or rep in required}
    held: dict[str, int] = {}
    for n, shape in stored.shapes.items():
        if n in expected or not ignored(n):
            held[group.get(n, n)] = math.prod(shape)
    if renames and not mismatched and sum(wanted.values()) == sum(held.values()):
        return
    problems = []
    if missing:
        names = ", ".join(f"{display(n)} of shape {_fmt(expected[n])}" for n in missing[:3])
        more = f", ... ({len(missing) - 3} more)" if len(missing) > 3 else ""
        problems.append(
            f"missing {len(missing)} tensor(s) the config needs: {names}{more} (not in {_files(stored)})"
        )
    if unexpected:
        names = ", ".join(
            f"{display(n)} ({stored.files[n].name}) of shape {_fmt(stored.shapes[n])}" for n in unexpected[:3]
        )
        more = f", ... ({len(unexpected) - 3} more)" if len(unexpected) > 3 else ""
        problems.append(f"{len(unexpected)} unexpected tensor(s) the config has no place for: {names}{more}")
    for n in mismatched[:3]:
        problems.append(
            f"tensor {display(n)} ({stored.files[n].name}) has shape {_fmt(stored.shapes[n])}, "
            f"the config needs {_fmt(expected[n])}"
        )
    if len(mismatched) > 3:
        problems.append(f"... ({len(mismatched) - 3} more mis-shaped)")
    shown = "; ".join(problems)
    counts = (
        f"{config} describes {sum(wanted.values()):,} parameters, the weights hold {sum(held.values()):,}"
    )
    raise CheckpointMismatchError(f"{counts}: {shown}; fix the config or re-download the checkpoint")


def _files(stored: StoredTensors) -> str:
    names = sorted({p.name for p in stored.files.values()})
    if not names:
        return "the weights"
    return names[0] if len(names) == 1 else f"{names[0]} ... ({len(names)} shards)"


def tie_groups(module: torch.nn.Module, declared: Mapping[str, str] | Iterable[str] = ()) -> dict[str, str]:
    """``{state-dict name: representative}`` of tensors that share storage, plus ``declared`` ties
    (transformers' ``all_tied_weights_keys``: target -> source)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        out[name] = first.setdefault(id(tensor), name)
    if isinstance(declared, Mapping):
        for target, source in declared.items():
            if target in out and source in out and out[target] != out[source]:
                old, new = out[target], out[source]
                out = {n: new if r == old else r for n, r in out.items()}
    return out


def state_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}


def non_persistent_buffers(module: torch.nn.Module) -> set[str]:
    """Full names of buffers that are not saved in a state dict (position ids, RoPE tables)."""
    saved = set(module.state_dict(keep_vars=True))
    return {name for name, _ in module.named_buffers(remove_duplicate=False) if name not in saved}


def matcher(patterns: Iterable[str] | None) -> Callable[[str], bool]:
    """A predicate: does a name match any of the regular expressions ``patterns`` (``re.search``)."""
    compiled = [re.compile(p) for p in patterns or ()]
    return lambda name: any(p.search(name) for p in compiled)


@contextlib.contextmanager
def as_checkpoint_error(what: str) -> Iterator[None]:
    """Turn a library's loading error into one line naming ``what`` (a component and its folder)."""
    try:
        yield
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what} could not be loaded: {first}") from None
