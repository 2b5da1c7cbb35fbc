"""The ``vsa`` attention backend: registration, dispatch through the seam, and the Wan integration
(gate projection, checkpoints, sparsity from the CLI to the step context)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fastvideo.attention import ALL, DENSE, StepContext, attention, current_step, step_context, use_backend
from fastvideo.interfaces import AttentionBackend
from fastvideo.registry import get_registry
from fastvideo.testing import assert_close, fake_plugins, plugin_module
from fastvideo_vsa import plugin as vsa_plugin
from fastvideo_vsa.backend import VSABackend
from fastvideo_vsa.ops import CubeGeometry, topk_for, vsa_attention, vsa_attention_reference, vsa_select
from fastvideo_wan import plugin as wan_plugin

GRID = (3, 4, 6)  # 72 tokens, 1 x 1 x 2 cubes (both partial)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class ReferenceVSA(AttentionBackend):
    """VSA computed by the reference on the op's own selection; records every call."""

    name = "vsa-ref"
    sparse = True
    accepts_gate = True
    calls: list[tuple[int, bool]] = []  # noqa: RUF012 - shared record of (tokens, had a gate)

    def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None, gate=None):
        assert step is not None and step.grid is not None
        type(self).calls.append((q.shape[1], gate is not None))
        topk = topk_for(step.sparsity, CubeGeometry(step.grid).num_cubes)
        idx = vsa_select(q, k, step.grid, topk).long()
        return vsa_attention_reference(q, k, v, step.grid, gate=gate, indices=idx, scale=scale)


@pytest.fixture
def vsa_plugins() -> Iterator[None]:
    """Only the core's built-ins, the vsa and wan plugins, and the reference backend."""
    ReferenceVSA.calls = []
    ref = plugin_module("vsa-ref", fv_register_attention_backends=lambda: [ReferenceVSA])
    with fake_plugins(vsa_plugin, wan_plugin, ref):
        yield


def qkv(length: int = 72, heads: int = 2, dim: int = 16, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, length, heads, dim, generator=gen).to(DEVICE) for _ in range(4)]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (q, k, v))
    ).transpose(1, 2)


def test_plugin_registers_the_sparse_gated_backend(vsa_plugins: None) -> None:
    entry = get_registry().entries["attention_backend"]["vsa"]
    assert entry.cls is VSABackend and VSABackend.sparse and VSABackend.accepts_gate
    assert VSABackend.is_available()


def test_discovery_imports_neither_torch_nor_triton() -> None:
    code = "import sys, fastvideo_vsa, fastvideo_vsa.plugin; print(sorted({'torch', 'triton'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_self_attention_runs_vsa_with_the_step_context(vsa_plugins: None) -> None:
    q, k, v, g = qkv()
    with use_backend("vsa"), step_context(StepContext(grid=GRID, sparsity=0.5)):
        out = attention(q, k, v, allow=ALL, gate=g)
    expected = vsa_attention(q, k, v, GRID, sparsity=0.5, gate=g)
    assert_close("out", expected, out, 0.0)
    assert not torch.allclose(out, sdpa(q, k, v), atol=1e-3)  # really sparse (and gated)


def test_dense_layers_and_unsupported_calls_fall_back_to_dense(vsa_plugins: None) -> None:
    q, k, v, g = qkv()
    dense = sdpa(q, k, v)
    with use_backend("vsa"):
        with step_context(StepContext(grid=GRID, sparsity=0.5)):
            assert_close("cross-attention", dense, attention(q, k, v, allow=DENSE, gate=g), 1e-6)
            part = (q[:, :60], k[:, :60], v[:, :60])
            assert_close("wrong length", sdpa(*part), attention(*part, allow=ALL), 1e-6)
        assert_close("no step context", dense, attention(q, k, v, allow=ALL), 1e-6)
    backend = VSABackend()
    assert "StepContext.grid" in backend.supports(q, k, v)
    with step_context(StepContext(grid=(3, 4, 5), sparsity=0.5)):
        assert "exactly the 60 video tokens" in backend.supports(q, k, v)
        assert "no attention mask" in backend.supports(q, k, v, attn_mask=torch.ones(1, dtype=torch.bool))


def test_dense_backends_ignore_the_gate(vsa_plugins: None) -> None:
    q, k, v, g = qkv()
    with use_backend("sdpa"), step_context(StepContext(grid=GRID, sparsity=0.5)):
        assert_close("out", sdpa(q, k, v), attention(q, k, v, allow=ALL, gate=g), 1e-6)


def test_sparsity_zero_without_gate_is_exact_attention(vsa_plugins: None) -> None:
    q, k, v, _ = qkv()
    with use_backend("vsa"), step_context(StepContext(grid=GRID, sparsity=0.0)):
        assert_close("out", sdpa(q, k, v), attention(q, k, v, allow=ALL), 1e-6)


# --------------------------------------------------------------------------------------------------
# Wan
# --------------------------------------------------------------------------------------------------

TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_max_seq_len=32,
)


def tiny_wan(gates: bool, seed: int = 0):
    from fastvideo_wan.model import WanConfig, WanTransformer

    torch.manual_seed(seed)
    model = WanTransformer.from_config(WanConfig(**TINY), device="cpu", vsa_gate=gates)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.to(DEVICE).eval()


