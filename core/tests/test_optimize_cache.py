"""Step caches (teacache, firstblock, magcache) and the lossless text key/value cache, on a small DiT
in the core's denoising loop, against the loop without them and against the policies written out."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fastvideo.configs import PipelineConfig, SamplingParams
from fastvideo.layers import timestep_embedding
from fastvideo.optimize.cache import DEFAULT_THRESHOLDS, text_kv_modules
from fastvideo.optimize.transforms import StepCacheTransform, TextKVCacheTransform
from fastvideo.pipelines.batch import ForwardBatch
from fastvideo.pipelines.composed import ComposedPipeline
from fastvideo.pipelines.stages import DenoisingStage
from fastvideo.samplers import FlowEulerSampler
from fastvideo.testing.speed import ToyDiT, toy_dit

STEPS = 12


def _batch(steps: int = STEPS, prompt_seed: int = 1) -> ForwardBatch:
    params = SamplingParams(num_inference_steps=steps, guidance_scale=4.0)
    batch = ForwardBatch(params=params, device=torch.device("cpu"))
    batch.sampler = FlowEulerSampler(None)
    batch.timesteps = batch.sampler.set_timesteps(steps, shift=3.0)
    batch.latents = torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(prompt_seed)
    batch.prompt_embeds = [torch.randn(1, 6, 16, generator=g)]
    batch.negative_prompt_embeds = [torch.randn(1, 6, 16, generator=g)]
    return batch


def _run(
    model: ToyDiT, config: PipelineConfig | None = None, **kw: Any
) -> tuple[torch.Tensor, DenoisingStage]:
    stage = DenoisingStage(model)
    pipe = ComposedPipeline([stage], {"transformer": model})
    config = config or PipelineConfig(text_kv_cache=False)
    for transform in (StepCacheTransform(), TextKVCacheTransform()):
        if transform.applies(pipe, config):
            transform.apply(pipe, config)
    with torch.inference_mode():
        return stage(_batch(**kw)).latents, stage


# ---------------------------------------------------------------- text key/value cache


def test_text_kv_cache_gives_identical_latents_and_computes_text_once_per_branch() -> None:
    model = toy_dit()
    plain, _ = _run(model)
    calls = []
    for _, module in text_kv_modules(model):  # count the real computations (the cache wraps these)

        def counted(x, forward=module.forward):  # type: ignore[no-untyped-def]
            calls.append(x)
            return forward(x)

        module.forward = counted
    cached, _ = _run(model, PipelineConfig())
    assert torch.equal(cached, plain)  # lossless: bit for bit
    modules = text_kv_modules(model)
    assert [n for n, _ in modules] == [
        "text_embed",
        *(f"blocks.{i}.{p}" for i in range(3) for p in ("ck", "cv")),
    ]
    assert len(calls) == 2 * len(modules)  # once per CFG branch, not once per step (2 x 12 per module)
    # another prompt with the same model: recomputed, still identical to the uncached loop
    other_plain, _ = _run(toy_dit(), prompt_seed=7)
    other, _ = _run(model, PipelineConfig(), prompt_seed=7)
    assert torch.equal(other, other_plain) and not torch.equal(other, cached)


def test_text_kv_cache_holds_nothing_after_the_last_step() -> None:
    """The stored keys and values go when the denoising ends (the VAE decode, where memory peaks, does
    not carry them); within the loop every step after the first hits."""
    model = toy_dit()
    _run(model, PipelineConfig())
    memos = [module.__dict__["forward"] for _, module in text_kv_modules(model)]
    assert memos and all(memo.entries == [] for memo in memos)
    assert all(memo.misses == 2 and memo.hits == 2 * STEPS - 2 for memo in memos)


def test_text_kv_cache_compares_contents_only_when_a_new_tensor_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Step after step the same tensors come back: found by identity, with no content comparison (a
    device sync on GPUs); only the second branch's first call compares against the first's entry."""
    calls = []
    equal = torch.equal
    monkeypatch.setattr(torch, "equal", lambda a, b: calls.append(1) or equal(a, b))
    model = toy_dit()
    _run(model, PipelineConfig())
    assert len(calls) == len(text_kv_modules(model))  # once per memo, at step 0, for the second branch


def test_text_kv_cache_is_off_when_asked_or_when_the_dit_declares_nothing() -> None:
    pipe = ComposedPipeline([DenoisingStage(toy_dit())], {"transformer": toy_dit()})
    assert TextKVCacheTransform().applies(pipe, PipelineConfig())
    assert not TextKVCacheTransform().applies(pipe, PipelineConfig(text_kv_cache=False))
    assert not TextKVCacheTransform().applies(
        ComposedPipeline([], {"transformer": torch.nn.Linear(2, 2)}), PipelineConfig()
    )


