"""The typed training config (YAML + dotted overrides), attention backend options and their
training schedules, the lr schedule, the
flow-matching objective's timestep shift and the EMA, each against an independent reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastvideo.training.config import TrainConfig, dump_config, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"model.path": "wan", "data.path": "data", "max_steps": "10"}


def test_yaml_and_dotted_overrides_build_a_typed_config(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(
        "algorithm: lora\nmax_steps: 100\nmodel: {path: wan}\ndata: {path: /d, batch_size: 4}\n"
        "optim: {lr: 1.0e-4, betas: [0.9, 0.95]}\nlora: {rank: 8, targets: ['blocks.*.self_attn.q']}\n"
    )
    cfg = load_config(
        path,
        [
            "--optim.lr",
            "3e-5",
            "--data.grad-accum-steps=2",
            "--lora.alpha",
            "16",
            "--parallel.activation_checkpointing",
            "true",
            "--lora.targets",
            "[a, b]",
        ],
    )
    assert isinstance(cfg, TrainConfig)
    assert cfg.algorithm == "lora" and cfg.max_steps == 100
    assert cfg.optim.lr == 3e-5 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.data.batch_size == 4 and cfg.data.grad_accum_steps == 2
    assert cfg.lora.rank == 8 and cfg.lora.alpha == 16.0 and cfg.lora.targets == ("a", "b")
    assert cfg.parallel.activation_checkpointing is True
    with pytest.raises(AttributeError):  # frozen
        cfg.max_steps = 3  # type: ignore[misc]


def test_dumped_config_reads_back_equal(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {
            **REQUIRED,
            "optim.scheduler": "cosine",
            "validation.prompts": "[a cat]",
            "validation.every_steps": "5",
            "algorithm_options": "{k: 1}",
        },
    )
    assert load_config(dump_config(cfg, tmp_path / "c.yaml")) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim.lrr": "1"}, "unknown config key 'optim.lrr'; did you mean optim.lr?"),
        ({"optim.lr": "fast"}, "optim.lr must be a number, got 'fast'"),
        ({"data.batch_size": "1.5"}, "data.batch_size must be an integer, got '1.5'"),
        ({"optim.scheduler": "step"}, "optim.scheduler must be one of constant, linear, cosine, got 'step'"),
        ({"mixed_precision": "int8"}, "mixed_precision must be one of bf16, fp16, fp32, got 'int8'"),
        ({"max_steps": "0"}, "max_steps must be > 0, got 0"),
        ({"model.path": ""}, "model.path is required"),
        ({"validation.every_steps": "5"}, "validation.prompts is empty"),
        ({"export.use_ema": "true"}, "export.use_ema needs EMA: set ema.decay"),
        ({"optim.betas": "[0.9]"}, "optim.betas must be a list of 2 values"),
        ({"parallel.fsdp": "maybe"}, "parallel.fsdp must be true or false, got 'maybe'"),
        ({"optim.lr": "nan"}, "optim.lr must be a finite number, got 'nan'"),
        ({"objective.text_dropout": "inf"}, "objective.text_dropout must be a finite number, got 'inf'"),
        ({"optim.betas": "[0.9, .nan]"}, "optim.betas[1] must be a finite number"),
    ],
)
def test_bad_values_give_one_line_errors(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        load_config(None, {**REQUIRED, **overrides})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_non_finite_numbers_built_in_python_are_rejected() -> None:
    from fastvideo.training.config import OptimSection

    with pytest.raises(ValueError, match=r"^optim.lr must be a finite number > 0, got nan$"):
        OptimSection(lr=float("nan"))
    with pytest.raises(ValueError, match=r"^optim.max_grad_norm must be a finite number >= 0, got inf$"):
        OptimSection(max_grad_norm=float("inf"))


def test_override_syntax_errors() -> None:
    with pytest.raises(ValueError, match="has no value"):
        parse_overrides(["--optim.lr"])
    with pytest.raises(ValueError, match=r"expected a --section\.key value override"):
        parse_overrides(["lr", "1"])
    assert parse_overrides(["--optim.lr", "-1e-4"]) == {"optim.lr": "-1e-4"}  # negative numbers are values


def test_missing_or_broken_config_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)


def test_example_configs_load() -> None:
    examples = sorted((ROOT / "examples" / "train").glob("*.yaml"))
    assert len(examples) >= 2
    from fastvideo.registry import KNOWN_PROVIDERS

    for path in examples:
        cfg = load_config(path)
        # the core's own algorithms, or one an official plugin provides (whose tests load its recipes)
        assert cfg.algorithm in ("finetune", "lora") or cfg.algorithm in KNOWN_PROVIDERS["training_algorithm"]


# ---------------------------------------------------------------- attention backend options


def ramped():  # type: ignore[no-untyped-def]
    """A sparse backend with an option and a training ramp of it (a schedule the backend owns)."""
    import torch.nn.functional as F

    from fastvideo.interfaces.attention import AttentionBackend, BackendOption

    class Ramped(AttentionBackend):
        name = "ramped-sparse"
        sparse = True
        priority = -100
        options = (
            BackendOption(
                name="target", type=float, default=0.0, cli_flags=("--ramped-target",),
                validate=lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
            ),
            BackendOption(name="ramp_steps", type=int, default=0, training_only=True),
        )  # fmt: skip

        @classmethod
        def option_values(cls, options, *, step=None, total=None):  # type: ignore[no-untyped-def]
            values = super().option_values(options)
            if step is not None and options.get("ramp_steps"):
                values["target"] *= min(1.0, step / options["ramp_steps"])
            return values

        def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None):  # type: ignore[no-untyped-def]
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            return F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale).transpose(1, 2)

    return Ramped


@pytest.fixture
def ramped_backend():  # type: ignore[no-untyped-def]
    from fastvideo.testing import fake_plugins, plugin_module

    backend = ramped()
    with fake_plugins(plugin_module("ramped", fv_register_attention_backends=lambda: [backend])):
        yield backend


def test_attention_keys_are_the_backends_options(ramped_backend, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "train.yaml"
    path.write_text(
        "max_steps: 5\nmodel: {path: wan}\ndata: {path: d}\nattention: {backend: ramped-sparse, target: 0.8}\n"
    )
    cfg = load_config(path, ["--attention.ramp_steps", "4"])
    assert cfg.attention.backend == "ramped-sparse"
    assert cfg.attention.options == {"target": 0.8, "ramp_steps": 4}
    assert load_config(dump_config(cfg, tmp_path / "again.yaml")) == cfg
    for overrides, message in (
        ({"attention.target": "1.5"}, r"^attention.target must be in \[0, 1\), got '1.5'$"),
        ({"attention.ramp_steps": "x"}, r"^attention.ramp_steps must be an integer, got 'x'$"),
        ({"attention.targte": "0.5"}, r"has no option 'targte'; did you mean 'target'\?"),
    ):
        with pytest.raises(ValueError, match=message):
            load_config(path, overrides)
    with pytest.raises(
        ValueError, match=r"^attention.target is an option of an attention backend, but attention.backend"
    ):
        load_config(None, {**REQUIRED, "attention.target": "0.5"})


def test_trainer_puts_the_backends_schedule_into_the_step_context(ramped_backend) -> None:  # type: ignore[no-untyped-def]
    import torch

    from fastvideo.training.trainer import Trainer

    cfg = load_config(
        None,
        {
            **REQUIRED,
            "attention.backend": "ramped-sparse",
            "attention.target": "0.8",
            "attention.ramp_steps": "4",
        },
    )
    trainer = Trainer(cfg)
    trainer.backend = "ramped-sparse"  # as setup() resolves it
    trainer.step = 2
    ctx = trainer.step_context(object(), torch.zeros(1, 16, 2, 4, 4))  # type: ignore[arg-type]
    assert ctx.backend_options("ramped-sparse") == {"target": pytest.approx(0.2)}  # 1 step done of 4
    assert ctx.step_index == 2 and "ramp_steps" not in ctx.backend_options("ramped-sparse")
    assert trainer.backend_options(5) == {"ramped-sparse": {"target": pytest.approx(0.8)}}
    dense = Trainer(load_config(None, REQUIRED))
    dense.backend, dense.step = "sdpa", 2  # a backend without options: nothing in the step context
    assert dense.step_context(object(), torch.zeros(1)).options == {}  # type: ignore[arg-type]


# ---------------------------------------------------------------- lr schedule, objective, EMA


def test_lr_schedule_matches_closed_forms() -> None:
    import math

    from fastvideo.training.trainer import lr_factor

    kw = {"warmup": 4, "total": 14, "min_ratio": 0.1}
    assert [lr_factor(i, kind="constant", **kw) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(9, kind="linear", **kw) == pytest.approx(1 - 0.9 * 0.5)
    assert lr_factor(9, kind="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(14, kind="cosine", **kw) == pytest.approx(0.1)


def test_timestep_shift_matches_diffusers_flow_scheduler() -> None:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fastvideo.training.objectives import shift_sigmas

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    raw = torch.linspace(1.0, 1 / 1000, 10)
    sched.set_timesteps(sigmas=raw.tolist())
    torch.testing.assert_close(shift_sigmas(raw, 3.0), sched.sigmas[:-1].float(), rtol=1e-6, atol=1e-7)


def test_flow_matching_loss_by_hand() -> None:
    import torch

    from fastvideo.training.objectives import FlowMatchingObjective

    obj = FlowMatchingObjective(shift=2.0)
    x0 = torch.randn(2, 4, 1, 2, 2)
    seen = {}

    def model(hidden_states, timestep, encoder_hidden_states):  # a DiT that predicts zeros
        seen["x"], seen["t"] = hidden_states, timestep
        return torch.zeros_like(hidden_states)

    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    loss, _ = obj(model, {"latents": x0, "text": torch.zeros(2, 3, 8)}, gens)
    # the same draws: noise first, then u, per sample
    ref_gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    noise = torch.stack([torch.randn(4, 1, 2, 2, generator=g) for g in ref_gens])
    u = torch.stack([torch.rand(1, generator=g)[0] for g in ref_gens])
    sigma = 2 * u / (1 + u)
    torch.testing.assert_close(seen["t"], sigma * 1000)
    torch.testing.assert_close(
        seen["x"], (1 - sigma.view(-1, 1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1, 1) * noise
    )
    torch.testing.assert_close(loss, ((noise - x0) ** 2).mean())


def test_ema_matches_the_recurrence() -> None:
    import torch

    from fastvideo.training.ema import EMA

    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9, start_step=1)
    ref = model.weight.detach().clone()
    for step in range(1, 5):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model, step)
        ref = model.weight.detach().clone() if step <= 1 else 0.9 * ref + 0.1 * model.weight.detach()
        torch.testing.assert_close(ema.shadow["weight"], ref)
    before = model.weight.detach().clone()
    with ema.applied(model):
        torch.testing.assert_close(model.weight, ref)
    assert torch.equal(model.weight, before)


def test_metrics_jsonl_and_missing_wandb(tmp_path: Path) -> None:
    import importlib.util
    import warnings

    from fastvideo.training.metrics import MetricsLogger, read_metrics, truncate_after

    assert importlib.util.find_spec("wandb") is None, "this test checks the fallback without wandb"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = MetricsLogger(tmp_path, enabled=True, every_steps=2, max_steps=3, wandb={"project": "p"})
    assert any("wandb is not installed" in str(w.message) for w in caught)
    for step in (1, 2, 3):
        logger.log(step, {"loss": 1.0 / step})
    logger.event(3, "export", path="x")
    logger.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 3] and records[1]["loss"] == 0.5
    truncate_after(tmp_path / "metrics.jsonl", 1)
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 1.0}]
