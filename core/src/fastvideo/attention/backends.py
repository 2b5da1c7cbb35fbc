"""The core's built-in attention backends: ``sdpa`` (torch SDPA) and ``flash-attn``."""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.attention import AttentionBackend

if TYPE_CHECKING:
    import torch

    from fastvideo.attention.context import StepContext

#: ``FASTVIDEO_SDPA_KERNEL`` values -> torch SDPBackend member names (tried in this order).
SDPA_KERNELS = {
    "cudnn": "CUDNN_ATTENTION",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}


class SDPABackend(AttentionBackend):
    """``torch.nn.functional.scaled_dot_product_attention``.

    torch's own kernel choice is used (on Hopper with torch >= 2.5 it already takes cuDNN's fused
    attention for bf16, the fastest there); ``FASTVIDEO_SDPA_KERNEL=cudnn|flash|efficient|math``,
    read when the backend is created, pins one kernel on CUDA.
    """

    name = "sdpa"
    priority = 0
    requires = "torch>=2.5"

    def __init__(self) -> None:
        self._kernels: list[Any] | None = None
        pinned = os.environ.get("FASTVIDEO_SDPA_KERNEL", "").strip().lower()
        if pinned and pinned not in SDPA_KERNELS:
            raise ValueError(
                f"FASTVIDEO_SDPA_KERNEL={pinned!r} is not a kernel; expected one of {', '.join(SDPA_KERNELS)}"
            )
        self._pinned = pinned or None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        return None

    def _kernel_list(self) -> list[Any]:
        if self._kernels is None:
            from torch.nn.attention import SDPBackend

            assert self._pinned is not None
            self._kernels = [getattr(SDPBackend, SDPA_KERNELS[self._pinned])]
        return self._kernels

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
        import torch.nn.functional as F
        from torch.nn.attention import sdpa_kernel

        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
        if q.is_cuda and self._pinned is not None:
            with sdpa_kernel(self._kernel_list()):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale, is_causal=is_causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale, is_causal=is_causal)
        return out.transpose(1, 2)  # [B, L, H, D]


class FlashAttnBackend(AttentionBackend):
    """Tri Dao's ``flash_attn`` package (FA3 ``flash_attn_interface`` when importable, else FA2)."""

    name = "flash-attn"
    priority = -1  # cuDNN SDPA is faster on Hopper; flash-attn must be asked for
    requires = "flash-attn"
    _HEAD_DIMS: ClassVar[frozenset[int]] = frozenset({32, 64, 96, 128, 160, 192, 224, 256})

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if (
            importlib.util.find_spec("flash_attn_interface") is None
            and importlib.util.find_spec("flash_attn") is None
        ):
            return "the flash_attn package is not installed"
        import torch

        if not torch.cuda.is_available():
            return "flash-attn needs a CUDA GPU"
        return None

    def supports(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> str | None:
        import torch

        if kwargs.get("attn_mask") is not None:
            return "flash-attn takes no attention mask"
        if q.dtype not in (torch.float16, torch.bfloat16):
            return f"flash-attn needs fp16/bf16, got {q.dtype}"
        if q.shape[-1] not in self._HEAD_DIMS:
            return f"flash-attn does not support head dim {q.shape[-1]}"
        return None

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
        try:
            from flash_attn_interface import flash_attn_func  # FA3
        except ImportError:
            from flash_attn import flash_attn_func  # FA2
        out = flash_attn_func(q, k, v, softmax_scale=scale, causal=is_causal)
        return out[0] if isinstance(out, tuple) else out  # [B, L, H, D]
