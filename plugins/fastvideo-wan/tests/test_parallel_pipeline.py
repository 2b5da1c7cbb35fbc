"""Wan pipelines over 2 gloo ranks against one process: Ulysses on a tiny T2V checkpoint and on a
tiny TI2V one (48-channel VAE with 16x stride, per-token timesteps), with the parallel VAE decode
splitting the tiles over the ranks through Wan's VAE splitter. Same latents and frames, fp32, CPU.

(The parallel strategies themselves are tested in core/tests/test_parallel.py on the example
plugin's model; this is the part that needs Wan's model and VAE splitter.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fastvideo.parallel.testing import run_ranks
from fastvideo.testing import assert_close

PROMPT, NEGATIVE = "a red circle moving left on a black background", "blue square"
FRAMES, STEPS = 9, 2
TILES = dict(
    tile_sample_min_height=32,
    tile_sample_min_width=32,
    tile_sample_stride_height=16,
    tile_sample_stride_width=16,
)
RTOL = 1e-5
#: 3 x 3 x 5 = 45 tokens for both (TI2V: 16x VAE), a multiple of neither 2 nor 4
SIZES = {"t2v": (48, 80), "ti2v": (96, 160)}


def generate(path: str, size: tuple[int, int], parallel: bool) -> tuple[torch.Tensor, np.ndarray]:
    """One tiny generation with CFG; Ulysses over all ranks when ``parallel``."""
    from fastvideo import VideoGenerator
    from fastvideo.parallel.vae import splitter_for

    options: dict[str, Any] = {}
    if parallel:
        options = {
            "num_gpus": torch.distributed.get_world_size(),
            "sp_size": torch.distributed.get_world_size(),
        }
    gen = VideoGenerator.from_pretrained(path, device="cpu", progress=False, vae_tiling=True, **options)
    assert gen.pipeline.transforms == (["parallel-vae"] if parallel else [])
    vae = gen.pipeline.components["vae"]
    assert splitter_for(vae) is not None  # the tiles are split over the ranks by Wan's splitter
    tiles = TILES if vae.config.patch_size is None else {k: 2 * v for k, v in TILES.items()}
    vae.enable_tiling(**tiles)
    result = gen.generate_video(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_frames=FRAMES,
        height=size[0],
        width=size[1],
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        seed=7,
    )
    assert result.latents is not None
    return result.latents, result.frames


def suite(rank: int, world: int, ckpts: dict[str, str]) -> dict[str, Any]:
    return {name: generate(path, SIZES[name], parallel=True) for name, path in ckpts.items()}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from fastvideo_wan.tiny import make_tiny_wan

    root = tmp_path_factory.mktemp("parallel")
    return {
        "t2v": str(make_tiny_wan(root / "t2v", variant="t2v", seed=3)),
        "ti2v": str(make_tiny_wan(root / "ti2v", variant="ti2v", seed=4)),
    }


@pytest.mark.parametrize("variant", ["t2v", "ti2v"])
def test_ulysses_and_parallel_vae_match_one_process(variant: str, ckpts: dict[str, str]) -> None:
    ref_latents, ref_frames = generate(ckpts[variant], SIZES[variant], parallel=False)
    assert float(ref_latents.std()) > 0.1 and ref_frames.std() > 5, (
        "flat reference: the test would see nothing"
    )
    for rank, result in enumerate(run_ranks(f"{__file__}:suite", 2, args=({variant: ckpts[variant]},))):
        latents, frames = result[variant]
        assert_close(f"{variant} rank {rank} latents", ref_latents, latents, RTOL)
        assert frames.shape == ref_frames.shape and frames.dtype == np.uint8
        diff = np.abs(frames.astype(np.int16) - ref_frames.astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (
            f"{variant} rank {rank}: frames differ ({diff.max()})"
        )
