"""The HunyuanVideo diffusion transformer (DiT).

Paper: "HunyuanVideo: A Systematic Framework For Large Video Generative Models" (Tencent Hunyuan,
arXiv 2412.03603). Tracks diffusers' ``src/diffusers/models/transformers/transformer_hunyuan_video.py``
(``HunyuanVideoTransformer3DModel``, diffusers 0.42.1, text-to-video): same configuration, same call
convention, same fp32 numerics; weights load from its checkpoints through the declared name mapping in
:mod:`fastvideo_hunyuan.convert`.

Layout: a token refiner over the Llama text states, 20 dual-stream blocks (video and text keep their
own weights and meet in one joint attention), then 40 single-stream blocks (video and text tokens share
the weights; attention and MLP in parallel), 3D RoPE on video tokens, and an adaLN conditioning vector
from the timestep, the CLIP pooled text and the embedded guidance scale. Text tokens reach the attention
seam as replicated tokens, so sequence parallelism shards only the video tokens.

Speed: diffusers masks the padded text tokens with a ``[B, 1, 1, L]`` boolean mask, which keeps
SDPA off its fastest kernels. Here padded text tokens are dropped instead (they are masked-out keys
whose own outputs are discarded, so the video output is unchanged), and joint attention runs
unmasked whenever every sample has the same number of valid text tokens (always at batch size 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastvideo import kernels
from fastvideo.attention import DENSE, attention, joint_attention
from fastvideo.configs import DiffusersConfigMixin
from fastvideo.layers import MLP, gelu_tanh, modulate, rope_apply, rope_tables, timestep_embedding, unpatchify
from fastvideo.models import DiT, SequenceParallelPlan
from fastvideo_hunyuan import convert

FREQ_DIM = 256  # sinusoidal features of the timestep and of the guidance scale


@dataclass(frozen=True, kw_only=True)
class HunyuanConfig(DiffusersConfigMixin):
    """Hyper-parameters of :class:`HunyuanTransformer`; the fields and defaults of diffusers' config.json."""

    in_channels: int = 16  # VAE latent channels
    out_channels: int | None = 16  # None means in_channels, as in diffusers
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 20  # dual-stream blocks
    num_single_layers: int = 40  # single-stream blocks
    num_refiner_layers: int = 2  # token-refiner blocks over the text states
    mlp_ratio: float = 4.0  # MLP width / model width
    patch_size: int = 2  # spatial patch (latent cells per token side)
    patch_size_t: int = 1  # temporal patch
    qk_norm: str = "rms_norm"  # per-head RMSNorm of q and k
    guidance_embeds: bool = True  # guidance-distilled: the guidance scale is an input
    text_embed_dim: int = 4096  # Llama hidden size
    pooled_projection_dim: int = 768  # CLIP pooled size
    rope_theta: float = 256.0
    rope_axes_dim: tuple[int, int, int] = (16, 56, 56)  # head-dim channels rotated by t, h, w positions
    image_condition_type: str | None = None  # HunyuanVideo-I2V variants; only None (T2V) is supported

    def __post_init__(self) -> None:
        object.__setattr__(self, "rope_axes_dim", tuple(self.rope_axes_dim))
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels)
        if self.qk_norm != "rms_norm":
            raise ValueError(
                f"qk_norm={self.qk_norm!r} is not supported; HunyuanVideo checkpoints use 'rms_norm'"
            )
        if self.image_condition_type is not None:
            raise ValueError(
                f"image_condition_type={self.image_condition_type!r} (HunyuanVideo-I2V) is not supported; "
                "fastvideo-hunyuan serves the text-to-video checkpoints (image_condition_type=None)"
            )
        axes = self.rope_axes_dim
        if len(axes) != 3 or sum(axes) != self.attention_head_dim or any(a <= 0 or a % 2 for a in axes):
            raise ValueError(
                f"rope_axes_dim={axes} must be three positive even sizes summing to "
                f"attention_head_dim={self.attention_head_dim}"
            )
        sizes = (self.num_attention_heads, self.patch_size, self.patch_size_t, self.num_refiner_layers)
        if min(sizes) < 1 or min(self.num_layers, self.num_single_layers) < 0 or self.mlp_ratio <= 0:
            raise ValueError(f"sizes must be positive: {self}")

    @property
    def dim(self) -> int:
        """Width of the residual stream (``num_attention_heads * attention_head_dim``)."""
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def gated(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Gated residual ``x + y * gate`` with gate ``(B, D)``."""
    return torch.addcmul(x, y, gate.unsqueeze(1))


def heads_qkv(
    x: torch.Tensor,
    proj: tuple[nn.Linear, nn.Linear, nn.Linear],
    norms: tuple[nn.RMSNorm, nn.RMSNorm],
    num_heads: int,
    rope: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, L, D)`` -> q, k, v ``(B, L, H, Dh)``: projected, q and k RMS-normed per head, then
    rotated by ``rope = (cos, sin)`` (video tokens; text tokens get no RoPE)."""
    heads = (num_heads, -1)
    if rope is not None and kernels.active(x, *rope):  # CUDA inference: per-head RMSNorm + RoPE fused
        q, k = kernels.rms_norm_rope_pair(  # q and k in one launch, the tables read once
            proj[0](x).unflatten(-1, heads),
            proj[1](x).unflatten(-1, heads),
            norms[0].weight,
            norms[1].weight,
            *rope,
            norms[0].eps or 1e-6,  # both norms are built with the same eps
            rope[0].shape[-1],
        )
        return q, k, proj[2](x).unflatten(-1, heads)
    q, k = (norm(p(x).unflatten(-1, heads)) for p, norm in zip(proj[:2], norms, strict=True))
    if rope is not None:
        q, k = rope_apply(q, *rope), rope_apply(k, *rope)
    return q, k, proj[2](x).unflatten(-1, heads)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


class HunyuanRefinerBlock(nn.Module):
    """Token refiner block: self-attention and a SiLU MLP over text tokens, gated by the conditioning."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_dim, dim, "silu")
        self.gate = nn.Linear(dim, 2 * dim)  # silu(cond) -> (attention gate, MLP gate)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # x (B, Lt, D); cond (B, D); mask None or bool (B, 1, Lt, Lt)
        heads = (self.num_heads, -1)
        h = self.norm1(x)
        q, k, v = (proj(h).unflatten(-1, heads) for proj in (self.q, self.k, self.v))  # (B, Lt, H, Dh)
        attn = self.o(attention(q, k, v, attn_mask=mask, allow=DENSE).flatten(2))  # (B, Lt, D)
        gate_attn, gate_mlp = self.gate(F.silu(cond)).chunk(2, dim=-1)  # (B, D) x 2
        x = gated(x, attn, gate_attn)
        return gated(x, self.mlp(self.norm2(x)), gate_mlp)  # (B, Lt, D)


class HunyuanTextRefiner(nn.Module):
    """Projects Llama states to the model width and refines them, conditioned on the timestep and
    on their mean (diffusers' ``HunyuanVideoTokenRefiner``)."""

    def __init__(self, cfg: HunyuanConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.time_embed = MLP(FREQ_DIM, dim, dim, "silu")
        self.pool_embed = MLP(cfg.text_embed_dim, dim, dim, "silu")
        self.proj_in = nn.Linear(cfg.text_embed_dim, dim)
        # the refiner's MLP ratio is fixed at 4 in the checkpoints, whatever mlp_ratio says
        self.blocks = nn.ModuleList(
            HunyuanRefinerBlock(dim, cfg.num_attention_heads, 4 * dim) for _ in range(cfg.num_refiner_layers)
        )

    def forward(self, text: torch.Tensor, timestep: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # text (B, Lt, C); timestep (B,); mask None (all valid) or (B, Lt)
        if mask is None:
            pooled = text.float().mean(dim=1)  # (B, C) fp32
            self_mask = None
        else:
            m = mask.float().unsqueeze(-1)  # (B, Lt, 1)
            pooled = (text * m).sum(dim=1) / m.sum(dim=1)  # (B, C) fp32
            valid = mask.bool()
            self_mask = valid[:, None, None, :] & valid[:, None, :, None]  # (B, 1, Lt, Lt)
            self_mask[..., 0] = True  # padded queries attend to token 0 (no empty rows), as diffusers
        t = timestep_embedding(timestep, FREQ_DIM).to(text.dtype)
        cond = self.time_embed(t) + self.pool_embed(pooled.to(text.dtype))  # (B, D)
        x = self.proj_in(text)  # (B, Lt, D)
        for block in self.blocks:
            x = block(x, cond, self_mask)
        return x


class HunyuanJointAttention(nn.Module):
    """Joint attention of video and text tokens: q/k/v projections with per-head RMSNorms, RoPE on
    the video tokens only, one attention over both (the text as the seam's replicated tokens, so
    sequence parallelism shards only the video).

    ``dual`` (dual-stream blocks): the text has its own projections and norms, and each stream its
    output projection. Otherwise (single-stream blocks) the text shares the video's weights and there
    is no output projection: the block's ``out`` layer maps attention and MLP together.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, *, dual: bool) -> None:
        super().__init__()
        self.num_heads, self.dual = num_heads, dual
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        if dual:
            self.o = nn.Linear(dim, dim)
            self.text_q, self.text_k, self.text_v, self.text_o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = nn.RMSNorm(head_dim, eps=1e-6), nn.RMSNorm(head_dim, eps=1e-6)
        if dual:
            self.text_norm_q, self.text_norm_k = (
                nn.RMSNorm(head_dim, eps=1e-6),
                nn.RMSNorm(head_dim, eps=1e-6),
            )

    def forward(
        self,
        h: torch.Tensor,
        ht: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # h (B, Lv, D) video; ht (B, Lt, D) text, both modulated; text_mask (B, Lt) or None
        proj, norms = (self.q, self.k, self.v), (self.norm_q, self.norm_k)
        video = heads_qkv(h, proj, norms, self.num_heads, (cos, sin))  # 3 x (B, Lv, H, Dh)
        if self.dual:
            proj, norms = (self.text_q, self.text_k, self.text_v), (self.text_norm_q, self.text_norm_k)
        text = heads_qkv(ht, proj, norms, self.num_heads)  # 3 x (B, Lt, H, Dh)
        out, text_out = joint_attention(*video, *text, txt_mask=text_mask)
        out, text_out = out.flatten(2), text_out.flatten(2)  # (B, Lv, D), (B, Lt, D)
        return (self.o(out), self.text_o(text_out)) if self.dual else (out, text_out)


class HunyuanDoubleBlock(nn.Module):
    """Dual-stream block: video and text tokens with their own adaLN, attention weights and MLPs,
    joined in one attention."""

    def __init__(self, cfg: HunyuanConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.video_mod = nn.Linear(dim, 6 * dim)  # silu(cond) -> (shift, scale, gate) x (attn, mlp)
        self.text_mod = nn.Linear(dim, 6 * dim)
        self.attn = HunyuanJointAttention(dim, cfg.num_attention_heads, cfg.attention_head_dim, dual=True)
        self.video_mlp = MLP(dim, cfg.mlp_dim, dim, "gelu_tanh")
        self.text_mlp = MLP(dim, cfg.mlp_dim, dim, "gelu_tanh")

    def forward(
        self,
        x: torch.Tensor,
        txt: torch.Tensor,
        cond: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # x (B, Lv, D); txt (B, Lt, D); cond (B, D) = silu(conditioning); cos/sin (Lv, 1, Dh)
        shift, scale, gate, m_shift, m_scale, m_gate = self.video_mod(cond).chunk(6, dim=-1)  # (B, D) x 6
        t_shift, t_scale, t_gate, tm_shift, tm_scale, tm_gate = self.text_mod(cond).chunk(6, dim=-1)
        h, ht = modulate(x, shift, scale), modulate(txt, t_shift, t_scale)  # (B, Lv, D), (B, Lt, D)
        attn, text_attn = self.attn(h, ht, cos, sin, text_mask)
        del h, ht
        x = gated(x, attn, gate)  # (B, Lv, D)
        txt = gated(txt, text_attn, t_gate)  # (B, Lt, D)
        del attn, text_attn
        x = gated(x, self.video_mlp(modulate(x, m_shift, m_scale)), m_gate)  # (B, Lv, D)
        txt = gated(txt, self.text_mlp(modulate(txt, tm_shift, tm_scale)), tm_gate)  # (B, Lt, D)
        return x, txt


class HunyuanSingleBlock(nn.Module):
    """Single-stream block: video and text tokens share all weights; attention and a GELU MLP are
    computed in parallel from one adaLN-modulated input and mapped back by one linear layer."""

    def __init__(self, cfg: HunyuanConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.mod = nn.Linear(dim, 3 * dim)  # silu(cond) -> (shift, scale, gate)
        self.attn = HunyuanJointAttention(dim, cfg.num_attention_heads, cfg.attention_head_dim, dual=False)
        self.mlp_in = nn.Linear(dim, cfg.mlp_dim)
        self.out = nn.Linear(dim + cfg.mlp_dim, dim)

    def _out(self, attn: torch.Tensor, mlp: torch.Tensor) -> torch.Tensor:
        """``out([attn, mlp])`` as two GEMMs accumulating into one buffer: no (B, L, D + M) concatenation."""
        w_attn, w_mlp = self.out.weight.split([attn.shape[-1], mlp.shape[-1]], dim=1)
        y = F.linear(attn, w_attn, self.out.bias)  # (B, L, D)
        y.view(-1, y.shape[-1]).addmm_(mlp.reshape(-1, mlp.shape[-1]), w_mlp.t())
        return y

    def forward(
        self,
        x: torch.Tensor,
        txt: torch.Tensor,
        cond: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # x (B, Lv, D); txt (B, Lt, D); cond (B, D) = silu(conditioning); cos/sin (Lv, 1, Dh)
        shift, scale, gate = self.mod(cond).chunk(3, dim=-1)  # (B, D) x 3
        h, ht = modulate(x, shift, scale), modulate(txt, shift, scale)  # (B, Lv, D), (B, Lt, D)
        mlp, text_mlp = gelu_tanh(self.mlp_in(h)), gelu_tanh(self.mlp_in(ht))  # (B, Lv, M), (B, Lt, M)
        attn, text_attn = self.attn(h, ht, cos, sin, text_mask)  # (B, Lv, D), (B, Lt, D)
        del h, ht
        x = gated(x, self._out(attn, mlp), gate)  # (B, Lv, D)
        txt = gated(txt, self._out(text_attn, text_mlp), gate)  # (B, Lt, D)
        return x, txt


class HunyuanHead(nn.Module):
    """Output adaLN (scale, shift) and the projection to patch pixels."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.mod = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mod(cond).chunk(2, dim=-1)  # (B, D) x 2; diffusers' order: scale first
        return self.proj(modulate(x, shift, scale))  # (B, L, pt*p*p*C)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class HunyuanTransformer(DiT):
    """HunyuanVideo DiT: ``forward(latents, timestep, text, text_mask, pooled, guidance) -> flow``,
    diffusers' call convention."""

    config_class = HunyuanConfig
    diffusers_class = "HunyuanVideoTransformer3DModel"
    name_mapping = convert.MAPPING
    block_lists: ClassVar[tuple[str, ...]] = ("double_blocks", "single_blocks")
    fsdp_units: ClassVar[tuple[str, ...]] = ("HunyuanDoubleBlock", "HunyuanSingleBlock")
    #: diffusers keeps no HunyuanVideo parameter in fp32 (no ``_keep_in_fp32_modules``).
    fp32_modules: ClassVar[tuple[str, ...]] = ()
    #: Attention layers whose joint attention admits sparse backends (video tokens first, in raster
    #: order over the step context's grid, then the text tokens).
    sparse_attention_layers: ClassVar[tuple[str, ...]] = ("double_blocks.*.attn", "single_blocks.*.attn")
    #: FP8 (fastvideo.optimize) leaves the modulation projections and the single blocks' output
    #: projection (whose weight ``_out`` splits itself) in their dtype
    fp8_exclude: ClassVar[tuple[str, ...]] = (
        "*.video_mod",
        "*.text_mod",
        "single_blocks.*.mod",
        "single_blocks.*.out",
    )
    #: Sequence parallelism (fastvideo.parallel.sequence): every block takes ``(x, txt, cond, cos, sin,
    #: text_mask)``; video tokens ``x`` and the RoPE tables are sharded, text tokens stay whole on every
    #: rank (replicated tokens of the joint attention); the last block's video output is gathered.
    sequence_parallel_plan = SequenceParallelPlan(
        blocks=("double_blocks", "single_blocks"), shard={"x": 1, "cos": 0, "sin": 0}, output={0: 1}
    )

    def __init__(self, config: HunyuanConfig) -> None:
        super().__init__()
        self.config = cfg = config
        dim = cfg.dim
        patch = (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)
        self.patch_embed = nn.Conv3d(cfg.in_channels, dim, kernel_size=patch, stride=patch)
        self.text_refiner = HunyuanTextRefiner(cfg)
        self.time_embed = MLP(FREQ_DIM, dim, dim, "silu")
        self.guidance_embed = MLP(FREQ_DIM, dim, dim, "silu") if cfg.guidance_embeds else None
        self.pooled_embed = MLP(cfg.pooled_projection_dim, dim, dim, "silu")
        self.double_blocks = nn.ModuleList(HunyuanDoubleBlock(cfg) for _ in range(cfg.num_layers))
        self.single_blocks = nn.ModuleList(HunyuanSingleBlock(cfg) for _ in range(cfg.num_single_layers))
        self.head = HunyuanHead(dim, cfg.out_channels * math.prod(patch))

    def patch(self) -> tuple[int, int, int]:
        return (self.config.patch_size_t, self.config.patch_size, self.config.patch_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        pooled_projections: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow (velocity) for ``hidden_states``, diffusers' call convention.

        :param hidden_states: ``(B, C_in, T, H, W)`` latents.
        :param timestep: ``(B,)`` (or a scalar).
        :param encoder_hidden_states: ``(B, Lt, text_embed_dim)`` Llama states, right-padded.
        :param encoder_attention_mask: ``(B, Lt)``, 1 for prompt tokens (None: all valid).
        :param pooled_projections: ``(B, pooled_projection_dim)`` CLIP pooled states.
        :param guidance: ``(B,)`` embedded guidance scale x 1000 (guidance-distilled checkpoints).
        :returns: ``(B, C_out, T, H, W)`` in the model's dtype.
        """
        b = hidden_states.shape[0]
        grid = self.token_grid(hidden_states.shape)  # (T', H', W')
        cfg = self.config
        cos, sin = rope_tables(
            grid, cfg.rope_axes_dim, theta=cfg.rope_theta, device=hidden_states.device, dtype=self.dtype
        )  # (Lv, 1, Dh)
        timestep = timestep.expand(b) if timestep.ndim == 0 else timestep.reshape(b)
        cond = F.silu(self._conditioning(timestep, pooled_projections, guidance))  # (B, D)
        x = self.patch_embed(hidden_states.to(self.dtype)).flatten(2).transpose(1, 2)  # (B, Lv, D)
        text, refiner_mask, text_mask = drop_text_padding(
            encoder_hidden_states.to(self.dtype), encoder_attention_mask
        )
        txt = self.text_refiner(text, timestep, refiner_mask)  # (B, Lt', D)
        for block in self.blocks_in_order():
            x, txt = block(x, txt, cond, cos, sin, text_mask)  # (B, Lv, D), (B, Lt', D)
        x = self.head(x, cond)  # (B, Lv, pt*p*p*C_out)
        return unpatchify(x, grid, self.patch())  # (B, C_out, T, H, W)

    def _conditioning(
        self, timestep: torch.Tensor, pooled: torch.Tensor, guidance: torch.Tensor | None
    ) -> torch.Tensor:
        """``time_embed(t) + pooled_embed(clip) [+ guidance_embed(g)]``: ``(B, D)``."""
        cond = self.time_embed(timestep_embedding(timestep, FREQ_DIM).to(self.dtype))
        if self.guidance_embed is not None:
            if guidance is None:
                raise ValueError(
                    "this HunyuanVideo checkpoint is guidance-distilled (guidance_embeds=True): pass "
                    "guidance=(B,) tensor of guidance_scale * 1000"
                )
            g = guidance.reshape(-1).expand(timestep.shape[0])
            cond = cond + self.guidance_embed(timestep_embedding(g, FREQ_DIM).to(self.dtype))
        return cond + self.pooled_embed(pooled.to(self.dtype))


def drop_text_padding(
    text: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Keep only the text tokens some sample attends to, and masks only where they are still needed.

    diffusers treats the first ``mask[b].sum()`` text tokens of sample ``b`` as the valid keys of the
    joint attention. With right padding (what the pipeline produces) the trailing tokens that no sample
    uses are dropped; when all samples then have the same length (always at batch size 1) no mask is
    left and attention runs on the fastest kernels.

    :returns: ``(text (B, Lt', C), refiner mask (B, Lt') or None, joint-attention key mask of the
        text (B, Lt') bool or None)``.
    """
    if mask is None:
        return text, None, None
    mask = mask.bool()
    lengths = mask.sum(dim=1)  # (B,)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]  # (B, Lt)
    if torch.equal(prefix, mask):  # right padding
        keep = int(lengths.max())
        text, mask, prefix = text[:, :keep], mask[:, :keep], prefix[:, :keep]
        if bool(prefix.all()):
            return text, None, None
    return text, mask, prefix
