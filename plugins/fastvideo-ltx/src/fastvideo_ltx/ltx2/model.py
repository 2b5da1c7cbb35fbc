"""The LTX-2 / LTX-2.3 audio-video diffusion transformer (DiT).

Lightricks' LTX-2 generates a video and its soundtrack together: two token streams (video latents
of the video VAE, audio latents of the audio VAE) of different widths run through the same blocks;
each block has self-attention per stream, cross-attention of each stream to its own text context,
then audio-to-video and video-to-audio cross-attention, then a feed-forward per stream. Every
sub-layer is modulated by the timestep (adaLN); LTX-2.3 adds per-head gates on the attention
outputs (``gated_attn``), modulation of the text cross-attention (``cross_attn_mod``, with a prompt
adaLN driven by sigma) and split (per-head) RoPE.

Tracks diffusers' ``LTX2VideoTransformer3DModel`` (diffusers 0.42.1): same configuration, same
fp32 numerics; weights load from its checkpoints through :data:`fastvideo_ltx.ltx2.convert.MAPPING`.
Inputs and outputs are the VAE latent layouts (video ``(B, C, T, H, W)``, audio ``(B, C, L, M)``);
patchifying (patch size 1) happens here.
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
from fastvideo.layers import timestep_embedding
from fastvideo.models import DiT
from fastvideo_ltx.ltx2 import convert


@dataclass(frozen=True, kw_only=True)
class LTX2Config(DiffusersConfigMixin):
    """Hyper-parameters of :class:`LTX2Transformer`: the fields and defaults of diffusers' config.json."""

    in_channels: int = 128
    out_channels: int | None = 128
    patch_size: int = 1
    patch_size_t: int = 1
    num_attention_heads: int = 32
    attention_head_dim: int = 128
    cross_attention_dim: int = 4096
    vae_scale_factors: tuple[int, int, int] = (8, 32, 32)
    pos_embed_max_pos: int = 20
    base_height: int = 2048
    base_width: int = 2048
    gated_attn: bool = False
    cross_attn_mod: bool = False
    audio_in_channels: int = 128
    audio_out_channels: int | None = 128
    audio_patch_size: int = 1
    audio_patch_size_t: int = 1
    audio_num_attention_heads: int = 32
    audio_attention_head_dim: int = 64
    audio_cross_attention_dim: int = 2048
    audio_scale_factor: int = 4
    audio_pos_embed_max_pos: int = 20
    audio_sampling_rate: int = 16000
    audio_hop_length: int = 160
    audio_gated_attn: bool = False
    audio_cross_attn_mod: bool = False
    num_layers: int = 48
    activation_fn: str = "gelu-approximate"
    qk_norm: str = "rms_norm_across_heads"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-6
    caption_channels: int = 3840
    attention_bias: bool = True
    attention_out_bias: bool = True
    rope_theta: float = 10000.0
    rope_double_precision: bool = True
    causal_offset: int = 1
    timestep_scale_multiplier: int = 1000
    cross_attn_timestep_scale_multiplier: int = 1000
    rope_type: str = "interleaved"
    use_prompt_embeddings: bool = True
    perturbed_attn: bool = False
    ff_bias: bool = True
    audio_ff_bias: bool = True
    use_prompt_adaln_single: bool = True
    use_keyframes_abs_pos_embedding: bool = False  # LTX-2.5's keyframe embedding: not supported

    def __post_init__(self) -> None:
        object.__setattr__(self, "vae_scale_factors", tuple(self.vae_scale_factors))
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels)
        if self.audio_out_channels is None:
            object.__setattr__(self, "audio_out_channels", self.audio_in_channels)
        if (self.patch_size, self.patch_size_t, self.audio_patch_size, self.audio_patch_size_t) != (
            1,
            1,
            1,
            1,
        ):
            raise ValueError(
                "LTX-2 checkpoints use patch size 1 for video and audio; got "
                f"patch_size={self.patch_size}, patch_size_t={self.patch_size_t}, "
                f"audio_patch_size={self.audio_patch_size}, audio_patch_size_t={self.audio_patch_size_t}"
            )
        if self.rope_type not in ("interleaved", "split"):
            raise ValueError(f"rope_type={self.rope_type!r} must be 'interleaved' or 'split'")
        if self.qk_norm != "rms_norm_across_heads":
            raise ValueError(f"qk_norm={self.qk_norm!r} is not supported; LTX-2 uses 'rms_norm_across_heads'")
        if self.activation_fn != "gelu-approximate":
            raise ValueError(
                f"activation_fn={self.activation_fn!r} is not supported; LTX-2 uses 'gelu-approximate'"
            )
        if self.use_keyframes_abs_pos_embedding:
            raise ValueError(
                "use_keyframes_abs_pos_embedding=True (LTX-2.5 keyframes) is not supported; use an LTX-2 or 2.3 checkpoint"
            )
        if self.norm_elementwise_affine:
            raise ValueError("norm_elementwise_affine=True is not supported; LTX-2 checkpoints use False")
        if self.audio_cross_attention_dim != self.audio_dim:
            raise ValueError(
                f"audio_cross_attention_dim={self.audio_cross_attention_dim} must equal the audio width "
                f"audio_num_attention_heads * audio_attention_head_dim = {self.audio_dim} (cross-modal RoPE)"
            )
        if min(self.num_layers, self.num_attention_heads, self.audio_num_attention_heads) < 1:
            raise ValueError(f"sizes must be positive: {self}")

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def audio_dim(self) -> int:
        return self.audio_num_attention_heads * self.audio_attention_head_dim

    @property
    def prompt_modulation(self) -> bool:
        return self.cross_attn_mod or self.audio_cross_attn_mod


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without weights, computed in fp32 and returned in x's dtype."""
    return F.rms_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def rms_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """``rms_norm(x) * (1 + scale) + shift``; one fused Triton kernel on CUDA inference."""
    same = torch.promote_types(torch.promote_types(shift.dtype, scale.dtype), x.dtype) == x.dtype
    if same and kernels.active(x, shift, scale):
        return kernels.adaln_modulate(x, shift, scale, eps, norm="rms")
    return rms_norm(x, eps) * (1 + scale) + shift


def rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of ``x`` ``(B, L, D)`` by the ``(B, L, D)`` tables (pairs repeated)."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, L, D/2) each
    rotated = torch.stack((-x1, x0), dim=-1).flatten(-2)  # (B, L, D)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def rope_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (first half, second half) of each head of ``x`` ``(B, L, D)`` by ``(B, H, L, Dh/2)`` tables."""
    b, h, length, r = cos.shape
    xh = x.reshape(b, length, h, 2, r).float()  # (B, L, H, 2, r)
    c, s = cos.transpose(1, 2), sin.transpose(1, 2)  # (B, L, H, r)
    first, second = xh[..., 0, :], xh[..., 1, :]
    out = torch.stack((first * c - second * s, second * c + first * s), dim=-2)  # (B, L, H, 2, r)
    return out.reshape(b, length, -1).to(x.dtype)


class RopeTables:
    """cos and sin of one stream's positions, applied by the ``rope_type`` of the config."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor, split: bool) -> None:
        self.cos, self.sin, self.split = cos, sin, split

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (rope_split if self.split else rope_interleaved)(x, self.cos, self.sin)

    def norm_rope(self, x: torch.Tensor, norm: nn.RMSNorm, eps: float) -> torch.Tensor:
        """``self(norm(x))`` for ``x`` ``(B, L, inner)`` in one fused Triton kernel (CUDA inference)."""
        if self.split:  # rotate-half per head by (B, H, L, Dh/2) tables
            c, s = self.cos.transpose(1, 2), self.sin.transpose(1, 2)  # (B, L, H, Dh/2)
            xh = x.unflatten(-1, (self.cos.shape[1], -1))
            out = kernels.rms_norm_rope(
                xh, norm.weight, c, s, eps, x.shape[-1], layout="half", signed_sin=False
            )
            return out.flatten(2)
        return kernels.rms_norm_rope(x, norm.weight, self.cos, self.sin, eps, x.shape[-1], signed_sin=False)

    def norm_rope_pair(
        self, q: torch.Tensor, k: torch.Tensor, norm_q: nn.RMSNorm, norm_k: nn.RMSNorm, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`norm_rope` of q and k of a self-attention in one launch (the tables read once)."""
        weights = (norm_q.weight, norm_k.weight)
        if self.split:  # rotate-half per head by (B, H, L, Dh/2) tables
            c, s = self.cos.transpose(1, 2), self.sin.transpose(1, 2)  # (B, L, H, Dh/2)
            heads = (self.cos.shape[1], -1)
            qo, ko = kernels.rms_norm_rope_pair(
                q.unflatten(-1, heads), k.unflatten(-1, heads), *weights, c, s, eps, q.shape[-1],
                layout="half", signed_sin=False,
            )  # fmt: skip
            return qo.flatten(2), ko.flatten(2)
        return kernels.rms_norm_rope_pair(
            q, k, *weights, self.cos, self.sin, eps, q.shape[-1], signed_sin=False
        )


