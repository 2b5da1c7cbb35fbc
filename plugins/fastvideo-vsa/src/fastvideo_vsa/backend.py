"""The ``vsa`` attention backend: video sparse attention in layers that admit sparse backends.

It runs where the model's allow-list admits sparse backends (Wan: video self-attention; cross-
attention stays dense) and reads what it needs from the step context the denoising stage (or a
trainer) sets: the token ``grid`` and the ``sparsity``. Tokens arrive in raster order, exactly the
grid's ``T * H * W`` of them; the kernels gather each 4x4x4 cube themselves, so nothing is
permuted or padded in memory. A layer's ``gate`` (Wan's ``to_gate_compress`` projection) weights
the coarse branch; without one the gate is zero.

Select it with ``fv generate --attention-backend vsa --sparsity 0.9`` (or ``--vsa-sparsity``),
``FASTVIDEO_ATTENTION_BACKEND=vsa``, or ``fastvideo.attention.use_backend("vsa")``.
"""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING, Any

from fastvideo.interfaces.attention import AttentionBackend

if TYPE_CHECKING:
    import torch

    from fastvideo.attention.context import StepContext

MAX_HEAD_DIM = 256


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class VSABackend(AttentionBackend):
    """Video sparse attention (arXiv 2505.13389) with Triton kernels; see :mod:`fastvideo_vsa.ops`.

    At sparsity 0 without a gate the result is exact attention, so the backend hands such calls
    to the ``sdpa`` backend (cuDNN on Hopper) instead of running the sparse kernels densely.
    """

    name = "vsa"
    priority = -10  # sparse: only when asked for
    sparse = True
    accepts_gate = True
    requires = "fastvideo-vsa[triton]"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        for module in ("torch", "triton"):
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed"
        if _interpreting():
            return None
        import torch

        if not torch.cuda.is_available():
            return "VSA's Triton kernels need a CUDA GPU (or TRITON_INTERPRET=1, Triton's CPU interpreter)"
        return None

    def supports(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> str | None:
        import torch

        from fastvideo.attention.context import current_step

        if kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
            return "vsa takes no attention mask and is not causal"
        step = current_step()
        if step is None or step.grid is None:
            return "vsa needs the video token grid (StepContext.grid), which the denoising stage sets"
        n = math.prod(step.grid)
        if q.shape[1] != n or k.shape[1] != n or v.shape[1] != n:
            return f"vsa needs exactly the {n} video tokens of grid {tuple(step.grid)}, got {q.shape[1]}/{k.shape[1]}"
        if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"vsa needs fp16, bf16 or fp32, got {q.dtype}"
        if q.shape[-1] > MAX_HEAD_DIM or v.shape[-1] != q.shape[-1]:
            return f"vsa needs one head dim <= {MAX_HEAD_DIM} for q, k and v"
        if not (q.is_cuda or (q.device.type == "cpu" and _interpreting())):
            return f"vsa runs on CUDA tensors (or under TRITON_INTERPRET=1), got {q.device}"
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
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from fastvideo.attention import get_backend

        if step is None or step.grid is None:
            raise ValueError("the vsa backend needs a step context with the token grid (StepContext.grid)")
        if step.sparsity == 0.0 and gate is None:
            return get_backend("sdpa").forward(q, k, v, scale=scale, step=step)
        from fastvideo_vsa.ops import vsa_attention

        if gate is not None and gate.dtype != q.dtype:
            gate = gate.to(q.dtype)
        return vsa_attention(q, k, v, tuple(step.grid), sparsity=step.sparsity, gate=gate, scale=scale)
