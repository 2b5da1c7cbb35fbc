"""Writing and reading mp4 files, and checking output paths before any work."""

from __future__ import annotations

import os
import re
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
