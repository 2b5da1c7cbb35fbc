"""The sampling loop against the official ``StepVideoPipeline.__call__``: the same tiny DiT, embeddings
and noise, CFG 9, time shift 13, 4 steps, with the scheduler's ``reverse`` true and false; every
step's latents compared (tests/data/sampling.safetensors)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from fastvideo.attention import use_backend
from fastvideo.configs import SamplingParams
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.stages import StepHook
from fastvideo.testing import assert_close
from fastvideo_stepvideo.model import StepVideoTransformer
from fastvideo_stepvideo.pipeline import StepVideoDenoisingStage
from fastvideo_stepvideo.sampler import StepVideoFlowSampler

DATA = Path(__file__).parent / "data"
KEYS = {"reverse": True, "forward": False}


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(DATA / "sampling.safetensors")


@pytest.mark.parametrize("key", list(KEYS))
def test_timesteps_match_official(ref: dict, key: str) -> None:
    sampler = StepVideoFlowSampler(SimpleNamespace(config={"reverse": KEYS[key], "num_train_timesteps": 1}))
    assert_close("timesteps", ref[f"{key}.timesteps"], sampler.set_timesteps(4, shift=13.0), 1e-6)


def test_scheduler_default_direction_is_the_official_default() -> None:
    """Without ``reverse`` in the scheduler config the official class default (False: 0 -> 1) applies."""
    sampler = StepVideoFlowSampler(SimpleNamespace(config={}))
    t = sampler.set_timesteps(4)
    assert float(t[0]) == 0.0 and sampler.default_shift() == 13.0


class Record(StepHook):
    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def after_step(self, stage, batch, step, pred, latents) -> None:  # type: ignore[no-untyped-def]
        self.steps.append(latents.clone())


@pytest.mark.parametrize("key", list(KEYS))
def test_sampling_loop_matches_official_step_by_step(ref: dict, key: str) -> None:
    model = StepVideoTransformer.from_pretrained(DATA / "dit", dtype=torch.float32)
    stage = StepVideoDenoisingStage(model, num_train_timesteps=1)
    record = Record()
    stage.step_hooks.append(record)
    sampler = StepVideoFlowSampler(SimpleNamespace(config={"reverse": KEYS[key]}))
    y, y2, mask = ref["prompt_embeds"], ref["clip_embeds"], ref["mask"]  # [prompt, negative]
    batch = ForwardBatch(
        params=SamplingParams(prompt="p", guidance_scale=9.0, num_inference_steps=4),
        device=torch.device("cpu"),
        prompt_embeds=[y[:1], y2[:1]],
        prompt_masks=[mask[:1, 5:], mask[:1, :5]],
        negative_prompt_embeds=[y[1:], y2[1:]],
        negative_prompt_masks=[mask[1:, 5:], mask[1:, :5]],
        sampler=sampler,
        timesteps=sampler.set_timesteps(4, shift=13.0),
        latents=ref["noise"].permute(0, 2, 1, 3, 4).clone(),  # official (B, F, C, H, W) -> ours
    )
    with use_backend("sdpa"), torch.no_grad():
        out = stage.forward(batch)
    official = ref[f"{key}.steps"].permute(0, 1, 3, 2, 4, 5)
    assert len(record.steps) == 4
    for i, (theirs, ours) in enumerate(zip(official, record.steps, strict=True)):
        assert_close(f"step {i} latents", theirs, ours, 1e-4)
    assert_close("final", ref[f"{key}.final"].permute(0, 2, 1, 3, 4), out.latents, 1e-4)
