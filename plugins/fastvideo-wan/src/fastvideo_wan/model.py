"""The Wan 2.1 / 2.2 video diffusion transformer (DiT).

Paper: "Wan: Open and Advanced Large-Scale Video Generative Models" (Wan Team, arXiv 2503.20314).
Tracks diffusers' ``src/diffusers/models/transformers/transformer_wan.py`` (``WanTransformer3DModel``,
diffusers 0.42.1): same configuration, same call convention, same fp32 numerics; weights load from
its checkpoints through the declared name mapping in :mod:`fastvideo_wan.convert`.

One class serves Wan2.1 T2V 1.3B/14B, I2V/FLF2V 14B (CLIP image tokens through their own key/value
projections), Wan2.2 TI2V-5B (one timestep per video token) and Wan2.2 A14B (two instances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastvideo import kernels
from fastvideo.attention import ALL, DENSE, attention
from fastvideo.configs import DiffusersConfigMixin
from fastvideo.layers import MLP, modulate, rope_apply, rope_tables, timestep_embedding, unpatchify
from fastvideo.models import DiT, SequenceParallelPlan
from fastvideo_wan import convert

QK_NORMS = ("rms_norm_across_heads",)


@dataclass(frozen=True, kw_only=True)
class WanConfig(DiffusersConfigMixin):
    """Hyper-parameters of :class:`WanTransformer`; the fields and defaults of diffusers' config.json."""

    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) latent cells per token
    num_attention_heads: int = 40
    attention_head_dim: int = 128  # split (t, h, w) = (Dh - 4*(Dh//6), 2*(Dh//6), 2*(Dh//6)) by RoPE
    in_channels: int = 16  # latent channels (+ mask and image latents for I2V: 36; TI2V: 48)
    out_channels: int | None = 16  # None means in_channels, as in diffusers
    text_dim: int = 4096  # umT5-XXL hidden size
    freq_dim: int = 256  # sinusoidal timestep features
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True  # affine LayerNorm before cross-attention
    qk_norm: str | None = "rms_norm_across_heads"  # RMSNorm over all heads of q and k
    eps: float = 1e-6
    image_dim: int | None = None  # CLIP image-token features (1280) for Wan2.1 I2V / FLF2V
    added_kv_proj_dim: int | None = None  # input size of the image key/value projections (= inner dim)
    rope_max_seq_len: int = 1024  # largest token-grid extent along any axis
    pos_embed_seq_len: int | None = None  # FLF2V: learned position table over 2 x 257 image tokens

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size={self.patch_size} must be three positive ints (t, h, w)")
        if self.attention_head_dim % 2 or self.attention_head_dim < 6:
            raise ValueError(f"attention_head_dim={self.attention_head_dim} must be even and >= 6 (3D RoPE)")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim={self.freq_dim} must be even (cos and sin halves)")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(
                f"qk_norm={self.qk_norm!r} is not supported; diffusers' WanTransformer3DModel always applies "
                f"RMSNorm across heads, so only {QK_NORMS} describes its checkpoints"
            )
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            raise ValueError(
                f"image_dim={self.image_dim} and added_kv_proj_dim={self.added_kv_proj_dim} must be set together "
                "(Wan2.1 I2V: 1280 and the inner dim) or both be None"
            )
        if self.added_kv_proj_dim not in (None, self.dim):
            raise ValueError(
                f"added_kv_proj_dim={self.added_kv_proj_dim} must equal num_attention_heads * attention_head_dim "
                f"= {self.dim}: the image key/value projections read embedded image tokens"
            )
        if self.pos_embed_seq_len is not None and (self.image_dim is None or self.pos_embed_seq_len % 2):
            raise ValueError(
                f"pos_embed_seq_len={self.pos_embed_seq_len} needs image_dim (got {self.image_dim}) and must be "
                "even (first + last frame tokens)"
            )
        sizes = (self.num_layers, self.num_attention_heads, self.ffn_dim, self.rope_max_seq_len)
        if min(sizes) < 1 or self.eps <= 0:
            raise ValueError(f"sizes and eps must be positive: {self}")

    @property
    def dim(self) -> int:
        """Width of the residual stream (``num_attention_heads * attention_head_dim``)."""
        return self.num_attention_heads * self.attention_head_dim


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """An affine LayerNorm whose (possibly fp32-kept) weights are used in x's dtype."""
    w, b = norm.weight.to(x.dtype), norm.bias.to(x.dtype)
    return F.layer_norm(x, norm.normalized_shape, w, b, norm.eps)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


