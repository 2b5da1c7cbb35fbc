"""Base class of attention backends.

A complete tiny backend plugin::

    # my_attn/backend.py
    import torch.nn.functional as F
    from fastvideo.interfaces import AttentionBackend

    class MathAttention(AttentionBackend):
        name = "math"
        priority = -10                  # never chosen automatically over sdpa

        def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None):
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))           # [B, H, L, D]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale, is_causal=is_causal)
            return out.transpose(1, 2)                                  # [B, L, H, D]

    # my_attn/plugin.py
    from fastvideo import hookimpl

    @hookimpl
    def fv_register_attention_backends():
        from my_attn.backend import MathAttention
        return [MathAttention]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from fastvideo.attention.context import StepContext


class AttentionBackend(ABC):
    """One way of computing ``softmax(q k^T * scale) v`` on ``[B, L, H, D]`` tensors.

    Class attributes:
        name: registered lower-kebab name (``"sdpa"``, ``"flash-attn"``, ``"vsa"``).
        priority: higher wins when no backend is requested; ``sdpa`` has 0.
        sparse: True for backends that approximate attention (they run only in layers whose
            allow-list admits sparse backends, e.g. video self-attention, never cross-attention).
        requires: the pip requirement that provides what the backend needs, named in errors.
        accepts_gate: True for backends whose ``forward`` takes ``gate=`` (``[B, Lq, H, Dv]``, the
            weight of a compressed branch, VSA's ``fine + gate * coarse``); the dispatcher passes a
            layer's gate only to those. Other backends never see it: they compute plain attention.
    """

    name: ClassVar[str]
    priority: ClassVar[int] = 0
    sparse: ClassVar[bool] = False
    requires: ClassVar[str | None] = None
    accepts_gate: ClassVar[bool] = False

    @classmethod
    def is_available(cls) -> bool:
        """Whether the backend can run in this environment (packages, devices)."""
        return cls.unavailable_reason() is None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the backend cannot run here (``None`` when it can). Shown by ``fv doctor``."""
        return None

    def supports(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> str | None:
        """Why this backend cannot take these inputs (dtype, head dim, mask...), or ``None``.

        The dispatcher falls back to the best dense backend when this returns a reason.
        """
        return None

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
        is_causal: bool = False,
        step: StepContext | None = None,
    ) -> torch.Tensor:
        """Attention on ``[B, L, H, D]`` inputs, returning ``[B, Lq, H, Dv]``.

        ``attn_mask`` is boolean (True = attend) or additive, broadcastable to ``[B, H, Lq, Lk]``.
        ``step`` is the current denoising step's context, for backends that need the latent grid.
        """