def test_wan_self_attention_uses_vsa_and_cross_attention_stays_dense(vsa_plugins: None) -> None:
    model = tiny_wan(gates=True)
    latents = torch.randn(1, 16, 3, 8, 10, device=DEVICE)  # token grid (3, 4, 5)
    text = torch.randn(1, 7, 32, device=DEVICE)
    t = torch.tensor([500.0], device=DEVICE)
    ctx = StepContext(grid=model.token_grid(latents.shape), sparsity=0.5)
    with torch.no_grad(), step_context(ctx):
        with use_backend("vsa-ref"):
            ref = model(latents, t, text)
        assert ReferenceVSA.calls == [(60, True)] * 2  # the two self-attentions, gated; no cross-attention
        with use_backend("vsa"):
            out = model(latents, t, text)
        with use_backend("sdpa"):
            dense = model(latents, t, text)
    assert_close("wan", ref, out, 1e-5)
    assert not torch.allclose(out, dense, atol=1e-3)


def test_wan_gates_are_zero_initialised_and_trainable() -> None:
    from fastvideo_wan.model import WanConfig, WanTransformer

    model = WanTransformer.from_config(WanConfig(**TINY), device="cpu")
    assert not model.has_vsa_gates
    model.add_vsa_gates()
    gates = [b.self_attn.gate_compress for b in model.blocks]
    assert all(g is not None and not g.weight.any() and not g.bias.any() for g in gates)
    assert all(g.weight.requires_grad for g in gates)
    built = WanTransformer.from_config(WanConfig(**TINY), device="cpu", vsa_gate=True)
    assert built.has_vsa_gates and not any(
        p.any() for n, p in built.named_parameters() if "gate_compress" in n
    )


def test_wan_loads_vsa_gates_from_fastvideo_checkpoints(tmp_path: Path) -> None:
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file, save_file

    from fastvideo_wan.convert import diffusers_to_ours, ours_to_diffusers
    from fastvideo_wan.model import WanTransformer

    ref = WanTransformer3DModel(**TINY)
    ref.save_pretrained(tmp_path / "dense")
    dense = WanTransformer.from_pretrained(tmp_path / "dense", dtype=torch.float32)
    assert not dense.has_vsa_gates
    zeroed = WanTransformer.from_pretrained(tmp_path / "dense", dtype=torch.float32, vsa_gate=True)
    assert zeroed.has_vsa_gates and not zeroed.blocks[1].self_attn.gate_compress.weight.any()

    weights = tmp_path / "dense" / "diffusion_pytorch_model.safetensors"
    for name, key in (
        ("vsa", "blocks.{i}.to_gate_compress.{p}"),
        ("nested", "blocks.{i}.attn1.to_gate_compress.{p}"),
    ):
        state = load_file(weights)
        for i in range(2):
            state[key.format(i=i, p="weight")] = torch.full((32, 32), float(i + 1))
            state[key.format(i=i, p="bias")] = torch.full((32,), -1.0)
        (tmp_path / name).mkdir()
        save_file(state, tmp_path / name / weights.name)
        (tmp_path / name / "config.json").write_text((tmp_path / "dense" / "config.json").read_text())
        model = WanTransformer.from_pretrained(tmp_path / name, dtype=torch.float32)
        assert model.blocks[1].self_attn.gate_compress.weight.eq(2.0).all()
        assert model.blocks[0].self_attn.gate_compress.bias.eq(-1.0).all()
        assert not WanTransformer.from_pretrained(tmp_path / name, vsa_gate=False).has_vsa_gates
    ours = diffusers_to_ours(
        {"blocks.3.to_gate_compress.weight": 0, "blocks.3.attn1.to_gate_compress.bias": 1}
    )
    assert ours == {"blocks.3.self_attn.gate_compress.weight": 0, "blocks.3.self_attn.gate_compress.bias": 1}
    assert ours_to_diffusers(ours) == {
        "blocks.3.to_gate_compress.weight": 0,
        "blocks.3.to_gate_compress.bias": 1,
    }


def test_generation_puts_the_sparsity_into_the_step_context(
    vsa_plugins: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastvideo import VideoGenerator
    from fastvideo_wan.tiny import make_tiny_wan

    seen: list[tuple[float, tuple[int, int, int] | None]] = []
    real = VSABackend.forward

    def spy(self, q, k, v, **kw):
        seen.append((kw["step"].sparsity, kw["step"].grid))
        return real(self, q, k, v, **kw)

    monkeypatch.setattr(VSABackend, "forward", spy)
    ckpt = make_tiny_wan(tmp_path / "tiny", seed=1)
    gen = VideoGenerator.from_pretrained(str(ckpt), device="cpu", attention_backend="vsa", progress=False)
    gen.generate_video("a dot", num_frames=9, height=32, width=32, num_inference_steps=1, sparsity=0.5)
    assert seen and all(s == (0.5, (3, 2, 2)) for s in seen)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\), got 1.0"):
        gen.generate_video("a dot", sparsity=1.0)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fastvideo_wan.tiny import make_tiny_wan

    return make_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny", seed=2)


def fv(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("fv")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "0")}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env)


def test_fv_generate_with_vsa(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "vsa.mp4"
    common = [
        "generate",
        "--model",
        str(tiny_ckpt),
        "--prompt",
        "a dot",
        "--num-frames",
        "9",
        "--height",
        "32",
    ]
    common += ["--width", "32", "--steps", "2", "--device", DEVICE, "--json"]
    proc = fv(*common, "--attention-backend", "vsa", "--vsa-sparsity", "0.9", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["frames"] == 9 and out.is_file()
    bad = fv(*common, "--attention-backend", "vsa", "--sparsity", "1.5")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: sparsity must be a number in [0, 1), got 1.5"]


def test_step_context_is_empty_outside_generation() -> None:
    assert current_step() is None
    assert math.prod(GRID) == 72
