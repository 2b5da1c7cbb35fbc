"""The ``vsa`` attention backend: registration, dispatch through the seam, its options (sparsity and
the training ramp) and its per-layer gate projection (attached by core, loaded from checkpoints),
from the CLI and the Python API to the step context. Models are defined here, or come from the
example plugin used as a user would (a test dependency, loaded through its entry point, its
checkpoint written by ``fv example make-checkpoint``): a plugin never imports another plugin."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from fastvideo.attention import ALL, DENSE, StepContext, attention, current_step, step_context, use_backend
from fastvideo.attention.layers import attach_layer_modules, checkpoint_mapping, to_their_names
from fastvideo.attention.options import resolve_options
from fastvideo.registry import get_registry
from fastvideo.testing import assert_close, fake_plugins, plugin_env, plugin_module, run_fv
from fastvideo.testing.toys import SelfAttention  # self-attention through the seam, fused qkv
from fastvideo_vsa.backend import VSABackend
from fastvideo_vsa.ops import CubeGeometry, topk_for, vsa_attention, vsa_attention_reference, vsa_select
from fastvideo_vsa.schedule import sparsity_at

#: What the tests load through entry points: this plugin and its test dependency, the example family.
DISTRIBUTIONS = ("fastvideo-vsa", "fastvideo-example-plugin")
GRID = (3, 4, 6)  # 72 tokens, 1 x 1 x 2 cubes (both partial)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class ReferenceVSA(VSABackend):
    """VSA computed by the reference on the op's own selection (same options and gate module as
    ``vsa``); records every call."""

    name = "vsa-ref"
    calls: list[tuple[int, bool]] = []  # noqa: RUF012 - shared record of (tokens, had a gate)
    # vsa's options without their fv generate flags, which stay vsa's
    options = tuple(dataclasses.replace(o, cli_flags=()) for o in VSABackend.options)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None

    def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None, gate=None):
        assert step is not None and step.grid is not None
        type(self).calls.append((q.shape[1], gate is not None))
        topk = topk_for(self.option(step, "sparsity"), CubeGeometry(step.grid).num_cubes)
        idx = vsa_select(q, k, step.grid, topk).long()
        return vsa_attention_reference(q, k, v, step.grid, gate=gate, indices=idx, scale=scale)


def _check_installed() -> None:
    for dist in DISTRIBUTIONS:
        try:
            md.distribution(dist)
        except md.PackageNotFoundError:
            pytest.fail(
                f"{dist} is not installed; fastvideo-vsa's tests need it: pip install -e "
                "'plugins/fastvideo-vsa[test]' examples/fastvideo-example-plugin (or nox -s plugin-tests)"
            )


@pytest.fixture
def vsa_plugins() -> Iterator[None]:
    """Only the core's built-ins, the vsa and example plugins (installed, through their entry
    points) and the reference backend."""
    _check_installed()
    ReferenceVSA.calls = []
    ref = plugin_module("vsa-ref", fv_register_attention_backends=lambda: [ReferenceVSA])
    with fake_plugins(ref, autoload=DISTRIBUTIONS):
        yield


def ctx(sparsity: float, grid: tuple[int, int, int] = GRID) -> StepContext:
    values = {"sparsity": sparsity}
    return StepContext(grid=grid, options={"vsa": values, "vsa-ref": values})


def qkv(length: int = 72, heads: int = 2, dim: int = 16, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, length, heads, dim, generator=gen).to(DEVICE) for _ in range(4)]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (q, k, v))
    ).transpose(1, 2)


def test_plugin_registers_the_backend_with_its_options_and_gate_module(vsa_plugins: None) -> None:
    entry = get_registry().entries["attention_backend"]["vsa"]
    assert entry.cls is VSABackend and VSABackend.sparse and VSABackend.is_available()
    options = {o.name: o for o in VSABackend.options}
    assert options["sparsity"].cli_flags == ("--vsa-sparsity", "--sparsity")
    assert options["sparsity_ramp_steps"].training_only and options["sparsity_increment"].training_only
    (gate,) = VSABackend.layer_modules
    assert gate.name == "gate_compress" and gate.checkpoint_names[0] == "{parent}.to_gate_compress"


def test_discovery_imports_neither_torch_nor_triton() -> None:
    code = "import sys, fastvideo_vsa, fastvideo_vsa.plugin, fastvideo_vsa.backend; print(sorted({'torch', 'triton'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_self_attention_runs_vsa_with_the_step_context(vsa_plugins: None) -> None:
    q, k, v, _ = qkv()
    with use_backend("vsa"), step_context(ctx(0.5)):
        out = attention(q, k, v, allow=ALL)
    expected = vsa_attention(q, k, v, GRID, sparsity=0.5)
    assert_close("out", expected, out, 0.0)
    assert not torch.allclose(out, sdpa(q, k, v), atol=1e-3)  # really sparse


def test_dense_layers_and_unsupported_calls_fall_back_to_dense(vsa_plugins: None) -> None:
    q, k, v, _ = qkv()
    dense = sdpa(q, k, v)
    with use_backend("vsa"):
        with step_context(ctx(0.5)):
            assert_close("cross-attention", dense, attention(q, k, v, allow=DENSE), 1e-6)
            part = (q[:, :60], k[:, :60], v[:, :60])
            assert_close("wrong length", sdpa(*part), attention(*part, allow=ALL), 1e-6)
        assert_close("no step context", dense, attention(q, k, v, allow=ALL), 1e-6)
    backend = VSABackend()
    assert "StepContext.grid" in backend.supports(q, k, v)
    with step_context(ctx(0.5, grid=(3, 4, 5))):
        assert "exactly the 60 video tokens" in backend.supports(q, k, v)
        assert "no attention mask" in backend.supports(q, k, v, attn_mask=torch.ones(1, dtype=torch.bool))


def test_sparsity_zero_without_gate_is_exact_attention(vsa_plugins: None) -> None:
    q, k, v, _ = qkv()
    for context in (ctx(0.0), StepContext(grid=GRID)):  # explicit, and the declared default
        with use_backend("vsa"), step_context(context):
            assert_close("out", sdpa(q, k, v), attention(q, k, v, allow=ALL), 1e-6)


# --------------------------------------------------------------------------------------------------
# Options: checked against the declaration, the training ramp
# --------------------------------------------------------------------------------------------------


def test_options_are_checked_and_completed_with_defaults(vsa_plugins: None) -> None:
    assert resolve_options("vsa", {"vsa": {"sparsity": "0.9"}}) == {"vsa": {"sparsity": 0.9}}
    assert resolve_options("vsa", None) == {"vsa": {"sparsity": 0.0}}
    with pytest.raises(
        ValueError, match=r"^vsa option 'sparsity' \(--vsa-sparsity\) must be in \[0, 1\), got 1.5$"
    ):
        resolve_options("vsa", {"vsa": {"sparsity": 1.5}})
    with pytest.raises(ValueError, match=r"has no option 'sparsty'; did you mean 'sparsity'\?"):
        resolve_options("vsa", {"vsa": {"sparsty": 0.5}})
    with pytest.raises(ValueError, match=r"'sparsity_ramp_steps'.* is a training schedule setting"):
        resolve_options("vsa", {"vsa": {"sparsity_ramp_steps": 10}})
    with pytest.raises(ValueError, match=r"selected attention backend is 'sdpa'; select 'vsa'"):
        resolve_options("sdpa", {"vsa": {"sparsity": 0.5}})


def test_training_ramp_linear_and_staircase(vsa_plugins: None) -> None:
    def at(step: int, **options: float) -> float:
        values = resolve_options("vsa", {"vsa": options}, step=step, total=2000, training=True)
        return values["vsa"]["sparsity"]

    assert [at(s, sparsity=0.9, sparsity_ramp_steps=10) for s in (0, 5, 10, 20)] == pytest.approx(
        [0.0, 0.45, 0.9, 0.9]
    )
    assert at(0, sparsity=0.9) == 0.9  # no ramp
    assert at(1499, sparsity=0.9, sparsity_ramp_steps=1500, sparsity_increment=0.04) == pytest.approx(0.88)
    # FastVideo's VSA recipe: min(step // interval, target // rate) * rate with rate 0.03, interval 50;
    # a linear ramp over 30 * 50 steps in increments of 0.03 is the same staircase
    for step in range(0, 2000, 7):
        expected = min(step // 50, round(0.9 / 0.03)) * 0.03
        got = at(step, sparsity=0.9, sparsity_ramp_steps=1500, sparsity_increment=0.03)
        assert got == pytest.approx(expected, abs=1e-9), step
    assert sparsity_at(750, 0.9, 1500) == pytest.approx(0.45)
    with pytest.raises(ValueError, match=r"^attention.sparsity_ramp_steps must be >= 0, got -1$"):
        from fastvideo.attention.options import check_options

        check_options("vsa", {"vsa": {"sparsity_ramp_steps": -1}}, training=True, where="attention")


# --------------------------------------------------------------------------------------------------
# The gate projection: attached by core to a model's sparse attention layers, loaded from checkpoints
# --------------------------------------------------------------------------------------------------


class TinyModel(nn.Module):
    sparse_attention_layers = ("layers.*",)

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SelfAttention() for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def reference_forward(model: TinyModel, x: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The model's forward with VSA and the gates written out by hand (no seam)."""
    for layer in model.layers:
        q, k, v = layer.qkv(x).unflatten(-1, (3, 2, -1)).unbind(2)
        gate = layer.gate_compress(x).unflatten(-1, (2, -1))
        x = x + layer.out(vsa_attention(q, k, v, GRID, sparsity=sparsity, gate=gate).flatten(2))
    return x


