"""safetensors weights: verification, (sharded) loading and strict loading into modules."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fastvideo.errors import CheckpointError

if TYPE_CHECKING:
    import torch

_MAX_HEADER = 100 * 1024 * 1024


def verify_safetensors(path: str | Path) -> dict[str, dict]:
    """Check a safetensors file's header and size without reading the tensors.

    Returns the header (tensor name -> dtype/shape/offsets). A truncated or corrupt file raises
    :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; re-download the checkpoint")
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: not a safetensors file ({size} bytes); re-download it")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors header; re-download the file")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise CheckpointError(
                f"{path}: corrupt safetensors header ({exc}); re-download the file"
            ) from None
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        why = "not a table of tensors with data_offsets"
        raise CheckpointError(f"{path}: corrupt safetensors header ({why}); re-download the file") from None
    if 8 + n + end != size:
        raise CheckpointError(
            f"{path}: truncated or corrupt: the header describes {8 + n + end} bytes but the file has "
            f"{size}; re-download it"
        )
    return header


def weight_files(folder: str | Path, stem: str | None = None) -> list[Path]:
    """The safetensors files of a component folder, following a sharded ``*.index.json``."""
    folder = Path(folder)
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if stem is not None:
        indexes = [p for p in indexes if p.name.startswith(stem)]
    if indexes:
        from fastvideo.loader.validate import shard_files

        return shard_files(indexes[0])
    files = sorted(folder.glob("*.safetensors"))
    if stem is not None:
        files = [p for p in files if p.name.startswith(stem)] or files
    if not files:
        others = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" (found {', '.join(others)}: only safetensors are loaded, convert them)" if others else ""
        raise CheckpointError(f"no .safetensors weights in {folder}{hint}")
    return files


def load_safetensors_folder(
    folder: str | Path, *, stem: str | None = None, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Every tensor of a (possibly sharded) component folder, each file verified first."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in weight_files(folder, stem):
        verify_safetensors(path)
        try:
            part = load_file(str(path), device=device)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot be read ({exc}); re-download it") from None
        dup = set(part) & set(out)
        if dup:
            raise CheckpointError(f"{path}: tensors also present in another shard: {sorted(dup)[:3]}")
        out.update(part)
    return out


def load_module_weights(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    rename: Callable[[str], str] | None = None,
    dtype: torch.dtype | None = None,
    keep_fp32: tuple[str, ...] = (),
) -> torch.nn.Module:
    """Strictly load ``state_dict`` (renamed by ``rename``) into ``module`` with ``assign=True``.

    ``module`` may live on the meta device. Parameters whose name contains one of ``keep_fp32``
    stay fp32 when ``dtype`` is lower. Missing, unexpected and mis-shaped tensors raise a
    :class:`CheckpointError` naming the tensor and ``source``.
    """
    import torch

    renamed = {rename(k) if rename else k: v for k, v in state_dict.items()}
    expected = dict(module.state_dict(keep_vars=True))
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    if missing:
        raise CheckpointError(
            f"{source}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor(s) {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in renamed.items():
        want = tuple(expected[name].shape)
        if tuple(tensor.shape) != want:
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, the model expects {want}"
            )
        if dtype is not None and tensor.is_floating_point():
            target = torch.float32 if any(tag in name for tag in keep_fp32) else dtype
            renamed[name] = tensor.to(target)
    module.load_state_dict(renamed, strict=True, assign=True)
    return module
