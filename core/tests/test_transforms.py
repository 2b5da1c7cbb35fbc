"""Pipeline transforms (order, applies), the denoising stage's step hooks and guidance seam, and the
checks on parallel strategy names."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fastvideo.configs import ParallelConfig, PipelineConfig, SamplingParams
from fastvideo.errors import UnknownNameError
from fastvideo.interfaces import ParallelStrategy, PipelineTransform
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.composed import ComposedPipeline
from fastvideo.pipelines.stages import ClassifierFreeGuidance, DenoisingStage, StepHook
from fastvideo.samplers import FlowEulerSampler
from fastvideo.testing import fake_plugins, plugin_module
from fastvideo.transforms import apply_transforms

pytestmark = pytest.mark.usefixtures("isolated_plugins")


class ToyDiT(torch.nn.Module):
    """``v = w * x + t / 1000 + text``; counts its forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.calls = 0

    def forward(self, hidden_states, timestep, encoder_hidden_states):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.w * hidden_states + timestep.view(-1, 1, 1, 1, 1) / 1000 + encoder_hidden_states.mean()


def _batch(steps: int = 4, guidance: float = 3.0) -> ForwardBatch:
    params = SamplingParams(num_inference_steps=steps, guidance_scale=guidance)
    batch = ForwardBatch(params=params, device=torch.device("cpu"))
    batch.sampler = FlowEulerSampler(None)
    batch.timesteps = batch.sampler.set_timesteps(steps, shift=3.0)
    batch.latents = torch.randn(1, 2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    batch.prompt_embeds = [torch.full((1, 3, 4), 1.0)]
    batch.negative_prompt_embeds = [torch.full((1, 3, 4), -1.0)]
    return batch


def _reference(batch: ForwardBatch, dit: ToyDiT, *, reuse_odd: bool = False) -> torch.Tensor:
    """The sampling loop written out: CFG, Euler on the sampler's sigmas, optionally reusing odd steps."""
    x = batch.latents.clone()
    sigmas = FlowEulerSampler(None)
    sigmas.set_timesteps(batch.params.num_inference_steps, shift=3.0)
    last = None
    with torch.no_grad():
        for i, t in enumerate(batch.timesteps):
            if reuse_odd and i % 2:
                pred = last
            else:
                base = dit.w * x + t / 1000
                cond, uncond = base + 1.0, base - 1.0
                pred = uncond + 3.0 * (cond - uncond)
                last = pred
            x = x + (sigmas.sigmas[i + 1] - sigmas.sigmas[i]) * pred
    return x


class ReuseOdd(StepHook):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.last: torch.Tensor | None = None

    def before_step(self, stage, batch, step):  # type: ignore[no-untyped-def]
        self.events.append(("before", step.index))

    def predict(self, stage, batch, step, compute):  # type: ignore[no-untyped-def]
        if step.index % 2 and self.last is not None:
            return self.last
        self.last = compute()
        return self.last

    def after_step(self, stage, batch, step, pred, latents):  # type: ignore[no-untyped-def]
        self.events.append(("after", step.index))


def test_denoising_loop_goes_through_the_sampler_and_guidance() -> None:
    dit = ToyDiT()
    stage = DenoisingStage(dit)
    assert isinstance(stage.guidance, ClassifierFreeGuidance)
    batch = _batch()
    expected = _reference(batch, dit)
    with torch.no_grad():
        out = stage(batch).latents
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert dit.calls == 8  # 4 steps x 2 CFG branches


def test_step_hooks_can_reuse_a_prediction_instead_of_calling_the_model() -> None:
    dit = ToyDiT()
    stage = DenoisingStage(dit)
    hook = ReuseOdd()
    stage.step_hooks.append(hook)
    batch = _batch()
    expected = _reference(batch, dit, reuse_odd=True)
    with torch.no_grad():
        out = stage(batch).latents
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert dit.calls == 4  # steps 0 and 2 only, both branches
    assert hook.events == [(e, i) for i in range(4) for e in ("before", "after")]
    assert not torch.allclose(out, _reference(_batch(), dit))


def test_hooks_nest_first_outermost() -> None:
    order: list[str] = []

    class Tag(StepHook):
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def predict(self, stage, batch, step, compute):  # type: ignore[no-untyped-def]
            order.append(f"{self.tag}>")
            out = compute()
            order.append(f"<{self.tag}")
            return out

    stage = DenoisingStage(ToyDiT())
    stage.step_hooks += [Tag("a"), Tag("b")]
    with torch.no_grad():
        stage(_batch(steps=1))
    assert order == ["a>", "b>", "<b", "<a"]


def test_guidance_can_be_replaced() -> None:
    seen: list[float] = []

    def cond_only(model, inputs, cond, uncond, scale):  # type: ignore[no-untyped-def]
        seen.append(scale)
        return model(**inputs, **cond)

    dit = ToyDiT()
    stage = DenoisingStage(dit)
    stage.guidance = cond_only
    with torch.no_grad():
        stage(_batch(steps=2))
    assert seen == [3.0, 3.0] and dit.calls == 2


# ---------------------------------------------------------------- transforms


def _transform(name: str, order: int, applies: bool, log: list[str]) -> type[PipelineTransform]:
    class T(PipelineTransform):
        def applies(self, pipeline: Any, config: Any) -> bool:
            log.append(f"applies:{name}")
            return applies

        def apply(self, pipeline: Any, config: Any) -> None:
            log.append(f"apply:{name}")
            pipeline.components.setdefault("applied", []).append(name)

    T.name, T.order = name, order
    return T


def test_transforms_run_in_order_when_they_apply() -> None:
    log: list[str] = []
    classes = [
        _transform("late", 900, True, log),
        _transform("skipped", 100, False, log),
        _transform("early", 50, True, log),
        _transform("also-early", 50, True, log),
    ]
    with fake_plugins(plugin_module("fake-transforms", fv_register_pipeline_transforms=lambda: classes)):
        pipeline = ComposedPipeline([], {})
        applied = apply_transforms(pipeline, PipelineConfig())
    assert applied == ["also-early", "early", "late"]
    assert pipeline.transforms == applied
    assert pipeline.components["applied"] == applied
    assert "apply:skipped" not in log and "applies:skipped" in log


def test_core_parallel_transforms_do_not_apply_in_one_process() -> None:
    from fastvideo.registry import get_registry

    assert get_registry().names("pipeline_transform") == [
        "cfg-parallel",
        "fp8",
        "layer-offload",
        "parallel-vae",
        "step-cache",
        "text-kv-cache",
    ]
    stage = DenoisingStage(ToyDiT())
    pipeline = ComposedPipeline([stage], {})
    assert apply_transforms(pipeline, PipelineConfig()) == []
    assert isinstance(stage.guidance, ClassifierFreeGuidance)


# ---------------------------------------------------------------- parallel strategy names


def test_unknown_strategy_is_an_error_naming_the_available_ones() -> None:
    from fastvideo import VideoGenerator

    with pytest.raises(UnknownNameError) as err:
        VideoGenerator.from_pretrained("no-such-model", strategies=("ulyses",))
    assert str(err.value) == (
        "Unknown parallel strategy 'ulyses'. Available: cfg, fsdp, ring, tp, ulysses, usp. "
        "Did you mean 'ulysses'?"
    )


def test_a_strategy_named_in_one_process_is_an_error() -> None:
    from fastvideo import VideoGenerator

    class Blocks(ParallelStrategy):
        name = "compile-blocks"

        def wrap(self, model: Any, state: Any) -> Any:
            return model

    with fake_plugins(plugin_module("fake-strategy", fv_register_parallel_strategies=lambda: [Blocks])):
        with pytest.raises(ValueError) as err:
            VideoGenerator.from_pretrained("no-such-model", strategies=("compile-blocks",))
    assert str(err.value) == (
        "parallel strategy 'compile-blocks' needs a parallel run, got num_gpus=1 in one process; set "
        "num_gpus > 1 (fv generate --num-gpus N) or drop it (one-process changes are pipeline transforms)"
    )


def test_a_strategy_the_layout_does_not_enable_is_an_error() -> None:
    from fastvideo.parallel.strategies import check_strategies

    config = ParallelConfig(num_gpus=2, ring_size=2, strategies=("ulysses",))
    with pytest.raises(ValueError, match="strategy 'ulysses' is named in strategies but this layout"):
        check_strategies(config, parallel=True)
    check_strategies(ParallelConfig(num_gpus=2, strategies=("ulysses",)), parallel=True)  # enabled: fine


def test_replace_component_updates_the_stages_that_held_it() -> None:
    dit, other = ToyDiT(), ToyDiT()
    stage = DenoisingStage(dit)
    pipeline = ComposedPipeline([stage], {"transformer": dit})
    wrapped = torch.nn.Sequential(dit)
    pipeline.replace_component("transformer", wrapped)
    assert pipeline.components["transformer"] is wrapped and stage.transformer is wrapped
    pipeline.replace_component("transformer_2", other)  # new component: nothing held it
    assert pipeline.components["transformer_2"] is other and stage.transformer_2 is None