def tiny_model(gates: bool, seed: int = 0) -> TinyModel:
    torch.manual_seed(seed)
    model = TinyModel()
    if gates:
        fresh = attach_layer_modules(model, "vsa")
        assert fresh == [f"layers.{i}.gate_compress.{p}" for i in range(2) for p in ("weight", "bias")]
        assert all(not model.get_parameter(n).any() and model.get_parameter(n).requires_grad for n in fresh)
        with torch.no_grad():
            for layer in model.layers:
                layer.gate_compress.weight.normal_(0, 0.3)
    return model.to(DEVICE).eval()


def test_gated_layers_get_the_gate_from_their_module(vsa_plugins: None) -> None:
    model = tiny_model(gates=True)
    x = torch.randn(1, 72, 32, device=DEVICE)
    with torch.no_grad(), step_context(ctx(0.5)):
        with use_backend("vsa"):
            out = model(x)
        with use_backend("vsa-ref"):
            ref_backend = model(x)
        assert ReferenceVSA.calls == [(72, True)] * 2  # both layers, gated
        with use_backend("sdpa"):
            dense = model(x)
        expected = reference_forward(model, x, 0.5)
    assert_close("vsa", expected, out, 1e-5)
    assert_close("vsa-ref", expected, ref_backend, 1e-5)
    # dense backends never see the gate: the same as the model without gates
    ungated = tiny_model(gates=False)
    with torch.no_grad(), step_context(ctx(0.5)), use_backend("sdpa"):
        assert_close("dense", ungated(x), dense, 1e-6)
    ReferenceVSA.calls = []
    with torch.no_grad(), step_context(ctx(0.5)), use_backend("vsa-ref"):
        ungated(x)
    assert ReferenceVSA.calls == [(72, False)] * 2  # layers without the module pass no gate


