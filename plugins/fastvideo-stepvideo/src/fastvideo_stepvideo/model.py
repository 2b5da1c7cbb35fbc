"""The Step-Video-T2V diffusion transformer (``StepVideoModel``, 30B).

Paper: "Step-Video-T2V Technical Report" (StepFun, arXiv 2502.10248); reference code
``stepfun-ai/Step-Video-T2V`` (``stepvideo/modules/model.py``, ``blocks.py``). This is our own
implementation with the same configuration keys, the same inputs and the same fp32 numerics; the
released weights load through the declared name mapping in :mod:`fastvideo_stepvideo.convert`.

Layout: a per-frame patch embedding, 48 blocks of (adaLN-modulated self-attention with per-head
q/k RMSNorm and 3D RoPE, un-modulated cross-attention to the text tokens, adaLN-modulated GELU
feed-forward), an adaLN-single conditioning from the timestep, and an output head with its own
shift/scale table. The text tokens are the CLIP (HunyuanCLIP, a BERT) tokens followed by the
Step-LLM tokens, each projected to the model width.

Numerics kept from the reference: the fused ``wqkv`` and ``wkv`` projections are laid out per head
(``(H, 3, Dh)``), the RoPE rotates the two halves of each axis part (``rotate_half``), the q/k
RMSNorms normalise in fp32 before the weight, the block LayerNorms carry affine weights (eps 1e-5),
the timestep is scaled by 1000 inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastvideo.attention import ALL, DENSE, attention
from fastvideo.configs import DiffusersConfigMixin
from fastvideo.layers import MLP, gelu_tanh, timestep_embedding, unpatchify
from fastvideo.models import DiT, SequenceParallelPlan
from fastvideo_stepvideo import convert

FREQ_DIM = 256  # sinusoidal features of the timestep
TIME_SCALE = 1000.0  # the reference multiplies the flow time in [0, 1] by this before embedding it
ROPE_THETA = 10000.0


@dataclass(frozen=True, kw_only=True)
class StepVideoConfig(DiffusersConfigMixin):
    """Hyper-parameters of :class:`StepVideoTransformer`: the keys of the released ``transformer/config.json``."""

    num_attention_heads: int = 48
    attention_head_dim: int = 128
    in_channels: int = 64
    out_channels: int | None = 64  # None means in_channels
    num_layers: int = 48
    dropout: float = 0.0
    patch_size: int = 1  # spatial patch of the per-frame embedding
    norm_type: str = "ada_norm_single"
    norm_elementwise_affine: bool = False  # the output and caption LayerNorms
    norm_eps: float = 1e-6
    use_additional_conditions: bool = False  # True: Step-Video-TI2V (image latents + motion score)
    caption_channels: int | tuple[int, ...] = (6144, 1024)  # (Step-LLM width, CLIP width), or an int: no CLIP
    attention_type: str = "parallel"  # the reference's attention choice; attention here goes through the seam

    def __post_init__(self) -> None:
        if isinstance(self.caption_channels, list):
            object.__setattr__(self, "caption_channels", tuple(self.caption_channels))
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels)
        hd = self.attention_head_dim
        if min(self.num_attention_heads, hd, self.patch_size, self.in_channels) < 1 or self.num_layers < 0:
            raise ValueError(f"StepVideoConfig sizes must be positive, got {self}")
        if hd % 8:
            raise ValueError(
                f"attention_head_dim={hd} must be a multiple of 8: the RoPE splits it [hd/2, hd/4, hd/4] "
                "over (frames, height, width) and each part rotates halves"
            )
        if self.norm_type != "ada_norm_single":
            raise ValueError(
                f"norm_type={self.norm_type!r} is not supported; Step-Video uses 'ada_norm_single'"
            )
        channels = self.caption_channels
        if isinstance(channels, tuple) and len(channels) != 2:
            raise ValueError(f"caption_channels={list(channels)} must be [llm_width, clip_width] or one int")

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def text_channels(self) -> int:
        c = self.caption_channels
        return c if isinstance(c, int) else c[0]

    @property
    def clip_channels(self) -> int | None:
        c = self.caption_channels
        return None if isinstance(c, int) else c[1]

    @property
    def rope_split(self) -> tuple[int, int, int]:
        hd = self.attention_head_dim
        return (hd // 2, hd // 4, hd // 4)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def rope_tables(
    grid: tuple[int, int, int], split: tuple[int, int, int], *, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` ``(T*H*W, 1, Dh)`` for the reference's 3D RoPE: head-dim part ``a`` (size ``d``)
    rotates its two halves by ``pos_a * theta^(-2i/d)``, ``i < d/2``, positions in raster order."""
    parts = []
    for axis, (n, d) in enumerate(zip(grid, split, strict=True)):
        inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d)
        angles = torch.outer(torch.arange(n, dtype=torch.float32, device=device), inv_freq)  # (n, d/2)
        angles = torch.cat([angles, angles], dim=-1)  # (n, d): both halves
        shape = [1, 1, 1, d]
        shape[axis] = n
        parts.append(angles.view(shape).expand(*grid, d))
    angles = torch.cat(parts, dim=-1).reshape(-1, 1, sum(split))  # (L, 1, Dh)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rope_apply(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, split: tuple[int, int, int]
) -> torch.Tensor:
    """Rotate ``x`` ``(B, L, H, Dh)``: ``x * cos + rotate_half_per_part(x) * sin``."""
    rotated = []
    for part in x.split(split, dim=-1):
        a, b = part.chunk(2, dim=-1)
        rotated += [-b, a]
    return torch.addcmul(x * cos, torch.cat(rotated, dim=-1), sin).type_as(x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The reference's RMSNorm: normalised in fp32, rounded to x's dtype, then times the weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def modulate(norm: nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` with shift/scale ``(B, 1, D)``."""
    return torch.addcmul(shift.to(x.dtype), norm(x), (1 + scale).to(x.dtype))


class HeadNorm(nn.Module):
    """A per-head RMSNorm weight (``q_norm`` / ``k_norm`` of the reference)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


class StepSelfAttention(nn.Module):
    """Video self-attention: fused per-head ``qkv`` (no bias), q/k RMSNorm, 3D RoPE, through the
    seam with every backend allowed (sparse included) and sequence parallelism."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, split: tuple[int, int, int]) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.split = num_heads, head_dim, split
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.norm_q, self.norm_k = HeadNorm(head_dim), HeadNorm(head_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # x (B, L, D) -> qkv (B, L, H, 3*Dh), split per head as the reference lays it out
        q, k, v = self.qkv(x).unflatten(-1, (self.num_heads, 3 * self.head_dim)).split(self.head_dim, dim=-1)
        q = rope_apply(self.norm_q(q), cos, sin, self.split)
        k = rope_apply(self.norm_k(k), cos, sin, self.split)
        out = attention(q, k, v, allow=ALL, sequence_parallel=True)  # (B, L, H, Dh)
        return self.o(out.flatten(2))


class StepCrossAttention(nn.Module):
    """Cross-attention from the video tokens to the text tokens (CLIP then Step-LLM): ``q`` and
    fused per-head ``kv`` projections (no bias), q/k RMSNorm, dense backends only."""

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.norm_q, self.norm_k = HeadNorm(head_dim), HeadNorm(head_dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        q = self.norm_q(self.q(x).unflatten(-1, (self.num_heads, self.head_dim)))  # (B, L, H, Dh)
        k, v = self.kv(text).unflatten(-1, (self.num_heads, 2 * self.head_dim)).split(self.head_dim, dim=-1)
        out = attention(q, self.norm_k(k), v, attn_mask=text_mask, allow=DENSE)
        return self.o(out.flatten(2))


class FeedForward(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))`` without biases (the reference's ``ff``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


class StepVideoBlock(nn.Module):
    """One transformer block: modulated self-attention, cross-attention, modulated feed-forward."""

    def __init__(self, cfg: StepVideoConfig) -> None:
        super().__init__()
        dim, heads, hd = cfg.dim, cfg.num_attention_heads, cfg.attention_head_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.self_attn = StepSelfAttention(dim, heads, hd, cfg.rope_split)
        self.cross_attn = StepCrossAttention(dim, heads, hd)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.ffn = FeedForward(dim, 4 * dim)
        self.modulation = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        temb: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        text_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        # x (B, L, D); text (B, Lt, D); temb (B, 6, D); cos/sin (L, 1, Dh); text_mask None or (B, 1, 1, Lt)
        shift, scale, gate, m_shift, m_scale, m_gate = (self.modulation[None] + temb).chunk(
            6, dim=1
        )  # (B, 1, D)
        x = torch.addcmul(x, gate, self.self_attn(modulate(self.norm1, x, shift, scale), cos, sin))
        x = x + self.cross_attn(x, text, text_mask)
        return torch.addcmul(x, m_gate, self.ffn(modulate(self.norm2, x, m_shift, m_scale)))


class StepVideoHead(nn.Module):
    """Output: LayerNorm without affine, shift/scale from the embedded timestep, projection."""

    def __init__(self, dim: int, out_dim: int, eps: float, affine: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
        self.modulation = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation[None] + emb[:, None]).chunk(2, dim=1)  # (B, 1, D) x 2
        return self.proj(modulate(self.norm, x, shift, scale))


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class StepVideoTransformer(DiT):
    """Step-Video DiT: ``forward(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_2,
    encoder_attention_mask) -> velocity``, latents as ``(B, C, T, H, W)``."""

    config_class = StepVideoConfig
    diffusers_class = "StepVideoModel"  # the released config.json's _class_name
    name_mapping = convert.MAPPING
    block_lists: ClassVar[tuple[str, ...]] = ("blocks",)
    fsdp_units: ClassVar[tuple[str, ...]] = ("StepVideoBlock",)
    fp32_modules: ClassVar[tuple[str, ...]] = ()
    sparse_attention_layers: ClassVar[tuple[str, ...]] = ("blocks.*.self_attn",)
    #: Video tokens ``x`` and their RoPE tables are sharded; the text tokens, the conditioning and the
    #: text mask stay whole on every rank (cross-attention needs every text token).
    sequence_parallel_plan = SequenceParallelPlan(
        blocks="blocks", shard={"x": 1, "cos": 0, "sin": 0}, output=1
    )

    def __init__(self, config: StepVideoConfig) -> None:
        super().__init__()
        self.config = cfg = config
        dim, p = cfg.dim, cfg.patch_size
        # TI2V: the image latents are concatenated to the noisy latents along the channels
        cin = cfg.in_channels * (2 if cfg.use_additional_conditions else 1)
        self.patch_embed = nn.Conv2d(cin, dim, kernel_size=p, stride=p)
        self.time_embed = MLP(FREQ_DIM, dim, dim, "silu")
        self.motion_embed = MLP(FREQ_DIM, dim, dim, "silu") if cfg.use_additional_conditions else None
        self.time_mod = nn.Linear(dim, 6 * dim)
        self.caption_norm = nn.LayerNorm(
            cfg.text_channels, eps=cfg.norm_eps, elementwise_affine=cfg.norm_elementwise_affine
        )
        self.text_embed = MLP(cfg.text_channels, dim, dim, "gelu_tanh")
        self.clip_embed = nn.Linear(cfg.clip_channels, dim) if cfg.clip_channels else None
        self.blocks = nn.ModuleList(StepVideoBlock(cfg) for _ in range(cfg.num_layers))
        assert cfg.out_channels is not None
        self.head = StepVideoHead(dim, p * p * cfg.out_channels, cfg.norm_eps, cfg.norm_elementwise_affine)

    def patch(self) -> tuple[int, int, int]:
        return (1, self.config.patch_size, self.config.patch_size)

    def init_weights(self) -> None:
        super().init_weights()
        dim = self.config.dim
        with torch.no_grad():
            for block in self.blocks:
                block.modulation.copy_(torch.randn_like(block.modulation) / dim**0.5)
            self.head.modulation.copy_(torch.randn_like(self.head.modulation) / dim**0.5)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_2: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        condition_hidden_states: torch.Tensor | None = None,
        motion_score: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity.

        :param hidden_states: ``(B, C, T, H, W)`` latents.
        :param timestep: ``(B,)`` (or a scalar) flow time in ``[0, 1]``; scaled by 1000 inside.
        :param encoder_hidden_states: ``(B, L_llm, llm_width)`` Step-LLM states.
        :param encoder_hidden_states_2: ``(B, L_clip, clip_width)`` HunyuanCLIP states (None: none).
        :param encoder_attention_mask: ``(B, L_clip + L_llm)`` over the concatenated text tokens (CLIP
            first); sample ``b`` attends to its first ``mask[b].sum()`` tokens (None: all).
        :param condition_hidden_states: TI2V only: ``(B, C, T, H, W)`` image latents (the first frame's
            latent, zeros after), concatenated to ``hidden_states`` along the channels.
        :param motion_score: TI2V only: the motion score (a float or ``(B,)``), embedded like a
            timestep (not scaled) and added to the timestep embedding.
        :returns: ``(B, C_out, T, H, W)`` in the model's dtype.
        """
        if hidden_states.ndim != 5:
            raise ValueError(
                f"hidden_states must be (B, C, T, H, W) latents, got shape {tuple(hidden_states.shape)}"
            )
        cfg = self.config
        b, c = hidden_states.shape[:2]
        if c != cfg.in_channels:
            raise ValueError(f"hidden_states has {c} channels, the model takes in_channels={cfg.in_channels}")
        grid = self.token_grid(hidden_states.shape)  # (T, H/p, W/p)
        dtype = self.dtype
        timestep = timestep.reshape(-1).expand(b) if timestep.numel() == 1 else timestep.reshape(b)
        emb = self.time_embed(timestep_embedding(timestep * TIME_SCALE, FREQ_DIM).to(dtype))  # (B, D)
        if self.motion_embed is not None:
            if condition_hidden_states is None or motion_score is None:
                raise ValueError(
                    "this Step-Video-TI2V DiT (use_additional_conditions=True) needs condition_hidden_states "
                    "(B, C, T, H, W) image latents and a motion_score"
                )
            score = torch.as_tensor(motion_score, device=timestep.device, dtype=dtype).reshape(-1).expand(b)
            emb = emb + self.motion_embed(timestep_embedding(score, FREQ_DIM).to(dtype))
            if condition_hidden_states.shape != hidden_states.shape:
                raise ValueError(
                    f"condition_hidden_states must be shaped like hidden_states {tuple(hidden_states.shape)}, "
                    f"got {tuple(condition_hidden_states.shape)}"
                )
            hidden_states = torch.cat([hidden_states.to(dtype), condition_hidden_states.to(dtype)], dim=1)
        temb = self.time_mod(F.silu(emb)).unflatten(-1, (6, -1))  # (B, 6, D)
        text, text_mask = self._text(
            encoder_hidden_states, encoder_hidden_states_2, encoder_attention_mask, b
        )
        frames = hidden_states.to(dtype).permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B*T, C, H, W)
        x = self.patch_embed(frames).flatten(2).transpose(1, 2).reshape(b, -1, cfg.dim)  # (B, T*H'*W', D)
        cos, sin = rope_tables(grid, cfg.rope_split, device=x.device, dtype=dtype)
        for block in self.blocks_in_order():
            x = block(x, text, temb, cos, sin, text_mask)
        x = self.head(x, emb)  # (B, L, p*p*C_out), features (p, p, C)
        return unpatchify(x, grid, self.patch(), channels_last=True)

    def _text(
        self, llm: torch.Tensor, clip: torch.Tensor | None, mask: torch.Tensor | None, b: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The text tokens ``(B, Lt, D)`` (CLIP then LLM, projected), cut to the longest valid prefix,
        and a key mask ``(B, 1, 1, Lt)`` where the samples' valid lengths differ (else None)."""
        dtype = self.dtype
        if llm.ndim != 3 or llm.shape[0] != b or llm.shape[-1] != self.config.text_channels:
            raise ValueError(
                f"encoder_hidden_states must be (B={b}, L, {self.config.text_channels}) Step-LLM states, "
                f"got {tuple(llm.shape)}"
            )
        text = self.text_embed(self.caption_norm(llm.to(dtype)))
        if clip is not None and self.clip_embed is not None:
            text = torch.cat([self.clip_embed(clip.to(dtype)), text], dim=1)
        if mask is None:
            return text, None
        if mask.shape != (b, text.shape[1]):
            raise ValueError(
                f"encoder_attention_mask must be (B, L_clip + L_llm) = {(b, text.shape[1])}, got {tuple(mask.shape)}"
            )
        lengths = mask.sum(dim=1).long()  # (B,)
        text = text[:, : int(lengths.max())]
        if bool((lengths == lengths[0]).all()):
            return text, None
        keys = torch.arange(text.shape[1], device=text.device)[None, :] < lengths[:, None]  # (B, Lt)
        return text, keys[:, None, None, :]
