"""Building blocks shared by the DiTs of several families: timestep features, 3D RoPE, GELU, adaLN
modulation, the two-layer MLP, and patchify / unpatchify.

Model files import these instead of each carrying a copy; they are plain functions on tensors
(no state, no distributed code), so strategies and torch.compile see through them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastvideo import kernels


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos(t * f_i), sin(t * f_i)]`` with ``f_i = max_period^(-i / (dim/2))``.

    :param t: ``(N,)`` timesteps or guidance values (any dtype). :returns: ``(N, dim)`` fp32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # (N, dim/2)
    return torch.cat([args.cos(), args.sin()], dim=-1)


def rope_tables(
    grid: tuple[int, int, int],
    axes_dim: tuple[int, int, int],
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    theta: float = 10000.0,
    angle_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-valued 3D RoPE tables for a ``(T, H, W)`` token grid in raster order.

    The head dim is split into ``axes_dim`` parts (t, h, w); part ``a`` of size ``d`` rotates channel
    pairs ``(2i, 2i+1)`` by ``pos_a * theta^(-2i/d)``. Angles are computed in ``angle_dtype`` (the
    precision the checkpoint was trained with; fp64 falls back to fp32 on MPS) and rounded once to
    ``dtype`` (the model's: mixed-dtype elementwise ops run at half speed).

    :returns: ``cos`` with each pair's cosine repeated, and ``sin`` as ``(-sin, +sin)`` per pair,
        both ``(T*H*W, 1, head_dim)``, the operands of :func:`rope_apply`.
    """
    if angle_dtype == torch.float64 and device.type == "mps":
        angle_dtype = torch.float32
    parts = []
    for axis, (n, d) in enumerate(zip(grid, axes_dim, strict=True)):
        inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=angle_dtype, device=device) / d)  # (d/2,)
        angles = torch.outer(torch.arange(n, dtype=angle_dtype, device=device), inv_freq)  # (n, d/2)
        shape = [1, 1, 1, d // 2]
        shape[axis] = n
        parts.append(angles.view(shape).expand(*grid, d // 2))
    angles = torch.cat(parts, dim=-1).reshape(-1, 1, sum(axes_dim) // 2)  # (L, 1, Dh/2)
    cos, sin = angles.cos().float().to(dtype), angles.sin().float().to(dtype)
    return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def rope_apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` ``(B, L, H, Dh)`` by :func:`rope_tables`, in x's dtype."""
    x_swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0, x3, x2, ...)
    return torch.addcmul(x * cos, x_swapped, sin).type_as(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU (tanh approximation); in place when no autograd graph is being built, which saves the
    feed-forward's largest activation (L x ffn_dim) at inference."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.gelu(x, approximate="tanh")
    return torch.ops.aten.gelu_(x, approximate="tanh")


#: Activations of :class:`MLP`, by name (the name is what a model file passes).
ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": gelu_tanh}


class MLP(nn.Module):
    """``fc2(act(fc1(x)))``: timestep / text / image embedders and feed-forwards of the DiTs.

    :param act: a key of :data:`ACTIVATIONS` (``silu``, ``gelu``, ``gelu_tanh``).
    """

    def __init__(self, dim_in: int, hidden: int, dim_out: int, act: str = "gelu_tanh") -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"MLP activation {act!r} is not one of {', '.join(ACTIVATIONS)}")
        self.fc1 = nn.Linear(dim_in, hidden)
        self.fc2 = nn.Linear(hidden, dim_out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if not getattr(self.fc2, "gelu_input", False):  # else fc2 applies the GELU as it quantizes h
            activation: Any = ACTIVATIONS[self.act]
            h = activation(h)
        return self.fc2(h)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """adaLN: ``LayerNorm(x) * (1 + scale) + shift`` (LayerNorm without affine weights), in x's dtype.

    :param x: ``(B, L, D)`` tokens.
    :param shift: / ``scale``: per sample ``(B, D)`` or per token ``(B, L or 1, D)``, in any dtype:
        ``1 + scale`` is formed in their dtype (fp32 modulation tables stay exact), then rounded to
        x's. The normalisation and the multiply-add each read x once; on CUDA at inference
        :func:`fastvideo.kernels.adaln_modulate` does both in one pass (fp32, rounded once).
    """
    if shift.ndim == x.ndim - 1:  # (B, D) -> (B, 1, D)
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    if x.ndim == 3 and kernels.active(x, shift, scale):  # CUDA inference: one fused Triton kernel
        return kernels.adaln_modulate(x, shift, scale, eps)
    normed = F.layer_norm(x, x.shape[-1:], eps=eps)
    return torch.addcmul(shift.to(x.dtype), normed, (1 + scale).to(x.dtype))


def patchify(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """``(B, C, T, H, W)`` -> ``(B, T'*H'*W', C*pt*ph*pw)``: tokens in raster order over (T', H', W'),
    each token's features channel-major (for a linear patch embedding)."""
    b, c, t, h, w = x.shape
    pt, ph, pw = patch
    x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, T', H', W', C, pt, ph, pw)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify(
    x: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], *, channels_last: bool = False
) -> torch.Tensor:
    """``(B, T'*H'*W', pt*ph*pw*C)`` tokens -> ``(B, C, T'*pt, H'*ph, W'*pw)`` latents.

    :param channels_last: each token's features are ``(pt, ph, pw, C)`` (Wan's head) rather than
        ``(C, pt, ph, pw)`` (HunyuanVideo's head, :func:`patchify`).
    """
    (t, h, w), (pt, ph, pw) = grid, patch
    if channels_last:
        x = x.reshape(x.shape[0], t, h, w, pt, ph, pw, -1)  # (B, T', H', W', pt, ph, pw, C)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, T', pt, H', ph, W', pw)
    else:
        x = x.reshape(x.shape[0], t, h, w, -1, pt, ph, pw)  # (B, T', H', W', C, pt, ph, pw)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, C, T', pt, H', ph, W', pw)
    return x.reshape(x.shape[0], x.shape[1], t * pt, h * ph, w * pw)
