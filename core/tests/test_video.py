"""Writing and reading mp4 files, and checking output paths before any work."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from fastvideo.errors import OutputPathError
from fastvideo.video import check_output_path, read_mp4, write_mp4


def _frames(t: int = 5, h: int = 32, w: int = 48) -> np.ndarray:
    """Smooth moving gradients (H.264 keeps them within a few levels) of shape (T, H, W, 3)."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    r = 40 + 160 * xx / w + 4 * tt
    g = 40 + 160 * yy / h
    b = 120 + 60 * np.sin((xx + yy + 3 * tt) / 9)
    return np.stack([r, g, b], axis=-1).round().clip(0, 255).astype(np.uint8)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_round_trip(tmp_path: Path) -> None:
    frames = _frames()
    path = write_mp4(frames, tmp_path / "out.mp4", fps=8)
    assert path == tmp_path / "out.mp4"
    back = read_mp4(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    diff = np.abs(back.astype(np.int16) - frames.astype(np.int16))
    assert diff.mean() < 3.0, diff.mean()
    assert _leftovers(tmp_path) == []


def test_lossless_round_trip_is_exact_even_at_odd_sizes(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 17, 23, 3), dtype=np.uint8)
    back = read_mp4(write_mp4(frames, tmp_path / "exact.mp4", fps=8, lossless=True))
    np.testing.assert_array_equal(back, frames)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write_mp4(_frames(t=2), tmp_path / "out.mp4", fps=8)
    before = path.read_bytes()
    with pytest.raises(OutputPathError, match="already exists; pass --overwrite"):
        write_mp4(_frames(t=4), path, fps=8)
    assert path.read_bytes() == before
    write_mp4(_frames(t=4), path, fps=8, overwrite=True)
    assert read_mp4(path).shape[0] == 4
    assert _leftovers(tmp_path) == []


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    path = write_mp4(_frames(t=2), tmp_path / "out.mp4", fps=8)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=re.escape("H.264 needs an even height and width, got 31x48")):
        write_mp4(_frames(h=31), path, fps=8, overwrite=True)
    with pytest.raises(
        ValueError, match=r"frames must be uint8 \(T, H, W, 3\) with T >= 1, got float32 \(5, 32, 48, 3\)"
    ):
        write_mp4(_frames().astype(np.float32), path, fps=8, overwrite=True)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_file_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_mp4(_frames(t=1), tmp_path / "out.mp4", fps=8)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_missing_parent_folders_are_created(tmp_path: Path) -> None:
    path = write_mp4(_frames(t=1), tmp_path / "a" / "b" / "out.mp4", fps=8)
    assert path.is_file()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("out.avi", "output path must end in .mp4, got "),
        ("folder.mp4", "is a directory; give a file name ending in .mp4"),
    ],
)
def test_check_output_path_rejects_bad_names(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "folder.mp4").mkdir()
    with pytest.raises(OutputPathError, match=message):
        check_output_path(tmp_path / name, overwrite=True)


@pytest.mark.parametrize("path", ["/proc/fvtest.mp4", "/proc/fvtest/deeper/out.mp4", "/sys/fvtest.mp4"])
def test_check_output_path_rejects_unwritable_places_even_for_root(path: str) -> None:
    with pytest.raises(
        OutputPathError, match=f"cannot write '{path}': '/(proc|sys)' is not a writable directory"
    ):
        check_output_path(path, overwrite=False)


def test_check_output_path_accepts_a_new_file(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "new" / "out.mp4", overwrite=False) == tmp_path / "new" / "out.mp4"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    """The pid of a process that has exited (a stand-in for a writer killed mid-write)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_of_killed_writes_are_removed_by_the_next_write(tmp_path: Path) -> None:
    from fastvideo.video import STALE_TEMP_S, _host

    old = time.time() - STALE_TEMP_S - 60
    ours_dead = tmp_path / f".clip.fv-{_host()}-{_dead_pid()}-0a1b2c3d.tmp.mp4"  # SIGKILLed writer
    ours_old = tmp_path / ".clip.0123456789ab.tmp.mp4"  # an older version's name, silent for an hour
    ours_live = tmp_path / f".clip.fv-{_host()}-{os.getpid()}-00000000.tmp.mp4"  # being written now
    ours_recent = tmp_path / ".other.aaaaaaaaaaaa.tmp.mp4"  # writer unknown, changed a minute ago
    user_files = [
        tmp_path / ".clip.tmp.mp4",
        tmp_path / ".clip.backup.tmp.mp4",
        tmp_path / "clip.0123456789ab.tmp.mp4",  # not hidden
        tmp_path / ".clip.0123456789ab.tmp.mp4.keep",
        tmp_path / ".clip.fv-zz-1-0a1b2c3d.tmp.mp4",
    ]
    for path in [ours_dead, ours_old, ours_live, ours_recent, *user_files]:
        path.write_bytes(b"partial")
    os.utime(ours_old, (old, old))
    for path in user_files:
        os.utime(path, (old, old))
    link = tmp_path / ".link.fedcba987654.tmp.mp4"  # a symlink is never ours
    link.symlink_to(tmp_path / ".clip.tmp.mp4")
    os.utime(link, (old, old), follow_symlinks=False)

    write_mp4(_frames(t=2), tmp_path / "next.mp4", fps=8)
    left = {p.name for p in tmp_path.iterdir()}
    assert ours_dead.name not in left and ours_old.name not in left
    assert {ours_live.name, ours_recent.name, link.name, "next.mp4"} <= left
    assert all(p.read_bytes() == b"partial" for p in user_files)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("frames", [1, 8, 13])
def test_frames_to_uint8_is_the_whole_video_formula_in_chunks(dtype: str, frames: int) -> None:
    """Chunked and in place: the same bytes as the whole-video expression it replaced (values beyond
    [-1, 1] included), the caller's tensor untouched, (T, H, W, 3) out."""
    import torch

    from fastvideo.pipelines.stages import frames_to_uint8

    g = torch.Generator().manual_seed(frames)
    video = (torch.randn(3, frames, 6, 10, generator=g) * 0.8).to(getattr(torch, dtype))
    video[0, 0, 0, :4] = torch.tensor([-1.5, 1.5, -1.0, 1.0])
    before = video.clone()
    expected = (
        ((video.float() / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0) * 255).round().to(torch.uint8).numpy()
    )
    got = frames_to_uint8(video, chunk=4)
    assert got.shape == (frames, 6, 10, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    assert torch.equal(video, before)