def rope_frequencies(
    positions: torch.Tensor,
    max_positions: Sequence[float],
    dim: int,
    cfg: LTX2Config,
    num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for ``positions`` ``(B, n_axes, L)`` (patch midpoints) over a width ``dim``.

    Positions become fractions of ``max_positions`` in [-1, 1]; each axis gets ``dim // (2 n_axes)``
    frequencies ``theta^linspace(0, 1) * pi / 2``, zero-padded (cos 1, sin 0) at the front up to
    ``dim / 2`` rotation pairs. Interleaved: ``(B, L, dim)`` tables with each value repeated for its
    pair; split: ``(B, H, L, dim / 2H)``.
    """
    n_axes = positions.shape[1]
    frac = torch.stack([positions[:, i] / max_positions[i] for i in range(n_axes)], dim=-1)  # (B, L, n)
    per_axis = dim // (2 * n_axes)
    ftype = torch.float64 if cfg.rope_double_precision else torch.float32
    base = torch.linspace(0.0, 1.0, per_axis, dtype=ftype, device=positions.device)
    freqs = (torch.pow(cfg.rope_theta, base) * math.pi / 2.0).to(torch.float32)  # (F,)
    angles = (frac.unsqueeze(-1) * 2 - 1) * freqs  # (B, L, n, F)
    angles = angles.transpose(-1, -2).flatten(2)  # (B, L, F*n): frequency-major, axes inner
    cos, sin = angles.cos(), angles.sin()
    if cfg.rope_type == "interleaved":
        cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)  # (B, L, 2Fn)
        pad = dim % (2 * n_axes)
    else:
        pad = dim // 2 - cos.shape[-1]
    if pad:
        cos = torch.cat([torch.ones_like(cos[..., :pad]), cos], dim=-1)
        sin = torch.cat([torch.zeros_like(sin[..., :pad]), sin], dim=-1)
    if cfg.rope_type == "split":
        b, length = cos.shape[:2]
        cos = cos.reshape(b, length, num_heads, -1).transpose(1, 2)  # (B, H, L, Dh/2)
        sin = sin.reshape(b, length, num_heads, -1).transpose(1, 2)
    return cos, sin


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


class TimeModulation(nn.Module):
    """Timestep -> ``n`` modulation vectors of width ``dim`` (adaLN-single), and the embedding itself."""

    def __init__(self, dim: int, n: int) -> None:
        super().__init__()
        self.n = n
        self.fc1 = nn.Linear(256, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, n * dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # t (N,) -> mods (N, n*D), emb (N, D)
        feats = timestep_embedding(t.flatten(), 256).to(dtype)  # (N, 256), cos first
        emb = self.fc2(F.silu(self.fc1(feats.to(self.fc1.weight.dtype))))  # (N, D)
        return self.proj(F.silu(emb)), emb


class TextProjection(nn.Module):
    """Caption features -> a stream's width (linear, GELU tanh, linear)."""

    def __init__(self, dim_in: int, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class FeedForward(nn.Module):
    def __init__(self, dim: int, bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim, bias=bias)
        self.fc2 = nn.Linear(4 * dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (B, L, 4D)
        if kernels.active(h):  # CUDA inference: in place, no second (L, 4D) buffer
            return self.fc2(torch.ops.aten.gelu_(h, approximate="tanh"))
        return self.fc2(F.gelu(h, approximate="tanh"))


class LTX2Attention(nn.Module):
    """Multi-head attention with RMSNorm over all heads of q and k, optional RoPE on q and k, and
    optional per-head output gates ``2 sigmoid(gate(x))``."""

    def __init__(
        self, dim: int, kv_dim: int, heads: int, head_dim: int, cfg: LTX2Config, gated: bool
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.q = nn.Linear(dim, inner, bias=cfg.attention_bias)
        self.k = nn.Linear(kv_dim, inner, bias=cfg.attention_bias)
        self.v = nn.Linear(kv_dim, inner, bias=cfg.attention_bias)
        self.o = nn.Linear(inner, dim, bias=cfg.attention_out_bias)
        self.norm_q = nn.RMSNorm(inner, eps=cfg.norm_eps)
        self.norm_k = nn.RMSNorm(inner, eps=cfg.norm_eps)
        self.eps = cfg.norm_eps
        self.gate = nn.Linear(dim, heads) if gated else None

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        q_rope: RopeTables | None = None,
        k_rope: RopeTables | None = None,
        mask: torch.Tensor | None = None,
        skip: bool = False,
        seam: bool = False,
        q_ready: torch.Tensor | None = None,
        k_ready: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # x (B, L, D); context (B, Lk, Dk) or None (self-attention); skip: STG, the values pass through;
        # q_ready / k_ready: q or k already projected, normalised and rotated (the block's fused path)
        context = x if context is None else context
        v = self.v(context)  # (B, Lk, inner)
        if skip:
            out = v
        else:
            if (q_ready is not None or k_ready is not None) and q_rope is not None:
                q = q_ready if q_ready is not None else q_rope.norm_rope(self.q(x), self.norm_q, self.eps)
                k = k_ready
                if k is None:
                    k = (k_rope or q_rope).norm_rope(self.k(context), self.norm_k, self.eps)
            elif k_rope is None and context is x and q_rope is not None and kernels.active(x, q_rope.cos):
                q, k = q_rope.norm_rope_pair(self.q(x), self.k(x), self.norm_q, self.norm_k, self.eps)
            elif q_rope is not None and kernels.active(x, context, q_rope.cos):  # CUDA inference: fused
                q = q_rope.norm_rope(self.q(x), self.norm_q, self.eps)
                k = (k_rope or q_rope).norm_rope(self.k(context), self.norm_k, self.eps)
            elif q_rope is None and kernels.active(x, context):  # CUDA inference: one pass each
                q, k = self.q(x), self.k(context)  # (B, L, inner), (B, Lk, inner)
                q = kernels.rms_norm(q, self.norm_q.weight, self.eps, q.shape[-1])
                k = kernels.rms_norm(k, self.norm_k.weight, self.eps, k.shape[-1])
            else:
                q, k = self.norm_q(self.q(x)), self.norm_k(self.k(context))  # (B, L, inner), (B, Lk, inner)
                if q_rope is not None:
                    q = q_rope(q)
                    k = (k_rope or q_rope)(k)
            heads = (self.heads, -1)
            q, k, v = q.unflatten(-1, heads), k.unflatten(-1, heads), v.unflatten(-1, heads)  # (B, L, H, Dh)
            if seam:  # video self-attention: any backend, sparse ones included
                out = attention(q, k, v, allow=ALL, sequence_parallel=True)
            else:
                out = attention(q, k, v, attn_mask=mask, allow=DENSE)
            out = out.flatten(2)  # (B, L, inner)
        if self.gate is not None:
            gates = 2.0 * torch.sigmoid(self.gate(x))  # (B, L, H)
            out = (out.unflatten(-1, (self.heads, -1)) * gates.unsqueeze(-1)).flatten(2)
        return self.o(out)


def _mods(table: torch.Tensor, temb: torch.Tensor) -> list[torch.Tensor]:
    """Per-layer table ``(n, D)`` + per-step values ``(B, Lm, n*D)`` -> n tensors ``(B, Lm, D)``."""
    values = table.to(temb.device) + temb.unflatten(-1, (table.shape[0], -1))  # (B, Lm, n, D)
    return list(values.unbind(2))


class LTX2Block(nn.Module):
    """One audio-video block: self-attention, text cross-attention, audio<->video cross-attention and
    feed-forward for each stream, all adaLN-modulated."""

    def __init__(self, cfg: LTX2Config) -> None:
        super().__init__()
        d, ad = cfg.dim, cfg.audio_dim
        h, hd, ah, ahd = (
            cfg.num_attention_heads,
            cfg.attention_head_dim,
            cfg.audio_num_attention_heads,
            cfg.audio_attention_head_dim,
        )
        self.eps = cfg.norm_eps
        self.perturbed_attn = cfg.perturbed_attn
        self.video_text_mod, self.audio_text_mod = cfg.cross_attn_mod, cfg.audio_cross_attn_mod
        self.self_attn = LTX2Attention(d, d, h, hd, cfg, cfg.gated_attn)
        self.audio_self_attn = LTX2Attention(ad, ad, ah, ahd, cfg, cfg.audio_gated_attn)
        self.text_attn = LTX2Attention(d, cfg.cross_attention_dim, h, hd, cfg, cfg.gated_attn)
        self.audio_text_attn = LTX2Attention(
            ad, cfg.audio_cross_attention_dim, ah, ahd, cfg, cfg.audio_gated_attn
        )
        self.a2v_attn = LTX2Attention(d, ad, ah, ahd, cfg, cfg.gated_attn)  # q: video, k/v: audio
        self.v2a_attn = LTX2Attention(ad, d, ah, ahd, cfg, cfg.audio_gated_attn)  # q: audio, k/v: video
        self.ff = FeedForward(d, cfg.ff_bias)
        self.audio_ff = FeedForward(ad, cfg.audio_ff_bias)
        self.modulation = nn.Parameter(torch.empty(9 if cfg.cross_attn_mod else 6, d))
        self.audio_modulation = nn.Parameter(torch.empty(9 if cfg.audio_cross_attn_mod else 6, ad))
        if cfg.prompt_modulation:
            self.prompt_modulation = nn.Parameter(torch.empty(2, d))
            self.audio_prompt_modulation = nn.Parameter(torch.empty(2, ad))
        self.cross_modulation = nn.Parameter(
            torch.empty(5, d)
        )  # a2v (scale, shift), v2a (scale, shift), gate
        self.audio_cross_modulation = nn.Parameter(torch.empty(5, ad))

    def forward(
        self,
        x: torch.Tensor,
        a: torch.Tensor,
        text: torch.Tensor,
        audio_text: torch.Tensor,
        temb: torch.Tensor,
        audio_temb: torch.Tensor,
        cross_temb: torch.Tensor,
        audio_cross_temb: torch.Tensor,
        cross_gate_temb: torch.Tensor,
        audio_cross_gate_temb: torch.Tensor,
        prompt_temb: torch.Tensor | None,
        audio_prompt_temb: torch.Tensor | None,
        rope: RopeTables,
        audio_rope: RopeTables,
        cross_rope: RopeTables,
        audio_cross_rope: RopeTables,
        text_mask: torch.Tensor | None,
        audio_text_mask: torch.Tensor | None,
        cross_modal: bool = True,
        stg: bool = False,
        index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # x (B, Lv, D) video tokens; a (B, La, Da) audio tokens; *temb (B, 1 or L, n*D); index (Lv,):
        # with it, the video tables temb / cross_temb / cross_gate_temb have one row per distinct
        # timestep (1, M, n*D) and token l uses row index[l] (per-token timesteps, fused path)
        eps, skip = self.eps, stg and self.perturbed_attn
        if x.dtype == a.dtype == temb.dtype == self.modulation.dtype and kernels.active(x, a, temb):
            return self._fused(
                x, a, text, audio_text, temb, audio_temb, cross_temb, audio_cross_temb, cross_gate_temb,
                audio_cross_gate_temb, prompt_temb, audio_prompt_temb, rope, audio_rope, cross_rope,
                audio_cross_rope, text_mask, audio_text_mask, cross_modal, skip, index,
            )  # fmt: skip
        if index is not None:  # the PyTorch path takes per-token tables
            temb, cross_temb, cross_gate_temb = (
                t.index_select(1, index) if t.shape[1] > 1 else t for t in (temb, cross_temb, cross_gate_temb)
            )
        vm, am = _mods(self.modulation, temb), _mods(self.audio_modulation, audio_temb)
        # 1. self-attention
        h = rms_modulate(x, vm[0], vm[1], eps)
        x = x + self.self_attn(h, q_rope=rope, skip=skip, seam=True) * vm[2]
        h = rms_modulate(a, am[0], am[1], eps)
        a = a + self.audio_self_attn(h, q_rope=audio_rope, skip=skip) * am[2]
        # 2. cross-attention to the text
        text, audio_text = self._modulate_text(text, audio_text, prompt_temb, audio_prompt_temb, x, a)
        h = rms_modulate(x, vm[6], vm[7], eps) if self.video_text_mod else rms_norm(x, eps)
        out = self.text_attn(h, text, mask=text_mask)
        x = x + (out * vm[8] if self.video_text_mod else out)
        h = rms_modulate(a, am[6], am[7], eps) if self.audio_text_mod else rms_norm(a, eps)
        out = self.audio_text_attn(h, audio_text, mask=audio_text_mask)
        a = a + (out * am[8] if self.audio_text_mod else out)
        # 3. audio <-> video
        if cross_modal:
            hv, ha = rms_norm(x, eps), rms_norm(a, eps)
            v_scale_a2v, v_shift_a2v, v_scale_v2a, v_shift_v2a = _mods(self.cross_modulation[:4], cross_temb)
            (a2v_gate,) = _mods(self.cross_modulation[4:], cross_gate_temb)
            a_scale_a2v, a_shift_a2v, a_scale_v2a, a_shift_v2a = _mods(
                self.audio_cross_modulation[:4], audio_cross_temb
            )
            (v2a_gate,) = _mods(self.audio_cross_modulation[4:], audio_cross_gate_temb)
            q = hv * (1 + v_scale_a2v) + v_shift_a2v
            kv = ha * (1 + a_scale_a2v) + a_shift_a2v
            x = x + a2v_gate * self.a2v_attn(q, kv, q_rope=cross_rope, k_rope=audio_cross_rope)
            q = ha * (1 + a_scale_v2a) + a_shift_v2a
            kv = hv * (1 + v_scale_v2a) + v_shift_v2a
            a = a + v2a_gate * self.v2a_attn(q, kv, q_rope=audio_cross_rope, k_rope=cross_rope)
        # 4. feed-forward
        x = x + self.ff(rms_modulate(x, vm[3], vm[4], eps)) * vm[5]
        a = a + self.audio_ff(rms_modulate(a, am[3], am[4], eps)) * am[5]
        return x, a

    def _modulate_text(
        self,
        text: torch.Tensor,
        audio_text: torch.Tensor,
        prompt_temb: torch.Tensor | None,
        audio_prompt_temb: torch.Tensor | None,
        x: torch.Tensor,
        a: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LTX-2.3's prompt modulation of the text contexts (unchanged without ``cross_attn_mod``)."""
        if self.video_text_mod or self.audio_text_mod:
            pv = self._prompt_mods(self.prompt_modulation, prompt_temb, x)
            pa = self._prompt_mods(self.audio_prompt_modulation, audio_prompt_temb, a)
            text = text * (1 + pv[1]) + pv[0]
            audio_text = audio_text * (1 + pa[1]) + pa[0]
        return text, audio_text

    def _fused(
        self,
        x: torch.Tensor,
        a: torch.Tensor,
        text: torch.Tensor,
        audio_text: torch.Tensor,
        temb: torch.Tensor,
        audio_temb: torch.Tensor,
        cross_temb: torch.Tensor,
        audio_cross_temb: torch.Tensor,
        cross_gate_temb: torch.Tensor,
        audio_cross_gate_temb: torch.Tensor,
        prompt_temb: torch.Tensor | None,
        audio_prompt_temb: torch.Tensor | None,
        rope: RopeTables,
        audio_rope: RopeTables,
        cross_rope: RopeTables,
        audio_cross_rope: RopeTables,
        text_mask: torch.Tensor | None,
        audio_text_mask: torch.Tensor | None,
        cross_modal: bool,
        skip: bool,
        index: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with the Triton kernels (CUDA inference): between two sub-layers, the
        residual of the first and the norm + modulation(s) of the second are one pass over the
        stream (:func:`fastvideo.kernels.gated_residual_adaln`), so each stream is read once per
        boundary; the audio<->video attention takes both of its inputs of a stream from that pass."""
        eps, rms = self.eps, "rms"
        vm, am = _mods(self.modulation, temb), _mods(self.audio_modulation, audio_temb)
        step = kernels.gated_residual_adaln

        def text_mods(m: list[torch.Tensor], s: torch.Tensor, on: bool) -> tuple[torch.Tensor, torch.Tensor]:
            if on:
                return m[6], m[7]  # shift, scale
            zero = s.new_zeros(1, 1, s.shape[-1])  # a plain RMSNorm
            return zero, zero

        # 1. self-attention
        hx = kernels.adaln_modulate(x, vm[0], vm[1], eps, norm=rms, index=index)
        ha = kernels.adaln_modulate(a, am[0], am[1], eps, norm=rms)
        ox = self.self_attn(hx, q_rope=rope, skip=skip, seam=True)
        oa = self.audio_self_attn(ha, q_rope=audio_rope, skip=skip)
        # 2. cross-attention to the text
        text, audio_text = self._modulate_text(text, audio_text, prompt_temb, audio_prompt_temb, x, a)
        x, hx = step(x, ox, vm[2], *text_mods(vm, x, self.video_text_mod), eps, norm=rms, index=index)
        a, ha = step(a, oa, am[2], *text_mods(am, a, self.audio_text_mod), eps, norm=rms)
        ox = self.text_attn(hx, text, mask=text_mask)
        oa = self.audio_text_attn(ha, audio_text, mask=audio_text_mask)
        gx = vm[8] if self.video_text_mod else None
        ga = am[8] if self.audio_text_mod else None
        # 3. audio <-> video
        if cross_modal:
            v_scale_a2v, v_shift_a2v, v_scale_v2a, v_shift_v2a = _mods(self.cross_modulation[:4], cross_temb)
            (a2v_gate,) = _mods(self.cross_modulation[4:], cross_gate_temb)
            a_scale_a2v, a_shift_a2v, a_scale_v2a, a_shift_v2a = _mods(
                self.audio_cross_modulation[:4], audio_cross_temb
            )
            (v2a_gate,) = _mods(self.audio_cross_modulation[4:], audio_cross_gate_temb)
            x, q, kv_v2a = step(
                x,
                ox,
                gx,
                v_shift_a2v,
                v_scale_a2v,
                eps,
                norm=rms,
                second=(v_shift_v2a, v_scale_v2a),
                index=index,
            )
            a, kv, q_v2a = step(
                a, oa, ga, a_shift_a2v, a_scale_a2v, eps, norm=rms, second=(a_shift_v2a, a_scale_v2a)
            )
            # the two projections over the video tokens (a2v's q, v2a's k) share the cross RoPE tables:
            # normalised and rotated in one launch
            a2v, v2a = self.a2v_attn, self.v2a_attn
            qv, kv_video = cross_rope.norm_rope_pair(a2v.q(q), v2a.k(kv_v2a), a2v.norm_q, v2a.norm_k, eps)
            ox = a2v(q, kv, q_rope=cross_rope, k_rope=audio_cross_rope, q_ready=qv)
            oa = v2a(q_v2a, kv_v2a, q_rope=audio_cross_rope, k_rope=cross_rope, k_ready=kv_video)
            gx, ga = a2v_gate, v2a_gate
        # 4. feed-forward
        x, hx = step(x, ox, gx, vm[3], vm[4], eps, norm=rms, index=index)
        a, ha = step(a, oa, ga, am[3], am[4], eps, norm=rms)
        x = kernels.gated_residual(x, self.ff(hx), vm[5], index=index)
        a = kernels.gated_residual(a, self.audio_ff(ha), am[5])
        return x, a

    @staticmethod
    def _prompt_mods(table: torch.Tensor, temb: torch.Tensor | None, x: torch.Tensor) -> list[torch.Tensor]:
        if temb is not None:
            return _mods(table, temb)
        return list(table[None, None].to(device=x.device, dtype=x.dtype).unbind(2))


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class LTX2Transformer(DiT):
    """LTX-2 audio-video DiT: ``forward(video, audio, text, audio_text, timestep, ...) -> (video, audio)``."""

    config_class = LTX2Config
    diffusers_class = "LTX2VideoTransformer3DModel"
    name_mapping = convert.MAPPING
    fsdp_units: ClassVar[tuple[str, ...]] = ("LTX2Block",)
    sparse_attention_layers: ClassVar[tuple[str, ...]] = ("blocks.*.self_attn",)
    # the video and audio streams attend to each other in every block: sharding the video tokens
    # alone would need the audio<->video attention gathered, so no sequence-parallel plan yet
    sequence_parallel_plan = None

    def __init__(self, config: LTX2Config) -> None:
        super().__init__()
        self.config = cfg = config
        d, ad = cfg.dim, cfg.audio_dim
        self.patch_embed = nn.Linear(cfg.in_channels, d)
        self.audio_patch_embed = nn.Linear(cfg.audio_in_channels, ad)
        if cfg.use_prompt_embeddings:
            self.caption_embed = TextProjection(cfg.caption_channels, d)
            self.audio_caption_embed = TextProjection(cfg.caption_channels, ad)
        self.time_embed = TimeModulation(d, 9 if cfg.cross_attn_mod else 6)
        self.audio_time_embed = TimeModulation(ad, 9 if cfg.audio_cross_attn_mod else 6)
        self.cross_time_embed = TimeModulation(d, 4)
        self.audio_cross_time_embed = TimeModulation(ad, 4)
        self.cross_gate_embed = TimeModulation(d, 1)
        self.audio_cross_gate_embed = TimeModulation(ad, 1)
        if cfg.prompt_modulation and cfg.use_prompt_adaln_single:
            self.prompt_embed = TimeModulation(d, 2)
            self.audio_prompt_embed = TimeModulation(ad, 2)
        self.blocks = nn.ModuleList(LTX2Block(cfg) for _ in range(cfg.num_layers))
        self.head_modulation = nn.Parameter(torch.empty(2, d))
        self.head = nn.Linear(d, cfg.out_channels)
        self.audio_head_modulation = nn.Parameter(torch.empty(2, ad))
        self.audio_head = nn.Linear(ad, cfg.audio_out_channels)

    def init_weights(self) -> None:
        super().init_weights()
        for name, p in self.named_parameters():
            if name.endswith("modulation"):
                nn.init.normal_(p, std=p.shape[-1] ** -0.5)

    def patch(self) -> tuple[int, int, int]:
        return (self.config.patch_size_t, self.config.patch_size, self.config.patch_size)

    # ---- positions ----------------------------------------------------------------------------

    def video_positions(
        self, grid: tuple[int, int, int], batch: int, device: torch.device, fps: float
    ) -> torch.Tensor:
        """Midpoints ``(B, 3, L)`` of each token's (time s, y px, x px) extent; the first latent frame
        covers one pixel frame (causal VAE), the others ``vae_scale_factors[0]``."""
        cfg = self.config
        t, h, w = (torch.arange(n, dtype=torch.float32, device=device) for n in grid)
        st, sh, sw = cfg.vae_scale_factors
        tt, hh, ww = torch.meshgrid(t, h, w, indexing="ij")

        def frames(i: torch.Tensor) -> torch.Tensor:
            return (i * st + cfg.causal_offset - st).clamp(min=0) / fps

        mids = torch.stack(
            [(frames(tt) + frames(tt + 1)) / 2, (hh * sh + (hh + 1) * sh) / 2, (ww * sw + (ww + 1) * sw) / 2]
        ).flatten(1)  # (3, L)
        return mids.unsqueeze(0).expand(batch, -1, -1)

    def audio_positions(self, length: int, batch: int, device: torch.device) -> torch.Tensor:
        """Midpoints ``(B, 1, L)`` of each audio latent's time span in seconds (causal first latent)."""
        cfg = self.config
        f = torch.arange(length, dtype=torch.float32, device=device)
        s = cfg.audio_scale_factor

        def seconds(i: torch.Tensor) -> torch.Tensor:
            return (
                (i * s + cfg.causal_offset - s).clip(min=0) * cfg.audio_hop_length / cfg.audio_sampling_rate
            )

        mids = (seconds(f) + seconds(f + 1)) / 2
        return mids.view(1, 1, -1).expand(batch, -1, -1)

    # ---- forward ------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        audio_hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        audio_encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        *,
        audio_timestep: torch.Tensor | None = None,
        sigma: torch.Tensor | None = None,
        audio_sigma: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        audio_encoder_attention_mask: torch.Tensor | None = None,
        fps: float = 24.0,
        isolate_modalities: bool = False,
        stg_blocks: Sequence[int] = (),
        use_cross_timestep: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the flow of both streams.

        :param hidden_states: video latents ``(B, C, T, H, W)``.
        :param audio_hidden_states: audio latents ``(B, C_a, L, M)`` (``C_a * M`` = ``audio_in_channels``).
        :param encoder_hidden_states: / ``audio_encoder_hidden_states``: the text connectors' outputs
            ``(B, Lt, caption_channels)`` (or already at the streams' widths without prompt embeddings).
        :param timestep: ``(B,)`` or ``(B, Lv)`` (one per video token: image conditioning), in
            ``[0, timestep_scale_multiplier]``; ``audio_timestep`` defaults to it.
        :param sigma: ``(B,)`` for the prompt modulation (LTX-2.3) and the cross-modal timestep.
        :param encoder_attention_mask: ``(B, Lt)``, 1 = attend.
        :param isolate_modalities: skip the audio<->video attention (modality-isolation guidance).
        :param stg_blocks: blocks whose self-attention passes the values through (STG), where the
            config has ``perturbed_attn``.
        :returns: the video ``(B, C_out, T, H, W)`` and audio ``(B, C_a, L, M)`` predictions.
        """
        cfg = self.config
        b, _, t, hh, ww = hidden_states.shape
        _, _ca, la, mel = audio_hidden_states.shape
        grid = self.token_grid(hidden_states.shape)
        device, dtype = hidden_states.device, self.dtype
        audio_timestep = timestep if audio_timestep is None else audio_timestep
        audio_sigma = sigma if audio_sigma is None else audio_sigma

        x = self.patch_embed(hidden_states.to(dtype).flatten(2).transpose(1, 2))  # (B, Lv, D)
        a_in = audio_hidden_states.to(dtype).transpose(1, 2).flatten(2)  # (B, La, C_a*M)
        a = self.audio_patch_embed(a_in)  # (B, La, Da)

        vpos, apos = self.video_positions(grid, b, device, fps), self.audio_positions(la, b, device)
        split = cfg.rope_type == "split"
        rope = RopeTables(
            *rope_frequencies(
                vpos,
                (cfg.pos_embed_max_pos, cfg.base_height, cfg.base_width),
                cfg.dim,
                cfg,
                cfg.num_attention_heads,
            ),
            split,
        )
        audio_rope = RopeTables(
            *rope_frequencies(
                apos, (cfg.audio_pos_embed_max_pos,), cfg.audio_dim, cfg, cfg.audio_num_attention_heads
            ),
            split,
        )
        cross_max = (max(cfg.pos_embed_max_pos, cfg.audio_pos_embed_max_pos),)
        cdim = cfg.audio_cross_attention_dim
        cross_rope = RopeTables(
            *rope_frequencies(vpos[:, :1], cross_max, cdim, cfg, cfg.num_attention_heads), split
        )
        audio_cross_rope = RopeTables(
            *rope_frequencies(apos, cross_max, cdim, cfg, cfg.audio_num_attention_heads), split
        )

        def per_batch(mod: torch.Tensor) -> torch.Tensor:
            return mod.view(b, -1, mod.shape[-1])  # (B, 1 or L, n*D)

        rows = self._timestep_rows(timestep, x, a)  # per-token timesteps on the fused path: distinct values
        video_t = rows[0] if rows is not None else timestep

        def video_mods(mod: torch.Tensor) -> torch.Tensor:
            return mod.view(1, -1, mod.shape[-1]) if rows is not None else per_batch(mod)  # (1, M, n*D)

        temb, emb = self.time_embed(video_t, dtype)
        audio_temb, audio_emb = self.audio_time_embed(audio_timestep, dtype)
        prompt_temb = audio_prompt_temb = None
        if cfg.prompt_modulation and cfg.use_prompt_adaln_single:
            prompt_temb = per_batch(self.prompt_embed(sigma, dtype)[0])
            audio_prompt_temb = per_batch(self.audio_prompt_embed(audio_sigma, dtype)[0])
        gate_factor = cfg.cross_attn_timestep_scale_multiplier / cfg.timestep_scale_multiplier
        video_ct = audio_sigma.flatten() if use_cross_timestep else video_t.flatten()
        audio_ct = sigma.flatten() if use_cross_timestep else audio_timestep.flatten()
        cross_rows = per_batch if use_cross_timestep else video_mods
        cross_temb = cross_rows(self.cross_time_embed(video_ct, dtype)[0])
        cross_gate = cross_rows(self.cross_gate_embed(video_ct * gate_factor, dtype)[0])
        audio_cross_temb = per_batch(self.audio_cross_time_embed(audio_ct, dtype)[0])
        audio_cross_gate = per_batch(self.audio_cross_gate_embed(audio_ct * gate_factor, dtype)[0])

        text = encoder_hidden_states.to(dtype)
        audio_text = audio_encoder_hidden_states.to(dtype)
        if cfg.use_prompt_embeddings:
            text, audio_text = self.caption_embed(text), self.audio_caption_embed(audio_text)
        text_mask = self._text_bias(encoder_attention_mask, dtype)
        audio_text_mask = self._text_bias(audio_encoder_attention_mask, dtype)

        stg = set(stg_blocks)
        for i, block in enumerate(self.blocks):
            x, a = block(
                x, a, text, audio_text, video_mods(temb), per_batch(audio_temb), cross_temb, audio_cross_temb,
                cross_gate, audio_cross_gate, prompt_temb, audio_prompt_temb, rope, audio_rope, cross_rope,
                audio_cross_rope, text_mask, audio_text_mask, cross_modal=not isolate_modalities, stg=i in stg,
                index=rows[1] if rows is not None else None,
            )  # fmt: skip

        emb = (
            video_mods(emb).index_select(1, rows[1]) if rows is not None else per_batch(emb)
        )  # (B or 1, ., D)
        shift, scale = (self.head_modulation + emb[:, :, None]).unbind(2)
        x = self.head(F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift)  # (B, Lv, C_out)
        shift, scale = (self.audio_head_modulation + per_batch(audio_emb)[:, :, None]).unbind(2)
        a = self.audio_head(F.layer_norm(a, a.shape[-1:], eps=1e-6) * (1 + scale) + shift)  # (B, La, C_a*M)
        video = x.transpose(1, 2).reshape(b, -1, t, hh, ww)
        audio = a.reshape(b, la, -1, mel).transpose(1, 2)
        return video, audio

    @staticmethod
    def _timestep_rows(
        timestep: torch.Tensor, x: torch.Tensor, a: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-token timesteps ``(B, Lv)`` as ``(values (M,), index (Lv,))`` (token l of every sample
        has ``values[index[l]]``) when the blocks run the fused kernels, which take per-row tables and
        an index: the modulation is then computed for the M distinct timesteps (2 with a conditioning
        image) instead of every token. None otherwise (or when the samples' layouts differ)."""
        if timestep.ndim != 2 or not kernels.active(x, a):
            return None
        values, inverse = torch.unique(timestep, return_inverse=True)  # one host sync per forward
        if timestep.shape[0] > 1 and not bool((inverse == inverse[:1]).all()):
            return None
        return values, inverse[0]

    @staticmethod
    def _text_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """``(B, Lt)`` 1/0 mask -> additive ``(B, 1, 1, Lt)`` bias (-10000 where masked), as diffusers."""
        if mask is None:
            return None
        return ((1 - mask.to(dtype)) * -10000.0)[:, None, None, :]
