"""Tiles of a token grid and the sliding windows over them (pure Python, no torch).

Tokens are laid out in raster ``(t, h, w)`` order over the grid ``(T, H, W)``. A tile is a
``(tt, th, tw)`` cube of the grid (default ``6 x 8 x 8 = 384`` tokens, the paper's); tiles are numbered
in raster order over the tile grid ``(ceil(T/tt), ceil(H/th), ceil(W/tw))``. Tiles at the far edges
of a grid that is not a multiple of the tile are partial (they hold fewer tokens; nothing is padded).

A window is given in tiles per axis, ``(wt, wh, ww)``. Along an axis of ``n`` tiles, a window of
``w`` tiles (clamped to ``n``) for query tile ``c`` covers tiles ``[s, s + w)`` with
``s = clamp(c - (w - 1) // 2, 0, n - w)``: centred on ``c`` and slid inwards at the borders, so
every query tile keeps exactly ``w`` tiles. A window of the whole tile grid is dense attention;
``(1, 1, 1)`` keeps only the query's own tile. For odd ``w`` this is the anchor's kernel; for an even
``w`` smaller than the axis the extra tile is the one after the centre (the anchor's kernel keeps
``w + 1`` there; its published strategies use even sizes only where they equal the whole axis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_TILE = (6, 8, 8)

Window = tuple[int, int, int]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def window_start(c: int, w: int, n: int) -> int:
    """First tile of the window of ``w`` tiles for tile ``c`` on an axis of ``n`` tiles."""
    w = min(w, n)
    return min(max(c - (w - 1) // 2, 0), n - w)


def query_range(kt: int, w: int, n: int) -> tuple[int, int]:
    """The query tiles ``[lo, hi]`` (inclusive) whose window of ``w`` tiles contains key tile ``kt``."""
    w = min(w, n)
    a = (w - 1) // 2
    lo = 0 if kt - w + 1 <= 0 else kt - w + 1 + a
    hi = n - 1 if kt >= n - w else min(kt + a, n - 1)
    return lo, hi


def parse_triple(text: str, what: str = "window") -> Window:
    """``"3,3,3"`` (or ``"3x3x3"``) as a triple of positive ints; one-line ``ValueError`` otherwise."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"{what} must be three positive integers t,h,w (e.g. 3,3,3), got {text!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class TileGeometry:
    """The tile grid of a token grid ``(T, H, W)`` for a tile ``(tt, th, tw)``."""

    grid: tuple[int, int, int]
    tile: tuple[int, int, int] = DEFAULT_TILE

    def __post_init__(self) -> None:
        for name in ("grid", "tile"):
            value = tuple(int(g) for g in getattr(self, name))
            if len(value) != 3 or min(value) < 1:
                raise ValueError(
                    f"{name} must be three positive sizes (T, H, W), got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, value)

    @property
    def tile_grid(self) -> tuple[int, int, int]:
        """``(ceil(T/tt), ceil(H/th), ceil(W/tw))``: tiles per axis, the whole-grid window."""
        return tuple(ceil_div(g, t) for g, t in zip(self.grid, self.tile, strict=True))  # type: ignore[return-value]

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def num_tiles(self) -> int:
        return math.prod(self.tile_grid)

    def clamp(self, window: Window) -> Window:
        """``window`` clamped to the tile grid per axis."""
        return tuple(min(int(w), n) for w, n in zip(window, self.tile_grid, strict=True))  # type: ignore[return-value]

    def kept_fraction(self, window: Window) -> float:
        """Fraction of the video-video score plane a window keeps (tokens, partial tiles counted exactly)."""
        n = self.tile_grid
        sizes = [
            [min(t, g - i * t) for i in range(k)] for g, t, k in zip(self.grid, self.tile, n, strict=True)
        ]
        per_axis = []
        for a in range(3):
            w = min(window[a], n[a])
            total = 0
            for c in range(n[a]):
                s = window_start(c, w, n[a])
                total += sizes[a][c] * sum(sizes[a][s : s + w])
            per_axis.append(total)
        kept = math.prod(per_axis)
        return kept / (self.num_tokens**2)
