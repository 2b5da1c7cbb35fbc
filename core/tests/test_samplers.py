"""The built-in samplers against diffusers' schedulers and a hand-computed reference; sampler choice."""

from __future__ import annotations

import pytest
import torch

from fastvideo.configs import PipelineConfig
from fastvideo.errors import UnknownNameError
from fastvideo.interfaces import ModelFamily, Preset, Sampler
from fastvideo.interfaces.model_family import ModelSource
from fastvideo.samplers import (
    CheckpointSampler,
    FewStepSampler,
    FlowEulerSampler,
    UniPCSampler,
    sampler_class,
    sampler_name,
    use_sampler,
)
from fastvideo.testing import fake_plugins, plugin_module

pytestmark = pytest.mark.usefixtures("isolated_plugins")


def _run(sampler_or_scheduler, timesteps, latents, preds, *, ours: bool) -> torch.Tensor:
    x = latents.clone()
    for i, t in enumerate(timesteps):
        if ours:
            x = sampler_or_scheduler.step(preds[i], t, x, step_index=i)
        else:
            x = sampler_or_scheduler.step(preds[i], t, x, return_dict=False)[0]
    return x


def _inputs(steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 2, 6, 6, generator=gen)
    return latents, [torch.randn(1, 4, 2, 6, 6, generator=gen) for _ in range(steps)]


