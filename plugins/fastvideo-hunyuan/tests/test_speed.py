"""The core's speed options on the HunyuanVideo DiT (a family without cross-attention or a declared
timestep modulation): FP8 leaves the layers it declares in ``fp8_exclude``, offload and the first-block
and magnitude caches run through the generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

KW = dict(num_frames=5, height=32, width=32, num_inference_steps=5, guidance_scale=1.0, seed=3)


def _frames(path: Path, **options):  # type: ignore[no-untyped-def]
    from fastvideo import VideoGenerator

    gen = VideoGenerator.from_pretrained(str(path), device="cpu", progress=False, **options)
    return gen.generate_video("a red ball", **KW).frames, gen


def test_speed_options_run_on_hunyuan(tiny_pipeline: Path) -> None:
    from torch import nn

    from fastvideo.optimize.fp8 import FP8Linear

    base, _ = _frames(tiny_pipeline)
    fp8, gen = _frames(tiny_pipeline, quantize="fp8")
    dit = gen.pipeline.components["transformer"]
    assert isinstance(dit.double_blocks[0].attn.q, FP8Linear) and isinstance(
        dit.single_blocks[0].mlp_in, FP8Linear
    )
    assert type(dit.single_blocks[0].out) is nn.Linear and type(dit.double_blocks[0].video_mod) is nn.Linear
    assert 0 < np.abs(fp8.astype(float) - base).mean() < 6
    # offload: the same values (the CPU copies are aligned differently from the loaded tensors, which
    # may move the last bit of a BLAS result: at most one level of one pixel here)
    offloaded, _ = _frames(tiny_pipeline, offload="layer")
    assert np.abs(offloaded.astype(float) - base).max() <= 1
    for cache in ("firstblock", "magcache"):
        _, gen = _frames(tiny_pipeline, cache=cache, cache_threshold=0.5)
        stage = next(s for s in gen.pipeline.stages if hasattr(s, "step_cache"))
        assert sum(stage.step_cache.stats.values()) == KW["num_inference_steps"]
    with pytest.raises(ValueError, match="needs a DiT that declares timestep_modulation"):
        _frames(tiny_pipeline, cache="teacache")
