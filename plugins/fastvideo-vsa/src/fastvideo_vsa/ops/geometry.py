"""Cube geometry of a token grid: which 4x4x4 cube each token belongs to, and how many cubes keep.

Tokens are laid out in raster ``(t, h, w)`` order over the grid ``(T, H, W)``. Cube ``(ct, ch, cw)``
holds the tokens with ``t // 4 == ct``, ``h // 4 == ch``, ``w // 4 == cw``; cubes are numbered in
raster order over the cube grid ``(ceil(T/4), ceil(H/4), ceil(W/4))``. Cubes at the far edges of
a grid that is not a multiple of 4 are partial (fewer than 64 tokens, at least 1). Inside a cube,
slot ``s`` in ``[0, 64)`` is the token at offset ``(s // 16, s // 4 % 4, s % 4)``; the kernels
compute these mappings arithmetically, this module gives them as tensors for the references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CUBE = (4, 4, 4)
CUBE_TOKENS = 64


@dataclass(frozen=True)
class CubeGeometry:
    """The cube grid of a token grid ``(T, H, W)``."""

    grid: tuple[int, int, int]

    def __post_init__(self) -> None:
        grid = tuple(int(g) for g in self.grid)
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"grid must be three positive sizes (T, H, W), got {self.grid!r}")
        object.__setattr__(self, "grid", grid)

    @property
    def cube_grid(self) -> tuple[int, int, int]:
        """``(ceil(T/4), ceil(H/4), ceil(W/4))``."""
        return tuple(-(-g // c) for g, c in zip(self.grid, CUBE, strict=True))  # type: ignore[return-value]

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def num_cubes(self) -> int:
        return math.prod(self.cube_grid)

    def cube_sizes(self) -> list[int]:
        """Tokens in each cube (64 for whole cubes), in cube order."""
        sizes = []
        nt, nh, nw = self.cube_grid
        for ct in range(nt):
            for ch in range(nh):
                for cw in range(nw):
                    extents = (min(4, g - 4 * c) for g, c in zip(self.grid, (ct, ch, cw), strict=True))
                    sizes.append(math.prod(extents))
        return sizes

    def cube_of_token(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(L,)`` int64: the cube of each token, tokens in raster order."""
        import torch

        t, h, w = (torch.arange(g, device=device) // 4 for g in self.grid)
        _, nh, nw = self.cube_grid
        return ((t[:, None, None] * nh + h[None, :, None]) * nw + w[None, None, :]).flatten()

    def tokens_of_cubes(self, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """For each cube, its token indices (ascending), as a list of int64 tensors."""
        import torch

        cube = self.cube_of_token(device)
        order = torch.argsort(cube, stable=True)
        counts = torch.bincount(cube, minlength=self.num_cubes).tolist()
        return list(torch.split(order, counts))


def run_table(geom: CubeGeometry, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The runs of each cube: ``(runs [C, 16] int32, counts [C] int32)``.

    A run is up to 4 consecutive tokens along W (one ``(t, h)`` line of a cube), encoded as
    ``first_token << 2 | (length - 1)``. Row ``c`` lists cube ``c``'s ``counts[c]`` non-empty runs
    first (``t``-major), then ``-1``. The kernels stream key (or query) tokens as lists of runs, so
    the empty lines of partial cubes cost nothing.
    """
    import torch

    (t_size, h_size, w_size), (_, nh, nw) = geom.grid, geom.cube_grid
    cube = torch.arange(geom.num_cubes, device=device)
    ct, ch, cw = cube // (nh * nw), cube // nw % nh, cube % nw  # (C,)
    line = torch.arange(16, device=device)
    t = ct[:, None] * 4 + line[None, :] // 4  # (C, 16)
    h = ch[:, None] * 4 + line[None, :] % 4
    w0 = (cw * 4)[:, None].expand(-1, 16)
    length = (w_size - w0).clamp(max=4)  # >= 1
    valid = (t < t_size) & (h < h_size)
    runs = torch.where(valid, (((t * h_size + h) * w_size + w0) << 2) | (length - 1), -1)
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # valid runs first
    return runs.gather(1, order).to(torch.int32), valid.sum(1, dtype=torch.int32)


def topk_for(sparsity: float, num_cubes: int) -> int:
    """Key cubes each query cube keeps: ``ceil((1 - sparsity) * num_cubes)``, at least 1.

    A small guard absorbs float error, so ``sparsity=0.9`` of 630 cubes keeps 63, not 64.

    :raises ValueError: ``sparsity`` outside [0, 1).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return max(1, min(num_cubes, math.ceil((1.0 - sparsity) * num_cubes - 1e-6)))
