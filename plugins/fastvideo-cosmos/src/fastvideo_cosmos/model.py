"""The Cosmos-Predict2 / Predict2.5 diffusion transformer (DiT).

Paper: "Cosmos World Foundation Model Platform for Physical AI" (NVIDIA, arXiv 2501.03575).
Tracks diffusers' ``src/diffusers/models/transformers/transformer_cosmos.py``
(``CosmosTransformer3DModel``, diffusers 0.42.1): same configuration, same call convention, same
fp32 numerics; weights load from its checkpoints through :data:`fastvideo_cosmos.convert.MAPPING`.

The block: adaLN-LoRA modulation (each of the three sub-layers projects ``silu(t_emb)`` through a
rank-``adaln_lora_dim`` bottleneck and adds the shared timestep MLP's ``3 D`` output), self-attention
with per-head RMSNorm and 3D RoPE (rotate-half, per-axis NTK scaling), cross-attention to the text,
and a GELU feed-forward. The input carries the condition-mask channel (Video2World) and the padding
mask channel; Predict2.5 projects its Qwen2.5-VL features to the text width first.

``rope_fps``: diffusers scales the temporal RoPE positions by ``24 / fps`` when a pipeline passes
``fps`` (Video2World does), while the released Predict2 checkpoints were trained without it. The
default follows diffusers; ``rope_fps=False`` at construction gives the checkpoints' behaviour
(``docs/cosmos.md`` shows the difference).
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
from fastvideo.layers import timestep_embedding
from fastvideo.models import DiT, SequenceParallelPlan
from fastvideo_cosmos import convert

#: The frame rate the temporal RoPE positions are expressed in when ``fps`` is given (diffusers).
BASE_FPS = 24


@dataclass(frozen=True, kw_only=True)
class CosmosConfig(DiffusersConfigMixin):
    """Hyper-parameters of :class:`CosmosTransformer`: the fields and defaults of diffusers' config.json."""

    in_channels: int = 16  # latent channels (+1 condition mask for Video2World / Predict2.5)
    out_channels: int = 16
    num_attention_heads: int = 32
    attention_head_dim: int = 128  # the RoPE splits it over (t, h, w): see rope_axes
    num_layers: int = 28
    mlp_ratio: float = 4.0
    text_embed_dim: int = 1024  # T5-11B width (Predict2.5: the projection's output width)
    adaln_lora_dim: int = 256  # the modulation bottleneck
    max_size: tuple[int, int, int] = (128, 240, 240)  # largest latent (T, H, W)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    rope_scale: tuple[float, float, float] = (2.0, 1.0, 1.0)  # NTK factor per axis (t, h, w)
    concat_padding_mask: bool = True  # one more input channel: the (resized) pixel padding mask
    extra_pos_embed_type: str | None = "learnable"  # Cosmos 1.0: learned per-axis tables; Predict2: None
    use_crossattn_projection: bool = False  # Predict2.5: Linear + GELU from the Qwen2.5-VL features
    crossattn_proj_in_channels: int = 1024
    encoder_hidden_states_channels: int = 1024
    controlnet_block_every_n: int | None = None  # Transfer2.5 only: not supported
    img_context_dim_in: int | None = None  # Transfer2.5 only: not supported
    img_context_num_tokens: int = 256
    img_context_dim_out: int = 2048

    def __post_init__(self) -> None:
        for name in ("max_size", "patch_size", "rope_scale"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size={self.patch_size} must be three positive ints (t, h, w)")
        if self.patch_size[0] != 1:
            raise ValueError(
                f"patch_size={self.patch_size}: the temporal patch must be 1 (per-frame timesteps need it)"
            )
        if len(self.max_size) != 3 or len(self.rope_scale) != 3:
            raise ValueError(f"max_size={self.max_size} and rope_scale={self.rope_scale} must have 3 entries")
        if self.attention_head_dim < 12 or self.attention_head_dim % 6 % 2:
            raise ValueError(
                f"attention_head_dim={self.attention_head_dim} must be >= 12 with an even temporal RoPE "
                "share (Dh - 2 * (Dh // 6 * 2)), e.g. 128"
            )
        if self.extra_pos_embed_type not in (None, "learnable"):
            raise ValueError(
                f"extra_pos_embed_type={self.extra_pos_embed_type!r} must be None or 'learnable'"
            )
        if self.controlnet_block_every_n is not None or self.img_context_dim_in:
            raise ValueError(
                f"controlnet_block_every_n={self.controlnet_block_every_n} / img_context_dim_in="
                f"{self.img_context_dim_in}: Cosmos-Transfer2.5 DiTs are not supported; use a Predict checkpoint"
            )
        if min(self.num_layers, self.num_attention_heads, self.adaln_lora_dim, self.in_channels) < 1:
            raise ValueError(f"sizes must be positive: {self}")

    @property
    def dim(self) -> int:
        """Width of the residual stream (``num_attention_heads * attention_head_dim``)."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def rope_axes(self) -> tuple[int, int, int]:
        """How the head dim splits over (t, h, w) in the RoPE (diffusers: h = w = Dh // 6 * 2)."""
        hw = self.attention_head_dim // 6 * 2
        return self.attention_head_dim - 2 * hw, hw, hw


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim with the statistics in fp32, then the weight in its dtype."""
    h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return h.to(weight.dtype) * weight if weight.dtype != torch.float32 else (h * weight).to(x.dtype)


def rope_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of ``x`` ``(B, L, H, Dh)`` by ``cos``/``sin`` ``(L, 1, Dh)``, in fp32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)  # (B, L, H, Dh)
    return (x.float() * cos + rotated * sin).to(x.dtype)


def rope_tables(
    grid: tuple[int, int, int],
    cfg: CosmosConfig,
    fps: float | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosmos' 3D RoPE tables ``(L, 1, Dh)`` for a ``(T, H, W)`` token grid in raster order.

    Each axis gets ``dim_a / 2`` frequencies ``theta_a^(-2i / dim_a)`` with the NTK-scaled base
    ``theta_a = 10000 * rope_scale_a ** (dim_a / (dim_a - 2))``; the temporal positions are
    ``t * 24 / fps`` when ``fps`` is given. Angles are laid out ``[t, h, w, t, h, w]`` (rotate-half).
    """
    parts = []
    for axis, (n, d, scale) in enumerate(zip(grid, cfg.rope_axes, cfg.rope_scale, strict=True)):
        theta = 10000.0 * scale ** (d / (d - 2))
        inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32)[: d // 2] / d)
        pos = torch.arange(n, device=device, dtype=torch.float32)
        if axis == 0 and fps is not None:
            pos = pos / fps * BASE_FPS
        shape = [1, 1, 1, d // 2]
        shape[axis] = n
        parts.append(torch.outer(pos, inv_freq).view(shape).expand(*grid, d // 2))
    half = torch.cat(parts, dim=-1).reshape(-1, 1, cfg.attention_head_dim // 2)  # (L, 1, Dh/2)
    angles = torch.cat([half, half], dim=-1)  # (L, 1, Dh)
    return angles.cos(), angles.sin()


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


class CosmosModulation(nn.Module):
    """adaLN-LoRA: ``up(down(silu(emb))) + temb`` split into ``n`` (shift, scale[, gate]) tensors."""

    def __init__(self, dim: int, lora_dim: int, n: int) -> None:
        super().__init__()
        self.n = n
        self.down = nn.Linear(dim, lora_dim, bias=False)
        self.up = nn.Linear(lora_dim, n * dim, bias=False)

    def forward(
        self,
        emb: torch.Tensor,
        temb: torch.Tensor,
        frames: torch.Tensor | None = None,
        *,
        per_token: bool = True,
    ) -> tuple[torch.Tensor, ...]:
        # emb (B, Tm, D); temb (B, Tm, 3D); frames (L,) the frame of each token, or None (Tm = 1)
        mod = self.up(self.down(F.silu(emb))) + temb[..., : self.up.out_features]  # (B, Tm, nD)
        if frames is not None and per_token:  # computed once per frame, then laid out per token
            mod = mod.index_select(1, frames)  # (B, L, nD)
        return mod.chunk(self.n, dim=-1)  # n x (B, L or 1, D)


def adaln(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``LayerNorm(x) * (1 + scale) + shift`` (no affine, eps 1e-6), as diffusers orders it."""
    return torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=1e-6), 1 + scale)  # one pass over x


class CosmosAttention(nn.Module):
    """Multi-head attention with per-head RMSNorm of q and k (eps 1e-5) and no biases.

    Self-attention (``context`` None) rotates q and k by the RoPE and admits sparse backends;
    cross-attention to the text is dense.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.k = nn.Linear(context_dim, num_heads * head_dim, bias=False)
        self.v = nn.Linear(context_dim, num_heads * head_dim, bias=False)
        self.o = nn.Linear(num_heads * head_dim, dim, bias=False)
        self.norm_q = nn.Parameter(torch.empty(head_dim))
        self.norm_k = nn.Parameter(torch.empty(head_dim))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        cos: torch.Tensor | None = None,
        sin: torch.Tensor | None = None,
    ) -> torch.Tensor:
        src = x if context is None else context
        heads = (self.num_heads, -1)
        if kernels.active(x, src):  # CUDA inference: norm (+ RoPE) in one Triton kernel each
            return self._fused(x, src, context is None, cos, sin)
        q = rms_norm(self.q(x).unflatten(-1, heads), self.norm_q, 1e-5)  # (B, L, H, Dh)
        k = rms_norm(self.k(src).unflatten(-1, heads), self.norm_k, 1e-5)  # (B, S, H, Dh)
        v = self.v(src).unflatten(-1, heads)  # (B, S, H, Dh)
        if context is None:
            assert cos is not None and sin is not None
            q, k = rope_rotate(q, cos, sin), rope_rotate(k, cos, sin)
            out = attention(q, k, v, allow=ALL, sequence_parallel=True)  # (B, L, H, Dh)
        else:
            out = attention(q, k, v, allow=DENSE)  # (B, L, H, Dh)
        return self.o(out.flatten(2).type_as(q))  # (B, L, D)

    def _fused(
        self,
        x: torch.Tensor,
        src: torch.Tensor,
        is_self: bool,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
    ) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q, k, v = (
            self.q(x).unflatten(-1, heads),
            self.k(src).unflatten(-1, heads),
            self.v(src).unflatten(-1, heads),
        )
        dh = q.shape[-1]
        if is_self:
            assert cos is not None and sin is not None
            # q and k in one launch: the RoPE tables are read once for both
            q, k = kernels.rms_norm_rope_pair(
                q, k, self.norm_q, self.norm_k, cos, sin, 1e-5, dh, layout="half", signed_sin=False
            )
            out = attention(q, k, v, allow=ALL, sequence_parallel=True)
        else:
            q, k = kernels.rms_norm(q, self.norm_q, 1e-5, dh), kernels.rms_norm(k, self.norm_k, 1e-5, dh)
            out = attention(q, k, v, allow=DENSE)
        return self.o(out.flatten(2).type_as(q))  # (B, L, D)


class CosmosFeedForward(nn.Module):
    """``fc2(gelu(fc1(x)))`` without biases (exact GELU)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (B, L, 4D)
        if kernels.active(h):  # CUDA inference: in place, no second (L, 4D) buffer
            return self.fc2(torch.ops.aten.gelu_(h))
        return self.fc2(F.gelu(h))


class CosmosBlock(nn.Module):
    """Gated self-attention, cross-attention and feed-forward, each adaLN-LoRA modulated."""

    def __init__(self, cfg: CosmosConfig) -> None:
        super().__init__()
        dim, heads, hd = cfg.dim, cfg.num_attention_heads, cfg.attention_head_dim
        self.mod_self = CosmosModulation(dim, cfg.adaln_lora_dim, 3)
        self.self_attn = CosmosAttention(dim, dim, heads, hd)
        self.mod_cross = CosmosModulation(dim, cfg.adaln_lora_dim, 3)
        self.cross_attn = CosmosAttention(dim, cfg.text_embed_dim, heads, hd)
        self.mod_ff = CosmosModulation(dim, cfg.adaln_lora_dim, 3)
        self.ffn = CosmosFeedForward(dim, int(dim * cfg.mlp_ratio))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        emb: torch.Tensor,
        temb: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        pos: torch.Tensor | None = None,
        frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # x (B, L, D); context (B, S, Dt); emb (B, Tm, D); temb (B, Tm, 3D): one row per sample (Tm = 1)
        # or per latent frame, with frames (L,) the frame of each token
        if pos is not None:
            x = x + pos  # (B, L, D)
        if kernels.active(x, emb, temb):  # CUDA inference: fused adaLN and gated residuals
            return self._fused(x, context, emb, temb, cos, sin, frames)
        shift, scale, gate = self.mod_self(emb, temb, frames)  # 3 x (B, L or 1, D)
        x = torch.addcmul(x, gate, self.self_attn(adaln(x, shift, scale), cos=cos, sin=sin))  # (B, L, D)
        shift, scale, gate = self.mod_cross(emb, temb, frames)
        x = torch.addcmul(x, gate, self.cross_attn(adaln(x, shift, scale), context))  # (B, L, D)
        shift, scale, gate = self.mod_ff(emb, temb, frames)
        return torch.addcmul(x, gate, self.ffn(adaln(x, shift, scale)))  # (B, L, D)

    def _fused(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        emb: torch.Tensor,
        temb: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        frames: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`forward` with the Triton kernels: the modulation stays one row per sample or frame, and
        each sub-layer's gated residual and the next one's adaLN are one pass over the tokens."""
        (s_shift, s_scale, s_gate), (c_shift, c_scale, c_gate), (f_shift, f_scale, f_gate) = (
            m(emb, temb, frames, per_token=False) for m in (self.mod_self, self.mod_cross, self.mod_ff)
        )  # 3 x 3 x (B, Tm, D)
        h = kernels.adaln_modulate(x, s_shift, s_scale, 1e-6, index=frames)  # (B, L, D)
        y = self.self_attn(h, cos=cos, sin=sin)
        x, h = kernels.gated_residual_adaln(x, y, s_gate, c_shift, c_scale, 1e-6, index=frames)
        y = self.cross_attn(h, context)
        x, h = kernels.gated_residual_adaln(x, y, c_gate, f_shift, f_scale, 1e-6, index=frames)
        return kernels.gated_residual(x, self.ffn(h), f_gate, index=frames)


class CosmosHead(nn.Module):
    """Output adaLN-LoRA (shift, scale) and the projection to patch cells."""

    def __init__(self, cfg: CosmosConfig) -> None:
        super().__init__()
        self.mod = CosmosModulation(cfg.dim, cfg.adaln_lora_dim, 2)
        self.proj = nn.Linear(cfg.dim, cfg.out_channels * math.prod(cfg.patch_size), bias=False)

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, temb: torch.Tensor, frames: torch.Tensor | None
    ) -> torch.Tensor:
        if kernels.active(x, emb, temb):
            shift, scale = self.mod(emb, temb, frames, per_token=False)  # 2 x (B, Tm, D)
            return self.proj(kernels.adaln_modulate(x, shift, scale, 1e-6, index=frames))
        shift, scale = self.mod(emb, temb, frames)  # 2 x (B, L or 1, D)
        return self.proj(adaln(x, shift, scale))  # (B, L, ph*pw*pt*C)


class CosmosPositionTable(nn.Module):
    """Cosmos 1.0's learned per-axis position tables, summed and RMS-normalised (diffusers' scaling)."""

    def __init__(self, cfg: CosmosConfig) -> None:
        super().__init__()
        t, h, w = (s // p for s, p in zip(cfg.max_size, cfg.patch_size, strict=True))
        self.t = nn.Parameter(torch.empty(t, cfg.dim))
        self.h = nn.Parameter(torch.empty(h, cfg.dim))
        self.w = nn.Parameter(torch.empty(w, cfg.dim))

    def forward(self, grid: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
        t, h, w = grid
        emb = self.t[:t, None, None] + self.h[None, :h, None] + self.w[None, None, :w]  # (T, H, W, D)
        emb = emb.flatten(0, 2)[None]  # (1, L, D)
        norm = torch.linalg.vector_norm(emb, dim=-1, keepdim=True, dtype=torch.float32)
        norm = 1e-6 + norm * math.sqrt(norm.numel() / emb.numel())
        return (emb / norm).to(dtype)  # (1, L, D)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class CosmosTransformer(DiT):
    """Cosmos DiT: ``forward(latents, timestep, text, ..., fps, condition_mask, padding_mask)`` as diffusers'."""

    config_class = CosmosConfig
    diffusers_class = "CosmosTransformer3DModel"
    name_mapping = convert.MAPPING
    fsdp_units: ClassVar[tuple[str, ...]] = ("CosmosBlock",)
    #: diffusers' ``_keep_in_fp32_modules``
    fp32_modules: ClassVar[tuple[str, ...]] = ("pos_embed",)
    sparse_attention_layers: ClassVar[tuple[str, ...]] = ("blocks.*.self_attn",)
    #: Block arguments with a token dim: x, cos and sin, pos, and frames (each token's latent frame, which
    #: picks its row of the per-frame modulation); emb and temb have one row per sample or frame.
    sequence_parallel_plan = SequenceParallelPlan(
        blocks="blocks", shard={"x": 1, "cos": 0, "sin": 0, "pos": 1, "frames": 0}
    )

    def __init__(self, config: CosmosConfig, *, rope_fps: bool = True) -> None:
        super().__init__()
        self.config = cfg = config
        #: False: ignore ``fps`` in the RoPE, as the released Predict2 checkpoints were trained.
        self.rope_fps = rope_fps
        dim = cfg.dim
        extra = 1 if cfg.concat_padding_mask else 0
        self.patch_embed = nn.Linear((cfg.in_channels + extra) * math.prod(cfg.patch_size), dim, bias=False)
        self.pos_embed = CosmosPositionTable(cfg) if cfg.extra_pos_embed_type == "learnable" else None
        self.time_embed = nn.Sequential(
            nn.Linear(dim, dim, bias=False), nn.SiLU(), nn.Linear(dim, 3 * dim, bias=False)
        )
        self.time_norm = nn.Parameter(torch.empty(dim))
        self.text_proj = None
        if cfg.use_crossattn_projection:
            self.text_proj = nn.Linear(cfg.crossattn_proj_in_channels, cfg.encoder_hidden_states_channels)
        self.blocks = nn.ModuleList(CosmosBlock(cfg) for _ in range(cfg.num_layers))
        self.head = CosmosHead(cfg)

    def init_weights(self) -> None:
        """Random init for training from scratch (PyTorch defaults; norms at one, tables at zero)."""
        super().init_weights()
        for name, p in self.named_parameters():
            if name.endswith(("norm_q", "norm_k", "time_norm")):
                nn.init.ones_(p)
            elif name.startswith("pos_embed"):
                nn.init.zeros_(p)

    def check_grid(self, grid: tuple[int, int, int]) -> None:
        limit = tuple(s // p for s, p in zip(self.config.max_size, self.config.patch_size, strict=True))
        if any(g > m for g, m in zip(grid, limit, strict=True)):
            raise ValueError(
                f"token grid {grid} exceeds max_size / patch_size = {limit}; use a smaller video"
            )

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        block_controlnet_hidden_states: list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        fps: float | None = None,
        condition_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the denoiser output for ``hidden_states``, diffusers' call convention.

        :param hidden_states: ``(B, C, T, H, W)`` latents (``C`` = ``in_channels`` minus the mask channel
            when ``condition_mask`` is given).
        :param timestep: ``(B,)``, or ``(B, 1, T, 1, 1)`` with one timestep per latent frame.
        :param encoder_hidden_states: ``(B, S, text_embed_dim)`` (Predict2.5: ``crossattn_proj_in_channels``).
        :param fps: frames per second: scales the temporal RoPE unless ``rope_fps`` is off; None for images.
        :param condition_mask: ``(B, 1, T, H, W)`` 1 on the conditioning frames (Video2World).
        :param padding_mask: ``(1 or B, 1, H_px, W_px)`` pixel padding, resized to the latent (zeros if None).
        :returns: ``(B, out_channels, T, H, W)`` in the model's dtype.
        """
        if block_controlnet_hidden_states is not None or attention_mask is not None:
            raise ValueError(
                "block_controlnet_hidden_states and attention_mask are not supported: pass None (the "
                "Cosmos pipelines zero the text padding instead of masking it)"
            )
        grid = self.token_grid(hidden_states.shape)  # (T', H', W')
        x = self._input_channels(hidden_states, condition_mask, padding_mask)  # (B, C', T, H, W)
        b = x.shape[0]
        cos, sin = rope_tables(grid, self.config, fps if self.rope_fps else None, x.device)
        pos = self.pos_embed(grid, self.dtype) if self.pos_embed is not None else None
        x = self.patch_embed(self._patchify(x.to(self.dtype)))  # (B, L, D)
        emb, temb, frames = self._embed_time(timestep, b, grid)  # (B, Tm, D), (B, Tm, 3D), (L,) or None
        context = encoder_hidden_states.to(self.dtype)
        if self.text_proj is not None:
            context = F.gelu(self.text_proj(context))  # (B, S, Dt)
        for block in self.blocks:
            x = block(x, context, emb, temb, cos, sin, pos, frames)  # (B, L, D)
        x = self.head(x, emb, temb, frames)  # (B, L, ph*pw*pt*C)
        return self._unpatchify(x, grid)  # (B, C_out, T, H, W)

    def _input_channels(
        self, x: torch.Tensor, condition_mask: torch.Tensor | None, padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        b, c, t, h, w = x.shape
        expected = self.config.in_channels - (1 if condition_mask is not None else 0)
        if c != expected:
            raise ValueError(
                f"hidden_states has {c} channels; this DiT takes {expected} "
                f"({'with' if condition_mask is not None else 'without'} a condition_mask channel)"
            )
        if condition_mask is not None:
            x = torch.cat([x, condition_mask.to(x.dtype)], dim=1)  # (B, C+1, T, H, W)
        if self.config.concat_padding_mask:
            if padding_mask is None:
                pad = x.new_zeros(b, 1, t, h, w)
            else:  # nearest resize of the pixel mask to the latent grid (torchvision's NEAREST)
                pad = F.interpolate(padding_mask.to(x.dtype), size=(h, w), mode="nearest")
                pad = pad.unsqueeze(2).expand(b, 1, t, h, w)
            x = torch.cat([x, pad], dim=1)  # (B, C'+1, T, H, W)
        return x

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        pt, ph, pw = self.config.patch_size
        x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.flatten(4).flatten(1, 3)  # (B, L, C*pt*ph*pw)

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        (t, h, w), (pt, ph, pw) = grid, self.config.patch_size
        x = x.reshape(x.shape[0], t, h, w, ph, pw, pt, -1)  # token features are (ph, pw, pt, C)
        x = x.permute(0, 7, 1, 6, 2, 4, 3, 5)  # (B, C, T', pt, H', ph, W', pw)
        return x.reshape(x.shape[0], x.shape[1], t * pt, h * ph, w * pw)

    def _embed_time(
        self, timestep: torch.Tensor, batch: int, grid: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        t, h, w = grid
        if timestep.ndim == 1 and timestep.shape[0] == batch:
            steps = timestep
        elif timestep.ndim == 5 and tuple(timestep.shape) == (batch, 1, t, 1, 1):
            steps = timestep.flatten()  # (B*T,)
        else:
            raise ValueError(
                f"timestep {tuple(timestep.shape)} must be ({batch},) or ({batch}, 1, {t}, 1, 1) (one per frame)"
            )
        freqs = timestep_embedding(steps, self.config.dim).to(self.dtype)  # (N, D)
        temb = self.time_embed(freqs)  # (N, 3D)
        emb = rms_norm(freqs, self.time_norm, 1e-6)  # (N, D)
        if timestep.ndim == 1:
            return emb[:, None], temb[:, None], None  # (B, 1, D), (B, 1, 3D)
        # One row per frame; the blocks modulate each token with its frame's row (diffusers repeats the
        # rows per token first and runs the modulation projections on every token: same values).
        frames = torch.arange(t, device=emb.device).repeat_interleave(h * w)  # (L,)
        return emb.view(batch, t, -1), temb.view(batch, t, -1), frames
