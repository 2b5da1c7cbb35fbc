"""The LTX-Video 0.9.x diffusion transformer (DiT).

Paper: "LTX-Video: Realtime Video Latent Diffusion" (Lightricks, arXiv 2501.00103). Tracks diffusers'
``src/diffusers/models/transformers/transformer_ltx.py`` (``LTXVideoTransformer3DModel``, diffusers
0.42.1): same configuration, same fp32 numerics; weights load from its checkpoints through the
declared name mapping in :mod:`fastvideo_ltx.ltxv.convert`. One class serves the 2B (0.9.0 - 0.9.5)
and 13B (0.9.7 / 0.9.8) checkpoints.

What is particular to LTX-Video:

- the latent is already 32x32x8-compressed and its patch is 1x1x1: a token is one latent cell, and
  the input projection is a linear layer over the 128 channels;
- q and k are RMS-normalised across all heads (one norm over the full width), then rotated by a
  RoPE that also spans the full width (not per head), on a grid in fractions of (20 frames, 2048,
  2048 pixels) scaled by the VAE strides and the frame rate (``rope_interpolation_scale``);
- cross-attention reads the raw residual (no norm, no gate), and the text mask is an additive bias
  of -10000 (padded text tokens are dropped instead where that is exact, see :func:`drop_text_padding`);
- the timestep may be per token (image conditioning: conditioning tokens at t=0).

Call convention: diffusers' model takes packed tokens ``(B, T*H*W, C)`` with ``num_frames / height /
width``; ours takes the latent ``(B, C, T, H, W)`` itself (the token grid is its shape), like every
fastvideo DiT, and returns a latent of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastvideo import kernels
from fastvideo.attention import ALL, DENSE, attention
from fastvideo.configs import DiffusersConfigMixin
from fastvideo.layers import MLP, modulate, rope_apply, timestep_embedding
from fastvideo.models import DiT, SequenceParallelPlan
from fastvideo_ltx.ltxv import convert

FREQ_DIM = 256  # sinusoidal timestep features
ROPE_BASE = (20.0, 2048.0, 2048.0)  # RoPE grid unit along (frames, height, width), in pixels / frames
ROPE_THETA = 10000.0
TEXT_MASK_BIAS = -10000.0  # diffusers' additive bias of padded text tokens


@dataclass(frozen=True, kw_only=True)
class LTXVideoConfig(DiffusersConfigMixin):
    """Hyper-parameters of :class:`LTXVideoTransformer`; the fields and defaults of diffusers' config.json."""

    in_channels: int = 128  # VAE latent channels
    out_channels: int | None = 128  # None means in_channels, as in diffusers
    patch_size: int = 1  # spatial latent cells per token
    patch_size_t: int = 1  # temporal latent cells per token
    num_attention_heads: int = 32
    attention_head_dim: int = 64  # 2B: 64 (D = 2048); 13B: 128 (D = 4096)
    cross_attention_dim: int = 2048  # must equal the width (the caption projection's output)
    num_layers: int = 28
    activation_fn: str = "gelu-approximate"
    qk_norm: str = "rms_norm_across_heads"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    caption_channels: int = 4096  # T5-XXL hidden size
    attention_bias: bool = True
    attention_out_bias: bool = True

    def __post_init__(self) -> None:
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels)
        fixed = {
            "activation_fn": (self.activation_fn, "gelu-approximate"),
            "qk_norm": (self.qk_norm, "rms_norm_across_heads"),
            "norm_elementwise_affine": (self.norm_elementwise_affine, False),
            "patch_size": (self.patch_size, 1),  # a token is one latent cell in every 0.9.x checkpoint
            "patch_size_t": (self.patch_size_t, 1),
        }
        for key, (got, want) in fixed.items():
            if got != want:
                raise ValueError(f"{key}={got!r} is not supported; the LTX-Video checkpoints use {want!r}")
        sizes = (self.num_attention_heads, self.attention_head_dim, self.in_channels)
        if min(sizes) < 1 or self.num_layers < 0:
            raise ValueError(f"sizes must be positive, got heads, head_dim, channels = {sizes}")
        if self.dim < 6:
            raise ValueError(f"width {self.dim} (heads x head_dim) must be at least 6 for the 3D RoPE")
        if self.cross_attention_dim != self.dim:
            raise ValueError(
                f"cross_attention_dim={self.cross_attention_dim} must equal the width num_attention_heads x "
                f"attention_head_dim = {self.dim} (the caption projection's output is the width)"
            )

    @property
    def dim(self) -> int:
        """Width of the residual stream (``num_attention_heads * attention_head_dim``)."""
        return self.num_attention_heads * self.attention_head_dim


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def rope_grid(
    grid: tuple[int, int, int],
    scale: Sequence[float] | None,
    patch: tuple[int, int, int],
    device: torch.device,
) -> torch.Tensor:
    """Token positions ``(1, L, 3)`` in RoPE units: index x scale x patch / base per axis (fp32).

    ``scale`` is diffusers' ``rope_interpolation_scale`` (VAE temporal stride / frame rate, spatial
    stride, spatial stride); None keeps the raw indices, as diffusers does.
    """
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)  # (3, T, H, W)
    if scale is not None:
        coords = torch.stack([coords[a] * scale[a] * patch[a] / ROPE_BASE[a] for a in range(3)])
    return coords.flatten(1).t().unsqueeze(0)  # (1, L, 3)


