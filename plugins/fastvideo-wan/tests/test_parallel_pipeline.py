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
from fastvideo.testing.parallel import SMALL_TILES, assert_ranks_match_one_process, tiny_generation

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
    # the lossless text-kv-cache is on by default either way; parallel-vae only in the parallel run
    assert [t for t in gen.pipeline.transforms if t != "text-kv-cache"] == (
        ["parallel-vae"] if parallel else []
    )
    vae = gen.pipeline.components["vae"]
    assert splitter_for(vae) is not None  # the tiles are split over the ranks by Wan's splitter
    tiles = SMALL_TILES if vae.config.patch_size is None else {k: 2 * v for k, v in SMALL_TILES.items()}
    vae.enable_tiling(**tiles)
    return tiny_generation(gen, size)


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
    ref = generate(ckpts[variant], SIZES[variant], parallel=False)
    runs = run_ranks(f"{__file__}:suite", 2, args=({variant: ckpts[variant]},))
    assert_ranks_match_one_process(variant, ref, runs)