# ---------------------------------------------------------------- step caches


def _reference(model: ToyDiT, reused: set[tuple[int, int]]) -> torch.Tensor:
    """The CFG + Euler loop written out, reusing branch b's last computed prediction at (step, b) in ``reused``."""
    batch = _batch()
    x, last = batch.latents.clone(), [None, None]
    sigmas = batch.sampler.sigmas
    with torch.inference_mode():
        for i, t in enumerate(batch.timesteps):
            preds = []
            for b, text in enumerate((batch.prompt_embeds[0], batch.negative_prompt_embeds[0])):
                if (i, b) not in reused:
                    last[b] = model(x, t.expand(1), text).float()
                preds.append(last[b])
            pred = preds[1] + 4.0 * (preds[0] - preds[1])
            x = x + (sigmas[i + 1] - sigmas[i]) * pred
    return x


class _Recorder:
    """Which (step, branch) DiT calls a step cache reused."""

    def __init__(self, stage: DenoisingStage) -> None:
        self.reused: set[tuple[int, int]] = set()
        cache = stage.step_cache
        for b in range(2):
            cache._cache(b)
        for b, branch in enumerate(cache.branches):
            original = branch._reuse

            def wrapped(branch=branch, original=original, b=b):  # type: ignore[no-untyped-def]
                self.reused.add((branch.step, b))
                return original()

            branch._reuse = wrapped


@pytest.mark.parametrize("kind", ["teacache", "firstblock", "magcache"])
def test_threshold_zero_computes_every_step(kind: str) -> None:
    model = toy_dit()
    plain, _ = _run(model)
    model.calls = 0
    out, stage = _run(model, PipelineConfig(cache=kind, cache_threshold=0.0, text_kv_cache=False))
    assert torch.equal(out, plain)
    assert stage.step_cache.stats == {"computed": 2 * STEPS, "reused": 0} and model.calls == 2 * STEPS


@pytest.mark.parametrize(("kind", "threshold"), [("teacache", 1.0), ("firstblock", 0.5), ("magcache", 0.5)])
def test_a_cache_reuses_the_right_branch_and_keeps_first_and_last_steps(kind: str, threshold: float) -> None:
    model = toy_dit()
    stage = DenoisingStage(model)
    pipe = ComposedPipeline([stage], {"transformer": model})
    StepCacheTransform().apply(
        pipe, PipelineConfig(cache=kind, cache_threshold=threshold, text_kv_cache=False)
    )
    recorder = _Recorder(stage)
    with torch.inference_mode():
        out = stage(_batch()).latents
    assert recorder.reused, f"{kind} at threshold {threshold} reused nothing"
    assert not any(step in (0, STEPS - 1) for step, _ in recorder.reused)
    assert stage.step_cache.stats["reused"] == len(recorder.reused)
    assert torch.allclose(out, _reference(model, recorder.reused), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, _reference(model, set()), atol=1e-4)


def test_teacache_skips_where_its_accumulated_rescaled_distance_stays_under_the_threshold() -> None:
    model = toy_dit()
    threshold = 1.5
    _, stage = _run(model, PipelineConfig(cache="teacache", cache_threshold=threshold, text_kv_cache=False))
    # the policy written out: relative L1 change of the timestep modulation, accumulated over skips
    ts = _batch().timesteps
    with torch.inference_mode():
        emb = [model.time_embed(timestep_embedding(t.expand(1).float(), 32)) for t in ts]
    expected, acc = [], 0.0
    for i in range(STEPS):
        if i < 2 or i == STEPS - 1:  # 10 % of 12 steps -> 2 warm-up steps, and the last
            acc = 0.0
            continue
        acc += float((emb[i] - emb[i - 1]).abs().mean() / emb[i - 1].abs().mean())
        if acc < threshold:
            expected.append(i)
        else:
            acc = 0.0
    assert expected, "the test needs a threshold at which some steps are skipped"
    assert stage.step_cache.stats == {"computed": 2 * (STEPS - len(expected)), "reused": 2 * len(expected)}


def test_defaults_and_errors() -> None:
    assert DEFAULT_THRESHOLDS == {"teacache": 0.08, "firstblock": 0.05, "magcache": 0.06}
    model = toy_dit()
    type(model).timestep_modulation = None
    try:
        with pytest.raises(ValueError, match="needs a DiT that declares timestep_modulation"):
            _run(model, PipelineConfig(cache="teacache", text_kv_cache=False))
    finally:
        type(model).timestep_modulation = "time_embed"
