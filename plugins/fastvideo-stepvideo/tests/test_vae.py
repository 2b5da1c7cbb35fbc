"""StepVideoVAE against the official ``AutoencoderKL`` (version 2): decode of two latent chunks (the
border blend included) and encode, on the tiny weights of ``tests/data/vae_recipe.json``; the released
names and shapes on ``meta``; decoder-only loading and errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastvideo.errors import CheckpointError
from fastvideo.testing import assert_close
from fastvideo_stepvideo.vae import StepVideoVAE, StepVideoVAEConfig, blend_chunks

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from refweights import seeded_state  # noqa: E402


def released_state() -> tuple[dict[str, torch.Tensor], dict]:
    """The tiny official VAE's weights under their released names, and its config."""
    recipe = json.loads((DATA / "vae_recipe.json").read_text())
    state = seeded_state([tuple(x) for x in recipe["official_order"]], recipe["seed"])
    return dict(zip(recipe["released_names"], state.values(), strict=True)), recipe["config"]


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state, config = released_state()
    folder = tmp_path_factory.mktemp("vae")
    save_file(state, folder / "vae_v2.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(DATA / "vae_io.safetensors")


@pytest.fixture(scope="module")
def vae(vae_folder: Path) -> StepVideoVAE:
    return StepVideoVAE.from_pretrained(vae_folder)


def test_decode_across_a_chunk_border_matches_official(vae: StepVideoVAE, io: dict) -> None:
    """6 latent frames = 2 chunks -> 34 frames; frames 16 and 17 are the blended border."""
    with torch.no_grad():
        out = vae.decode(io["z"].permute(0, 2, 1, 3, 4))  # official (B, T', C, h, w) -> ours
    ref = io["decoded"].permute(0, 2, 1, 3, 4)
    assert out.shape == (1, 3, 34, 16, 32)
    assert_close("decoded", ref, out, 1e-4)
    assert_close("border frames", ref[:, :, 16:18], out[:, :, 16:18], 1e-4)


def test_encode_matches_official(vae: StepVideoVAE, io: dict) -> None:
    with torch.no_grad():
        out = vae.encode(io["video"].permute(0, 2, 1, 3, 4))
    assert_close("posterior parameters", io["encoded"].permute(0, 2, 1, 3, 4), out, 1e-4)


def test_encode_of_one_image_matches_official(vae: StepVideoVAE, io: dict) -> None:
    """TI2V encodes its first frame alone: one latent frame."""
    with torch.no_grad():
        out = vae.encode(io["video"][:, :1].permute(0, 2, 1, 3, 4))
    assert out.shape == (1, 4, 1, 1, 2)
    assert_close("image posterior parameters", io["encoded_image"].permute(0, 2, 1, 3, 4), out, 1e-4)


def test_blend_is_what_separates_the_chunks(vae: StepVideoVAE, io: dict) -> None:
    """Without the blend the border frames differ from the official ones; elsewhere they agree."""
    z = io["z"].permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        raw = torch.cat([vae.decode_chunk(c) for c in z.split(3, dim=2)], dim=2)
    ref = io["decoded"].permute(0, 2, 1, 3, 4)
    assert not torch.allclose(raw[:, :, 16:18], ref[:, :, 16:18], atol=1e-3)
    assert_close("blended", ref, blend_chunks(raw, 17), 1e-4)


def test_decoder_only_weights_load_and_encode_says_why_not(
    tmp_path: Path, io: dict, vae: StepVideoVAE
) -> None:
    state, config = released_state()
    save_file(
        {k: v for k, v in state.items() if k.startswith("decoder.")},
        tmp_path / "diffusion_pytorch_model.safetensors",
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    dec = StepVideoVAE.from_pretrained(tmp_path)
    assert dec.encoder is None
    z = io["z"].permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        assert torch.equal(dec.decode(z), vae.decode(z))
    with pytest.raises(RuntimeError, match="decoder-only"):
        dec.encode(io["video"].permute(0, 2, 1, 3, 4))


def test_real_size_names_and_shapes_are_the_released_ones() -> None:
    released = json.loads((DATA / "released_shapes.json").read_text())["vae"]
    with torch.device("meta"):
        model = StepVideoVAE(StepVideoVAEConfig())
    ours = {
        k.replace("decoder.conv_out.conv.", "decoder.conv_out."): list(v.shape)
        for k, v in model.state_dict().items()
    }
    assert ours == released
    assert 490e6 < sum(math.prod(s) for s in released.values()) < 510e6


def test_weights_that_do_not_match_the_config_name_the_tensor(tmp_path: Path) -> None:
    state, config = released_state()
    save_file(state, tmp_path / "vae_v2.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({**config, "z_channels": 4}))
    with pytest.raises(
        CheckpointError, match=r"decoder\.conv_in\.conv\.bias has shape \(64,\), the config needs \(128,\)"
    ):
        StepVideoVAE.from_pretrained(tmp_path)
    (tmp_path / "vae_v2.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"vae_v2\.safetensors"):
        StepVideoVAE.from_pretrained(tmp_path)


def test_bad_inputs_say_what_to_pass(vae: StepVideoVAE) -> None:
    with pytest.raises(ValueError, match="multiple of 3 latent frames"):
        vae.decode(torch.zeros(1, 2, 4, 1, 2))
    with pytest.raises(ValueError, match=r"\(B, 2, T', h, w\)"):
        vae.decode(torch.zeros(1, 5, 3, 1, 2))
    with pytest.raises(ValueError, match="version=1"):
        StepVideoVAEConfig(version=1)


# ---- spatial tiling ------------------------------------------------------------------------------


def test_tiling_cross_fades_to_exactly_the_untiled_video_for_a_local_decoder(vae: StepVideoVAE) -> None:
    """Geometry and weights of the tiled decode: with the decoder's halves swapped for pixel-local maps
    (nearest upsampling), every tile agrees with the whole frame where they overlap, so the tiled
    decode must equal the plain upsampled latents exactly: the weights sum to 1 and every tile lands
    at its place (3x4 tiles, the last row and column shorter, two chunks with their border blend)."""
    import torch.nn.functional as F

    dec = vae.decoder
    head, tail = dec.head, dec.tail
    dec.head = lambda z: F.interpolate(z, scale_factor=(1, 2, 2), mode="nearest")
    dec.tail = lambda h: F.interpolate(h[:, :1].expand(-1, 3, -1, -1, -1), scale_factor=(17 / 3, 8, 8))
    try:
        z = torch.randn(1, 2, 6, 5, 7, generator=torch.Generator().manual_seed(0))
        reference = blend_chunks(
            F.interpolate(z[:, :1].expand(-1, 3, -1, -1, -1), scale_factor=(17 / 3, 16, 16)), 17
        )
        vae.enable_tiling(48, 32)
        tiled = vae.decode(z)
    finally:
        vae.disable_tiling()
        dec.head, dec.tail = head, tail
    assert tiled.shape == (1, 3, 34, 80, 112)
    assert_close("tiled local decode", reference, tiled, 1e-6)


def test_tiled_decode_is_close_to_the_untiled_one(vae: StepVideoVAE) -> None:
    """The real decoder in 2 tiles of 96 px (overlap 32 px) vs whole. Not exact: the mid block (whose
    attention spans the chunk) runs whole, but the up levels' per-frame GroupNorms normalise over the
    tile instead of the frame. On this tiny decoder (one channel per norm group, frames 1.3 tiles
    wide: the worst case for tile statistics) the mean deviation measures 14 % of the mean magnitude;
    a misplaced tile or weights not summing to 1 give far more. A tile covering the frame is exact."""
    z = torch.randn(1, 2, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = vae.decode(z)
        try:
            vae.enable_tiling(96, 64)
            tiled = vae.decode(z)
            vae.enable_tiling(128, 96)  # one tile covers the 96x128 frame
            one_tile = vae.decode(z)
        finally:
            vae.disable_tiling()
    assert torch.equal(one_tile, whole)
    deviation = ((tiled - whole).abs().mean() / whole.abs().mean()).item()
    assert 0 < deviation < 0.2, f"mean |tiled - whole| / mean |whole| = {deviation:.3g}"


def test_tiling_sizes_are_checked(vae: StepVideoVAE) -> None:
    with pytest.raises(ValueError, match=r"multiples of 16 pixels.*enable_tiling\(256, 192\)"):
        vae.enable_tiling(100, 64)
    with pytest.raises(ValueError, match="tile_size / 2 <= tile_stride < tile_size"):
        vae.enable_tiling(256, 256)
    assert not vae.use_tiling


def test_splitter_pieces_put_together_equal_the_decode(vae: StepVideoVAE) -> None:
    """What the parallel decode does with the splitter, in one process: split, decode every piece,
    assemble; equal to ``decode`` with tiling off (chunks), on with several tiles (chunk x tile
    pieces), and on with a frame one tile covers (chunks again)."""
    from fastvideo_stepvideo.vae import StepVideoVAESplitter

    splitter = StepVideoVAESplitter()
    z = torch.randn(1, 2, 6, 3, 4, generator=torch.Generator().manual_seed(1))
    try:
        for tiling, pieces in ((None, 2), ((48, 32), 4), ((64, 48), 2)):
            if tiling is None:
                vae.disable_tiling()
            else:
                vae.enable_tiling(*tiling)
            with torch.no_grad():
                tiles = splitter.split(vae, z)
                assert tiles is not None and len(tiles) == pieces, tiling
                video = splitter.assemble(vae, z, [splitter.decode_tile(vae, t) for t in tiles])
                assert torch.equal(video, vae.decode(z)), tiling
    finally:
        vae.disable_tiling()
