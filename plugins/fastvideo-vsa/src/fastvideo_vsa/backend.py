"""The ``vsa`` attention backend: video sparse attention in layers that admit sparse backends.

It runs where the model's allow-list admits sparse backends (Wan: video self-attention; cross-
attention stays dense) and reads what it needs from the step context the denoising stage (or a
trainer) sets: the token ``grid`` and its option ``sparsity``. Tokens arrive in raster order,
exactly the grid's ``T * H * W`` of them; the kernels gather each 4x4x4 cube themselves, so nothing
is permuted or padded in memory.

The backend owns what it needs, so that neither core nor the model families name it:

* options: ``sparsity`` (``--vsa-sparsity``, alias ``--sparsity``), and for training the ramp
  ``sparsity_ramp_steps`` / ``sparsity_increment`` (:meth:`VSABackend.option_values`);
* a per-layer module: the gate projection ``gate_compress`` (``Linear(dim, dim)``, zero-initialised)
  on each of the model's ``sparse_attention_layers``, whose output weights the coarse branch
  (``out = fine + gate * coarse``); FastVideo's VSA checkpoints store it as ``blocks.N.to_gate_compress``.

Select it with ``fv generate --attention-backend vsa --vsa-sparsity 0.9``,
``VideoGenerator.from_pretrained(..., attention_backend="vsa", backend_options={"vsa": {"sparsity": 0.9}})``,
``FASTVIDEO_ATTENTION_BACKEND=vsa``, or ``fastvideo.attention.use_backend("vsa")``.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.attention import AttentionBackend, BackendOption, LayerModule
from fastvideo_vsa.schedule import sparsity_at

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fastvideo.attention.context import StepContext

MAX_HEAD_DIM = 256


def _fraction(value: float) -> str | None:
    return None if 0.0 <= value < 1.0 else "must be in [0, 1)"


def _steps(value: int) -> str | None:
    return None if value >= 0 else "must be >= 0"


def gate_projection(layer: nn.Module) -> nn.Module:
    """VSA's gate projection for an attention layer: ``Linear(dim, dim)`` on the layer's device and
    dtype, ``dim`` its hidden size (the input size of its first Linear, the q or fused qkv projection)."""
    from torch import nn

    first = next((m for m in layer.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ValueError(
            f"vsa's gate projection takes the hidden size from the layer's projections, but "
            f"{type(layer).__name__} has no nn.Linear; list only attention layers in sparse_attention_layers"
        )
    dim, w = first.in_features, first.weight
    return nn.Linear(dim, dim, device=w.device, dtype=w.dtype)


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
    requires = "fastvideo-vsa[triton]"
    options: ClassVar[tuple[BackendOption, ...]] = (
        BackendOption(
            name="sparsity",
            type=float,
            default=0.0,
            help="Fraction of attention VSA skips, [0, 1).",
            cli_flags=("--vsa-sparsity", "--sparsity"),
            validate=_fraction,
        ),
        BackendOption(
            name="sparsity_ramp_steps",
            type=int,
            default=0,
            help="Training: reach the sparsity linearly over this many optimizer steps (0 = at once).",
            validate=_steps,
            training_only=True,
        ),
        BackendOption(
            name="sparsity_increment",
            type=float,
            default=0.0,
            help="Training: round the ramp down to multiples of it, a staircase (0 = smooth).",
            validate=_fraction,
            training_only=True,
        ),
    )
    layer_modules: ClassVar[tuple[LayerModule, ...]] = (
        LayerModule(
            name="gate_compress",
            build=gate_projection,
            # FastVideo's Wan port keeps it on the block, other ports in the attention module
            checkpoint_names=("{parent}.to_gate_compress", "{layer}.to_gate_compress"),
        ),
    )

    @classmethod
    def option_values(
        cls, options: Mapping[str, Any], *, step: int | None = None, total: int | None = None
    ) -> dict[str, Any]:
        """The sparsity ``forward`` uses: the target, or during training (``step`` optimizer steps
        done) its ramp (:func:`fastvideo_vsa.schedule.sparsity_at`)."""
        values = super().option_values(options)
        if step is not None:
            ramp = options.get("sparsity_ramp_steps", 0)
            increment = options.get("sparsity_increment", 0.0) or None
            values["sparsity"] = sparsity_at(step, values["sparsity"], ramp, increment=increment)
        return values

    def layer_inputs(self, layer: nn.Module, hidden: torch.Tensor, q: torch.Tensor) -> dict[str, Any]:
        """The gate of the coarse branch, ``[B, L, H, D]`` like ``q``, from the layer's input."""
        gate = layer.gate_compress(hidden)  # (B, L, dim)
        if gate.shape[-1] != q.shape[2] * q.shape[3]:
            raise ValueError(
                f"vsa's gate has {gate.shape[-1]} features but q has {q.shape[2]} heads x {q.shape[3]} dims; "
                f"the gate needs heads x head_dim == the hidden size of {type(layer).__name__}"
            )
        return {"gate": gate.unflatten(-1, (q.shape[2], q.shape[3]))}  # (B, L, H, D)

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
        sparsity = self.option(step, "sparsity")
        if sparsity == 0.0 and gate is None:
            return get_backend("sdpa").forward(q, k, v, scale=scale, step=step)
        from fastvideo_vsa.ops import vsa_attention

        if gate is not None and gate.dtype != q.dtype:
            gate = gate.to(q.dtype)
        return vsa_attention(q, k, v, tuple(step.grid), sparsity=sparsity, gate=gate, scale=scale)