def test_gate_gradients_flow(vsa_plugins: None) -> None:
    model = tiny_model(gates=True).train()
    x = torch.randn(1, 72, 32, device=DEVICE)
    with step_context(ctx(0.5)), use_backend("vsa"):
        model(x).square().mean().backward()
    assert all(layer.gate_compress.weight.grad.abs().sum() > 0 for layer in model.layers)


def test_checkpoints_with_gates_load_and_export_under_the_declared_names(
    vsa_plugins: None, tmp_path: Path
) -> None:
    """A model with a diffusers-style name mapping: FastVideo's checkpoints keep the gate on the
    block (``blocks.N.to_gate_compress``), other ports in the attention module."""
    from safetensors.torch import save_file

    from fastvideo.loader.checkpoint import DiffusersCheckpoint, load_pretrained
    from fastvideo.loader.mapping import NameMapping

    mapping = NameMapping(
        [
            ("blocks.{i}.attn1.to_qkv.{p}", "layers.{i}.qkv.{p}"),
            ("blocks.{i}.attn1.to_out.{p}", "layers.{i}.out.{p}"),
        ],
        rules_name="test",
        ours="tiny",
        their_class="TinyDiffusers",
        our_class="TinyModel",
    )
    source = tiny_model(gates=False)
    theirs = {
        t: source.state_dict()[o].cpu()
        for t, o in mapping.to_theirs({n: n for n in source.state_dict()}).items()
    }
    for folder, key in (
        ("dense", None),
        ("fastvideo", "blocks.{i}.to_gate_compress"),
        ("nested", "blocks.{i}.attn1.to_gate_compress"),
    ):
        state = dict(theirs)
        if key:
            for i in range(2):
                state[key.format(i=i) + ".weight"] = torch.full((32, 32), float(i + 1))
                state[key.format(i=i) + ".bias"] = torch.full((32,), -1.0)
        (tmp_path / folder).mkdir()
        save_file(state, str(tmp_path / folder / "diffusion_pytorch_model.safetensors"))

    def load(folder: str, backend: str | None) -> TinyModel:
        with torch.device("meta"):
            model = TinyModel()
        ckpt = DiffusersCheckpoint(tmp_path / folder, mapping=checkpoint_mapping(model, mapping))
        zeros = attach_layer_modules(model, backend, stored=ckpt.shapes)
        return load_pretrained(model, ckpt, dtype=torch.float32, zero_init=zeros)

    assert not hasattr(load("dense", None).layers[0], "gate_compress")  # nothing asked, nothing stored
    zeroed = load("dense", "vsa")
    assert not zeroed.layers[1].gate_compress.weight.any() and not zeroed.layers[1].gate_compress.bias.any()
    for folder in ("fastvideo", "nested"):
        model = load(folder, None)  # stored gates load whichever backend is selected
        assert (
            model.layers[1].gate_compress.weight.eq(2.0).all()
            and model.layers[0].gate_compress.bias.eq(-1).all()
        )
        names = to_their_names(
            model,
            model.state_dict(),
            lambda ns: {o: t for t, o in mapping.to_theirs({n: n for n in ns}).items()},
        )
        assert (
            names["layers.1.gate_compress.weight"] == "blocks.1.to_gate_compress.weight"
        )  # the written form
        assert names["layers.0.qkv.bias"] == "blocks.0.attn1.to_qkv.bias"


