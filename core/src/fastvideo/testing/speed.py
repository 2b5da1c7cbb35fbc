"""A small DiT built on :class:`fastvideo.models.DiT` for the tests of fastvideo.optimize: adaLN-modulated
self-attention, cross-attention to text, and an MLP per block (the shape of Wan's blocks)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastvideo.attention import ALL, DENSE, attention
from fastvideo.configs import DiffusersConfigMixin
from fastvideo.layers import timestep_embedding
from fastvideo.models import DiT, SequenceParallelPlan


@dataclass(frozen=True, kw_only=True)
class ToyConfig(DiffusersConfigMixin):
    patch_size: tuple[int, int, int] = (1, 1, 1)
    channels: int = 4
    dim: int = 32
    heads: int = 2
    text_dim: int = 16
    num_layers: int = 3


class ToyBlock(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.mod = nn.Linear(d, 3 * d)
        self.qkv = nn.Linear(d, 3 * d)
        self.o = nn.Linear(d, d)
        self.cq, self.ck, self.cv = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.mod(temb).unsqueeze(1).chunk(3, dim=-1)  # 3 x (B, 1, D)
        h = F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, -1)).unbind(2)  # 3 x (B, L, H, Dh)
        x = x + gate * self.o(attention(q, k, v, allow=ALL, sequence_parallel=True).flatten(2))
        heads = (self.heads, -1)
        cq, ck, cv = (
            self.cq(x).unflatten(-1, heads),
            self.ck(context).unflatten(-1, heads),
            self.cv(context).unflatten(-1, heads),
        )
        x = x + self.o(attention(cq, ck, cv, allow=DENSE).flatten(2))
        return x + self.fc2(F.gelu(self.fc1(x)))


class ToyDiT(DiT):
    config_class = ToyConfig
    diffusers_class = "ToyDiT"
    name_mapping = None
    text_kv_layers = ("text_embed", "blocks.*.ck", "blocks.*.cv")
    timestep_modulation = "time_embed"
    fp8_exclude = ("blocks.*.mod",)  # the modulation projection stays in its dtype
    sequence_parallel_plan = SequenceParallelPlan(blocks="blocks", shard={"x": 1})

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = nn.Linear(cfg.channels, cfg.dim)
        self.time_embed = nn.Linear(cfg.dim, cfg.dim)
        self.text_embed = nn.Linear(cfg.text_dim, cfg.dim)
        self.blocks = nn.ModuleList(ToyBlock(cfg) for _ in range(cfg.num_layers))
        self.head = nn.Linear(cfg.dim, cfg.channels)
        self.calls = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.weight.dtype

    def forward(self, hidden_states, timestep, encoder_hidden_states):  # type: ignore[no-untyped-def]
        self.calls += 1
        b, c, t, h, w = hidden_states.shape
        x = self.patch_embed(hidden_states.to(self.dtype).flatten(2).transpose(1, 2))  # (B, L, D)
        temb = self.time_embed(timestep_embedding(timestep.expand(b).float(), self.config.dim).to(self.dtype))
        context = self.text_embed(encoder_hidden_states.to(self.dtype))  # (B, Lt, D)
        for block in self.blocks:
            x = block(x, context, temb)
        return self.head(x).transpose(1, 2).reshape(b, c, t, h, w)


def toy_dit(seed: int = 0, **kw) -> ToyDiT:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    model = ToyDiT.from_config(ToyConfig(**kw), device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
