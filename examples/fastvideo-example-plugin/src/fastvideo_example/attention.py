"""``example-math``: attention written out as its formula, as a template for backend plugins.

A real backend would call a kernel here; this one computes ``softmax(q k^T * scale) v`` in fp32 with
plain tensor operations, which makes it a readable reference (and a slow one: it materialises the
``[B, H, Lq, Lk]`` score matrix). Its priority is below ``sdpa``'s, so it runs only when asked for
(``--attention-backend example-math`` or ``FASTVIDEO_ATTENTION_BACKEND=example-math``).

It owns one option, ``softcap`` (``--example-math-softcap``; the Python API's
``backend_options={"example-math": {"softcap": 30.0}}``): logits are soft-capped as
``c * tanh(s / c)`` before the softmax (Gemma 2's trick), 0 disabling it. The core adds the flag,
checks the value against the declaration and passes it in the step context; nothing in the core or
the model names it.

This module is imported during plugin registration, so torch is imported inside the methods only.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from fastvideo.interfaces import AttentionBackend, BackendOption

if TYPE_CHECKING:
    import torch

    from fastvideo.attention.context import StepContext


class ExampleMathAttention(AttentionBackend):
    """Exact attention by its definition, computed in fp32 and cast back to the input dtype.

    Masks: boolean (True = attend) or additive float, broadcastable to ``[B, H, Lq, Lk]``; a query
    row whose keys are all masked gives NaN, as the formula does.
    """

    name = "example-math"
    priority = -100  # sdpa has 0: never chosen automatically
    sparse = False  # exact, so cross-attention layers (allow=DENSE) may run it too
    options = (
        BackendOption(
            name="softcap",
            type=float,
            default=0.0,
            help="Soft-cap the attention logits at this value (c * tanh(s / c)); 0 disables it.",
            cli_flags=("--example-math-softcap",),
            validate=lambda c: None if c >= 0 else "must be >= 0",
        ),
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        return None

    def supports(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> str | None:
        """Decline what the formula below does not cover; the dispatcher then falls back to sdpa."""
        import torch

        if not (q.shape[2] == k.shape[2] == v.shape[2]):
            return (
                f"example-math needs as many key/value heads as query heads (no grouped-query attention), "
                f"got q {q.shape[2]}, k {k.shape[2]}, v {v.shape[2]}"
            )
        mask = kwargs.get("attn_mask")
        if mask is not None and not (mask.dtype == torch.bool or mask.dtype.is_floating_point):
            return f"example-math takes boolean or additive float masks, got {mask.dtype}"
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
        import torch

        dtype = q.dtype
        q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))  # (B, H, L, D) fp32
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Lq, Lk)
        cap = self.option(step, "softcap")
        if cap:
            scores = cap * torch.tanh(scores / cap)
        if is_causal:  # query i sees keys 0..i (top-left aligned, as torch SDPA)
            lq, lk = scores.shape[-2:]
            causal = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask.float()
        out = scores.softmax(dim=-1) @ v  # (B, H, Lq, Dv)
        return out.transpose(1, 2).to(dtype)  # (B, Lq, H, Dv)
