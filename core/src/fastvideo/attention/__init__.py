"""The attention seam: every DiT calls :func:`attention`, which dispatches to a registered backend.

Layout is ``[B, L, H, D]`` (batch, tokens, heads, head dim) for ``q``, ``k`` and ``v``; the output
has the layout of ``q``. Which backend runs is decided per call:

1. the backend forced for the current scope (``use_backend(...)``; the pipeline sets it from
   ``--attention-backend``), else ``FASTVIDEO_ATTENTION_BACKEND``, else the available backend
   with the highest priority;
2. then the layer's allow-list: a layer that does not accept the chosen backend (cross-attention
   accepts only dense backends) gets the best available dense backend instead.

Per-step state that sparse backends need (latent grid, step index, their options) is in
:func:`fastvideo.attention.context.current_step`, set by the denoising stage, never passed through
model signatures.
"""

from __future__ import annotations

from fastvideo.attention.context import StepContext, current_step, step_context
from fastvideo.attention.selector import (
    ALL,
    DENSE,
    attention,
    available_backends,
    get_backend,
    joint_attention,
    resolve_backend_name,
    use_backend,
)

__all__ = [
    "ALL",
    "DENSE",
    "StepContext",
    "attention",
    "available_backends",
    "current_step",
    "get_backend",
    "joint_attention",
    "resolve_backend_name",
    "step_context",
    "use_backend",
]
