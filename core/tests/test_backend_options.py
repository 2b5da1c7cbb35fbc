"""Attention backends own their options and per-layer modules: declarations checked by core, values
carried to ``forward`` through the step context, modules attached to a model's sparse attention
layers and fed to the backend, checkpoint names of those modules, and ``fv generate``'s flags."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastvideo.attention import DENSE, StepContext, attention, selector, step_context, use_backend
from fastvideo.attention.layers import attach_layer_modules, checkpoint_mapping, to_their_names
from fastvideo.attention.options import check_options, cli_flags, resolve_options
from fastvideo.interfaces.attention import AttentionBackend, BackendOption, LayerModule
from fastvideo.loader.mapping import NameMapping
from fastvideo.testing import assert_close, fake_plugins, plugin_module
from fastvideo.testing.toys import SelfAttention


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


def build_bias(layer: nn.Module) -> nn.Module:
    dim = layer.qkv.in_features
    return nn.Linear(dim, dim, device=layer.qkv.weight.device, dtype=layer.qkv.weight.dtype)


class Biased(AttentionBackend):
    """Attention plus ``weight * bias``, ``bias`` from the layer's module; records its calls."""

    name = "biased"
    sparse = True
    priority = -100
    options = (
        BackendOption(
            name="weight",
            type=float,
            default=1.0,
            help="How much of the bias is added.",
            cli_flags=("--biased-weight", "--weight"),
            validate=lambda v: None if v >= 0 else "must be >= 0",
        ),
        BackendOption(name="label", type=str, default="x"),
        BackendOption(name="warmup", type=int, default=0, training_only=True),
    )
    layer_modules = (
        LayerModule(
            name="bias_proj", build=build_bias, checkpoint_names=("{parent}.to_bias", "{layer}.to_bias")
        ),
    )
    calls: list[bool] = []  # noqa: RUF012 - whether each call had the module's tensor

    def layer_inputs(self, layer, hidden, q):  # type: ignore[no-untyped-def]
        return {"bias": layer.bias_proj(hidden).unflatten(-1, q.shape[2:])}

    def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None, bias=None):  # type: ignore[no-untyped-def]
        type(self).calls.append(bias is not None)
        out = sdpa(q, k, v)
        return out if bias is None else out + self.option(step, "weight") * bias


class Other(AttentionBackend):
    """Declares a flag that ``biased`` declares too."""

    name = "other"
    sparse = True
    priority = -100
    options = (
        BackendOption(name="weight", type=float, default=0.0, cli_flags=("--weight", "--other-weight")),
    )

    def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None):  # type: ignore[no-untyped-def]
        return sdpa(q, k, v)


@pytest.fixture
def backends() -> Iterator[None]:
    Biased.calls = []
    plugin = plugin_module("biased", fv_register_attention_backends=lambda: [Biased, Other])
    with fake_plugins(plugin):
        yield


# ---------------------------------------------------------------- options


def test_option_values_are_typed_and_checked_with_one_line_errors() -> None:
    (weight, label, _) = Biased.options
    assert weight.check("0.5", "biased") == 0.5 and weight.check(2, "biased") == 2.0
    assert label.check("y", "biased") == "y"
    flag = BackendOption(name="on", type=bool, default=False)
    assert (flag.check("yes", "b"), flag.check("off", "b"), flag.check(True, "b")) == (True, False, True)
    for value, message in (
        ("-1", "biased option 'weight' (--biased-weight) must be >= 0, got '-1'"),
        ("x", "biased option 'weight' (--biased-weight) must be a number, got 'x'"),
        (True, "biased option 'weight' (--biased-weight) must be a number, got True"),
    ):
        with pytest.raises(ValueError) as err:
            weight.check(value, "biased")
        assert str(err.value) == message
    with pytest.raises(ValueError, match=r"^on must be true or false, got 'maybe'$"):
        flag.check("maybe", "b", label="on")


def test_options_of_the_selected_backend_get_defaults_and_others_are_refused(backends: None) -> None:
    assert resolve_options("biased", {"biased": {"weight": "0.25"}}) == {
        "biased": {"weight": 0.25, "label": "x"}
    }
    assert resolve_options("biased", None) == {"biased": {"weight": 1.0, "label": "x"}}
    assert resolve_options("sdpa", {}) == {}  # a backend without options: nothing in the step context
    with pytest.raises(ValueError) as err:
        resolve_options("sdpa", {"biased": {"weight": 0.5}})
    assert str(err.value) == (
        "biased option 'weight' (--biased-weight) was given, but the selected attention backend is 'sdpa'; "
        "select 'biased' (--attention-backend biased) or drop the option"
    )
    with pytest.raises(
        ValueError,
        match=r"has no option 'wieght'; did you mean 'weight'\? \(its options: label, warmup, weight\)",
    ):
        check_options("biased", {"biased": {"wieght": 1}})
    with pytest.raises(ValueError, match=r"^biased option 'warmup' is a training schedule setting"):
        check_options("biased", {"biased": {"warmup": 3}})
    assert check_options("biased", {"biased": {"warmup": "3"}}, training=True) == {"warmup": 3}
    with pytest.raises(ValueError, match=r"Unknown attention backend 'nope'"):
        check_options("biased", {"nope": {"x": 1}})
    with pytest.raises(TypeError, match=r"^backend_options must map attention backend names"):
        check_options("biased", {"biased": 1.0})  # type: ignore[dict-item]


