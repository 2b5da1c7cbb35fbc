"""Video similarity for regression tests: SSIM (Wang et al., 2004) on uint8 frames, numpy only.

``mean_ssim(a, b)`` compares two ``(T, H, W, 3)`` (or ``(H, W, 3)``) uint8 videos: per frame and
channel, the SSIM map with an 11x11 Gaussian window (sigma 1.5), constants ``K1 = 0.01`` and
``K2 = 0.03`` for a data range of 255, and only the positions where the whole window fits
("valid"); the result is the mean over all positions, channels and frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_K1, _K2, _RANGE = 0.01, 0.03, 255.0


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter(img: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation over the two leading image axes of ``(..., H, W)``."""
    k = len(w)
    h, wd = img.shape[-2:]
    rows = sum(w[i] * img[..., i : h - k + 1 + i, :] for i in range(k))
    return sum(w[i] * rows[..., :, i : wd - k + 1 + i] for i in range(k))


def ssim_map(a: Any, b: Any) -> np.ndarray:
    """The SSIM map of two images or videos with channels last; ``(..., C, H', W')`` float64."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"SSIM needs equal shapes, got {x.shape} and {y.shape}")
    if x.ndim < 3 or min(x.shape[-3:-1]) < 11:
        raise ValueError(f"SSIM needs (..., H, W, C) with H and W >= 11, got {x.shape}")
    x, y = np.moveaxis(x, -1, -3), np.moveaxis(y, -1, -3)  # (..., C, H, W)
    w = _gaussian()
    mx, my = _filter(x, w), _filter(y, w)
    sxx = _filter(x * x, w) - mx * mx
    syy = _filter(y * y, w) - my * my
    sxy = _filter(x * y, w) - mx * my
    c1, c2 = (_K1 * _RANGE) ** 2, (_K2 * _RANGE) ** 2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def mean_ssim(a: Any, b: Any) -> float:
    """Mean SSIM of two uint8 videos ``(T, H, W, 3)`` (or images); 1.0 for identical inputs."""
    return float(ssim_map(a, b).mean())
