"""Helpers for plugins' checkpoint tests: damaged copies of a diffusers folder or safetensors file
(:func:`corrupt_copy`, :func:`rewrite_checkpoint`), rule sanity checks."""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


def rewrite_checkpoint(src: Path, dst: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """Copy a single-file diffusers folder ``src`` to ``dst``, passing its state dict through ``edit``."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    state = load_file(src / WEIGHTS_NAME)
    edit(state)
    save_file(state, dst / WEIGHTS_NAME)
    return dst


def assert_same_placeholders(rules: Sequence[tuple[str, str]]) -> None:
    """Each ``(their template, our template)`` rule uses the same ``{placeholders}`` on both sides."""
    for theirs, ours in rules:
        want, got = sorted(re.findall(r"\{(\w+)\}", theirs)), sorted(re.findall(r"\{(\w+)\}", ours))
        assert want == got, f"rule {theirs} -> {ours}: placeholders {want} vs {got}"


# ---------------------------------------------------------------- damaged copies

CORRUPTIONS = ("truncate", "flip", "drop", "reshape")

# bits that make an element NaN when set: the whole exponent and the lowest mantissa bit
_NAN_BITS = {
    "F64": ("<u8", 0x7FF0000000000001),
    "F32": ("<u4", 0x7F800001),
    "F16": ("<u2", 0x7C01),
    "BF16": ("<u2", 0x7F81),
}


class Corruption(NamedTuple):
    """What :func:`corrupt_copy` damaged: the file (in the copy), the tensor (None for a plain
    truncation) and how."""

    path: Path
    tensor: str | None
    how: str


def _read_safetensors(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_safetensors(path: Path, header: dict[str, Any], data: bytes) -> None:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _tensor_names(header: dict[str, Any]) -> list[str]:
    """Tensor names in file order (by data offset)."""
    names = [k for k in header if k != "__metadata__"]
    return sorted(names, key=lambda k: (header[k]["data_offsets"][0], k))


def _indexes(index: Path, name: str) -> bool:
    """Whether the shard index ``index`` lists the file ``name``."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
    except ValueError:
        return False
    return name in weight_map.values()


def _locate(folder: Path, files: list[Path], tensor: str) -> Path:
    for path in files:
        if tensor in _read_safetensors(path)[0]:
            return path
    raise ValueError(f"no safetensors file in {folder} holds a tensor named {tensor!r}")


def corrupt_copy(
    src: str | Path, dst: str | Path, how: str, *, file: str | None = None, tensor: str | None = None
) -> Corruption:
    """Copy a checkpoint and damage one safetensors file of the copy; ``src`` is never touched.

    ``src`` is a folder (a diffusers component folder, single file or sharded with a
    ``*.safetensors.index.json``; every file is copied) or one ``.safetensors`` file (then ``dst``
    is the file to write). ``dst`` must not exist. ``file`` (a name in the folder) and ``tensor``
    pick what to damage; by default the file holding ``tensor``, else the first ``*.safetensors``
    in name order (a sharded folder's first shard), and the first tensor in file order that ``how``
    can change (for ``"flip"`` a floating one, when the file has one). ``how``:

    * ``"truncate"``: cut the file in the middle of its data (of ``tensor``'s data when given);
      the header then describes more bytes than the file has.
    * ``"flip"``: flip bits in one tensor's data, header untouched: in a floating tensor every
      element's exponent bits (and lowest mantissa bit) are set, so each value reads back as NaN,
      which a loader can notice; in an integer tensor every byte is inverted.
    * ``"drop"``: remove one tensor (its header entry and bytes; the shard index's entry too): a
      valid file that lacks a tensor.
    * ``"reshape"``: change one tensor's shape in the header, same byte count (``(a, b, ...)`` ->
      ``(a*b, ...)``, a 1-D ``(n,)`` -> ``(1, n)``): a valid file with a mis-shaped tensor.

    Returns a :class:`Corruption` naming the damaged file of the copy and the tensor.
    """
    import numpy as np

    if how not in CORRUPTIONS:
        raise ValueError(f"how={how!r}: expected one of {', '.join(CORRUPTIONS)}")
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise ValueError(f"{dst} already exists; corrupt_copy writes a new copy (choose another dst)")
    if src.is_file():
        if file is not None:
            raise ValueError("file= picks a file inside a folder; src is already one file")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        target, index = dst, None
    elif src.is_dir():
        shutil.copytree(src, dst)
        files = sorted(dst.glob("*.safetensors"))
        if not files:
            raise ValueError(f"no .safetensors file in {src}")
        if file is not None:
            target = dst / file
            if not target.is_file():
                raise ValueError(f"{src} has no file {file!r}; it has {', '.join(p.name for p in files)}")
        else:
            target = _locate(src, files, tensor) if tensor is not None else files[0]
        index = next(
            (p for p in sorted(dst.glob("*.safetensors.index.json")) if _indexes(p, target.name)), None
        )
    else:
        raise ValueError(f"{src} does not exist")

    header, data = _read_safetensors(target)
    names = _tensor_names(header)
    if tensor is not None and tensor not in header:
        raise ValueError(f"{target.name} holds no tensor {tensor!r}; it holds e.g. {', '.join(names[:5])}")

    def size(name: str) -> int:
        begin, end = header[name]["data_offsets"]
        return end - begin

    if how == "truncate":
        (n,) = struct.unpack("<Q", target.read_bytes()[:8])
        begin, end = header[tensor]["data_offsets"] if tensor is not None else (0, len(data))
        with open(target, "r+b") as f:
            f.truncate(8 + n + (begin + end) // 2)
        return Corruption(target, tensor, how)

    candidates = [k for k in names if size(k) > 0 and (how != "reshape" or len(header[k]["shape"]) >= 1)]
    if how == "flip":  # a floating tensor first: its flip reads back as NaN
        candidates.sort(key=lambda k: header[k]["dtype"] not in _NAN_BITS)
    name = tensor if tensor is not None else (candidates[0] if candidates else None)
    if name is None:
        raise ValueError(f"{target.name} holds no tensor that {how!r} can change")
    entry = header[name]
    begin, end = entry["data_offsets"]
    if how == "flip":
        chunk = bytearray(data[begin:end])
        if entry["dtype"] in _NAN_BITS:
            kind, bits = _NAN_BITS[entry["dtype"]]
            view = np.frombuffer(chunk, dtype=kind).copy()
            view |= np.array(bits, dtype=kind)
            chunk = bytearray(view.tobytes())
        else:
            chunk = bytearray(b ^ 0xFF for b in chunk)
        _write_safetensors(target, header, data[:begin] + bytes(chunk) + data[end:])
    elif how == "drop":
        del header[name]
        for other in header:
            if other != "__metadata__" and header[other]["data_offsets"][0] >= end:
                header[other]["data_offsets"] = [o - (end - begin) for o in header[other]["data_offsets"]]
        _write_safetensors(target, header, data[:begin] + data[end:])
        if index is not None:
            info = json.loads(index.read_text())
            info.get("weight_map", {}).pop(name, None)
            index.write_text(json.dumps(info, indent=2))
    else:  # reshape
        shape = list(entry["shape"])
        entry["shape"] = [shape[0] * shape[1], *shape[2:]] if len(shape) >= 2 else [1, *shape]
        _write_safetensors(target, header, data)
    return Corruption(target, name, how)
