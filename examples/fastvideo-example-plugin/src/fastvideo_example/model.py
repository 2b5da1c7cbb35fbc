"""``ExampleTransformer``: a small video DiT written for this example plugin.

Not a published model. It follows DiT (Peebles & Xie, "Scalable Diffusion Models with
Transformers", 2023) with adaLN modulation from the timestep, extended to video: latents
``(B, C, T, H, W)`` are cut into ``patch_size`` patches, positions are the sum of learned per-axis
tables, and each block adds cross-attention to the projected text embeddings.

Every attention call goes through :func:`fastvideo.attention.attention` with ``[B, L, H, D]``
tensors, so any registered backend can run the model: self-attention admits every backend
(``allow=ALL``, sparse ones included), cross-attention only exact ones (``allow=DENSE``).

The model subclasses :class:`fastvideo.models.DiT`, which gives it construction on the ``meta``
device, loading, regional compilation and the token grid; the layers it shares with the published
families (``MLP``, ``modulate``, patchify) come from :mod:`fastvideo.layers`. Weights live in a
diffusers-style folder: ``config.json`` (the fields of :class:`ExampleConfig` plus ``_class_name``)
and ``diffusion_pytorch_model.safetensors`` with this module's parameter names (no name mapping).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fastvideo.attention import ALL, DENSE, attention
from fastvideo.layers import MLP, modulate, patchify, timestep_embedding, unpatchify
from fastvideo.models import DiT

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_POSITIVE_INTS = ("in_channels", "out_channels", "num_layers", "num_heads", "head_dim", "ffn_dim", "text_dim")


@dataclass(frozen=True, kw_only=True)
class ExampleConfig:
    """Hyper-parameters of :class:`ExampleTransformer` (saved as ``config.json``)."""

    in_channels: int = 16  # VAE latent channels
    out_channels: int = 16  # predicted flow (velocity) channels
    patch_size: tuple[int, int, int] = (1, 2, 2)  # latent cells per token along (T, H, W)
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 16
    ffn_dim: int = 64  # hidden width of the feed-forward
    text_dim: int = 32  # hidden size of the text encoder
    freq_dim: int = 32  # sinusoidal timestep features
    max_grid: tuple[int, int, int] = (16, 64, 64)  # largest token grid (T', H', W'): position tables
    eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("patch_size", "max_grid"):
            value = tuple(getattr(self, name))
            if len(value) != 3 or any(not isinstance(v, int) or v < 1 for v in value):
                raise ValueError(f"{name} must be three positive integers (T, H, W), got {value!r}")
            object.__setattr__(self, name, value)  # JSON gives lists
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim={self.freq_dim} must be even (cosine and sine halves)")

    @property
    def dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)

    def to_dict(self) -> dict[str, Any]:
        return {"_class_name": "ExampleTransformer", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExampleConfig:
        """Build from ``config.json``; keys starting with ``_`` are metadata and ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if not k.startswith("_") and k not in fields)
        if unknown:
            raise ValueError(f"unknown ExampleConfig field(s) {unknown}; valid: {', '.join(sorted(fields))}")
        return cls(**{k: v for k, v in data.items() if k in fields})

    from_diffusers_config = from_dict  # what DiT.from_pretrained parses config.json with


# ---------------------------------------------------------------- blocks


class ExampleSelfAttention(nn.Module):
    """Multi-head self-attention over the video tokens, with RMS-normalised queries and keys."""

    def __init__(self, cfg: ExampleConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.norm_q = nn.RMSNorm(cfg.head_dim, eps=cfg.eps)
        self.norm_k = nn.RMSNorm(cfg.head_dim, eps=cfg.eps)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).unbind(2)  # 3 x (B, L, H, Dh)
        out = attention(self.norm_q(q), self.norm_k(k), v, allow=ALL)  # (B, L, H, Dh)
        return self.proj(out.reshape(b, n, -1))  # (B, L, D)


class ExampleCrossAttention(nn.Module):
    """Video tokens attend to the text tokens; only exact (dense) backends may run it."""

    def __init__(self, cfg: ExampleConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.num_heads, -1)  # (B, L, H, Dh)
        kv = self.kv(context).view(b, context.shape[1], 2, self.num_heads, -1)  # (B, S, 2, H, Dh)
        k, v = kv.unbind(2)  # 2 x (B, S, H, Dh)
        out = attention(q, k, v, allow=DENSE)  # (B, L, H, Dh)
        return self.proj(out.reshape(b, n, -1))  # (B, L, D)


