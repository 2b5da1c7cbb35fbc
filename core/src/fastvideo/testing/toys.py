"""Toy modules for tests of the attention seam (imported on its own: it imports torch).

:class:`SelfAttention` is the smallest layer a sparse attention backend can be attached to: a fused
``qkv`` projection (the per-layer modules of backends read ``layer.qkv``'s width, device and dtype),
attention through :func:`fastvideo.attention.attention` with every backend allowed, and an ``out``
projection.
"""

from __future__ import annotations

import torch
from torch import nn

from fastvideo.attention import ALL, attention


class SelfAttention(nn.Module):
    """Self-attention through the seam: ``out(attention(q, k, v))`` with ``q, k, v = qkv(x)``."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).unbind(2)  # 3 x (B, L, H, Dh)
        return self.out(attention(q, k, v, allow=ALL).flatten(2))  # (B, L, D)
