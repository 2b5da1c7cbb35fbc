"""Wan's VAE splitter (the parallel VAE decode's per-class part) against diffusers' own tiled decode.

The splitter's tiles, decoded one by one and assembled, must equal ``AutoencoderKLWan.tiled_decode``
(what one process runs); the core spreads the same tiles over ranks (test_parallel_pipeline.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fastvideo.testing import fake_plugins
from fastvideo_wan import plugin
from fastvideo_wan.vae_split import WanVAESplitter

TILES = dict(
    tile_sample_min_height=32,
    tile_sample_min_width=32,
    tile_sample_stride_height=16,
    tile_sample_stride_width=16,
)


def _vae(patch: bool) -> Any:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    if patch:  # Wan2.2's patchified VAE, as in the tiny TI2V checkpoint
        return AutoencoderKLWan(
            base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
            is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
        ).eval()  # fmt: skip
    return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1).eval()


@pytest.mark.parametrize("patch", [False, True], ids=["wan2.1", "wan2.2-patchified"])
def test_split_decode_assemble_equals_the_vae_tiled_decode(patch: bool) -> None:
    vae = _vae(patch)
    vae.enable_tiling(**(TILES if not patch else {k: 2 * v for k, v in TILES.items()}))
    z = torch.randn(1, vae.config.z_dim, 2, 6, 10, generator=torch.Generator().manual_seed(1))
    splitter = WanVAESplitter()
    with torch.no_grad():
        tiles = splitter.split(vae, z)
        assert tiles is not None and len(tiles) > 2
        video = splitter.assemble(vae, z, [splitter.decode_tile(vae, t) for t in tiles])
        expected = vae.decode(z, return_dict=False)[0]  # diffusers' tiled_decode
    torch.testing.assert_close(video, expected, rtol=1e-5, atol=1e-5)


def test_untiled_requests_are_left_to_the_plain_decode() -> None:
    vae = _vae(False)
    z = torch.randn(1, 16, 2, 6, 10)
    assert WanVAESplitter().split(vae, z) is None  # tiling off
    vae.enable_tiling(**TILES)
    assert WanVAESplitter().split(vae, z[..., :4, :4]) is None  # one tile


def test_the_wan_family_declares_the_splitter_for_its_vae_class() -> None:
    from fastvideo.parallel.vae import _SPLITTERS, splitter_for

    _SPLITTERS.pop("AutoencoderKLWan", None)
    try:
        with fake_plugins(plugin):
            assert isinstance(splitter_for(_vae(False)), WanVAESplitter)
            assert splitter_for(torch.nn.Linear(1, 1)) is None
    finally:
        _SPLITTERS.pop("AutoencoderKLWan", None)
