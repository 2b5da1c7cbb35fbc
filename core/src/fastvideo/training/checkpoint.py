"""Atomic, verified training checkpoints with torch.distributed.checkpoint (DCP).

Layout under ``<output_dir>/checkpoints``::

    step-00000100/          a complete checkpoint: DCP files + COMPLETE (JSON: step, world size,
                            time and the manifest: every file's size and sha256)
    .tmp-step-00000200/     a checkpoint being written (or left by a killed run): never loaded

Every rank writes its shards into the temp folder; after a barrier the ranks hash the files (each a
share of them), rank 0 writes ``COMPLETE``, fsyncs it and renames the folder to ``step-N`` (one
atomic rename on POSIX). :func:`latest` only considers folders named ``step-N`` that hold
``COMPLETE``, so a half-written checkpoint is never picked up. Loading reshards: a run may resume
on a different number of ranks.

Loading never runs code from the checkpoint. Torch's own reader unpickles ``.metadata`` with
:func:`pickle.load` and every non-tensor value (step counters, RNG states, optimizer hyper-parameters)
with ``torch.load(weights_only=False)``, so a crafted file in a checkpoint folder would run
arbitrary code on ``--resume``. :func:`verify` and :func:`load` close both doors:

1. Integrity, before any byte is decoded: ``COMPLETE`` must hold the manifest written at save time;
   every listed file (``.metadata`` included) must exist with the recorded size and sha256. This
   catches truncated, emptied, bit-flipped, deleted or replaced files, and names the file.
2. Decoding that cannot run code, whatever the bytes (the manifest lives in the same folder, so
   whoever can write the folder can also forge it): ``.metadata`` is read once into memory and
   unpickled by :class:`_MetadataUnpickler`, which resolves only DCP's metadata dataclasses,
   ``torch.Size``, torch dtypes/layouts and paths; any other global (``os.system``, ``builtins.open``,
   ...) is refused before it is looked up, so a ``__reduce__`` payload never runs. That parsed
   object is handed to DCP through :class:`_VerifiedReader`, so torch never unpickles ``.metadata``
   itself; every storage entry must name a file listed in the manifest, within its size. Tensors are
   read by torch with ``weights_only=True``; non-tensor values by :class:`_SafeLoadPlanner` with
   ``torch.load(weights_only=True)`` (torch's restricted unpickler: containers, numbers, strings,
   bytes, tensors) instead of DCP's ``weights_only=False``. Algorithm state dicts must therefore
   hold only such plain data.

What the user must still trust: the tensor *values* (a checkpoint written by someone else can hold
any weights), and that nobody rewrote the folder consistently (the manifest is a checksum, not a
signature). The checks cost one sha256 pass over the files at save and at load (split over ranks).

Checkpoints written before the manifest existed (``COMPLETE`` without ``files``) are refused with
a message: they cannot be checked, and their RNG states hold numpy arrays that the restricted
decoder does not accept. ``--resume`` then falls back to an older usable checkpoint, or stops with
an error rather than starting over in a folder that holds checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastvideo.errors import CheckpointError

COMPLETE = "COMPLETE"
METADATA = ".metadata"
MANIFEST_FORMAT = 1
_STEP = re.compile(r"^step-(\d{8})$")
_CHUNK = 1 << 20
DAMAGED_HINT = "resume from another checkpoint (--resume-from) or delete this one"


def _dist() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _barrier() -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier()


def _rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def _world() -> tuple[int, int]:
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)


def _gather(local: dict[str, Any]) -> dict[str, Any]:
    """The union of every rank's ``local`` dict (collective; the ranks' own job, so trusted)."""
    dist = _dist()
    if dist is None:
        return local
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DCP warns that it assumes one process when there is no process group: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE).is_file() and _STEP.match(Path(path).name) is not None


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (complete: not yet verified, see :func:`verify`)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))  # type: ignore[union-attr]


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (None when there is none)."""
    found = complete_checkpoints(root)
    return found[-1] if found else None


