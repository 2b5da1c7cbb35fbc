"""Toy modules for tests of the attention seam (imported on its own: it imports torch).

:class:`SelfAttention` is the smallest layer a sparse attention backend can be attached to: a fused
``qkv`` projection (the per-layer modules of backends read ``layer.qkv``'s width, device and dtype),
attention through :func:`fastvideo.attention.attention` with every backend allowed, and an ``out``
projection.

:class:`FrameLocal` (``"frame-local"``) is a toy sparse backend that, as block-sparse ones (vsa) do,
needs the whole token grid and a per-layer module whose output must travel with q, k, v (like
vsa's gate): the tests of sequence parallelism register it (``plugin_module("frame-local",
fv_register_attention_backends=lambda: [FrameLocal])``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastvideo.attention import ALL, attention
from fastvideo.interfaces.attention import AttentionBackend, LayerModule


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


def _extra_projection(layer: Any) -> nn.Module:
    dim = layer.qkv.in_features
    return nn.Linear(dim, dim, device=layer.qkv.weight.device, dtype=layer.qkv.weight.dtype)


class FrameLocal(AttentionBackend):
    """Each query attends only to the keys of its own latent frame (``step.grid``), plus the output
    of the layer's ``extra`` module (a projection of the layer's input)."""

    name = "frame-local"
    sparse = True
    priority = -100
    layer_modules = (LayerModule(name="extra", build=_extra_projection),)

    def layer_inputs(self, layer, hidden, q):  # type: ignore[no-untyped-def]
        return {"extra": layer.extra(hidden).unflatten(-1, q.shape[2:])}

    def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None, extra=None):  # type: ignore[no-untyped-def]
        import torch.nn.functional as F

        assert step is not None and step.grid is not None, "frame-local needs the token grid"
        t, h, w = step.grid
        if q.shape[1] != t * h * w:
            raise AssertionError(f"frame-local got {q.shape[1]} tokens, not the whole grid {step.grid}")
        frame = torch.arange(t * h * w, device=q.device) // (h * w)
        mask = frame[:, None] == frame[None, :]  # (L, L)
        out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), mask, scale=scale)
        return out.transpose(1, 2) + (extra if extra is not None else 0)
