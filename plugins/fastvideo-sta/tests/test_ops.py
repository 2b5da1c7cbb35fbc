"""The STA op against its plain PyTorch reference: output and every gradient, odd grids included.

On CPU the Triton kernels run in the interpreter at small shapes (grids that are not multiples of the
tile, partial tiles on every axis, text tokens with padding). Low-precision results must be within
2x the error of plain torch in the same dtype against the float64 truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from fastvideo.testing import assert_close, assert_no_worse
from fastvideo_sta.ops import sta_attention, sta_attention_reference
from fastvideo_sta.ops.reference import sta_mask, tile_coords
from fastvideo_sta.tiles import TileGeometry, query_range, window_start

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Case:
    batch: int
    grid: tuple[int, int, int]
    tile: tuple[int, int, int]
    windows: tuple[tuple[int, int, int], ...]  # one per head
    dim: int
    dtype: str
    text: int = 0  # text tokens after the grid
    pad: int = 0  # of them masked out (padding) in the last batch element

    @property
    def id(self) -> str:
        t, h, w = self.grid
        win = "_".join("x".join(map(str, w)) for w in self.windows)
        return f"B{self.batch}-G{t}x{h}x{w}-T{'x'.join(map(str, self.tile))}-W{win}-D{self.dim}-{self.dtype}-txt{self.text}"


CASES = [
    # every tile partial along h and w, 2 tiles in t (the second partial): per-head windows
    Case(1, (3, 5, 7), (2, 4, 4), ((1, 1, 1), (2, 2, 1)), 16, "fp32"),
    # text tokens with padding, fp16
    Case(2, (3, 5, 7), (2, 4, 4), ((2, 1, 3),), 32, "fp16", text=7, pad=2),
    # bf16 (the interpreter computes its products in fp32), a window larger than the grid on one axis
    Case(1, (4, 6, 5), (2, 4, 4), ((1, 9, 1),), 32, "bf16", text=3),
    # a 3-frame tile: two-slice blocks reach past the tile (t-slices 2 and 3 share a block)
    Case(1, (4, 5, 4), (3, 4, 4), ((1, 1, 1), (2, 1, 1)), 16, "fp32"),
]


def inputs(case: Case, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    length = math.prod(case.grid) + case.text
    shape = (case.batch, length, len(case.windows), case.dim)
    xs = [torch.randn(shape, generator=gen).to(DEVICE, DTYPES[case.dtype]) for _ in range(3)]
    dout = torch.randn(shape, generator=gen).to(DEVICE, DTYPES[case.dtype])
    mask = None
    if case.text:
        mask = torch.ones(case.batch, case.text, dtype=torch.bool, device=DEVICE)
        if case.pad:
            mask[-1, -case.pad :] = False
    return xs, dout, mask


def run(fn, case: Case, xs, dout, mask, dtype):  # type: ignore[no-untyped-def]
    xs = [x.detach().to(dtype).requires_grad_() for x in xs]
    out = fn(*xs, case.grid, list(case.windows), tile=case.tile, text_mask=mask)
    return [out.detach(), *torch.autograd.grad(out, xs, dout.to(dtype))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_forward_and_gradients_match_the_reference(case: Case) -> None:
    xs, dout, mask = inputs(case)
    truth = run(sta_attention_reference, case, xs, dout, mask, torch.float64)
    got = run(sta_attention, case, xs, dout, mask, DTYPES[case.dtype])
    names = ("out", "dq", "dk", "dv")
    if case.dtype == "fp32":
        for name, ref, out in zip(names, truth, got, strict=True):
            assert_close(name, ref, out, 1e-5)
    else:
        plain = run(sta_attention_reference, case, xs, dout, mask, DTYPES[case.dtype])
        for name, ref, out, base in zip(names, truth, got, plain, strict=True):
            assert_no_worse(name, ref, out, base, factor=2.0, atol=1e-3)


def test_masked_text_keys_get_no_gradient_and_no_weight() -> None:
    case = Case(2, (2, 3, 4), (2, 4, 4), ((1, 1, 1),), 16, "fp32", text=5, pad=2)
    xs, dout, mask = inputs(case, seed=1)
    got = run(sta_attention, case, xs, dout, mask, torch.float32)
    n = math.prod(case.grid)
    assert torch.all(got[2][-1, n + case.text - case.pad :] == 0)  # dk of padded text keys
    assert torch.all(got[3][-1, n + case.text - case.pad :] == 0)  # dv
    # changing a padded key's value changes nothing
    xs[2][-1, -1] += 100.0
    again = sta_attention(*xs, case.grid, list(case.windows), tile=case.tile, text_mask=mask)
    assert torch.equal(got[0], again)


def test_whole_grid_window_is_dense_attention() -> None:
    grid, tile = (3, 5, 7), (2, 4, 4)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, math.prod(grid) + 4, 1, 16, generator=gen).to(DEVICE) for _ in range(3))
    dense = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    out = sta_attention(q, k, v, grid, (2, 50, 2), tile=tile)  # the tile grid is (2, 2, 2): beyond it on h
    assert_close("whole-grid window", dense, out, 1e-5)
    assert bool(sta_mask(TileGeometry(grid, tile), (2, 2, 2), text_len=4).all())


def test_reference_mask_of_the_unit_window_is_the_own_tile() -> None:
    geom = TileGeometry((5, 6, 9), (2, 4, 4))
    coords = tile_coords(geom)
    same_tile = (coords[:, None, :] == coords[None, :, :]).all(-1)
    assert torch.equal(sta_mask(geom, (1, 1, 1))[0], same_tile)


def test_reference_mask_matches_a_brute_force_window() -> None:
    geom = TileGeometry((5, 6, 9), (2, 4, 4))  # tile grid (3, 2, 3)
    window = (2, 1, 3)
    mask = sta_mask(geom, window)[0]
    coords = tile_coords(geom).tolist()
    for i in range(0, geom.num_tokens, 7):
        for j in range(0, geom.num_tokens, 5):
            expect = True
            for axis, (w, n) in enumerate(zip(window, geom.tile_grid, strict=True)):
                # the w tiles nearest to the query's tile, preferring lower ones on ties, inside [0, n)
                c = coords[i][axis]
                lo = max(0, min(c - (w - 1) // 2, n - w))
                expect &= lo <= coords[j][axis] < lo + w
            assert bool(mask[i, j]) == expect


def test_window_geometry_helpers() -> None:
    for n in range(1, 7):
        for w in range(1, 9):
            for c in range(n):
                s = window_start(c, w, n)
                assert 0 <= s and s + min(w, n) <= n and s <= c < s + min(w, n)
            for kt in range(n):  # query_range is the exact inverse of window_start
                lo, hi = query_range(kt, w, n)
                inside = [
                    c for c in range(n) if window_start(c, w, n) <= kt < window_start(c, w, n) + min(w, n)
                ]
                assert inside == list(range(lo, hi + 1))


def test_kept_fraction_counts_the_mask() -> None:
    geom = TileGeometry((5, 6, 9), (2, 4, 4))
    for window in ((1, 1, 1), (2, 1, 3), (3, 2, 3)):
        mask = sta_mask(geom, window)[0]
        assert geom.kept_fraction(window) == pytest.approx(mask.float().mean().item())


def test_bad_inputs_are_one_line_errors() -> None:
    q = torch.zeros(1, 10, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="tokens but grid"):
        sta_attention(q, q, q, (3, 5, 7), (1, 1, 1))
    q = torch.zeros(1, 105, 2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="2 heads"):
        sta_attention(q, q, q, (3, 5, 7), [(1, 1, 1)] * 3)
    with pytest.raises(ValueError, match=">= 1"):
        sta_attention(q, q, q, (3, 5, 7), (0, 1, 1))
    with pytest.raises(ValueError, match="at most 128"):
        sta_attention(q, q, q, (3, 5, 7), (1, 1, 1), tile=(1, 16, 16))


def test_rows_mask_is_the_mask_of_those_rows() -> None:
    from fastvideo_sta.ops.reference import rows_mask

    geom = TileGeometry((5, 6, 9), (2, 4, 4))
    rows = torch.tensor([0, 7, 33, 100, 269, 270, 273])
    for window in ((1, 1, 1), (2, 1, 3), (3, 2, 2)):
        assert torch.equal(rows_mask(geom, window, rows, text_len=4), sta_mask(geom, window, 4)[0][rows])


# ---- GPU: real shapes ------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
HUNYUAN_WINDOWS = ((5, 3, 3), (1, 6, 10), (3, 3, 5), (5, 1, 10), (5, 6, 1), (3, 3, 3))


@pytest.mark.parametrize("dtype", ["bf16"])
@pytest.mark.parametrize("grid", [(12, 24, 40), (13, 21, 37)], ids=lambda g: "x".join(map(str, g)))
@pytest.mark.gpu
@needs_gpu
def test_gpu_forward_and_gradients_at_a_medium_shape(grid, dtype) -> None:  # type: ignore[no-untyped-def]
    case = Case(1, grid, (6, 8, 8), ((3, 3, 3), (1, 6, 10)), 128, dtype, text=64, pad=16)
    xs, dout, mask = inputs(case)
    truth = run(sta_attention_reference, case, xs, dout, mask, torch.float32)
    got = run(sta_attention, case, xs, dout, mask, DTYPES[dtype])
    plain = run(sta_attention_reference, case, xs, dout, mask, DTYPES[dtype])
    for name, ref, out, base in zip(("out", "dq", "dk", "dv"), truth, got, plain, strict=True):
        assert_no_worse(name, ref, out, base, factor=2.0, atol=1e-3)


@pytest.mark.parametrize("grid", [(30, 48, 80), (32, 45, 80)], ids=lambda g: "x".join(map(str, g)))
@pytest.mark.gpu
@needs_gpu
def test_gpu_hunyuan_shape_rows_against_the_reference(grid) -> None:  # type: ignore[no-untyped-def]
    """24 heads x (grid + 256 text) x 128 in bf16, one window per head: sampled query rows (corners,
    centre, partial tiles, text) against the reference over every key, and the whole-grid window
    against cuDNN's dense attention."""
    from fastvideo_sta.ops.reference import rows_mask

    torch.manual_seed(0)
    geom = TileGeometry(grid)
    n, lt, heads = geom.num_tokens, 256, 24
    q, k, v = (torch.randn(1, n + lt, heads, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    mask = torch.ones(1, lt, dtype=torch.bool, device="cuda")
    mask[:, 200:] = False
    windows = [HUNYUAN_WINDOWS[h % len(HUNYUAN_WINDOWS)] for h in range(heads)]
    out = sta_attention(q, k, v, grid, windows, text_mask=mask)
    rows = torch.cat(
        [torch.arange(0, 64), torch.arange(n // 2, n // 2 + 64), torch.arange(n - 64, n + 40)]
    ).cuda()
    for h in (0, 1, 4, 5):
        keep = rows_mask(geom, windows[h], rows, lt, device="cuda")
        keep[:, n + 200 :] = False
        logits = (q[0, rows, h].float() @ k[0, :, h].float().T) * 128**-0.5
        ref = torch.softmax(logits.masked_fill(~keep, float("-inf")), -1) @ v[0, :, h].float()
        assert_close(f"head {h} rows", ref, out[0, rows, h].float(), 2e-2)
    full = sta_attention(q, k, v, grid, geom.tile_grid)
    dense = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    assert_close("whole-grid window vs dense", dense.float(), full.float(), 2e-2)
