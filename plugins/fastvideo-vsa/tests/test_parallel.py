"""``vsa`` under Ulysses sequence parallelism (2 gloo ranks, CPU, Triton's interpreter without a GPU):
the backend, with its gate projections, sees the whole token grid, so each rank's DiT output equals
one process's. The DiT is a small one defined here on core's DiT base (a plugin never imports
another plugin's model): self-attention admitting sparse backends among the sequence-parallel
tokens, cross-attention to text, and a named sequence-parallel plan."""

from __future__ import annotations

import os

import torch
from torch import nn

from fastvideo.attention import ALL, DENSE, StepContext, attention, step_context, use_backend
from fastvideo.layers import patchify, unpatchify
from fastvideo.models import DiT, SequenceParallelPlan
from fastvideo.parallel.testing import run_ranks
from fastvideo.testing import assert_close, fake_plugins
from fastvideo_vsa import plugin as vsa_plugin

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

RTOL = 1e-5
DIM, HEADS, TEXT = 32, 4, 32


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, HEADS, -1)).unbind(2)  # 3 x (B, L, H, Dh)
        out = attention(q, k, v, allow=ALL, sequence_parallel=True)  # (B, L, H, Dh)
        return self.proj(out.flatten(2))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = _SelfAttention()
        self.q, self.kv, self.out = nn.Linear(DIM, DIM), nn.Linear(TEXT, 2 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(x)
        k, v = self.kv(text).unflatten(-1, (2, HEADS, -1)).unbind(2)  # 2 x (B, S, H, Dh)
        cross = attention(self.q(x).unflatten(-1, (HEADS, -1)), k, v, allow=DENSE)  # (B, L, H, Dh)
        return x + self.out(cross.flatten(2))


class _Config:
    patch_size = (1, 2, 2)


class _DiT(DiT):
    sparse_attention_layers = ("blocks.*.self_attn",)
    sequence_parallel_plan = SequenceParallelPlan(blocks="blocks", shard={"x": 1})

    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()
        self.patch_embed = nn.Linear(16 * 4, DIM)
        self.blocks = nn.ModuleList(_Block() for _ in range(2))
        self.head = nn.Linear(DIM, 16 * 4)

    def forward(self, latents: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        grid = self.token_grid(latents.shape)
        x = self.patch_embed(patchify(latents, self.patch()))  # (B, L, D)
        for block in self.blocks:
            x = block(x, text)
        return unpatchify(self.head(x), grid, self.patch())


def vsa_forward(parallel: bool, backend: str = "vsa") -> torch.Tensor:
    """The 4-head DiT's forward with ``backend`` (vsa: gated, 50 % sparse) on 45 tokens (3 x 3 x 5,
    a multiple of neither 2 nor 4); Ulysses over all ranks when ``parallel``."""
    from fastvideo.attention.layers import attach_layer_modules
    from fastvideo.configs import ParallelConfig
    from fastvideo.parallel.sequence import SequenceSharding
    from fastvideo.parallel.state import init_parallel, teardown

    with fake_plugins(vsa_plugin):
        torch.manual_seed(0)
        model = _DiT()
        for param in model.parameters():
            nn.init.normal_(param, std=0.2)
        attach_layer_modules(model, "vsa")  # the backend's gate projections, zeros
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for block in model.blocks:
                block.self_attn.gate_compress.weight.copy_(torch.randn(DIM, DIM, generator=gen) * 0.2)
        if parallel:
            world = torch.distributed.get_world_size()
            state = init_parallel(ParallelConfig(num_gpus=world, sp_size=world), "cpu")
            SequenceSharding(model, state).apply(model)
        gen = torch.Generator().manual_seed(2)
        x, text = torch.randn(1, 16, 3, 6, 10, generator=gen), torch.randn(1, 7, TEXT, generator=gen)
        context = StepContext(grid=(3, 3, 5), options={"vsa": {"sparsity": 0.5}})
        with use_backend(backend), step_context(context), torch.no_grad():
            out = model(x, text)
        if parallel:
            teardown()
    return out


def rank_forward(rank: int, world: int) -> torch.Tensor:
    return vsa_forward(parallel=True)


def test_ulysses_with_vsa_equals_one_process() -> None:
    ref = vsa_forward(parallel=False)
    dense = vsa_forward(parallel=False, backend="sdpa")
    assert (dense - ref).abs().max() > 1e-3, "vsa ran densely: nothing tested"
    for rank, out in enumerate(run_ranks(f"{__file__}:rank_forward", 2)):
        assert_close(f"vsa rank {rank}", ref, out, RTOL)
