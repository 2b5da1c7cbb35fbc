"""Writing frames to mp4 (imageio + imageio-ffmpeg) and checking output paths first."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fastvideo.errors import OutputPathError


def check_output_path(path: str | Path, *, overwrite: bool) -> Path:
    """Fail early (before any work) when ``path`` cannot be written or exists without overwrite."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".mp4":
        raise OutputPathError(f"output path must end in .mp4, got {str(path)!r}")
    if path.is_dir():
        raise OutputPathError(f"output path {str(path)!r} is a directory; give a file name ending in .mp4")
    if path.exists() and not overwrite:
        raise OutputPathError(f"{str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it")
    parent = path.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {str(path)!r}: {str(existing)!r} is not a writable directory")
    return path


def write_mp4(frames: Any, path: str | Path, fps: int, *, overwrite: bool = False) -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames as H.264 mp4, atomically (temp file + rename)."""
    import imageio.v2 as imageio

    path = check_output_path(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent, prefix=f".{path.stem}.")
    os.close(fd)
    try:
        with imageio.get_writer(
            tmp, fps=fps, codec="libx264", quality=9, macro_block_size=1, ffmpeg_log_level="error", format="FFMPEG"
        ) as writer:
            for frame in frames:
                writer.append_data(frame)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_mp4(path: str | Path) -> Any:
    """Frames of an mp4 as uint8 ``(T, H, W, 3)``."""
    import imageio.v2 as imageio
    import numpy as np

    with imageio.get_reader(str(path), format="FFMPEG") as reader:
        return np.stack([np.asarray(f) for f in reader])
