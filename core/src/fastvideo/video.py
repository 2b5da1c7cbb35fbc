"""Writing frames to mp4 (imageio + imageio-ffmpeg) and checking output paths first."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from fastvideo.errors import OutputPathError


def check_output_path(path: str | Path, *, overwrite: bool) -> Path:
    """Fail early (before any work) when ``path`` cannot be written or exists without overwrite."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"output_path must be a str or pathlib.Path ending in .mp4, got {type(path).__name__}"
        )
    path = Path(path).expanduser()
    if path.suffix.lower() != ".mp4":
        raise OutputPathError(f"output path must end in .mp4, got {str(path)!r}")
    if path.is_dir():
        raise OutputPathError(f"output path {str(path)!r} is a directory; give a file name ending in .mp4")
    if path.exists() and not overwrite:
        raise OutputPathError(
            f"{str(path)!r} already exists; pass --overwrite (overwrite=True) to replace it"
        )
    parent = path.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK) or not _can_create_in(existing):
        raise OutputPathError(f"cannot write {str(path)!r}: {str(existing)!r} is not a writable directory")
    return path


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``; ``os.access`` says yes to root everywhere,
    including read-only mounts and pseudo file systems such as /proc."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


#: Our temp files beside an output: ``.<stem>.fv-<host hash>-<pid>-<token>.tmp.mp4``; older versions
#: wrote ``.<stem>.<12 hex>.tmp.mp4``.
_TEMP = re.compile(r"^\..+\.fv-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp\.mp4$")
_OLD_TEMP = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp\.mp4$")
#: A temp file whose writer cannot be checked is left alone until it has not changed for this long.
STALE_TEMP_S = 3600.0


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_path(path: Path) -> Path:
    return path.parent / f".{path.stem}.fv-{_host()}-{os.getpid()}-{secrets.token_hex(4)}.tmp.mp4"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def _stale_temp(entry: os.DirEntry[str], now: float) -> bool:
    """Whether ``entry`` is a temp file that one of our writes left behind (killed mid-write): our name
    pattern, a regular file of this user, and its writer gone (a dead process of this host) or silent
    for :data:`STALE_TEMP_S`."""
    match = _TEMP.match(entry.name)
    if match is None and _OLD_TEMP.match(entry.name) is None:
        return False
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    getuid = getattr(os, "getuid", None)
    if not stat.S_ISREG(info.st_mode) or (getuid is not None and info.st_uid != getuid()):
        return False
    if match is not None and match["host"] == _host() and not _pid_alive(int(match["pid"])):
        return True
    return now - info.st_mtime > STALE_TEMP_S


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files that killed writes left in ``folder`` (see :func:`_stale_temp`; nothing
    else is touched); returns what was removed."""
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if _stale_temp(entry, now):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _check_frames(frames: Any, *, lossless: bool) -> Any:
    import numpy as np

    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, got {arr.dtype} {tuple(arr.shape)}")
    if not lossless and (arr.shape[1] % 2 or arr.shape[2] % 2):  # yuv420p subsamples chroma by 2
        size = f"{arr.shape[1]}x{arr.shape[2]}"
        raise ValueError(f"H.264 needs an even height and width, got {size}; crop or pad the frames")
    return arr


def _check_audio(audio: Any, sample_rate: Any) -> Any:
    import numpy as np

    arr = np.asarray(audio, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or not 1 <= arr.shape[1] <= 8:
        raise ValueError(
            f"audio must be float samples (N,) or (N, channels) with 1 to 8 channels, got {tuple(arr.shape)}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(
            "audio has NaN or infinite samples; the model diverged (check the request) or pass audio=None"
        )
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int (Hz) when audio is given, got {sample_rate!r}")
    return np.ascontiguousarray(arr.clip(-1.0, 1.0))


def write_mp4(
    frames: Any,
    path: str | Path,
    fps: int,
    *,
    overwrite: bool = False,
    lossless: bool = False,
    audio: Any = None,
    sample_rate: int | None = None,
) -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames as H.264 mp4, atomically (temp file + rename).

    ``lossless=True`` writes RGB H.264 at CRF 0 (``libx264rgb``): the frames read back bit-exact,
    for evaluation and regression tests; some players cannot show it. ``audio`` (float samples in
    [-1, 1], ``(N,)`` or ``(N, channels)``, at ``sample_rate`` Hz) adds an AAC audio track.
    """
    import imageio.v2 as imageio

    frames = _check_frames(frames, lossless=lossless)
    if audio is not None:
        audio = _check_audio(audio, sample_rate)
    path = check_output_path(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    # ffmpeg creates the temp file itself, so it gets the umask's permissions (mkstemp's are 0600)
    tmp = str(_temp_path(path))
    try:
        codec: dict[str, Any] = {"codec": "libx264", "quality": 9}
        if lossless:
            codec = {"codec": "libx264rgb", "pixelformat": "rgb24", "output_params": ["-crf", "0"]}
        writer: Any
        with imageio.get_writer(
            tmp, fps=fps, macro_block_size=1, ffmpeg_log_level="error", format="FFMPEG", **codec
        ) as writer:
            for frame in frames:
                writer.append_data(frame)
        if not os.path.exists(tmp) or os.path.getsize(tmp) == 0:
            raise OSError(f"ffmpeg wrote nothing for {str(path)!r} (frames {tuple(frames.shape)})")
        if audio is not None:
            _mux_audio(tmp, audio, sample_rate or 0, muxed=str(_temp_path(path)))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _mux_audio(video: str, audio: Any, sample_rate: int, *, muxed: str) -> None:
    """Add ``audio`` (float32 ``(N, channels)``) to the mp4 ``video`` as an AAC track, in place: the
    video stream is copied, the muxed file replaces ``video`` only when ffmpeg succeeded."""
    import subprocess

    import imageio_ffmpeg

    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", video,
        "-f", "f32le", "-ar", str(sample_rate), "-ac", str(audio.shape[1]), "-i", "pipe:0",
        "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a", "192k",
        "-movflags", "+faststart", muxed,
    ]  # fmt: skip
    try:
        done = subprocess.run(cmd, input=audio.astype("<f4").tobytes(), capture_output=True, check=False)
        if done.returncode != 0 or not os.path.exists(muxed) or os.path.getsize(muxed) == 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise OSError(f"ffmpeg could not add the audio track: {err[-1] if err else done.returncode}")
        os.replace(muxed, video)
    finally:
        if os.path.exists(muxed):
            os.unlink(muxed)