class WanSelfAttention(nn.Module):
    """Video self-attention with RMSNorm over all heads of q and k, then 3D RoPE."""

    def __init__(self, dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads, self.eps = num_heads, eps
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        heads = (self.num_heads, -1)
        if kernels.active(x, cos, sin):  # CUDA inference: RMSNorm across heads + RoPE in one kernel each
            q, k = kernels.rms_norm_rope_pair(  # q and k in one launch, the tables read once
                self.q(x).unflatten(-1, heads),
                self.k(x).unflatten(-1, heads),
                self.norm_q.weight,
                self.norm_k.weight,
                cos,
                sin,
                self.eps,
                x.shape[-1],
            )
            out = attention(q, k, self.v(x).unflatten(-1, heads), allow=ALL, sequence_parallel=True)
            return self.o(out.flatten(2))  # (B, L, D)
        q = rope_apply(self.norm_q(self.q(x)).unflatten(-1, heads), cos, sin)  # (B, L, H, Dh)
        k = rope_apply(self.norm_k(self.k(x)).unflatten(-1, heads), cos, sin)  # (B, L, H, Dh)
        v = self.v(x).unflatten(-1, heads)  # (B, L, H, Dh)
        out = attention(q, k, v, allow=ALL, sequence_parallel=True)  # (B, L, H, Dh)
        return self.o(out.flatten(2))  # (B, L, D)


class WanCrossAttention(nn.Module):
    """Attention from video tokens to text tokens, plus (I2V) to image tokens with their own k/v."""

    def __init__(self, dim: int, num_heads: int, eps: float, image: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.k_img = nn.Linear(dim, dim) if image else None
        self.v_img = nn.Linear(dim, dim) if image else None
        self.norm_k_img = nn.RMSNorm(dim, eps=eps) if image else None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_img: torch.Tensor | None
    ) -> torch.Tensor:
        # x (B, L, D); context (B, Lt, D); context_img (B, Li, D) or None
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)  # (B, L, H, Dh)
        k = self.norm_k(self.k(context)).unflatten(-1, heads)  # (B, Lt, H, Dh)
        v = self.v(context).unflatten(-1, heads)  # (B, Lt, H, Dh)
        out = attention(q, k, v, allow=DENSE).flatten(2)  # (B, L, D)
        if context_img is not None:
            k_img = self.norm_k_img(self.k_img(context_img)).unflatten(-1, heads)  # (B, Li, H, Dh)
            v_img = self.v_img(context_img).unflatten(-1, heads)  # (B, Li, H, Dh)
            out = out + attention(q, k_img, v_img, allow=DENSE).flatten(2)  # (B, L, D)
        return self.o(out)  # (B, L, D)


