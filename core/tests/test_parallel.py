"""Every parallel strategy against one process: same latents and frames, fp32, on CPU over gloo.

Two process groups are spawned once each (2 and 4 ranks, :func:`fastvideo.parallel.testing.run_ranks`)
and run every case in turn through the public API (``VideoGenerator.from_pretrained(..., num_gpus=N,
...)``); the references are computed in this process, without any parallelism. The model is the
example plugin's (its own DiT, diffusers' Wan VAE, UMT5). The video has 9 frames of 48x80:
3 x 3 x 5 = 45 tokens, a multiple of neither 2 nor 4, so the padding paths run.

The example DiT does not declare sequence parallelism itself (yet): :func:`sequence_parallel_example`
opts it in from outside, as a model file would. The VAE splitting of the parallel decode is per VAE
class: Wan's splitter, and whole pipelines of Wan checkpoints (T2V, TI2V) over ranks, are tested in
fastvideo-wan's tests (test_parallel_pipeline.py, test_vae_split.py); the real ``vsa`` backend under
Ulysses in fastvideo-vsa's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from fastvideo.attention import ALL, StepContext, attention, step_context, use_backend
from fastvideo.parallel.plan import SequenceParallelPlan
from fastvideo.parallel.testing import run_ranks
from fastvideo.testing import assert_close, fake_plugins, plugin_module
from fastvideo.testing.parallel import SMALL_TILES, assert_ranks_match_one_process, tiny_generation
from fastvideo.testing.toys import FrameLocal
from fastvideo_example import plugin as example_plugin

HEIGHT, WIDTH = 48, 80
RTOL = 1e-5

#: case name -> (checkpoint, VideoGenerator parallel options); the 2- and 4-rank suites.
CASES_2: dict[str, tuple[str, dict[str, Any]]] = {
    "ulysses": ("heads2", {"sp_size": 2}),
    "ring": ("heads2", {"ring_size": 2}),
    "cfg": ("heads2", {"cfg_parallel": True}),
    "cfg-fsdp": ("heads2", {"cfg_parallel": True, "fsdp": True}),
    "tp-ulysses": ("heads2", {"tp_size": 2}),
}
CASES_4: dict[str, tuple[str, dict[str, Any]]] = {
    "ulysses": ("heads4", {"sp_size": 4}),
    "ring": ("heads4", {"ring_size": 4}),
    "usp": ("heads4", {"sp_size": 2, "ring_size": 2}),
    "cfg-ulysses": ("heads4", {"cfg_parallel": True, "sp_size": 2}),
    "cfg-ring-fsdp": ("heads4", {"cfg_parallel": True, "ring_size": 2, "fsdp": True}),
    "tp-usp-hsdp": (
        "heads4",
        {"tp_size": 4, "sp_size": 2, "ring_size": 2, "fsdp": True, "hsdp_shard_size": 2},
    ),
}


# ---------------------------------------------------------------- the model and backend under test


@contextmanager
def sequence_parallel_example() -> Iterator[None]:
    """The example plugin and the test's frame-local backend registered (the example DiT declares its
    sequence-parallel plan and attends among sharded tokens in self-attention)."""
    backends = plugin_module("frame-local", fv_register_attention_backends=lambda: [FrameLocal])
    with fake_plugins(example_plugin, backends):
        yield


# ---------------------------------------------------------------- what every rank runs


def generate(
    path: str, size: tuple[int, int] = (HEIGHT, WIDTH), **parallel: Any
) -> tuple[torch.Tensor, np.ndarray]:
    """One tiny generation with CFG; parallel when ``parallel`` has options."""
    from fastvideo import VideoGenerator

    if parallel:
        parallel.setdefault("num_gpus", torch.distributed.get_world_size())
    gen = VideoGenerator.from_pretrained(path, device="cpu", progress=False, vae_tiling=True, **parallel)
    expected = (["cfg-parallel"] if parallel.get("cfg_parallel") else []) + ["parallel-vae"]
    assert gen.pipeline.transforms == (expected if parallel else [])  # applied on every rank
    vae = gen.pipeline.components["vae"]
    # no VAE splitter is registered here (Wan's is fastvideo-wan's): each rank decodes all the tiles
    vae.enable_tiling(**SMALL_TILES)
    return tiny_generation(gen, size)


class ToyJointBlock(nn.Module):
    """Joint attention as HunyuanVideo does it: video tokens (sharded) with text tokens (replicated)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.text_qkv = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3 * dim)
        self.out, self.text_out = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor):
        q, k, v = self.qkv(x + pos).unflatten(-1, (3, self.heads, -1)).unbind(2)  # (B, L, H, Dh)
        tq, tk, tv = self.text_qkv(text).unflatten(-1, (3, self.heads, -1)).unbind(2)  # (B, Lt, H, Dh)
        out, text_out = attention(
            q, k, v, allow=ALL, sequence_parallel=True, replicated=(tq, tk, tv), replicated_mask=mask
        )
        return x + self.out(out.flatten(2)), text + self.text_out(text_out.flatten(2))