def read_mp4_audio(path: str | Path, *, sample_rate: int | None = None) -> tuple[Any, int]:
    """The first audio stream of ``path`` decoded to float32 ``(N, channels)`` and its sample rate
    (resampled to ``sample_rate`` when given); ValueError when the file has no audio."""
    import re as _re
    import subprocess

    import imageio_ffmpeg
    import numpy as np

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    probe = subprocess.run([exe, "-hide_banner", "-i", str(path)], capture_output=True, check=False)
    info = probe.stderr.decode(errors="replace")
    match = _re.search(r"Audio: .*?(\d+) Hz, (mono|stereo|(\d+) channels)", info)
    if match is None:
        raise ValueError(f"{str(path)!r} has no audio stream")
    rate = sample_rate or int(match[1])
    channels = {"mono": 1, "stereo": 2}.get(match[2]) or int(match[3])
    cmd = [exe, "-loglevel", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-ar", str(rate),
           "-ac", str(channels), "pipe:1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, check=True)
    return np.frombuffer(done.stdout, dtype="<f4").reshape(-1, channels).copy(), rate


def read_mp4(path: str | Path) -> Any:
    """Frames of an mp4 as uint8 ``(T, H, W, 3)``."""
    import imageio.v2 as imageio
    import numpy as np

    reader: Any
    with imageio.get_reader(str(path), format="FFMPEG") as reader:
        return np.stack([np.asarray(f) for f in reader])