@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0])
@pytest.mark.parametrize("steps", [1, 4, 10])
def test_flow_euler_matches_diffusers_flow_match_euler(shift: float, steps: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(steps)
    ours = FlowEulerSampler(FlowMatchEulerDiscreteScheduler(shift=shift))
    timesteps = ours.set_timesteps(steps)
    torch.testing.assert_close(timesteps, ref.timesteps, rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=1e-7)
    latents, preds = _inputs(steps)
    expected = _run(ref, ref.timesteps, latents, preds, ours=False)
    torch.testing.assert_close(_run(ours, timesteps, latents, preds, ours=True), expected, rtol=0, atol=1e-6)


def test_flow_euler_request_shift_and_explicit_sigmas_match_diffusers() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    sigmas = [1.0, 0.75, 0.5, 0.25]
    ref = FlowMatchEulerDiscreteScheduler(shift=5.0)  # the request's shift replaces the checkpoint's 2.0
    ref.set_timesteps(sigmas=sigmas)
    ours = FlowEulerSampler(FlowMatchEulerDiscreteScheduler(shift=2.0))
    timesteps = ours.set_timesteps(4, shift=5.0, sigmas=sigmas)
    torch.testing.assert_close(timesteps, ref.timesteps, rtol=0, atol=1e-4)
    latents, preds = _inputs(4)
    expected = _run(ref, ref.timesteps, latents, preds, ours=False)
    torch.testing.assert_close(_run(ours, timesteps, latents, preds, ours=True), expected, rtol=0, atol=1e-6)


def test_flow_euler_without_a_checkpoint_scheduler_uses_shift_one() -> None:
    timesteps = FlowEulerSampler(None).set_timesteps(2)
    # unshifted: from sigma 1 to the smallest training sigma 1/1000, two points
    torch.testing.assert_close(timesteps, torch.tensor([1000.0, 1.0]))


@pytest.mark.parametrize("steps", [2, 6])
def test_unipc_wraps_diffusers_unipc_for_flow_matching(steps: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    ref = UniPCMultistepScheduler(
        num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    ref.set_timesteps(steps)
    ours = UniPCSampler(FlowMatchEulerDiscreteScheduler(shift=3.0))  # a non-UniPC checkpoint: its shift
    timesteps = ours.set_timesteps(steps)
    assert torch.equal(timesteps, ref.timesteps)
    latents, preds = _inputs(steps)
    expected = _run(ref, ref.timesteps, latents, preds, ours=False)
    assert torch.equal(_run(ours, timesteps, latents, preds, ours=True), expected)
    assert ours.init_noise_sigma == 1.0


def test_checkpoint_sampler_is_the_checkpoint_scheduler() -> None:
    from diffusers import UniPCMultistepScheduler

    kwargs = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    ref = UniPCMultistepScheduler(**kwargs)
    ref.set_timesteps(3)
    ours = CheckpointSampler(UniPCMultistepScheduler(**kwargs))
    timesteps = ours.set_timesteps(3)
    latents, preds = _inputs(3)
    expected = _run(ref, ref.timesteps, latents, preds, ours=False)
    assert torch.equal(_run(ours, timesteps, latents, preds, ours=True), expected)
    with pytest.raises(ValueError, match=r"model_index\.json names none; pick another sampler"):
        CheckpointSampler(None).set_timesteps(3)


def test_few_step_schedule_and_update_against_hand_computation() -> None:
    sampler = FewStepSampler(None)
    timesteps = sampler.set_timesteps(50)  # the list replaces num_inference_steps
    assert timesteps.tolist() == [1000.0, 757.0, 522.0]
    latents, preds = _inputs(3)
    gen = torch.Generator().manual_seed(11)
    out = _run_with_generator(sampler, timesteps, latents, preds, gen)

    # by hand: x0 = x - sigma * v, x = (1 - sigma') x0 + sigma' noise with noise drawn in order
    noise_gen = torch.Generator().manual_seed(11)
    x = latents.clone()
    for sigma, sigma_next, v in ((1.0, 0.757, preds[0]), (0.757, 0.522, preds[1])):
        x0 = x - sigma * v
        noise = torch.randn(x.shape, generator=noise_gen)
        x = (1 - sigma_next) * x0 + sigma_next * noise
    expected = x - 0.522 * preds[2]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def _run_with_generator(sampler, timesteps, latents, preds, gen) -> torch.Tensor:
    x = latents.clone()
    for i, t in enumerate(timesteps):
        x = sampler.step(preds[i], t, x, step_index=i, generator=gen)
    return x


def test_few_step_subclass_changes_the_list() -> None:
    class FourStep(FewStepSampler):
        name = "four-step"
        timesteps = (1000.0, 750.0, 500.0, 250.0)

    assert FourStep(None).set_timesteps(4).tolist() == [1000.0, 750.0, 500.0, 250.0]


# ---------------------------------------------------------------- registration and choice


class _Family(ModelFamily):
    name = "samp-family"
    default_sampler = "unipc"

    @classmethod
    def build_pipeline(cls, source, config):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def _source(preset_sampler: str | None = None) -> ModelSource:
    from pathlib import Path

    preset = Preset(name="p", repo_id="x/y", sampler=preset_sampler)
    return ModelSource(family=_Family, path=Path(), model_index={}, preset=preset)


def test_builtins_are_registered() -> None:
    from fastvideo.registry import get_registry

    assert get_registry().names("sampler") == ["checkpoint", "few-step", "flow-euler", "unipc"]
    assert sampler_class(None) is CheckpointSampler


def test_the_sampler_comes_from_config_then_preset_then_family() -> None:
    assert sampler_name(PipelineConfig()) == "checkpoint"
    assert sampler_name(PipelineConfig(), _source()) == "unipc"
    assert sampler_name(PipelineConfig(), _source("few-step")) == "few-step"
    assert sampler_name(PipelineConfig(sampler="flow-euler"), _source("few-step")) == "flow-euler"


def test_unknown_sampler_is_one_line_naming_the_available_ones() -> None:
    with pytest.raises(UnknownNameError) as err:
        sampler_name(PipelineConfig(sampler="flow-eular"))
    msg = str(err.value)
    assert msg == (
        "Unknown sampler 'flow-eular'. Available: checkpoint, few-step, flow-euler, unipc. "
        "Did you mean 'flow-euler'?"
    )
    assert isinstance(err.value, ValueError)


def test_a_plugin_sampler_is_registered_and_duplicates_are_rejected() -> None:
    class Mine(FlowEulerSampler):
        name = "mine"

    class Clash(Sampler):
        name = "flow-euler"

    with fake_plugins(plugin_module("fake-sampler", fv_register_samplers=lambda: [Mine])):
        assert sampler_class("mine") is Mine
    with fake_plugins(plugin_module("clash", fv_register_samplers=lambda: [Clash])):
        from fastvideo.registry import get_registry

        with pytest.warns(UserWarning, match="sampler 'flow-euler' is registered twice"):
            reg = get_registry()
        assert reg.get("sampler", "flow-euler").cls is FlowEulerSampler
        assert any("registered twice" in c for c in reg.conflicts)


def test_use_sampler_sets_the_timestep_stages() -> None:
    from fastvideo.pipelines.composed import ComposedPipeline
    from fastvideo.pipelines.stages import DenoisingStage, TimestepPreparationStage

    plain, chosen = TimestepPreparationStage(None), TimestepPreparationStage(None, sampler="few-step")
    pipeline = ComposedPipeline([plain], {})
    assert use_sampler(pipeline, PipelineConfig(), _source()) == "unipc"  # the family's default
    assert plain.sampler == "unipc"
    pipeline = ComposedPipeline([chosen], {})
    use_sampler(pipeline, PipelineConfig(), _source())
    assert chosen.sampler == "few-step"  # a family's stage keeps its own choice over its default
    use_sampler(pipeline, PipelineConfig(sampler="flow-euler"), _source())
    assert chosen.sampler == "flow-euler"  # an explicit request replaces it
    no_steps = ComposedPipeline([DenoisingStage(torch.nn.Linear(1, 1))], {})
    with pytest.raises(ValueError, match="has no timestep stage"):
        use_sampler(no_steps, PipelineConfig(sampler="unipc"))


# ---------------------------------------------------------------- a checkpoint that says how to sample it


def _student_folder(tmp_path, sampling) -> ModelSource:  # type: ignore[no-untyped-def]
    """A folder whose scheduler config carries ``_fastvideo_sampling`` (what a DMD2 export writes),
    saved and read back by diffusers itself."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.register_to_config(_fastvideo_sampling=sampling)
    scheduler.save_pretrained(tmp_path / "scheduler")
    return ModelSource(family=_Family, path=tmp_path, model_index={}, preset=None)


def test_the_scheduler_config_names_the_sampler_and_its_timesteps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from diffusers import FlowMatchEulerDiscreteScheduler

    source = _student_folder(tmp_path, {"sampler": "few-step", "timesteps": [1000, 800, 400, 100]})
    # config, then preset, then the checkpoint's scheduler config, then the family's default
    assert sampler_name(PipelineConfig(), source) == "few-step"
    assert sampler_name(PipelineConfig(sampler="unipc"), source) == "unipc"
    preset = Preset(name="p", repo_id="x/y", sampler="flow-euler")
    assert (
        sampler_name(PipelineConfig(), ModelSource(**{**source.__dict__, "preset": preset})) == "flow-euler"
    )
    from fastvideo.pipelines.composed import ComposedPipeline
    from fastvideo.pipelines.stages import TimestepPreparationStage

    stage = TimestepPreparationStage(None, sampler="unipc")
    use_sampler(ComposedPipeline([stage], {}), PipelineConfig(), source)
    assert stage.sampler == "few-step"  # the checkpoint's own word beats a family stage's choice
    loaded = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "scheduler")
    assert FewStepSampler(loaded).set_timesteps(3).tolist() == [1000.0, 800.0, 400.0, 100.0]


@pytest.mark.parametrize("bad", [[1000, 1000], [0, -1], "1000,500", [2000, 10]])
def test_a_malformed_timestep_list_is_one_line(tmp_path, bad) -> None:  # type: ignore[no-untyped-def]
    from diffusers import FlowMatchEulerDiscreteScheduler

    _student_folder(tmp_path, {"sampler": "few-step", "timesteps": bad})
    loaded = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "scheduler")
    with pytest.raises(ValueError, match=r"_fastvideo_sampling\.timesteps must be a decreasing list") as err:
        FewStepSampler(loaded).set_timesteps(3)
    assert "\n" not in str(err.value)
