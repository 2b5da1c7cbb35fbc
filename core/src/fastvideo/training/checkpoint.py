"""Atomic training checkpoints with torch.distributed.checkpoint (DCP).

Layout under ``<output_dir>/checkpoints``::

    step-00000100/          a complete checkpoint: DCP files + COMPLETE (JSON: step, world size, time)
    .tmp-step-00000200/     a checkpoint being written (or left by a killed run): never loaded

Every rank writes its shards into the temp folder; after a barrier rank 0 writes ``COMPLETE``,
fsyncs it and renames the folder to ``step-N`` (one atomic rename on POSIX). :func:`latest` only
considers folders named ``step-N`` that hold ``COMPLETE``, so a half-written checkpoint is never
picked up. Loading reshards: a run may resume on a different number of ranks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastvideo.errors import CheckpointError

COMPLETE = "COMPLETE"
_STEP = re.compile(r"^step-(\d{8})$")


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
    """Complete checkpoints under ``root``, oldest first."""
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


def save(
    root: str | Path, step: int, state: dict[str, Any], *, keep_last: int = 2, world_size: int = 1
) -> Path:
    """Write ``state`` (a DCP state dict: tensors, DTensors and picklable objects) as ``step-N``.

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
    if _rank() == 0:
        with open(tmp / COMPLETE, "w") as f:
            json.dump({"step": step, "world_size": world_size, "time": time.time()}, f)
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


def saved_keys(path: str | Path) -> set[str]:
    """The top-level keys present in a checkpoint (e.g. which ranks' RNG states it holds)."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(path)).read_metadata()
    return {key.split(".", 1)[0] for key in meta.state_dict_metadata}


def load(path: str | Path, state: dict[str, Any]) -> dict[str, Any]:
    """Fill ``state`` in place from the complete checkpoint at ``path`` (collective) and return it."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(
            f"{path} is not a complete checkpoint (no {COMPLETE} marker, or not named step-N); "
            f"resume from a complete one, e.g. {latest(path.parent) or 'none found'}"
        )
    with _quiet():
        dcp.load(state, checkpoint_id=str(path), no_dist=_dist() is None)
    return state