def test_a_flag_two_backends_declare_stays_with_the_first(backends: None) -> None:
    with pytest.warns(
        RuntimeWarning, match=r"--weight is declared by attention backends 'biased' and 'other'"
    ):
        flags = {backend: f for f, backend, _ in cli_flags() if backend in ("biased", "other")}
    assert flags == {"biased": ("--biased-weight", "--weight"), "other": ("--other-weight",)}


def test_fv_generate_has_the_declared_flags(backends: None, capsys: pytest.CaptureFixture[str]) -> None:
    from fastvideo import cli

    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exit_:
        mp.setattr(sys, "argv", ["fv", "generate", "--help"])
        cli.main()
    help_text = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--biased-weight, --weight FLOAT" in help_text and "--other-weight FLOAT" in help_text
    assert "--warmup" not in help_text and "--label" not in help_text  # training-only; no flags declared


# ---------------------------------------------------------------- per-layer modules


class Cross(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.unflatten(-1, (2, -1))
        return attention(q, q, q, allow=DENSE).flatten(2)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn, self.cross, self.ff = SelfAttention(), Cross(), nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return self.ff(x + self.cross(x))


class Model(nn.Module):
    sparse_attention_layers = ("blocks.*.attn",)

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def reference(model: Model, x: torch.Tensor, weight: float) -> torch.Tensor:
    """The forward written out: attention + weight * bias_proj(input) in the self-attention only."""
    for block in model.blocks:
        a = block.attn
        q, k, v = a.qkv(x).unflatten(-1, (3, 2, -1)).unbind(2)
        bias = a.bias_proj(x).unflatten(-1, (2, -1))
        x = x + a.out((sdpa(q, k, v) + weight * bias).flatten(2))
        c = x.unflatten(-1, (2, -1))
        x = block.ff(x + sdpa(c, c, c).flatten(2))
    return x


def model_with_modules(seed: int = 0) -> Model:
    torch.manual_seed(seed)
    model = Model()
    fresh = attach_layer_modules(model, "biased")
    assert fresh == [f"blocks.{i}.attn.bias_proj.{p}" for i in range(2) for p in ("weight", "bias")]
    assert all(not model.get_parameter(n).any() for n in fresh)  # zeros: attention as it was
    assert not hasattr(model.blocks[0].cross, "bias_proj") and not hasattr(model.blocks[0], "bias_proj")
    with torch.no_grad():
        for block in model.blocks:
            block.attn.bias_proj.weight.normal_(0, 0.3)
    return model


def test_the_backend_gets_its_modules_output_in_the_sparse_layers_only(backends: None) -> None:
    model = model_with_modules()
    x = torch.randn(1, 8, 32)
    ctx = StepContext(grid=(1, 2, 4), options=resolve_options("biased", {"biased": {"weight": 0.5}}))
    with torch.no_grad(), step_context(ctx):
        with use_backend("biased"):
            out = model(x)
        assert Biased.calls == [True, True]  # the two self-attentions; cross-attention stays dense
        with use_backend("sdpa"):
            dense = model(x)  # other backends never see the module
        expected, plain = reference(model, x, 0.5), reference(model, x, 0.0)
    assert_close("biased", expected, out, 1e-6)
    assert_close("sdpa", plain, dense, 1e-6)
    assert not torch.allclose(out, dense, atol=1e-3) and selector._LAYERS == []


def test_a_layer_called_with_keywords_gets_its_module_output_too(backends: None) -> None:
    model = model_with_modules()
    layer, x = model.blocks[0].attn, torch.randn(1, 8, 32)
    with (
        torch.no_grad(),
        use_backend("biased"),
        step_context(StepContext(options={"biased": {"weight": 1.0}})),
    ):
        assert_close("keywords", layer(x), layer(x=x), 0.0)
    assert Biased.calls == [True, True]


def test_modules_train(backends: None) -> None:
    model = model_with_modules()
    with use_backend("biased"), step_context(StepContext(options={"biased": {"weight": 1.0}})):
        model(torch.randn(1, 8, 32)).square().mean().backward()
    assert all(b.attn.bias_proj.weight.grad.abs().sum() > 0 for b in model.blocks)


@pytest.mark.slow
def test_layer_hooks_compile_without_graph_breaks(backends: None) -> None:
    model = model_with_modules()
    x = torch.randn(1, 8, 32)
    with (
        torch.no_grad(),
        use_backend("biased"),
        step_context(StepContext(options={"biased": {"weight": 1.0}})),
    ):
        eager = model(x)
        for block in model.blocks:  # the layer's hooks and the module's call, in one graph
            block.attn.compile(backend="eager", fullgraph=True)
        compiled = model(x)
    assert_close("compiled", eager, compiled, 0.0)
    assert selector._LAYERS == []


def test_declared_checkpoint_names_map_both_ways(backends: None) -> None:
    mapping = NameMapping(
        [("layers.{i}.attn1.to_qkv.{p}", "blocks.{i}.attn.qkv.{p}"), ("layers.{i}.attn1.to_out.{p}", "blocks.{i}.attn.out.{p}"),
         ("layers.{i}.ff.{p}", "blocks.{i}.ff.{p}")],
        rules_name="test.RULES", ours="test", their_class="Theirs", our_class="Model",
    )  # fmt: skip
    with torch.device("meta"):
        model = Model()
    full = checkpoint_mapping(model, mapping)
    assert full.to_ours(
        {"layers.1.to_bias.weight": 0, "layers.0.attn1.to_bias.bias": 1, "layers.0.ff.bias": 2}
    ) == {
        "blocks.1.attn.bias_proj.weight": 0,
        "blocks.0.attn.bias_proj.bias": 1,
        "blocks.0.ff.bias": 2,
    }
    attach_layer_modules(model, "biased")
    names = to_their_names(
        model, model.state_dict(), lambda ns: {o: t for t, o in mapping.to_theirs({n: n for n in ns}).items()}
    )
    assert names["blocks.1.attn.bias_proj.weight"] == "layers.1.to_bias.weight"  # the first declared name
    assert names["blocks.0.attn.qkv.bias"] == "layers.0.attn1.to_qkv.bias"
    assert mapping.to_ours({"layers.0.ff.bias": 2}) == {
        "blocks.0.ff.bias": 2
    }  # the family's mapping is unchanged


def test_checkpoint_modules_are_attached_whichever_backend_runs(backends: None) -> None:
    with torch.device("meta"):
        model = Model()
    stored = [f"blocks.{i}.attn.bias_proj.{p}" for i in range(2) for p in ("weight", "bias")]
    assert attach_layer_modules(model, None, stored=stored) == []  # all in the checkpoint: nothing to zero
    assert model.blocks[1].attn.bias_proj.weight.is_meta
    with torch.device("meta"):
        dense = Model()
    assert attach_layer_modules(dense, "sdpa", stored=["blocks.0.ff.weight"]) == []
    assert not hasattr(dense.blocks[0].attn, "bias_proj")


# ---------------------------------------------------------------- layer numbers, joint attention, doctor


def test_sparse_layers_are_numbered_in_module_order(backends: None) -> None:
    from fastvideo.attention.layers import sparse_layer_index

    model = model_with_modules()
    assert [sparse_layer_index(b.attn) for b in model.blocks] == [0, 1]
    assert sparse_layer_index(model.blocks[0].cross) is None  # not a sparse attention layer


class JointLayer(nn.Module):
    """Joint attention over video tokens and text tokens, through the seam."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(32, 96)

    def forward(self, x: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from fastvideo.attention import joint_attention

        q, k, v = self.qkv(x).unflatten(-1, (3, 2, -1)).unbind(2)
        qt, kt, vt = self.qkv(txt).unflatten(-1, (3, 2, -1)).unbind(2)
        return joint_attention(q, k, v, qt, kt, vt)


class JointModel(nn.Module):
    sparse_attention_layers = ("layer",)

    def __init__(self) -> None:
        super().__init__()
        self.layer = JointLayer()


def test_joint_attention_hands_the_modules_output_on_with_zeros_for_text(backends: None) -> None:
    torch.manual_seed(0)
    model = JointModel()
    attach_layer_modules(model, "biased")
    with torch.no_grad():
        model.layer.bias_proj.weight.normal_(0, 0.3)
    x, txt = torch.randn(1, 8, 32), torch.randn(1, 3, 32)
    with (
        torch.no_grad(),
        use_backend("biased"),
        step_context(StepContext(options={"biased": {"weight": 1.0}})),
    ):
        out, out_txt = model.layer(x, txt)
        q, k, v = (
            torch.cat(p, 1)
            for p in zip(
                *(model.layer.qkv(t).unflatten(-1, (3, 2, -1)).unbind(2) for t in (x, txt)), strict=True
            )
        )
        dense = sdpa(q, k, v)
        bias = model.layer.bias_proj(x).unflatten(-1, (2, -1))
    assert Biased.calls == [True]
    assert_close("video tokens", dense[:, :8] + bias, out, 1e-6)
    assert_close("text tokens (zero extras)", dense[:, 8:], out_txt, 1e-6)


def test_doctor_prints_a_backends_notes(backends: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from fastvideo.cli import app

    monkeypatch.setattr(Biased, "doctor_notes", classmethod(lambda cls: ["kernels: toy path"]), raising=False)
    result = CliRunner().invoke(app, ["doctor"])
    lines = result.output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("biased"))
    assert lines[at + 1].strip() == "kernels: toy path"