def checkpoint_step(path: str | Path) -> int:
    info = json.loads((Path(path) / COMPLETE).read_text())
    return int(info["step"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file in ``folder`` (collective: each rank hashes a share)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    rank, world = _world()
    mine = {
        n: {"size": (folder / n).stat().st_size, "sha256": _sha256(folder / n)} for n in names[rank::world]
    }
    return _gather(mine)


def save(
    root: str | Path, step: int, state: dict[str, Any], *, keep_last: int = 2, world_size: int = 1
) -> Path:
    """Write ``state`` (a DCP state dict: tensors, DTensors and plain Python data) as ``step-N``.

    Collective: every rank calls it with its part of ``state``. Returns the final folder.
    """
    import torch.distributed.checkpoint as dcp

    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left by a killed run
            shutil.rmtree(tmp)
    _barrier()
    with _quiet():
        dcp.save(state, checkpoint_id=str(tmp), no_dist=_dist() is None)
    _barrier()
    files = _manifest(tmp)
    if _rank() == 0:
        info = {"step": step, "world_size": world_size, "time": time.time(), "format": MANIFEST_FORMAT}
        with open(tmp / COMPLETE, "w") as f:
            json.dump({**info, "files": files}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step written again (e.g. a resumed run saving at its end)
            trash = root / f".old-{final.name}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


# ---------------------------------------------------------------- verification


def read_manifest(path: str | Path) -> dict[str, dict[str, Any]]:
    """The ``files`` manifest of the checkpoint at ``path`` (name -> size, sha256), checked for shape."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(
            f"{path} is not a complete checkpoint (no {COMPLETE} marker, or not named step-N); "
            f"resume from a complete one, e.g. {latest(path.parent) or 'none found'}"
        )
    marker = path / COMPLETE
    try:
        info = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{marker} is not valid JSON ({exc}); {DAMAGED_HINT}") from None
    files = info.get("files") if isinstance(info, dict) else None
    if files is None:
        raise CheckpointError(
            f"{marker} has no file manifest: the checkpoint was written by an older fastvideo and cannot be "
            f"verified, so it is not loaded; start a new run (another output_dir) or resume from a newer checkpoint"
        )
    ok = isinstance(files, dict) and all(
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and os.sep not in name
        and isinstance(rec, dict)
        and isinstance(rec.get("size"), int)
        and isinstance(rec.get("sha256"), str)
        for name, rec in files.items()
    )
    if not ok:
        raise CheckpointError(f"{marker} holds a malformed file manifest; {DAMAGED_HINT}")
    if METADATA not in files:
        raise CheckpointError(f"{marker} lists no {METADATA} file; {DAMAGED_HINT}")
    return files


def _file_problem(folder: Path, name: str, rec: dict[str, Any]) -> str | None:
    file = folder / name
    if not file.is_file():
        return f"checkpoint file {file} is missing"
    size, want = file.stat().st_size, rec["size"]
    if size != want:
        if size == 0:
            return f"checkpoint file {file} is empty (0 bytes, {want} expected)"
        if size < want:
            return f"checkpoint file {file} is truncated or replaced ({size} bytes, {want} expected)"
        return f"checkpoint file {file} has {size} bytes, {want} expected"
    if _sha256(file) != rec["sha256"]:
        return (
            f"checkpoint file {file} does not match the sha256 recorded in {COMPLETE} (modified or corrupted)"
        )
    return None


# the only globals a DCP .metadata file references (DCP's dataclasses, torch.Size, dtypes, layouts, paths)
_PATHS = frozenset({"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"})
_METADATA_GLOBALS: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset(
        {
            "Metadata",
            "MetadataIndex",
            "StorageMeta",
            "TensorProperties",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "_MEM_FORMAT_ENCODING",
        }
    ),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch": frozenset({"Size"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "pathlib": _PATHS,
    "pathlib._local": _PATHS,  # where Python 3.13 defines them
    "collections": frozenset({"OrderedDict"}),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` and nothing else: only the globals such a file references
    resolve; any other (``os.system``, ``builtins.open``, ...) raises before it is imported or
    called, so a crafted ``__reduce__`` never runs."""

    def __init__(self, data: bytes, file: Path) -> None:
        super().__init__(io.BytesIO(data))
        self.file = file

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch":
            import torch

            value = vars(torch).get(name)  # no getattr: torch's module __getattr__ imports submodules
            if isinstance(value, torch.dtype):
                return value
        raise CheckpointError(
            f"{self.file} references {module}.{name}, which no DCP metadata holds; refusing to unpickle it "
            f"(the file may be crafted to run code); {DAMAGED_HINT}"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(
            f"{self.file} holds a persistent reference, which no DCP metadata holds; {DAMAGED_HINT}"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _parse_metadata(data: bytes, file: Path) -> Any:
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        meta = _MetadataUnpickler(data, file).load()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{file} is not a readable DCP metadata file ({_first_line(exc)}); {DAMAGED_HINT}"
        ) from None
    if not isinstance(meta, Metadata) or not isinstance(meta.state_dict_metadata, dict):
        raise CheckpointError(
            f"{file} is not a DCP metadata file (it holds a {type(meta).__name__}); {DAMAGED_HINT}"
        )
    return meta


def _check_storage(meta: Any, folder: Path, files: dict[str, dict[str, Any]]) -> None:
    """Every storage entry of the metadata reads a manifest file, within its recorded size."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    file = folder / METADATA
    storage = meta.storage_data
    if not isinstance(storage, dict):
        raise CheckpointError(f"{file} holds no storage table; {DAMAGED_HINT}")
    for info in storage.values():
        if not isinstance(info, _StorageInfo) or not isinstance(info.relative_path, str):
            raise CheckpointError(f"{file} holds a malformed storage entry; {DAMAGED_HINT}")
        rel = info.relative_path
        if rel == METADATA or rel not in files:
            raise CheckpointError(
                f"{file} points at {rel!r}, which is not a data file of this checkpoint; {DAMAGED_HINT}"
            )
        offset, length = info.offset, info.length
        if not (isinstance(offset, int) and isinstance(length, int)) or offset < 0 or length < 0:
            raise CheckpointError(f"{file} holds a malformed storage entry for {rel!r}; {DAMAGED_HINT}")
        if offset + length > files[rel]["size"]:
            raise CheckpointError(
                f"checkpoint file {folder / rel} is truncated ({files[rel]['size']} bytes, {file.name} reads up to "
                f"byte {offset + length}); {DAMAGED_HINT}"
            )
        descriptors = info.transform_descriptors
        if descriptors is not None and not all(isinstance(d, str) for d in descriptors):
            raise CheckpointError(f"{file} holds a malformed storage entry for {rel!r}; {DAMAGED_HINT}")


def verify(path: str | Path) -> Any:
    """Check the checkpoint at ``path`` against its manifest and parse its DCP metadata safely.

    Collective under a process group (the ranks share the hashing and see the same answer).
    Returns the metadata for :func:`load`; raises :class:`CheckpointError` (one line naming the
    file) for an incomplete, legacy, truncated, emptied, modified or missing file. Nothing from the
    checkpoint is executed, even when it was crafted (see the module docstring).
    """
    path = Path(path)
    files = read_manifest(path)
    names = sorted(files)
    rank, world = _world()
    problems = _gather({n: _file_problem(path, n, files[n]) for n in names[rank::world]})
    for name in names:
        if problems.get(name):
            raise CheckpointError(f"{problems[name]}; {DAMAGED_HINT}")
    file = path / METADATA
    try:
        data = file.read_bytes()  # read once: the bytes checked are the bytes parsed
    except OSError as exc:
        raise CheckpointError(
            f"checkpoint file {file} cannot be read ({_first_line(exc)}); {DAMAGED_HINT}"
        ) from None
    if hashlib.sha256(data).hexdigest() != files[METADATA]["sha256"]:
        raise CheckpointError(
            f"checkpoint file {file} does not match the sha256 recorded in {COMPLETE} (modified or corrupted); {DAMAGED_HINT}"
        )
    meta = _parse_metadata(data, file)
    _check_storage(meta, path, files)
    return meta


def saved_keys(path: str | Path, metadata: Any = None) -> set[str]:
    """The top-level keys present in a checkpoint (e.g. which ranks' RNG states it holds)."""
    meta = metadata if metadata is not None else verify(path)
    return {key.split(".", 1)[0] for key in meta.state_dict_metadata}


# ---------------------------------------------------------------- loading


def _safe_dcp(folder: Path, metadata: Any) -> tuple[Any, Any]:
    """A storage reader that hands DCP the already-verified metadata (torch never unpickles
    ``.metadata``) and a load planner that decodes non-tensor values with ``weights_only=True``."""
    import torch
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class _VerifiedReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class _SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = torch.load(value, weights_only=True)
            except Exception as exc:
                raise CheckpointError(
                    f"{folder}: the saved value {fqn!r} is not plain data and is not unpickled "
                    f"({_first_line(exc)}); {DAMAGED_HINT}"
                ) from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    return _VerifiedReader(str(folder)), _SafeLoadPlanner()


def _checkpoint_error(exc: BaseException) -> CheckpointError | None:
    """The CheckpointError inside a DCP failure (DCP wraps each rank's exception)."""
    if isinstance(exc, CheckpointError):
        return exc
    for pair in getattr(exc, "failures", {}).values():
        inner = pair[0] if isinstance(pair, tuple) else pair
        if isinstance(inner, CheckpointError):
            return inner
    return None


def load(path: str | Path, state: dict[str, Any], metadata: Any = None) -> dict[str, Any]:
    """Fill ``state`` in place from the checkpoint at ``path`` (collective) and return it.

    ``metadata`` is :func:`verify`'s result (verified here when not given).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    path = Path(path)
    if metadata is None:
        metadata = verify(path)
    reader, planner = _safe_dcp(path, metadata)
    try:
        with _quiet():
            dcp.load(state, storage_reader=reader, planner=planner, no_dist=_dist() is None)
    except (Exception, CheckpointException) as exc:
        found = _checkpoint_error(exc)
        if found is not None:
            raise found from None
        inner = next(iter(getattr(exc, "failures", {}).values()), None)
        cause = inner[0] if isinstance(inner, tuple) else exc
        raise CheckpointError(f"{path} could not be loaded ({_first_line(cause)}); {DAMAGED_HINT}") from None
    return state
