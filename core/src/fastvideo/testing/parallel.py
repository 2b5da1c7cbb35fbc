"""Helpers for tests of parallel generation against one process, shared by the core's
test_parallel.py (on the example plugin) and the model plugins' parallel pipeline tests.

Every rank (see :func:`fastvideo.parallel.testing.run_ranks`) and the single-process reference run
the same tiny generation (:func:`tiny_generation`); :func:`assert_ranks_match_one_process` compares
what the ranks returned with the reference. Torch is imported inside the functions.
"""

from __future__ import annotations

from typing import Any

PROMPT, NEGATIVE = "a red circle moving left on a black background", "blue square"
#: VAE tiles far smaller than the defaults, so that a tiny video decodes in several tiles (which the
#: parallel VAE decode spreads over the ranks)
SMALL_TILES = dict(
    tile_sample_min_height=32,
    tile_sample_min_width=32,
    tile_sample_stride_height=16,
    tile_sample_stride_width=16,
)


def tiny_generation(
    gen: Any, size: tuple[int, int], *, num_frames: int = 9, steps: int = 2
) -> tuple[Any, Any]:
    """``gen.generate_video`` with classifier-free guidance (scale 3, a negative prompt) and seed 7 at
    ``size`` (height, width); returns ``(latents, frames)``."""
    result = gen.generate_video(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_frames=num_frames,
        height=size[0],
        width=size[1],
        num_inference_steps=steps,
        guidance_scale=3.0,
        seed=7,
    )
    assert result.latents is not None
    return result.latents, result.frames


def assert_ranks_match_one_process(
    name: str, ref: tuple[Any, Any], runs: list[dict[str, Any]], rtol: float = 1e-5
) -> None:
    """Each rank's ``runs[rank][name]`` ``(latents, frames)`` against the one-process ``ref``: the
    latents within ``rtol`` of the reference's scale, the uint8 frames off by at most one level on
    fewer than 0.1% of the values. A flat reference fails (the comparison would see nothing)."""
    import numpy as np

    from fastvideo.testing.numeric import assert_close

    ref_latents, ref_frames = ref
    assert float(ref_latents.std()) > 0.1 and ref_frames.std() > 5, (
        "flat reference: the test would see nothing"
    )
    for rank, result in enumerate(runs):
        latents, frames = result[name]
        assert_close(f"{name} rank {rank} latents", ref_latents, latents, rtol)
        assert frames.shape == ref_frames.shape and frames.dtype == np.uint8
        diff = np.abs(frames.astype(np.int16) - ref_frames.astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (
            f"{name} rank {rank}: frames differ ({diff.max()})"
        )


def sharded_forward(model: Any, world: int, parallel: dict[str, Any], *args: Any) -> Any:
    """``model(*args)`` on this rank with the model's declared sequence-parallel plan applied over a
    ``ParallelConfig(num_gpus=world, **parallel)`` layout (Ulysses, ring or both), then the plan
    removed and the layout torn down: a DiT's sharded output, to compare with its one-process output
    (run inside :func:`fastvideo.parallel.testing.run_ranks`)."""
    from fastvideo.configs import ParallelConfig
    from fastvideo.parallel.sequence import SequenceSharding
    from fastvideo.parallel.state import init_parallel, teardown

    state = init_parallel(ParallelConfig(num_gpus=world, **parallel), device="cpu")
    sharding = SequenceSharding(model, state)
    sharding.apply(model)
    try:
        return model(*args)
    finally:
        sharding.remove(model)
        teardown()