# --------------------------------------------------------------------------------------------------
# End to end through the example plugin's family: Python API and fv generate
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny example checkpoint whose DiT carries (non-zero) VSA gates, as a trained one would,
    written by the example plugin's own command (in a subprocess, as a user runs it)."""
    from safetensors import safe_open

    _check_installed()
    path = tmp_path_factory.mktemp("example") / "tiny"
    args = ["example", "make-checkpoint", str(path), "--seed", "2", "--backend-modules", "vsa"]
    proc = run_fv(args, env=plugin_env(FASTVIDEO_PLUGINS=",".join(DISTRIBUTIONS)), timeout=300)
    assert proc.returncode == 0, proc.stderr
    with safe_open(str(path / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        gates = [f.get_tensor(k) for k in f.keys() if ".gate_compress.weight" in k]
    assert len(gates) >= 2 and all(g.any() for g in gates), "the checkpoint carries no (non-zero) gates"
    return path


def test_generation_puts_the_options_into_the_step_context(
    vsa_plugins: None, example_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastvideo import VideoGenerator

    seen: list[tuple[float, tuple[int, int, int] | None, bool]] = []
    real = VSABackend.forward

    def spy(self, q, k, v, **kw):
        seen.append(
            (kw["step"].backend_options("vsa")["sparsity"], kw["step"].grid, kw.get("gate") is not None)
        )
        return real(self, q, k, v, **kw)

    monkeypatch.setattr(VSABackend, "forward", spy)
    gen = VideoGenerator.from_pretrained(
        str(example_ckpt),
        device="cpu",
        attention_backend="vsa",
        backend_options={"vsa": {"sparsity": 0.5}},
        progress=False,
    )
    gates = [
        m for n, m in gen.pipeline.components["transformer"].named_modules() if n.endswith(".gate_compress")
    ]
    assert gates and all(g.weight.any() for g in gates)  # loaded from the checkpoint, not zeros
    small = dict(num_frames=9, height=32, width=32, num_inference_steps=1)
    gen.generate_video("a dot", **small)
    assert seen and all(s == (0.5, (3, 2, 2), True) for s in seen)
    seen.clear()
    gen.generate_video("a dot", **small, backend_options={"vsa": {"sparsity": 0.25}})  # per call
    assert seen and all(s[0] == 0.25 for s in seen)
    with pytest.raises(
        ValueError, match=r"^vsa option 'sparsity' \(--vsa-sparsity\) must be in \[0, 1\), got 1.0$"
    ):
        gen.generate_video("a dot", backend_options={"vsa": {"sparsity": 1.0}})
    hint = r"'sparsity' is an option of attention backend 'vsa': pass backend_options=\{'vsa': \{'sparsity': ...\}\}"
    with pytest.raises(TypeError, match=rf"^unknown sampling parameter 'sparsity'; {hint}$"):
        gen.generate_video("a dot", sparsity=0.5)  # the keyword of earlier versions
    with pytest.raises(TypeError, match=rf"^unknown option 'sparsity'; {hint}; valid options: "):
        VideoGenerator.from_pretrained(str(example_ckpt), attention_backend="vsa", sparsity=0.5)
    with pytest.raises(ValueError, match=r"selected attention backend is 'sdpa'"):
        VideoGenerator.from_pretrained(
            str(example_ckpt), device="cpu", backend_options={"vsa": {"sparsity": 0.5}}
        )


def fv(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``fv ARGS`` in this process, with the plugins the test loaded: (exit code, stdout, stderr)."""
    from fastvideo import cli

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["fv", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_fv_generate_with_vsa(
    vsa_plugins: None, example_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "vsa.mp4"
    common = ["generate", "--model", str(example_ckpt), "--prompt", "a dot", "--num-frames", "9"]
    common += [
        "--height",
        "32",
        "--width",
        "32",
        "--steps",
        "2",
        "--device",
        DEVICE,
        "--json",
        "--no-progress",
    ]
    code, stdout, stderr = fv(
        capsys, *common, "--attention-backend", "vsa", "--vsa-sparsity", "0.9", "-o", str(out)
    )
    assert code == 0, stderr
    assert json.loads(stdout)["frames"] == 9 and out.is_file()
    code, _, stderr = fv(capsys, *common, "--attention-backend", "vsa", "--sparsity", "1.5")
    assert code == 2
    assert stderr.strip().splitlines() == [
        "error: vsa option 'sparsity' (--vsa-sparsity) must be in [0, 1), got '1.5'"
    ]
    code, _, stderr = fv(capsys, *common, "--sparsity", "0.5")
    assert code == 2
    assert stderr.strip().splitlines() == [
        "error: vsa option 'sparsity' (--vsa-sparsity) was given, but the selected attention backend is "
        "'sdpa'; select 'vsa' (--attention-backend vsa) or drop the option"
    ]
    code, stdout, _ = fv(capsys, "generate", "--help")
    assert code == 0 and "--vsa-sparsity, --sparsity FLOAT" in stdout


def test_step_context_is_empty_outside_generation() -> None:
    assert current_step() is None
    assert math.prod(GRID) == 72