class ToyJointModel(nn.Module):
    sequence_parallel_plan: ClassVar[SequenceParallelPlan] = SequenceParallelPlan(
        blocks="blocks", shard={"x": 1, "pos": 0}, output={0: 1}
    )

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ToyJointBlock(dim, heads) for _ in range(depth))

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor):
        pos = torch.sin(torch.arange(x.shape[1] * x.shape[2], dtype=x.dtype)).view(x.shape[1], x.shape[2])
        for block in self.blocks:
            x, text = block(x, text, pos, mask)
        return x, text


def joint(**parallel: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The toy joint-attention model on 45 video and 7 text tokens (2 masked), optionally parallel."""
    torch.manual_seed(0)
    model = ToyJointModel().eval()
    gen = torch.Generator().manual_seed(1)
    x, text = torch.randn(2, 45, 32, generator=gen), torch.randn(2, 7, 32, generator=gen)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    if parallel:
        from fastvideo.configs import ParallelConfig
        from fastvideo.parallel.sequence import SequenceSharding
        from fastvideo.parallel.state import init_parallel, teardown

        state = init_parallel(ParallelConfig(num_gpus=torch.distributed.get_world_size(), **parallel), "cpu")
        SequenceSharding(model, state).apply(model)
    with use_backend("sdpa"), torch.no_grad():
        out = model(x, text, mask)
    if parallel:
        teardown()
    return out


def tiny_dit(heads: int = 2, head_dim: int | None = None, **parallel: Any) -> tuple[Any, Any]:
    """A tiny random example DiT (width 32 unless ``head_dim`` says otherwise), with sequence
    parallelism (and FSDP) when ``parallel`` has options."""
    from fastvideo_example.model import ExampleConfig, ExampleTransformer

    cfg = ExampleConfig(
        num_heads=heads, head_dim=head_dim or 32 // heads, text_dim=32, ffn_dim=64, num_layers=2
    )
    model = ExampleTransformer(cfg)
    model.init_weights(seed=0, std=0.2)
    state = None
    if parallel:
        from fastvideo.configs import ParallelConfig
        from fastvideo.parallel.state import init_parallel

        state = init_parallel(ParallelConfig(num_gpus=torch.distributed.get_world_size(), **parallel), "cpu")
    return model, state


def _dit_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    x, text = torch.randn(1, 16, 3, 6, 10, generator=gen), torch.randn(1, 7, 32, generator=gen)
    return x, torch.tensor([300.0]), text  # 3 x 3 x 5 = 45 tokens


def training_grads(**parallel: Any) -> dict[str, torch.Tensor]:
    """Loss and gradients of one training step of a tiny DiT (FSDP + Ulysses when ``parallel``)."""
    from fastvideo.parallel.fsdp import shard_model
    from fastvideo.parallel.sequence import SequenceSharding
    from fastvideo.parallel.state import teardown

    model, state = tiny_dit(heads=4, **parallel)  # 2 heads per rank: two overlapped Ulysses groups
    if state is not None:
        SequenceSharding(model, state).apply(model)
        assert state.fsdp_mesh is not None
        shard_model(model, state.fsdp_mesh)
    with use_backend("sdpa"):
        loss = model(*_dit_inputs()).square().mean()
        loss.backward()
    grads = {"loss": loss.detach()}
    for name, p in model.named_parameters():
        g = p.grad
        grads[name] = g.full_tensor() if hasattr(g, "full_tensor") else g
    teardown()
    return grads


def sparse_forward(**parallel: Any) -> torch.Tensor:
    """A DiT forward with the sparse ``frame-local`` backend and its layer module; Ulysses when ``parallel``."""
    from fastvideo.parallel.sequence import SequenceSharding
    from fastvideo.parallel.state import teardown

    model, state = tiny_dit(heads=4, **parallel)
    from fastvideo.attention.layers import attach_layer_modules

    attach_layer_modules(model, "frame-local")  # the backend's projections, zeros
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in model.blocks:
            block.self_attn.extra.weight.copy_(torch.randn(32, 32, generator=gen) * 0.2)
    if state is not None:
        SequenceSharding(model, state).apply(model)
    with use_backend("frame-local"), step_context(StepContext(grid=(3, 3, 5))), torch.no_grad():
        out = model(*_dit_inputs())
    teardown()
    return out


def dit_forward(heads: int, groups: Any = None, exchange: str | None = None, **parallel: Any) -> torch.Tensor:
    """A DiT forward (``sdpa``); Ulysses with overlapped head ``groups`` when ``parallel``."""
    from fastvideo.parallel.sequence import SequenceSharding
    from fastvideo.parallel.state import teardown

    model, state = tiny_dit(heads=heads, head_dim=8, **parallel)
    if state is not None:
        sharding = SequenceSharding(model, state, head_groups=groups, exchange=exchange)
        sharding.apply(model)
    with use_backend("sdpa"), torch.no_grad():
        out = model(*_dit_inputs())
    teardown()
    return out


def llama_tp(tp: bool) -> torch.Tensor:
    """A tiny Llama text encoder (HunyuanVideo's), tensor-parallel over all ranks when ``tp``."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    model = LlamaModel(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    if tp:
        from fastvideo.parallel.tp import tensor_parallel

        tensor_parallel(model, torch.distributed.group.WORLD)
    ids = torch.arange(11).view(1, 11) * 5 % 64
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def suite(rank: int, world: int, ckpts: dict[str, str], names: list[str]) -> dict[str, Any]:
    """Every case of the ``world``-rank suite, on this rank."""
    with sequence_parallel_example():
        return _suite(world, ckpts, names)


def _suite(world: int, ckpts: dict[str, str], names: list[str]) -> dict[str, Any]:
    cases = CASES_2 if world == 2 else CASES_4
    out: dict[str, Any] = {}
    for name in names:
        if name in cases:
            ckpt, options = cases[name]
            out[name] = generate(ckpts[ckpt], size=SIZES[ckpt], **options)
        elif name == "joint-ulysses":
            out[name] = joint(sp_size=world)
        elif name == "joint-ring":
            out[name] = joint(ring_size=world)
        elif name == "joint-usp":
            out[name] = joint(sp_size=2, ring_size=world // 2)
        elif name == "ulysses-groups":
            plans = [1, 2, 4, (1, 2, 1), (3, 1), None]  # None: the default, (2, 2)
            out[name] = {str(g): dit_forward(8, g, sp_size=world) for g in plans}
        elif name == "peer-exchange-on-cpu":  # auto falls back to NCCL-style all-to-all; peer refuses
            out[name] = {"auto": dit_forward(8, exchange="auto", sp_size=world)}
            try:
                dit_forward(8, exchange="peer", sp_size=world)
            except ValueError as exc:
                out[name]["peer"] = str(exc)
        elif name == "ulysses-fused":  # the fused Triton kernels (interpreted) on gathered tokens, batch 1
            import os

            from fastvideo import kernels

            os.environ[kernels.STRICT_ENV] = "1"  # a kernel that cannot launch raises (no quiet fallback)
            try:
                with kernels.forced(True):
                    out[name] = dit_forward(8, sp_size=world)
            finally:
                del os.environ[kernels.STRICT_ENV]
        elif name == "sparse-ulysses":
            out[name] = sparse_forward(sp_size=world)
        elif name == "train-fsdp-ulysses":
            out[name] = training_grads(sp_size=world, fsdp=True)
        elif name == "llama-tp":
            out[name] = llama_tp(True)
        elif name == "heads-error":
            try:
                generate(ckpts["heads2"], sp_size=4)
            except ValueError as exc:
                out[name] = str(exc)
    return out


SIZES = {"heads2": (HEIGHT, WIDTH), "heads4": (HEIGHT, WIDTH)}
EXTRA_2 = [
    "joint-ulysses",
    "joint-ring",
    "train-fsdp-ulysses",
    "llama-tp",
    "sparse-ulysses",
    "ulysses-groups",
    "peer-exchange-on-cpu",
    "ulysses-fused",
]
EXTRA_4 = ["joint-usp", "joint-ring", "heads-error"]


# ---------------------------------------------------------------- fixtures: checkpoints, runs, references


def _example(path: Path, seed: int, heads: int) -> str:
    """The example checkpoint with a ``heads``-head DiT of width 32 and random weights far from zero
    (std 0.2: every layer matters), so that Ulysses can use up to ``heads`` ranks."""
    from fastvideo_example.checkpoint import make_checkpoint
    from fastvideo_example.model import ExampleConfig, ExampleTransformer

    make_checkpoint(path, seed=seed)
    dit = ExampleTransformer(
        ExampleConfig(num_heads=heads, head_dim=32 // heads, in_channels=16, out_channels=16, text_dim=32)
    )
    dit.init_weights(seed=seed, std=0.2)
    dit.save_pretrained(path / "transformer")
    return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("parallel")
    return {"heads2": _example(root / "heads2", 3, 2), "heads4": _example(root / "heads4", 5, 4)}


@pytest.fixture(scope="module")
def refs(ckpts: dict[str, str]) -> dict[str, Any]:
    """One-process results of everything the suites compute."""
    with sequence_parallel_example():
        out: dict[str, Any] = {name: generate(path, size=SIZES[name]) for name, path in ckpts.items()}
        out["joint"] = joint()
        out["train"] = training_grads()
        out["llama"] = llama_tp(False)
        out["sparse"] = sparse_forward()
        out["dit8"] = dit_forward(8)
        from fastvideo import kernels

        with kernels.forced(True):
            out["dit8-fused"] = dit_forward(8)
    return out


@pytest.fixture(scope="module")
def ranks2(ckpts: dict[str, str]) -> list[dict[str, Any]]:
    return run_ranks(f"{__file__}:suite", 2, args=(ckpts, [*CASES_2, *EXTRA_2]))


@pytest.fixture(scope="module")
def ranks4(ckpts: dict[str, str]) -> list[dict[str, Any]]:
    return run_ranks(f"{__file__}:suite", 4, args=(ckpts, [*CASES_4, *EXTRA_4]))


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("case", list(CASES_2))
def test_two_ranks_match_one_process(case: str, ranks2: list[dict[str, Any]], refs: dict[str, Any]) -> None:
    assert_ranks_match_one_process(case, refs[CASES_2[case][0]], ranks2)


@pytest.mark.parametrize("case", list(CASES_4))
def test_four_ranks_match_one_process(case: str, ranks4: list[dict[str, Any]], refs: dict[str, Any]) -> None:
    assert_ranks_match_one_process(case, refs[CASES_4[case][0]], ranks4)


@pytest.mark.parametrize(
    ("world", "case"), [(2, "joint-ulysses"), (2, "joint-ring"), (4, "joint-usp"), (4, "joint-ring")]
)
def test_joint_attention_with_replicated_tokens(
    world: int, case: str, ranks2: list[dict[str, Any]], ranks4: list[dict[str, Any]], refs: dict[str, Any]
) -> None:
    """Video tokens sharded, masked text tokens replicated: both outputs equal one process's."""
    ref_x, ref_text = refs["joint"]
    for rank, result in enumerate(ranks2 if world == 2 else ranks4):
        x, text = result[case]
        assert_close(f"{case} rank {rank} video", ref_x, x, RTOL)
        assert_close(f"{case} rank {rank} text", ref_text, text, RTOL)


def test_fsdp_and_ulysses_training_gradients(ranks2: list[dict[str, Any]], refs: dict[str, Any]) -> None:
    """Loss and every parameter's gradient of a training step equal one process's."""
    ref = refs["train"]
    for rank, result in enumerate(ranks2):
        grads = result["train-fsdp-ulysses"]
        assert grads.keys() == ref.keys()
        for name, g in ref.items():
            assert_close(f"rank {rank} grad {name}", g, grads[name], RTOL, atol=1e-9)


def test_ulysses_with_a_sparse_backend_and_its_layer_module(
    ranks2: list[dict[str, Any]], refs: dict[str, Any]
) -> None:
    """A plugin's sparse backend that needs the whole token grid (with its per-layer module) sees it
    under Ulysses: each rank's output equals one process's."""
    dense = tiny_dit(heads=4)[0]
    with use_backend("sdpa"), torch.no_grad():
        assert (dense(*_dit_inputs()) - refs["sparse"]).abs().max() > 1e-3, "ran densely: nothing tested"
    for rank, result in enumerate(ranks2):
        assert_close(f"frame-local rank {rank}", refs["sparse"], result["sparse-ulysses"], RTOL)


def test_ulysses_overlapped_head_groups(ranks2: list[dict[str, Any]], refs: dict[str, Any]) -> None:
    """8 heads on 2 ranks, in head groups of every plan (equal, tapered, uneven): one process's output."""
    for rank, result in enumerate(ranks2):
        assert len(result["ulysses-groups"]) == 6
        for plan, out in result["ulysses-groups"].items():
            assert_close(f"groups {plan}, rank {rank}", refs["dit8"], out, RTOL)


def test_peer_exchange_needs_cuda(ranks2: list[dict[str, Any]], refs: dict[str, Any]) -> None:
    """On gloo/CPU, ``auto`` runs the all-to-all path; asking for peer copies is a clear error
    (the copy-engine path itself is checked against NCCL on GPUs: test_parallel_gpu.py)."""
    for rank, result in enumerate(ranks2):
        assert_close(
            f"auto exchange, rank {rank}", refs["dit8"], result["peer-exchange-on-cpu"]["auto"], RTOL
        )
        assert result["peer-exchange-on-cpu"]["peer"] == (
            "the peer Ulysses exchange was requested, but it needs CUDA devices, and this run is on cpu; "
            "unset FASTVIDEO_ULYSSES_EXCHANGE (or pass exchange='auto') to use NCCL"
        )


def test_exchange_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastvideo.parallel.peer import exchange_mode

    monkeypatch.delenv("FASTVIDEO_ULYSSES_EXCHANGE", raising=False)
    assert exchange_mode() == "auto"
    assert exchange_mode("nccl") == "nccl"
    monkeypatch.setenv("FASTVIDEO_ULYSSES_EXCHANGE", "peer")
    assert exchange_mode() == "peer"
    assert exchange_mode("auto") == "auto"  # an explicit choice wins over the environment
    monkeypatch.setenv("FASTVIDEO_ULYSSES_EXCHANGE", "nvlink")
    with pytest.raises(ValueError, match="Ulysses exchange must be one of auto, nccl, peer, got 'nvlink'"):
        exchange_mode()


def test_head_groups_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastvideo.parallel.sequence import head_groups

    monkeypatch.delenv("FASTVIDEO_ULYSSES_HEAD_GROUPS", raising=False)
    assert [head_groups(6, c) for c in (1, 2, 3, 4, 5, 6, 9)] == [
        (6,), (3, 3), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1,) * 6, (1,) * 6
    ]  # fmt: skip
    assert head_groups(7, 4) == (7,)
    # the default: 3 equal groups (or fewer, to divide), the last one halved
    assert [head_groups(h) for h in (1, 2, 3, 4, 5, 6, 12, 20)] == [
        (1,),
        (1, 1),
        (1, 1, 1),
        (2, 1, 1),
        (3, 2),
        (2, 2, 1, 1),
        (4, 4, 2, 2),
        (10, 5, 5),
    ]
    assert head_groups(6, [2, 3, 1]) == (2, 3, 1)
    with pytest.raises(ValueError, match="Ulysses head groups 2,3 must be positive and sum to the 6 heads"):
        head_groups(6, (2, 3))
    with pytest.raises(ValueError, match="number of Ulysses head groups must be >= 1, got 0"):
        head_groups(6, 0)
    monkeypatch.setenv("FASTVIDEO_ULYSSES_HEAD_GROUPS", "2")
    assert head_groups(12) == (6, 6)
    monkeypatch.setenv("FASTVIDEO_ULYSSES_HEAD_GROUPS", "1,4,1")
    assert head_groups(6) == (1, 4, 1)
    monkeypatch.setenv("FASTVIDEO_ULYSSES_HEAD_GROUPS", "two")
    with pytest.raises(ValueError, match="FASTVIDEO_ULYSSES_HEAD_GROUPS must be a number of groups or comma"):
        head_groups(12)


def test_tensor_parallel_llama_encoder(ranks2: list[dict[str, Any]], refs: dict[str, Any]) -> None:
    for rank, result in enumerate(ranks2):
        assert_close(f"llama rank {rank}", refs["llama"], result["llama-tp"], RTOL)


def test_ulysses_degree_must_divide_the_heads(ranks4: list[dict[str, Any]]) -> None:
    message = ranks4[0]["heads-error"]
    assert message == (
        "ExampleTransformer has 2 attention heads, which Ulysses degree sp_size=4 does not divide; use "
        "--sp-size 2 --ring-size 2 (USP) or --sp-size 1 --ring-size 4 (ring attention)"
    )
    assert all(r["heads-error"] == message for r in ranks4)


@pytest.mark.parametrize(
    ("heads", "world", "cfg", "fix"),
    [
        (2, 3, 1, "use --sp-size 1 --ring-size 3 (ring attention)"),  # one suggestion, not the same one twice
        (2, 4, 1, "use --sp-size 2 --ring-size 2 (USP) or --sp-size 1 --ring-size 4 (ring attention)"),
        (5, 8, 2, "use --sp-size 1 --ring-size 4 (ring attention)"),
    ],
    ids=["only-ring", "usp-or-ring", "cfg"],
)
def test_heads_message_offers_each_fix_once(heads: int, world: int, cfg: int, fix: str) -> None:
    from types import SimpleNamespace

    from fastvideo.parallel.sequence import head_message

    state = SimpleNamespace(ulysses_size=world // cfg, world_size=world, cfg_size=cfg)
    message = head_message("M", heads, state)  # type: ignore[arg-type]
    assert (
        message
        == f"M has {heads} attention heads, which Ulysses degree sp_size={world // cfg} does not divide; {fix}"
    )


class _PlanBlock(nn.Module):
    def forward(self, x: torch.Tensor, text: torch.Tensor, *, pos: torch.Tensor) -> torch.Tensor:
        return x


class _ReorderedBlock(nn.Module):  # the same arguments in another order
    def forward(self, text: torch.Tensor, pos: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x


class _PlanModel(nn.Module):
    sequence_parallel_plan = SequenceParallelPlan(blocks=("first", "second"), shard={"x": 1, "pos": 0})

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.ModuleList([_PlanBlock()])
        self.second = nn.ModuleList([_ReorderedBlock()])


def test_plan_names_arguments_and_shards_them_by_name_in_any_order() -> None:
    """Each block's own signature places the named arguments, passed by position or by keyword;
    a tensor whose token dim is not the full length (the text here) is left whole."""
    from types import SimpleNamespace

    from fastvideo.parallel.sequence import SequenceSharding, read_plan

    model = _PlanModel()
    plan = read_plan(model)
    assert plan.resolve(model.first[0]) == {"x": (0, 1), "pos": (None, 0)}
    assert plan.resolve(model.second[0]) == {"x": (2, 1), "pos": (1, 0)}
    assert plan.output == 1 and plan.first == "x"
    state = SimpleNamespace(sp_size=2, sp_rank=1, ulysses_size=1)
    sharding = SequenceSharding(model, state)  # type: ignore[arg-type]
    sharding.length = 6
    x, text, pos = torch.randn(1, 6, 4), torch.randn(1, 6, 4)[:, :3], torch.randn(6, 1, 2)
    args, kwargs = sharding._shard_inputs(model.first[0], (x, text), {"pos": pos})
    assert torch.equal(args[0], x[:, 3:]) and args[1] is text and torch.equal(kwargs["pos"], pos[3:])
    args, kwargs = sharding._shard_inputs(model.second[0], (text, pos), {"x": x})
    assert args[0] is text and torch.equal(args[1], pos[3:]) and torch.equal(kwargs["x"], x[:, 3:])


def test_plan_rejects_unknown_names_and_positions() -> None:
    from fastvideo.parallel.sequence import read_plan

    class Typo(_PlanModel):
        sequence_parallel_plan = SequenceParallelPlan(blocks=("first", "second"), shard={"x": 1, "rope": 0})

    with pytest.raises(
        ValueError,
        match=r"Typo.sequence_parallel_plan shards 'rope', but _PlanBlock.forward takes \(x, text, pos\)",
    ):
        read_plan(Typo())

    class Positional(_PlanModel):
        sequence_parallel_plan: ClassVar[Any] = {"blocks": "first", "token_args": {0: 1}}

    with pytest.raises(ValueError, match=r"numbers block arguments \(token_args=\{0: 1\}\); declare Seq"):
        read_plan(Positional())
    with pytest.raises(ValueError, match=r"got \{0: 1\}; name the arguments .*positions are not accepted"):
        SequenceParallelPlan(blocks="blocks", shard={0: 1})  # type: ignore[dict-item]

    class NoPlan(nn.Module):
        pass

    with pytest.raises(ValueError, match="NoPlan declares no sequence_parallel_plan"):
        read_plan(NoPlan())


def test_ulysses_output_reaches_fused_kernels_as_plain_tensors(
    ranks2: list[dict[str, Any]], refs: dict[str, Any]
) -> None:
    """With a batch of one the all-gathered output of the last block is a view of the collective's
    asynchronous result; the fused kernels after it (the head's adaLN) read raw pointers, so it must be
    waited for first (an illegal memory access on CUDA, an invalid storage in Triton's interpreter)."""
    for rank, result in enumerate(ranks2):
        assert_close(f"ulysses-fused rank {rank}", refs["dit8-fused"], result["ulysses-fused"], RTOL)
