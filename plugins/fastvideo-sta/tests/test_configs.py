"""Launch configs of the STA kernels: every config of the sweep grid (and the autotune candidates) against
the dense masked reference, on a grid of whole tiles (the kernel's unmasked path) and a ragged one, with
text tokens; the config switch (``FASTVIDEO_STA_CONFIG``, ``FASTVIDEO_STA_BWD_CONFIG``) and its errors.

Under the interpreter only the block sizes change what runs (warps and stages are a GPU matter), so the
configs are tested per distinct ``(BLOCK_M, BLOCK_N)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from fastvideo.testing import assert_close
from fastvideo_sta.ops import sta_attention_reference
from fastvideo_sta.ops.triton_bwd import sta_backward
from fastvideo_sta.ops.triton_fwd import (
    ENV_BWD_CONFIG,
    ENV_FWD_CONFIG,
    FWD_CANDIDATES,
    FWD_TMA_CANDIDATES,
    SWEEP_BWD_CONFIGS,
    SWEEP_FWD_CONFIGS,
    LaunchConfig,
    even_grid,
    parse_config,
    resolve_config,
    slice_rows,
    sta_forward,
    tma_key_slices,
    tma_supported,
)
from fastvideo_sta.tiles import TileGeometry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCKS = sorted({(c.block_m, c.block_n, c.tma) for c in (*SWEEP_FWD_CONFIGS, *FWD_CANDIDATES)})

# (grid, tile, windows per head, text tokens): 8x8 faces (64-row slices, as HunyuanVideo's and Wan's)
SHAPES = {
    # whole tiles: the unmasked key path (when BLOCK_N's slices divide the tile's 2 frames)
    "even": ((4, 16, 16), (2, 8, 8), ((1, 1, 2), (2, 2, 1)), 6),
    # partial tiles on every axis, 3-frame tiles (key blocks of two slices reach past a tile)
    "ragged": ((4, 11, 10), (3, 8, 8), ((2, 1, 1), (1, 2, 2)), 5),
    # whole tiles of 3 frames: unmasked with one-slice key blocks, masked with two
    "even-t3": ((6, 8, 16), (3, 8, 8), ((2, 1, 2),), 0),
    # small grids for the backward: whole tiles (its unmasked paths), ragged
    "even-small": ((2, 16, 16), (2, 8, 8), ((1, 1, 2),), 6),
    "ragged-small": ((4, 9, 10), (3, 8, 8), ((2, 2, 1),), 3),
}


def make(shape: str, seed: int = 0):  # type: ignore[no-untyped-def]
    grid, tile, windows, text = SHAPES[shape]
    gen = torch.Generator().manual_seed(seed)
    length = math.prod(grid) + text
    q, k, v = (torch.randn(2, length, len(windows), 16, generator=gen).to(DEVICE) for _ in range(3))
    mask = None
    if text:
        mask = torch.ones(2, text, dtype=torch.bool, device=DEVICE)
        mask[1, -2:] = False
    table = torch.tensor(windows, dtype=torch.int32, device=DEVICE)
    return q, k, v, grid, tile, windows, mask, table


def valid_of(mask):  # type: ignore[no-untyped-def]
    return None if mask is None else mask.to(torch.int8).contiguous()


def test_shapes_cover_both_key_paths() -> None:
    for name, expect in (
        ("even", True),
        ("ragged", False),
        ("even-t3", True),
        ("even-small", True),
        ("ragged-small", False),
    ):
        geom = TileGeometry(SHAPES[name][0], SHAPES[name][1])
        assert slice_rows(geom) == 64
        assert even_grid(geom, 64) is expect


DEFAULT_FORWARD_CASES = {"even-128x64", "even-t3-64x64", "ragged-64x64", "even-64x64-tma"}


def forward_cases() -> list:  # type: ignore[type-arg]
    """Every block pair (gathered, and read by TMA boxes) on every shape; by default the cases of
    ``DEFAULT_FORWARD_CASES`` (the unmasked whole-tile path, the masked ragged path, a TMA read), the
    others under ``slow`` (interpreter time: CI's default session stays lean)."""
    cases = []
    for blocks in BLOCKS:
        for shape in ("even", "even-t3", "ragged"):
            name = f"{shape}-{blocks[0]}x{blocks[1]}" + ("-tma" if blocks[2] else "")
            slow = name not in DEFAULT_FORWARD_CASES
            cases.append(pytest.param(shape, blocks, marks=[pytest.mark.slow] if slow else [], id=name))
    return cases


@pytest.mark.parametrize(("shape", "blocks"), forward_cases())
def test_forward_of_every_sweep_config_matches_the_reference(
    shape: str, blocks: tuple[int, int, bool]
) -> None:
    q, k, v, grid, tile, windows, mask, table = make(shape)
    geom = TileGeometry(grid, tile)
    truth = sta_attention_reference(
        *(x.double() for x in (q, k, v)), grid, list(windows), tile=tile, text_mask=mask
    )
    config = LaunchConfig(blocks[0], blocks[1], 4, 2, tma=blocks[2])
    if blocks[2]:
        assert tma_supported(q, k, v, geom, 64)
    out, lse = sta_forward(q, k, v, table, valid_of(mask), geom, 16**-0.5, config)
    assert_close(f"{shape} {config}", truth, out, 1e-5)
    assert torch.isfinite(lse).all()


@pytest.mark.parametrize("slice_", [16, 32, 64, 128])
def test_the_tma_candidates_share_one_key_box(slice_: int) -> None:
    """The default forward builds the key/value descriptors once for all its TMA candidates: their
    key blocks must be the same number of slices, and each must launch the TMA path."""
    ks = tma_key_slices(slice_)
    for cand in FWD_TMA_CANDIDATES:
        meta = cand.meta(slice_)
        assert meta["KS"] == ks and meta.get("TMA") is True, (slice_, str(cand), meta)
    assert len({str(c) for c in FWD_TMA_CANDIDATES}) == len(FWD_TMA_CANDIDATES)


def test_tma_falls_back_to_the_gather_where_the_shape_does_not_allow_it() -> None:
    gen = torch.Generator().manual_seed(4)
    grid, tile = (3, 5, 7), (2, 4, 3)  # a 12-token face: slices of 16 rows, not one TMA box
    q, k, v = (torch.randn(1, math.prod(grid) + 3, 2, 16, generator=gen).to(DEVICE) for _ in range(3))
    geom = TileGeometry(grid, tile)
    assert not tma_supported(q, k, v, geom, slice_rows(geom))
    kt = torch.randn(1, math.prod(grid) + 3, 16, 2, generator=gen).to(DEVICE).transpose(2, 3)  # head-strided
    assert not tma_supported(q, kt, v, TileGeometry(grid, (2, 4, 4)), 16)
    table = torch.tensor([(1, 2, 1), (2, 1, 2)], dtype=torch.int32, device=DEVICE)
    out, _ = sta_forward(q, k, v, table, None, geom, 0.25, LaunchConfig(64, 64, tma=True))
    truth = sta_attention_reference(
        *(x.double() for x in (q, k, v)), grid, [(1, 2, 1), (2, 1, 2)], tile=tile, scale=0.25
    )
    assert_close("tma fallback", truth, out, 1e-5)


def test_a_negative_scale_is_exact() -> None:
    q, k, v, grid, tile, windows, mask, table = make("even-t3", seed=1)
    truth = sta_attention_reference(
        *(x.double() for x in (q, k, v)), grid, list(windows), tile=tile, text_mask=mask, scale=-0.3
    )
    out, _ = sta_forward(q, k, v, table, valid_of(mask), TileGeometry(grid, tile), -0.3, LaunchConfig(64, 64))
    assert_close("negative scale", truth, out, 1e-5)


#: The backward sweep's configs, one per distinct block pair (the interpreter ignores warps and stages).
BWD_BLOCKS = sorted({(c.block_m, c.block_n): c for c in SWEEP_BWD_CONFIGS if c is not None}.values(), key=str)


@pytest.mark.parametrize(
    "config",
    [pytest.param(c, marks=[pytest.mark.slow]) for c in BWD_BLOCKS],  # by default: the environment test
    ids=str,
)
def test_backward_of_every_sweep_config_matches_the_reference(config: LaunchConfig) -> None:
    q, k, v, grid, tile, windows, mask, table = make("ragged-small", seed=2)
    geom = TileGeometry(grid, tile)
    xs = [x.double().requires_grad_() for x in (q, k, v)]
    ref = sta_attention_reference(*xs, grid, list(windows), tile=tile, text_mask=mask)
    dout = torch.randn_like(ref)
    truth = torch.autograd.grad(ref, xs, dout)
    out, lse = sta_forward(q, k, v, table, valid_of(mask), geom, 16**-0.5, LaunchConfig(128, 64))
    got = sta_backward(dout.float(), q, k, v, out, lse, table, valid_of(mask), geom, 16**-0.5, config)
    for name, ref_g, g in zip(("dq", "dk", "dv"), truth, got, strict=True):
        assert_close(f"{name} {config}", ref_g, g, 1e-5)


@pytest.mark.parametrize("blocks", [(128, 64), (64, 128)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_backward_on_whole_tiles_matches_the_reference(blocks: tuple[int, int]) -> None:
    """The backward's unmasked paths (dq's key blocks, dk/dv's query blocks), padded text keys included."""
    q, k, v, grid, tile, windows, mask, table = make("even-small", seed=6)
    geom = TileGeometry(grid, tile)
    xs = [x.double().requires_grad_() for x in (q, k, v)]
    ref = sta_attention_reference(*xs, grid, list(windows), tile=tile, text_mask=mask)
    dout = torch.randn_like(ref)
    out, lse = sta_forward(q, k, v, table, valid_of(mask), geom, 16**-0.5, LaunchConfig(64, 64))
    config = LaunchConfig(*blocks)
    got = sta_backward(dout.float(), q, k, v, out, lse, table, valid_of(mask), geom, 16**-0.5, config)
    for name, ref_g, g in zip(("dq", "dk", "dv"), torch.autograd.grad(ref, xs, dout), got, strict=True):
        assert_close(f"{name} {config}", ref_g, g, 1e-5)
    n = math.prod(grid)
    assert torch.all(got[1][1, n + 4 :] == 0) and torch.all(got[2][1, n + 4 :] == 0)  # padded text keys


def test_the_environment_pins_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_FWD_CONFIG, "128,64,8,3")
    monkeypatch.setenv(ENV_BWD_CONFIG, "auto")
    assert resolve_config(None, 64, ENV_FWD_CONFIG) == {"QS": 2, "KS": 1, "num_warps": 8, "num_stages": 3}
    assert resolve_config(None, 64, ENV_BWD_CONFIG) is None  # autotune
    # an explicit config wins; blocks below one slice are one slice
    assert resolve_config(LaunchConfig(16, 32, 4, 2), 64, ENV_FWD_CONFIG)["QS"] == 1
    # the backward takes the same text and ignores the forward's TMA flag
    monkeypatch.setenv(ENV_BWD_CONFIG, "64,128,4,2,tma,r128")
    q, k, v, grid, tile, windows, mask, table = make("ragged-small", seed=5)
    geom = TileGeometry(grid, tile)
    xs = [x.double().requires_grad_() for x in (q, k, v)]
    ref = sta_attention_reference(*xs, grid, list(windows), tile=tile, text_mask=mask)
    dout = torch.randn_like(ref)
    out, lse = sta_forward(q, k, v, table, valid_of(mask), geom, 16**-0.5, LaunchConfig(64, 64, tma=True))
    got = sta_backward(dout.float(), q, k, v, out, lse, table, valid_of(mask), geom, 16**-0.5)
    for name, ref_g, g in zip(("dq", "dk", "dv"), torch.autograd.grad(ref, xs, dout), got, strict=True):
        assert_close(f"env {name}", ref_g, g, 1e-5)
    monkeypatch.setenv(ENV_FWD_CONFIG, "64,128,4,2")
    q, k, v, grid, tile, windows, mask, table = make("even")
    out, _ = sta_forward(q, k, v, table, valid_of(mask), TileGeometry(grid, tile), 0.25)
    truth = sta_attention_reference(
        *(x.double() for x in (q, k, v)), grid, list(windows), tile=tile, text_mask=mask, scale=0.25
    )
    assert_close("env config", truth, out, 1e-5)


@pytest.mark.parametrize(
    "text",
    [
        "64,64,4",
        "64,64,4,3,1",
        "96,64,4,3",
        "64,64,3,3",
        "64,64,4,0",
        "a,b,c,d",
        "64,64,4,3,r12",
        "64,64,4,3,tma,tma",
    ],
)
def test_bad_configs_are_one_line_errors(text: str) -> None:
    with pytest.raises(ValueError, match="BLOCK_M,BLOCK_N,num_warps,num_stages") as err:
        parse_config(text)
    assert "\n" not in str(err.value) and repr(text) in str(err.value)


def test_config_text_round_trips() -> None:
    assert parse_config(None) is None and parse_config(" auto ") is None
    for config in (*SWEEP_FWD_CONFIGS, *FWD_CANDIDATES):
        assert parse_config(str(config)) == config
    assert parse_config("128,64,8,3,TMA") == LaunchConfig(128, 64, 8, 3, tma=True)
    assert parse_config("128,64,8,2,r128,tma") == LaunchConfig(128, 64, 8, 2, tma=True, maxnreg=128)
    assert LaunchConfig(128, 64, 8, 2, maxnreg=128).meta(64)["maxnreg"] == 128
    assert any(c.tma for c in SWEEP_FWD_CONFIGS) and not any(c.tma for c in FWD_CANDIDATES)  # default: gather


# ---- GPU: the TMA variant at a medium shape --------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("grid", [(12, 24, 40), (13, 21, 37)], ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("config", [c for c in SWEEP_FWD_CONFIGS if c.tma][:2], ids=str)
@pytest.mark.gpu
@needs_gpu
def test_gpu_tma_forward_matches_the_reference(config: LaunchConfig, grid: tuple[int, int, int]) -> None:
    """bf16, head dim 128, text with padding, two windows; whole tiles and partial ones (TMA boxes
    reaching past the grid read zeros, which the key mask drops)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    geom, text, windows = TileGeometry(grid), 64, [(3, 3, 3), (1, 6, 10)]
    q, k, v = (
        torch.randn(1, geom.num_tokens + text, 2, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
        for _ in range(3)
    )
    mask = torch.ones(1, text, dtype=torch.bool, device="cuda")
    mask[:, 48:] = False
    table = torch.tensor(windows, dtype=torch.int32, device="cuda")
    assert tma_supported(q, k, v, geom, 64)
    out, _ = sta_forward(q, k, v, table, valid_of(mask), geom, 128**-0.5, config)
    truth = sta_attention_reference(*(x.float() for x in (q, k, v)), grid, windows, text_mask=mask)
    assert_close(f"{config} at {grid}", truth, out.float(), 2e-2)