class ExampleBlock(nn.Module):
    """Self-attention and feed-forward modulated by the timestep (adaLN), cross-attention between."""

    def __init__(self, cfg: ExampleConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = ExampleSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.cross_attn = ExampleCrossAttention(cfg)
        self.ffn = MLP(cfg.dim, cfg.ffn_dim, cfg.dim, "gelu_tanh")
        self.modulation = nn.Linear(cfg.dim, 6 * cfg.dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(temb).chunk(6, dim=-1)  # 6 x (B, D)
        x = x + gate1[:, None] * self.self_attn(modulate(x, shift1, scale1, eps=self.eps))  # (B, L, D)
        x = x + self.cross_attn(self.norm2(x), context)  # (B, L, D)
        return x + gate2[:, None] * self.ffn(modulate(x, shift2, scale2, eps=self.eps))  # (B, L, D)


# ---------------------------------------------------------------- model


class ExampleTransformer(DiT):
    """The example DiT: predicts the flow ``(B, C, T, H, W)`` from noisy latents, timestep and text.

    Call signature matches what :class:`fastvideo.pipelines.stages.DenoisingStage` passes:
    ``model(hidden_states=latents, timestep=t, encoder_hidden_states=text)``.
    """

    config_class = ExampleConfig
    diffusers_class = "ExampleTransformer"  # the ``_class_name`` of its config.json
    name_mapping = None  # the checkpoint stores our own parameter names
    fsdp_units: ClassVar[tuple[str, ...]] = ("ExampleBlock",)  # what an FSDP strategy may shard
    #: attention layers that admit sparse backends (allow=ALL); backends that need per-layer modules
    #: (a gate projection) get them attached here, see fastvideo.attention.layers
    sparse_attention_layers: ClassVar[tuple[str, ...]] = ("blocks.*.self_attn",)

    def __init__(self, config: ExampleConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embed = nn.Linear(config.in_channels * config.patch_volume, dim)
        self.pos_t = nn.Embedding(config.max_grid[0], dim)
        self.pos_h = nn.Embedding(config.max_grid[1], dim)
        self.pos_w = nn.Embedding(config.max_grid[2], dim)
        self.time_embed = MLP(config.freq_dim, dim, dim, "silu")
        self.text_embed = MLP(config.text_dim, dim, dim, "gelu_tanh")
        self.blocks = nn.ModuleList(ExampleBlock(config) for _ in range(config.num_layers))
        self.modulation_out = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(dim, config.out_channels * config.patch_volume)

    def init_weights(self, seed: int = 0, std: float = 0.02) -> None:
        """Random init: normal linear and position weights, zero biases, unit norms.

        Unlike DiT's zero-initialised gates (right for training from scratch), every layer gets
        non-zero weights, so that a random-weight checkpoint exercises all of them.
        """
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.zero_()
                if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and module.weight is not None:
                    module.weight.fill_(1.0)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()

    def check_grid(self, grid: tuple[int, int, int]) -> None:
        """:meth:`DiT.token_grid` checks the patch; the position tables bound the grid."""
        if any(g > m for g, m in zip(grid, self.config.max_grid, strict=True)):
            raise ValueError(
                f"token grid {grid} exceeds max_grid={self.config.max_grid}; use a smaller video"
            )

    def positions(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """Learned factorised positions ``(T'*H'*W', D)`` in raster order."""
        t, h, w = (torch.arange(n, device=device) for n in grid)
        pos = self.pos_t(t)[:, None, None] + self.pos_h(h)[None, :, None] + self.pos_w(w)[None, None, :]
        return pos.reshape(-1, self.config.dim)  # (L, D)

    def forward(
        self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        cfg = self.config
        grid = self.token_grid(tuple(hidden_states.shape))
        x = self.patch_embed(patchify(hidden_states, cfg.patch_size))  # (B, L, D)
        x = x + self.positions(grid, x.device)  # (B, L, D)
        freqs = timestep_embedding(timestep.reshape(-1).expand(x.shape[0]), cfg.freq_dim)  # (B, F) fp32
        temb = F.silu(self.time_embed(freqs.to(x.dtype)))  # (B, D)
        context = self.text_embed(encoder_hidden_states.to(x.dtype))  # (B, S, D)
        for block in self.blocks:
            x = block(x, temb, context)  # (B, L, D)
        shift, scale = self.modulation_out(temb).chunk(2, dim=-1)  # 2 x (B, D)
        x = self.proj_out(modulate(x, shift, scale, eps=cfg.eps))  # (B, L, C*pt*ph*pw)
        return unpatchify(x, grid, cfg.patch_size)  # (B, C, T, H, W)

    # -- diffusers-style folder: config.json + diffusion_pytorch_model.safetensors

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and the weights (safetensors) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return folder