class WanBlock(nn.Module):
    """adaLN-modulated self-attention, cross-attention, and a GELU(tanh) feed-forward."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        dim, eps = cfg.dim, cfg.eps
        self.eps = eps
        self.modulation = nn.Parameter(torch.empty(1, 6, dim))  # + per-step (shift, scale, gate) x 2
        self.self_attn = WanSelfAttention(dim, cfg.num_attention_heads, eps)
        self.norm_cross = nn.LayerNorm(dim, eps=eps) if cfg.cross_attn_norm else None
        image = cfg.image_dim is not None
        self.cross_attn = WanCrossAttention(dim, cfg.num_attention_heads, eps, image=image)
        self.ffn = MLP(dim, cfg.ffn_dim, dim, "gelu_tanh")

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_img: torch.Tensor | None,
        temb6: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        # x (B, L, D); temb6 (B, Lm, 6, D) with Lm = 1 or L; the modulation sum is fp32 as in diffusers
        mod = self.modulation + temb6.float()  # (B, Lm, 6, D) fp32
        shift, scale, gate, c_shift, c_scale, c_gate = mod.unbind(2)  # 6 x (B, Lm, D)
        attn = self.self_attn(modulate(x, shift, scale, eps=self.eps), cos, sin)  # (B, L, D)
        x = torch.addcmul(x, attn, gate.to(x.dtype))  # (B, L, D)
        h = layer_norm(x, self.norm_cross) if self.norm_cross is not None else x  # (B, L, D)
        x = x + self.cross_attn(h, context, context_img)  # (B, L, D)
        ff = self.ffn(modulate(x, c_shift, c_scale, eps=self.eps))  # (B, L, D)
        return torch.addcmul(x, ff, c_gate.to(x.dtype))  # (B, L, D)


class WanImageEmbedding(nn.Module):
    """CLIP image tokens -> model width (LayerNorm, GELU MLP, LayerNorm), + FLF2V position table."""

    def __init__(self, image_dim: int, dim: int, pos_embed_seq_len: int | None) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(image_dim)  # eps 1e-5, as diffusers' default
        self.fc1 = nn.Linear(image_dim, image_dim)
        self.fc2 = nn.Linear(image_dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.pos_embed = None
        if pos_embed_seq_len is not None:
            self.pos_embed = nn.Parameter(torch.empty(1, pos_embed_seq_len, image_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:  # FLF2V: (2B, Li, C) first/last-frame tokens -> (B, 2 Li, C)
            x = x.reshape(-1, self.pos_embed.shape[1], x.shape[-1]) + self.pos_embed
        x = F.gelu(self.fc1(layer_norm(x, self.norm_in)))  # (B, Li, C)
        return layer_norm(self.fc2(x), self.norm_out)  # (B, Li, D)


class WanHead(nn.Module):
    """Output adaLN (shift, scale) and the projection to patch pixels."""

    def __init__(self, dim: int, out_dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.modulation = nn.Parameter(torch.empty(1, 2, dim))
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation + temb.unsqueeze(2)).unbind(2)  # (B, Lm, D) fp32
        return self.proj(modulate(x, shift, scale, eps=self.eps))  # (B, L, pt*ph*pw*C)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class WanTransformer(DiT):
    """Wan DiT: ``forward(latents, timestep, text, image=None) -> prediction`` as diffusers' model."""

    config_class = WanConfig
    diffusers_class = "WanTransformer3DModel"
    name_mapping = convert.MAPPING
    checkpoint_mappings = (convert.ORIGINAL_MAPPING,)  # single files in the original naming (FP8 releases)
    fsdp_units: ClassVar[tuple[str, ...]] = ("WanBlock",)
    #: diffusers' ``_keep_in_fp32_modules``
    fp32_modules: ClassVar[tuple[str, ...]] = (
        "time_embed",
        "modulation",
        "norm_cross",
        "image_embed.norm_in",
        "image_embed.norm_out",
    )
    #: backends that need per-layer modules get them attached here (fastvideo.attention.layers)
    sparse_attention_layers: ClassVar[tuple[str, ...]] = ("blocks.*.self_attn",)
    #: text/image-only modules: computed once per prompt by the text key/value cache (fastvideo.optimize)
    text_kv_layers: ClassVar[tuple[str, ...]] = (
        "text_embed",
        "image_embed",
        "blocks.*.cross_attn.k",
        "blocks.*.cross_attn.v",
        "blocks.*.cross_attn.k_img",
        "blocks.*.cross_attn.v_img",
    )
    #: the per-step modulation e0, TeaCache's indicator (its "ret steps" mode)
    timestep_modulation: ClassVar[str | None] = "time_mod"
    #: Block arguments with a token dim: x (B, L, D), temb6 (B, Lm, 6, D) when Lm = L, cos and sin
    #: (L, 1, Dh); the last block's output is gathered on dim 1.
    sequence_parallel_plan = SequenceParallelPlan(
        blocks="blocks", shard={"x": 1, "temb6": 1, "cos": 0, "sin": 0}
    )

    def __init__(self, config: WanConfig) -> None:
        super().__init__()
        self.config = cfg = config
        dim = cfg.dim
        self.patch_embed = nn.Conv3d(cfg.in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.time_embed = MLP(cfg.freq_dim, dim, dim, "silu")
        self.time_mod = nn.Linear(dim, 6 * dim)  # silu(temb) -> per-block (shift, scale, gate) x 2
        self.text_embed = MLP(cfg.text_dim, dim, dim, "gelu_tanh")
        self.image_embed = None
        if cfg.image_dim is not None:
            self.image_embed = WanImageEmbedding(cfg.image_dim, dim, cfg.pos_embed_seq_len)
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(dim, cfg.out_channels * math.prod(cfg.patch_size), cfg.eps)

    def init_weights(self) -> None:
        """Random init for training from scratch (PyTorch defaults; modulation ~ N(0, 1/dim))."""
        super().init_weights()
        for name, p in self.named_parameters():
            if name.endswith("modulation"):
                nn.init.normal_(p, std=self.config.dim**-0.5)
            elif name.endswith("pos_embed"):
                nn.init.zeros_(p)

    def teacache_coefficients(self) -> tuple[float, ...] | None:
        """TeaCache4Wan2.1's published polynomials ("ret steps" mode, e0 indicator), by model size."""
        cfg = self.config
        if cfg.dim == 1536:  # T2V 1.3B
            return (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02)
        if cfg.dim == 5120 and cfg.image_dim is not None:  # I2V 14B 480P
            return (2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01)
        if cfg.dim == 5120:  # T2V 14B
            return (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01)
        return None

    def check_grid(self, grid: tuple[int, int, int]) -> None:
        if max(grid) > self.config.rope_max_seq_len:
            raise ValueError(
                f"token grid {grid} exceeds rope_max_seq_len={self.config.rope_max_seq_len}; use a smaller video"
            )

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow (velocity) for ``hidden_states``, diffusers' call convention.

        :param hidden_states: ``(B, C_in, T, H, W)`` latents.
        :param timestep: ``(B,)``, or ``(B, L)`` with one timestep per video token (Wan2.2 TI2V).
        :param encoder_hidden_states: ``(B, Lt, text_dim)`` umT5 embeddings.
        :param encoder_hidden_states_image: ``(B, Li, image_dim)`` CLIP tokens (I2V; FLF2V: ``(2B, ...)``).
        :returns: ``(B, C_out, T, H, W)`` in the model's dtype.
        """
        grid = self.token_grid(hidden_states.shape)  # (T', H', W')
        head_dim = self.config.attention_head_dim
        hw = 2 * (head_dim // 6)  # Wan splits the head dim (t, h, w) = (Dh - 2hw, hw, hw); fp64 angles
        axes = (head_dim - 2 * hw, hw, hw)
        cos, sin = rope_tables(
            grid, axes, device=hidden_states.device, dtype=self.dtype, angle_dtype=torch.float64
        )
        x = self.patch_embed(hidden_states.to(self.dtype))  # (B, D, T', H', W')
        x = x.flatten(2).transpose(1, 2).contiguous()  # (B, L, D)
        temb = self._embed_time(timestep, x.shape[0], x.shape[1])  # (B, Lm, D), Lm = 1 or L
        temb6 = self.time_mod(F.silu(temb)).unflatten(-1, (6, -1))  # (B, Lm, 6, D)
        context = self.text_embed(encoder_hidden_states.to(self.dtype))  # (B, Lt, D)
        context_img = self._embed_image(encoder_hidden_states_image)  # (B, Li, D) or None
        for block in self.blocks:
            x = block(x, context, context_img, temb6, cos, sin)  # (B, L, D)
        x = self.head(x, temb)  # (B, L, pt*ph*pw*C_out)
        return unpatchify(x, grid, self.config.patch_size, channels_last=True)  # (B, C_out, T, H, W)

    def _embed_time(self, timestep: torch.Tensor, batch: int, num_tokens: int) -> torch.Tensor:
        t = timestep.expand(batch) if timestep.ndim == 0 else timestep
        t = t.reshape(batch, -1)  # (B, Lm)
        if t.shape[1] not in (1, num_tokens):
            raise ValueError(
                f"timestep {tuple(timestep.shape)} must be (B,) or (B, {num_tokens}) (one per token)"
            )
        freqs = timestep_embedding(t.flatten(), self.config.freq_dim)  # (B*Lm, F) fp32
        temb = self.time_embed(freqs.to(self.time_embed.fc1.weight.dtype))  # (B*Lm, D)
        return temb.unflatten(0, t.shape).to(self.dtype)  # (B, Lm, D)

    def _embed_image(self, image: torch.Tensor | None) -> torch.Tensor | None:
        if image is None:
            return None
        if self.image_embed is None:
            raise ValueError(
                "encoder_hidden_states_image was given but the model has no image_dim (not an I2V DiT)"
            )
        return self.image_embed(image.to(self.dtype))  # (B, Li, D)
