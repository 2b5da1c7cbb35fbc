"""``sta`` under Ulysses sequence parallelism (2 gloo ranks, CPU, Triton's interpreter without a GPU):
each rank attends with the whole token grid for half of the heads, and must use *those* heads'
windows of a per-head strategy (their numbers travel with them), so each rank's DiT output equals one
process's. The DiT is a small one defined here on core's DiT base: a joint video+text block (text
replicated on every rank, as in HunyuanVideo) and a self-attention block, cross-attention to text."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from fastvideo.attention import ALL, DENSE, StepContext, attention, joint_attention, step_context, use_backend
from fastvideo.layers import patchify, unpatchify
from fastvideo.models import DiT, SequenceParallelPlan
from fastvideo.parallel.testing import run_ranks
from fastvideo.testing import assert_close, fake_plugins
from fastvideo_sta import plugin as sta_plugin
from fastvideo_sta.strategy import Strategy, save_strategy

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

RTOL = 1e-5
DIM, HEADS, TEXT = 32, 4, 32
GRID = (3, 3, 5)  # 45 tokens: a multiple of neither the ranks nor the tile
WINDOWS = [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2)]  # per head, in (2, 2, 4) tiles


class _Attn(nn.Module):
    def __init__(self, joint: bool) -> None:
        super().__init__()
        self.joint = joint
        self.qkv, self.proj, self.txt = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM), nn.Linear(TEXT, 3 * DIM)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, HEADS, -1)).unbind(2)  # 3 x (B, L, H, Dh)
        if self.joint:
            qt, kt, vt = self.txt(text).unflatten(-1, (3, HEADS, -1)).unbind(2)
            mask = torch.ones(text.shape[:2], dtype=torch.bool)
            mask[:, -2:] = False  # padded text
            out, _ = joint_attention(q, k, v, qt, kt, vt, txt_mask=mask)
        else:
            out = attention(q, k, v, allow=ALL, sequence_parallel=True)
        return self.proj(out.flatten(2))


class _Block(nn.Module):
    def __init__(self, joint: bool) -> None:
        super().__init__()
        self.attn = _Attn(joint)
        self.q, self.kv, self.out = nn.Linear(DIM, DIM), nn.Linear(TEXT, 2 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, text)
        k, v = self.kv(text).unflatten(-1, (2, HEADS, -1)).unbind(2)
        cross = attention(self.q(x).unflatten(-1, (HEADS, -1)), k, v, allow=DENSE)  # (B, L, H, Dh)
        return x + self.out(cross.flatten(2))


class _Config:
    patch_size = (1, 2, 2)


class _DiT(DiT):
    sparse_attention_layers = ("blocks.*.attn",)
    sequence_parallel_plan = SequenceParallelPlan(blocks="blocks", shard={"x": 1})

    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()
        self.patch_embed = nn.Linear(16 * 4, DIM)
        self.blocks = nn.ModuleList([_Block(joint=True), _Block(joint=False)])
        self.head = nn.Linear(DIM, 16 * 4)

    def forward(self, latents: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        grid = self.token_grid(latents.shape)
        x = self.patch_embed(patchify(latents, self.patch()))  # (B, L, D)
        for block in self.blocks:
            x = block(x, text)
        return unpatchify(self.head(x), grid, self.patch())


def sta_forward(parallel: bool, folder: str, backend: str = "sta") -> torch.Tensor:
    """The DiT's forward with a per-head, per-layer strategy; Ulysses over all ranks when ``parallel``."""
    from fastvideo.attention.layers import attach_layer_modules
    from fastvideo.attention.options import resolve_options
    from fastvideo.configs import ParallelConfig
    from fastvideo.parallel.sequence import SequenceSharding
    from fastvideo.parallel.state import init_parallel, teardown

    path = Path(folder) / "strategy.json"
    with fake_plugins(sta_plugin):
        torch.manual_seed(0)
        model = _DiT()
        for param in model.parameters():
            nn.init.normal_(param, std=0.2)
        attach_layer_modules(model, "sta")
        if parallel:
            world = torch.distributed.get_world_size()
            state = init_parallel(ParallelConfig(num_gpus=world, sp_size=world), "cpu")
            SequenceSharding(model, state).apply(model)
        gen = torch.Generator().manual_seed(2)
        x, text = torch.randn(1, 16, 3, 6, 10, generator=gen), torch.randn(1, 5, TEXT, generator=gen)
        options = resolve_options("sta", {"sta": {"strategy": str(path), "tile": "2,2,4"}})
        context = StepContext(grid=GRID, options=options)
        with use_backend(backend), step_context(context), torch.no_grad():
            out = model(x, text)
        if parallel:
            teardown()
    return out


def rank_forward(rank: int, world: int, folder: str) -> torch.Tensor:
    return sta_forward(True, folder)


def test_ulysses_with_per_head_windows_equals_one_process(tmp_path: Path) -> None:
    windows = {(0, layer, h): WINDOWS[(h + layer) % HEADS] for layer in range(2) for h in range(HEADS)}
    save_strategy(Strategy(windows), tmp_path / "strategy.json")
    ref = sta_forward(False, str(tmp_path))
    dense = sta_forward(False, str(tmp_path), backend="sdpa")
    assert (dense - ref).abs().max() > 1e-3, "sta ran densely: nothing tested"
    for rank, out in enumerate(run_ranks(f"{__file__}:rank_forward", 2, args=(str(tmp_path),))):
        assert_close(f"sta rank {rank}", ref, out, RTOL)