def rope_tables_full_width(coords: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin tables ``(Bc, L, dim)`` of LTX's full-width RoPE at positions ``coords (Bc, L, 3)``.

    Frequencies ``theta^linspace(0, 1, dim // 6) * pi / 2`` times ``2 * pos - 1``; the channel
    order is (frequency, axis) with each angle used by one channel pair; the ``dim % 6`` leading
    channels are not rotated. ``sin`` carries the pair signs ``(-s, +s)`` of :func:`rope_apply`.
    """
    n = dim // 6
    freqs = ROPE_THETA ** torch.linspace(0.0, 1.0, n, device=coords.device, dtype=torch.float32)
    freqs = freqs * math.pi / 2.0
    angles = freqs * (coords.unsqueeze(-1) * 2 - 1)  # (Bc, L, 3, n)
    angles = angles.transpose(-1, -2).flatten(2)  # (Bc, L, 3n): channel = freq * 3 + axis
    cos = angles.cos().repeat_interleave(2, dim=-1)  # (Bc, L, 6n)
    sin = angles.sin().repeat_interleave(2, dim=-1)
    sin = sin * torch.tensor([-1.0, 1.0], device=sin.device).repeat(3 * n)  # pair signs
    pad = dim - 6 * n
    if pad:
        cos = torch.cat([cos.new_ones(*cos.shape[:2], pad), cos], dim=-1)
        sin = torch.cat([sin.new_zeros(*sin.shape[:2], pad), sin], dim=-1)
    return cos, sin


def drop_text_padding(
    text: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text tokens and the cross-attention bias, with padded tokens dropped where that is exact.

    diffusers adds -10000 to the scores of padded text tokens, which underflows to a zero weight in
    any float dtype: dropping the trailing tokens that no sample attends to gives the same output,
    and when all samples then have the same length (always at batch size 1) attention runs with no
    mask, on the fastest kernels.

    :returns: ``(text (B, Lt', C), bias (B, 1, 1, Lt') in text's dtype, or None)``.
    """
    if mask is None:
        return text, None
    mask = mask.bool()
    lengths = mask.sum(dim=1)  # (B,)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]  # (B, Lt)
    if torch.equal(prefix, mask) and int(lengths.min()) > 0:  # right padding
        keep = int(lengths.max())
        text, mask = text[:, :keep], mask[:, :keep]
        if bool(mask.all()):
            return text, None
    bias = (1 - mask.to(text.dtype)) * TEXT_MASK_BIAS  # (B, Lt')
    return text, bias[:, None, None, :]


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without weights in x's dtype (diffusers' ``RMSNorm``: statistics in fp32, one rounding).

    torch's ``rms_norm`` accumulates low-precision inputs in fp32 itself (one fused kernel on CUDA),
    so no fp32 copy of ``x`` is made."""
    return F.rms_norm(x, x.shape[-1:], eps=eps)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


class LTXVideoAttention(nn.Module):
    """Multi-head attention with q / k RMS-normalised across heads (one norm over the full width)
    and, for self-attention, the full-width RoPE applied before splitting into heads."""

    def __init__(
        self, dim: int, kv_dim: int, num_heads: int, *, bias: bool, out_bias: bool, cross: bool
    ) -> None:
        super().__init__()
        self.num_heads, self.cross = num_heads, cross
        self.q = nn.Linear(dim, dim, bias=bias)
        self.k = nn.Linear(kv_dim, dim, bias=bias)
        self.v = nn.Linear(kv_dim, dim, bias=bias)
        self.o = nn.Linear(dim, dim, bias=out_bias)
        self.norm_q = nn.RMSNorm(dim, eps=1e-5)
        self.norm_k = nn.RMSNorm(dim, eps=1e-5)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # x (B, L, D); context (B, Lt, D) or None (self-attention); rope cos/sin (Bc, L, D)
        src = x if context is None else context
        if rope is not None and kernels.active(x, *rope):  # CUDA inference: norm + RoPE in one kernel
            q, k, v = self.q(x), self.k(src), self.v(src)  # (B, L, D)
            q = kernels.rms_norm_rope(q, self.norm_q.weight, *rope, 1e-5, q.shape[-1])
            k = kernels.rms_norm_rope(k, self.norm_k.weight, *rope, 1e-5, k.shape[-1])
            rope = None
        else:
            q, k, v = self.norm_q(self.q(x)), self.norm_k(self.k(src)), self.v(src)  # (B, L|Lt, D)
        if rope is not None:
            q, k = rope_apply(q, *rope), rope_apply(k, *rope)
        heads = (self.num_heads, -1)
        q, k, v = q.unflatten(-1, heads), k.unflatten(-1, heads), v.unflatten(-1, heads)  # (B, *, H, Dh)
        if self.cross:
            out = attention(q, k, v, attn_mask=bias, allow=DENSE)
        else:
            out = attention(q, k, v, allow=ALL, sequence_parallel=True)
        return self.o(out.flatten(2))  # (B, L, D)


class LTXVideoBlock(nn.Module):
    """adaLN-modulated self-attention with RoPE, ungated cross-attention on the raw residual,
    adaLN-modulated GELU feed-forward."""

    def __init__(self, cfg: LTXVideoConfig) -> None:
        super().__init__()
        dim, heads = cfg.dim, cfg.num_attention_heads
        bias, out_bias = cfg.attention_bias, cfg.attention_out_bias
        self.eps = cfg.norm_eps
        self.self_attn = LTXVideoAttention(dim, dim, heads, bias=bias, out_bias=out_bias, cross=False)
        self.cross_attn = LTXVideoAttention(
            dim, cfg.cross_attention_dim, heads, bias=bias, out_bias=out_bias, cross=True
        )
        self.ff = MLP(dim, 4 * dim, dim, "gelu_tanh")
        self.modulation = nn.Parameter(torch.randn(6, dim) / dim**0.5)  # + temb: (shift, scale, gate) x 2

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        temb: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text_bias: torch.Tensor | None,
    ) -> torch.Tensor:
        # x (B, L, D); text (B, Lt, D); temb (B, Lm, 6, D) with Lm = 1 or L; cos/sin (Bc, L, D)
        mod = self.modulation.to(temb.dtype) + temb  # (B, Lm, 6, D)
        shift, scale, gate, m_shift, m_scale, m_gate = mod.unbind(dim=2)  # (B, Lm, D) x 6
        fuse = kernels.active(x, mod)  # CUDA inference: RMSNorm + modulation in one Triton kernel
        if fuse:
            h = kernels.adaln_modulate(x, shift, scale, self.eps, norm="rms")
        else:
            h = torch.addcmul(shift, rms_norm(x, self.eps), 1 + scale)  # (B, L, D)
        x = torch.addcmul(x, self.self_attn(h, rope=(cos, sin)), gate)
        x = x + self.cross_attn(x, text, bias=text_bias)  # raw residual, no gate
        if fuse:
            h = kernels.adaln_modulate(x, m_shift, m_scale, self.eps, norm="rms")
        else:
            h = torch.addcmul(m_shift, rms_norm(x, self.eps), 1 + m_scale)
        return torch.addcmul(x, self.ff(h), m_gate)  # (B, L, D)


class LTXVideoHead(nn.Module):
    """Output LayerNorm (no affine) modulated by the timestep embedding, then the projection."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(2, dim) / dim**0.5)  # + embedded t: (shift, scale)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x (B, L, D); emb (B, Lm, D) the embedded timestep
        mod = self.modulation.to(emb.dtype) + emb.unsqueeze(2)  # (B, Lm, 2, D)
        return self.proj(modulate(x, mod[:, :, 0], mod[:, :, 1]))  # (B, L, C_out)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class LTXVideoTransformer(DiT):
    """LTX-Video DiT: ``forward(latents, text, timestep, text_mask, rope_interpolation_scale) -> flow``."""

    config_class = LTXVideoConfig
    diffusers_class = "LTXVideoTransformer3DModel"
    name_mapping = convert.MAPPING
    fsdp_units: ClassVar[tuple[str, ...]] = ("LTXVideoBlock",)
    #: diffusers keeps no LTX-Video parameter in fp32 (no ``_keep_in_fp32_modules``).
    fp32_modules: ClassVar[tuple[str, ...]] = ()
    sparse_attention_layers: ClassVar[tuple[str, ...]] = ("blocks.*.self_attn",)
    #: Block arguments with a token dim: x (B, L, D), temb (B, Lm, 6, D) when Lm = L (per-token
    #: timesteps), cos and sin (Bc, L, D); the last block's output is gathered on dim 1.
    sequence_parallel_plan = SequenceParallelPlan(
        blocks="blocks", shard={"x": 1, "temb": 1, "cos": 1, "sin": 1}
    )

    def __init__(self, config: LTXVideoConfig) -> None:
        super().__init__()
        self.config = cfg = config
        dim = cfg.dim
        self.patch_embed = nn.Linear(cfg.in_channels, dim)  # patch 1: a token is one latent cell
        self.time_embed = MLP(FREQ_DIM, dim, dim, "silu")
        self.time_mod = nn.Linear(dim, 6 * dim)  # silu(temb) -> per-block (shift, scale, gate) x 2
        self.text_embed = MLP(cfg.caption_channels, dim, dim, "gelu_tanh")
        self.blocks = nn.ModuleList(LTXVideoBlock(cfg) for _ in range(cfg.num_layers))
        self.head = LTXVideoHead(dim, cfg.out_channels)

    def patch(self) -> tuple[int, int, int]:
        return (1, 1, 1)

    def init_weights(self) -> None:
        """Random init for training from scratch (PyTorch defaults; modulation tables ~ N(0, 1/dim))."""
        super().init_weights()
        for name, p in self.named_parameters():
            if name.endswith("modulation"):
                nn.init.normal_(p, std=self.config.dim**-0.5)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        rope_interpolation_scale: Sequence[float] | None = None,
        video_coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow (velocity) for ``hidden_states``.

        :param hidden_states: ``(B, C_in, T, H, W)`` latents.
        :param encoder_hidden_states: ``(B, Lt, caption_channels)`` T5 states, right-padded.
        :param timestep: ``(B,)`` (or a scalar), or ``(B, T'*H'*W')`` per token (image conditioning).
        :param encoder_attention_mask: ``(B, Lt)``, 1 for prompt tokens (None: all valid).
        :param rope_interpolation_scale: (VAE temporal stride / frame rate, spatial stride, spatial
            stride); None uses raw token indices, as diffusers.
        :param video_coords: ``(B, 3, T'*H'*W')`` explicit RoPE positions in pixels / frames (the
            conditioning pipeline's), instead of the grid and ``rope_interpolation_scale``.
        :returns: ``(B, C_out, T, H, W)`` in the model's dtype.
        """
        if hidden_states.ndim != 5 or hidden_states.shape[1] != self.config.in_channels:
            raise ValueError(
                f"hidden_states must be latents (B, {self.config.in_channels}, T, H, W), got "
                f"{tuple(hidden_states.shape)}; pass the unpacked latent, not diffusers' packed tokens"
            )
        b = hidden_states.shape[0]
        grid = self.token_grid(hidden_states.shape)  # (T', H', W')
        tokens = math.prod(grid)
        cos, sin = self._rope(
            grid, rope_interpolation_scale, video_coords, hidden_states.device
        )  # (Bc, L, D)
        temb, emb = self._timestep(timestep, b, tokens)  # (B, Lm, 6, D), (B, Lm, D)
        x = self.patch_embed(self._pack(hidden_states.to(self.dtype)))  # (B, L, D)
        text, bias = drop_text_padding(encoder_hidden_states.to(self.dtype), encoder_attention_mask)
        text = self.text_embed(text)  # (B, Lt', D)
        for block in self.blocks:
            x = block(x, text, temb, cos, sin, bias)  # (B, L, D)
        return self._unpack(self.head(x, emb), grid)  # (B, C_out, T, H, W)

    # ---- pieces of forward --------------------------------------------------------------------

    @staticmethod
    def _pack(latents: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W)`` -> ``(B, T*H*W, C)`` tokens in raster order (diffusers' ``_pack_latents``, patch 1)."""
        return latents.flatten(2).transpose(1, 2)

    @staticmethod
    def _unpack(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``(B, T*H*W, C)`` -> ``(B, C, T, H, W)`` (diffusers' ``_unpack_latents``, patch 1)."""
        return x.transpose(1, 2).unflatten(2, grid)

    def _rope(
        self,
        grid: tuple[int, int, int],
        scale: Sequence[float] | None,
        video_coords: torch.Tensor | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if video_coords is None:
            coords = rope_grid(grid, scale, self.patch(), device)  # (1, L, 3)
        else:
            if video_coords.ndim != 3 or video_coords.shape[1:] != (3, math.prod(grid)):
                raise ValueError(
                    f"video_coords must be (B, 3, {math.prod(grid)}) for the token grid {grid}, "
                    f"got {tuple(video_coords.shape)}"
                )
            base = torch.tensor(ROPE_BASE, device=device)
            coords = video_coords.float().transpose(1, 2) / base  # (B, L, 3)
        cos, sin = rope_tables_full_width(coords, self.config.dim)  # fp32 angles
        # rounded once to the compute dtype, as Wan's tables: mixed-dtype elementwise ops over
        # (L, D) cost twice the memory traffic, and RoPE is most of a block's elementwise work
        return cos.to(self.dtype), sin.to(self.dtype)

    def _timestep(self, timestep: torch.Tensor, b: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(temb (B, Lm, 6, D), embedded timestep (B, Lm, D))``, ``Lm`` = 1 or the token count."""
        t = timestep.reshape(1).expand(b) if timestep.ndim == 0 else timestep
        if t.ndim == 1 and t.shape[0] == b:
            t = t[:, None]
        if t.ndim != 2 or t.shape[0] != b or t.shape[1] not in (1, tokens):
            raise ValueError(
                f"timestep must be (B,)=({b},) or per token (B, L)=({b}, {tokens}), got {tuple(timestep.shape)}"
            )
        emb = self.time_embed(timestep_embedding(t.flatten(), FREQ_DIM).to(self.dtype))  # (B*Lm, D)
        temb = self.time_mod(F.silu(emb))  # (B*Lm, 6D)
        lm = t.shape[1]
        return temb.view(b, lm, 6, -1), emb.view(b, lm, -1)
