"""STA through flash-attn-4's block-sparse kernel (``fastvideo_sta.ops.fa4``, ``FASTVIDEO_STA_FA4``).

On CPU: the block tables, expanded to a token mask and put back in raster order, are STA's mask
(:func:`fastvideo_sta.ops.reference.sta_mask`); and the whole path (tile-major gather, tables, scatter)
with a stand-in ``flash_attn.cute`` that runs the block-sparse pattern as FlashAttention-4 defines it
(per query block, the key blocks ``full_block_idx[..., :full_block_cnt]``; keys past the key length
do not exist) gives :func:`sta_attention_reference`'s output. Calls the path cannot take run the Triton
kernel, with a warning. On a GPU with flash-attn-4 installed, the real kernel against the reference.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fastvideo import errors
from fastvideo.testing import assert_close
from fastvideo_sta.ops import fa4, sta_attention, sta_attention_reference
from fastvideo_sta.ops.reference import sta_mask
from fastvideo_sta.tiles import TileGeometry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _expand(count: torch.Tensor, index: torch.Tensor, rows: int, cols: int, block_q: int) -> torch.Tensor:
    """``(rows, cols)`` bool token mask of one head's block tables."""
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for m in range(count.shape[0]):
        for j in index[m, : int(count[m])].tolist():
            mask[m * block_q : (m + 1) * block_q, j * fa4.BLOCK_KV : (j + 1) * fa4.BLOCK_KV] = True
    return mask


@pytest.mark.parametrize(
    ("grid", "tile", "windows", "text"),
    [
        ((12, 24, 24), (6, 8, 8), [(1, 1, 1), (2, 3, 3), (1, 2, 3), (5, 5, 5)], 0),
        ((12, 24, 24), (6, 8, 8), [(1, 3, 1), (2, 2, 2)], 200),
        ((8, 16, 32), (2, 8, 8), [(1, 1, 3), (3, 2, 1)], 300),
    ],
)
def test_block_tables_are_the_sta_mask_in_tile_major_order(grid, tile, windows, text) -> None:  # type: ignore[no-untyped-def]
    geom = TileGeometry(grid, tile)
    n = geom.num_tokens
    tile_tokens = tile[0] * tile[1] * tile[2]
    count, index = fa4.block_tables(geom, windows, text, text)
    order = torch.cat([fa4.tile_order(geom, torch.device("cpu")), torch.arange(n, n + text)])
    for h, window in enumerate(windows):
        rows = (geom.num_tiles + -(-text // tile_tokens)) * tile_tokens
        cols = index.shape[-1] * fa4.BLOCK_KV
        tiled = _expand(count[0, h], index[0, h], rows, cols, tile_tokens)[: n + text, : n + text]
        raster = torch.empty_like(tiled)
        raster[order[:, None], order[None, :]] = tiled  # back to raster order
        assert torch.equal(raster, sta_mask(geom, window, text)[0]), window
        rows_idx = index[0, h, : geom.num_tiles]
        assert bool((rows_idx[:, 1:] > rows_idx[:, :-1])[:, : int(count[0, h, 0]) - 1].all())  # ascending


_FAKE = '''
import torch
import torch.nn.functional as F

from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch

CALLS = []


def flash_attn_func(q, k, v, softmax_scale=None, block_sparse_tensors=None, **kwargs):
    """Block-sparse attention as FlashAttention-4 (4.0.0b36) runs it on Hopper at head dim <= 128, in fp32,
    with its checks: tables int32, [B or 1, H or 1, ceil(Lq / bq), ceil(Lk / bk)]; bq a multiple of its
    128-row tile; a row's blocks walked from the last index down, the key length masked in the first
    block taken only (so a block the key length cuts must be a row's last entry)."""
    t = block_sparse_tensors
    bq, bk = t.block_size
    b, lq, h, d = q.shape
    lk = k.shape[1]
    assert bq % 128 == 0 and bk == 128, t.block_size
    m, nk = -(-lq // bq), -(-lk // bk)
    mask = torch.zeros(b, h, lq, lk, dtype=torch.bool)
    for cnt_t, idx_t in ((t.full_block_cnt, t.full_block_idx), (t.mask_block_cnt, t.mask_block_idx)):
        assert cnt_t.dtype == idx_t.dtype == torch.int32
        # FlashAttention-4 expands batch / head dims of 1, and takes fewer index columns than key blocks
        for x in (cnt_t, idx_t):
            assert x.shape[0] in (1, b) and x.shape[1] in (1, h) and x.shape[2] == m, x.shape
        assert idx_t.ndim == 4 and idx_t.shape[3] <= nk, (idx_t.shape, nk)
        cnt_t = cnt_t.expand(b, h, m)
        idx_t = idx_t.expand(b, h, m, idx_t.shape[3])
        assert int(cnt_t.max()) <= idx_t.shape[3]
        for bi in range(b):
            for head in range(h):
                for row in range(m):
                    ids = idx_t[bi, head, row, : int(cnt_t[bi, head, row])].tolist()
                    for pos, j in enumerate(ids):
                        assert 0 <= j < nk
                        if (j + 1) * bk > lk:  # cut by the key length: masked only if taken first
                            assert pos == len(ids) - 1, (row, ids)
                        mask[bi, head, row * bq : (row + 1) * bq, j * bk : (j + 1) * bk] = True
    CALLS.append((tuple(q.shape), tuple(k.shape), t.block_size))
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float(),
        attn_mask=mask, scale=softmax_scale,
    )
    return out.transpose(1, 2).to(q.dtype), None
'''

_SPARSITY = """
from typing import NamedTuple

import torch


class BlockSparseTensorsTorch(NamedTuple):
    mask_block_cnt: torch.Tensor
    mask_block_idx: torch.Tensor
    full_block_cnt: torch.Tensor | None = None
    full_block_idx: torch.Tensor | None = None
    cu_total_m_blocks: torch.Tensor | None = None
    cu_block_idx_offsets: torch.Tensor | None = None
    block_size: tuple[int, int] | None = None
"""


@pytest.fixture
def fake_fa4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A stand-in flash-attn-4 (``flash_attn/cute`` + ``cutlass``) on ``sys.path``; ``FASTVIDEO_STA_FA4=1``."""
    cute = tmp_path / "flash_attn" / "cute"
    cute.mkdir(parents=True)
    (cute / "__init__.py").write_text("")
    (cute / "interface.py").write_text(_FAKE)
    (cute / "block_sparsity.py").write_text(_SPARSITY)
    (tmp_path / "cutlass").mkdir()
    (tmp_path / "cutlass" / "__init__.py").write_text("")

    def drop() -> None:
        for name in list(sys.modules):
            if name.split(".")[0] in ("flash_attn", "cutlass"):
                del sys.modules[name]

    drop()
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    fa4.installed.cache_clear()
    errors._WARNED.clear()
    monkeypatch.setenv(fa4.ENV, "1")
    yield lambda: importlib.import_module("flash_attn.cute.interface").CALLS
    drop()
    fa4.installed.cache_clear()
    errors._WARNED.clear()


def _qkv(batch: int, length: int, heads: int, dim: int = 64, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, length, heads, dim, generator=g).to(torch.bfloat16).to(DEVICE) for _ in range(3)
    ]


@pytest.mark.skipif(
    DEVICE == "cuda", reason="the stand-in replaces flash-attn-4; on a GPU the real one is tested"
)
@pytest.mark.parametrize(
    ("grid", "tile", "windows", "text", "pad"),
    [
        ((12, 16, 16), (6, 8, 8), [(1, 1, 1), (2, 2, 1)], 0, 0),
        ((8, 16, 32), (2, 8, 8), [(1, 1, 3), (3, 2, 1), (2, 2, 2)], 150, 0),
        ((8, 16, 32), (2, 8, 8), [(3, 1, 3), (1, 2, 2)], 150, 40),  # padded text: the valid tokens first
        ((4, 8, 16), (2, 8, 8), [(1, 1, 1), (2, 1, 2)], 70, 6),  # two batch elements, the same padding
    ],
)
def test_sta_through_flash_attn_4_is_the_reference(fake_fa4, grid, tile, windows, text, pad) -> None:  # type: ignore[no-untyped-def]
    geom = TileGeometry(grid, tile)
    batch = 2 if text == 70 else 1
    q, k, v = _qkv(batch, geom.num_tokens + text, len(windows))
    text_mask = None
    if pad:
        text_mask = torch.ones(batch, text, dtype=torch.bool)
        text_mask[:, text - pad :] = False
    with torch.no_grad():
        out = sta_attention(q, k, v, grid, windows, tile=tile, text_mask=text_mask)
    calls = fake_fa4()
    assert len(calls) == 1  # the flash-attn-4 path ran, once
    assert calls[0][1][1] == geom.num_tokens + text - pad  # padded text keys cut off by the key length
    ref = sta_attention_reference(
        *(x.float() for x in (q, k, v)), grid, windows, tile=tile, text_mask=text_mask
    )
    assert_close("fa4 path", ref, out.float(), 2e-2)


@pytest.mark.skipif(DEVICE == "cuda", reason="the stand-in replaces flash-attn-4")
def test_calls_the_path_cannot_take_run_the_triton_kernel(fake_fa4) -> None:  # type: ignore[no-untyped-def]
    # a grid that is not a whole number of tiles: the Triton kernel, one warning saying why
    grid, tile, windows = (3, 8, 8), (2, 8, 8), [(1, 1, 1)]
    q, k, v = _qkv(1, 3 * 64, 1)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = sta_attention(q, k, v, grid, windows, tile=tile)
    assert fake_fa4() == []
    assert any("not a whole number of" in str(w.message) for w in caught)
    ref = sta_attention_reference(*(x.float() for x in (q, k, v)), grid, windows, tile=tile)
    assert_close("triton fallback", ref, out.float(), 2e-2)
    # with a gradient: the differentiable Triton op, the flash-attn-4 path not asked
    geom = TileGeometry((4, 8, 8), tile)
    q, k, v = _qkv(1, geom.num_tokens, 1, seed=1)
    q.requires_grad_(True)
    out = sta_attention(q, k, v, (4, 8, 8), windows, tile=tile)
    out.float().sum().backward()
    assert fake_fa4() == [] and q.grad is not None


@pytest.mark.skipif(DEVICE == "cuda", reason="the stand-in replaces flash-attn-4")
def test_sparse_tensors_stack_cached_head_rows(fake_fa4, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A layer's tables are the per-head rows of :func:`fa4.block_tables`, built once per window and
    stacked on the device; the partial-block tables are one broadcast zero table."""
    fake_fa4()
    geom = TileGeometry((8, 16, 32), (2, 8, 8))
    windows = [(1, 1, 3), (3, 2, 1), (1, 1, 3)]
    fa4._HEAD_ROWS.clear()
    built = []
    real = fa4.block_tables
    monkeypatch.setattr(fa4, "block_tables", lambda *a: built.append(a[1]) or real(*a))
    tensors = fa4.sparse_tensors(geom, windows, 150, 110, torch.device("cpu"))
    count, index = real(geom, windows, 150, 110)
    assert torch.equal(tensors.full_block_cnt, count) and torch.equal(tensors.full_block_idx, index)
    assert built == [[(1, 1, 3)], [(3, 2, 1)]]  # the repeated window once
    assert tensors.mask_block_cnt.shape == (1, 1, count.shape[2]) and not tensors.mask_block_cnt.any()
    assert tensors.mask_block_idx.shape == (1, 1, count.shape[2], 1)
    again = fa4.sparse_tensors(geom, windows[::-1], 150, 110, torch.device("cpu"))
    assert len(built) == 2  # nothing rebuilt for the next layer
    assert torch.equal(again.full_block_idx, real(geom, windows[::-1], 150, 110)[1])
    monkeypatch.setattr(fa4, "HEAD_ROWS_BYTES", 0)  # over the budget: the cache starts again
    fa4.sparse_tensors(geom, [(2, 2, 2)], 150, 110, torch.device("cpu"))
    assert len(fa4._HEAD_ROWS) == 1


@pytest.mark.skipif(DEVICE == "cuda", reason="the stand-in replaces flash-attn-4")
def test_modes_auto_is_silent_and_0_keeps_the_triton_kernel(fake_fa4, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    grid, tile, windows = (4, 8, 16), (2, 8, 8), [(1, 1, 1), (2, 1, 1)]
    q, k, v = _qkv(1, 4 * 8 * 16, 2, seed=5)
    ref = sta_attention_reference(*(x.float() for x in (q, k, v)), grid, windows, tile=tile)
    # auto (unset): offered to flash-attn-4 only for CUDA tensors with it installed; these are CPU tensors
    monkeypatch.delenv(fa4.ENV)
    assert fa4.mode() == "auto" and fa4.installed() and not fa4.wanted(q)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: the Triton kernel is auto's answer here
        out = sta_attention(q, k, v, grid, windows, tile=tile)
    assert fake_fa4() == []
    assert_close("auto on CPU tensors", ref, out.float(), 2e-2)
    assert fa4.wanted(torch.empty(0, device="meta")) is False
    monkeypatch.setenv(fa4.ENV, "0")
    with torch.no_grad():
        sta_attention(q, k, v, grid, windows, tile=tile)
    assert fake_fa4() == [] and fa4.mode() == "off"
    monkeypatch.setenv(fa4.ENV, " AUTO ")
    assert fa4.mode() == "auto"
    monkeypatch.setenv(fa4.ENV, "true")
    with pytest.raises(ValueError, match=r"FASTVIDEO_STA_FA4 must be auto, 1 or 0, got 'true'"):
        sta_attention(q, k, v, grid, windows, tile=tile)


@pytest.mark.skipif(DEVICE == "cuda", reason="the stand-in replaces flash-attn-4")
def test_auto_falls_back_silently_where_the_path_does_not_apply(fake_fa4, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """In ``auto`` a grid the path cannot take runs the Triton kernel without a warning (``1`` warns:
    test above); the op is reached as on a GPU by offering the call (``wanted``) regardless of device."""
    monkeypatch.delenv(fa4.ENV)
    monkeypatch.setattr(fa4, "wanted", lambda q: True)
    grid, tile, windows = (3, 8, 8), (2, 8, 8), [(1, 1, 1)]
    q, k, v = _qkv(1, 3 * 64, 1, seed=6)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sta_attention(q, k, v, grid, windows, tile=tile)
    assert fake_fa4() == []
    ref = sta_attention_reference(*(x.float() for x in (q, k, v)), grid, windows, tile=tile)
    assert_close("auto fallback", ref, out.float(), 2e-2)
    # a grid it takes: the stand-in kernel runs under auto too
    grid = (4, 8, 8)
    q, k, v = _qkv(1, 4 * 64, 1, seed=7)
    with torch.no_grad():
        out = sta_attention(q, k, v, grid, windows, tile=tile)
    assert len(fake_fa4()) == 1
    ref = sta_attention_reference(*(x.float() for x in (q, k, v)), grid, windows, tile=tile)
    assert_close("auto through the stand-in", ref, out.float(), 2e-2)


@pytest.mark.skipif(DEVICE == "cuda", reason="the stand-in replaces flash-attn-4")
def test_a_failing_flash_attn_4_call_falls_back_with_a_warning(fake_fa4, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fake_fa4()  # imports the stand-in
    interface = importlib.import_module("flash_attn.cute.interface")

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ValueError("Block sparse tensors have block size 384, which must be a multiple of 256.\nmore")

    monkeypatch.setattr(interface, "flash_attn_func", broken)
    grid, tile, windows = (4, 8, 16), (2, 8, 8), [(1, 1, 1), (2, 1, 1)]
    q, k, v = _qkv(1, 4 * 8 * 16, 2, seed=2)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = sta_attention(q, k, v, grid, windows, tile=tile)
    assert any("flash-attn-4 failed (ValueError: Block sparse" in str(w.message) for w in caught)
    ref = sta_attention_reference(*(x.float() for x in (q, k, v)), grid, windows, tile=tile)
    assert_close("triton after a failed flash-attn-4 call", ref, out.float(), 2e-2)


@pytest.mark.skipif(DEVICE == "cuda", reason="the stand-in replaces flash-attn-4")
def test_the_custom_op_passes_opcheck(fake_fa4) -> None:  # type: ignore[no-untyped-def]
    """``fastvideo_sta::sta_fwd_fa4``: schema and fake (meta) implementation, as torch.compile uses them."""
    grid, tile = (4, 8, 16), (2, 8, 8)
    q, k, v = _qkv(1, 4 * 8 * 16 + 20, 2, seed=4)
    windows = torch.tensor([[1, 1, 1], [2, 1, 2]], dtype=torch.int32)
    args = (q, k, v, windows, None, list(grid), list(tile), 0.125)
    torch.library.opcheck(
        torch.ops.fastvideo_sta.sta_fwd_fa4.default, args, test_utils=("test_schema", "test_faketensor")
    )


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and fa4.installed()), reason="needs a GPU and flash-attn-4"
)
@pytest.mark.parametrize("env", ["1", None])  # asked for, and the default (auto)
def test_flash_attn_4_kernel_against_the_reference(monkeypatch: pytest.MonkeyPatch, env: str | None) -> None:
    """The real kernel at HunyuanVideo's tile and a 12x48x80 grid (paper-like windows per head, 256 text
    tokens, 64 of them padding), sampled query rows against the fp32 reference."""
    from fastvideo_sta.ops.reference import rows_mask

    if env is None:
        monkeypatch.delenv(fa4.ENV, raising=False)
    else:
        monkeypatch.setenv(fa4.ENV, env)
    grid, tile = (12, 48, 80), (6, 8, 8)
    windows = [(2, 3, 3), (1, 6, 10), (2, 6, 1), (1, 1, 1)]
    geom = TileGeometry(grid, tile)
    text, pad = 256, 64
    q, k, v = _qkv(1, geom.num_tokens + text, len(windows), dim=128, seed=3)
    text_mask = torch.ones(1, text, dtype=torch.bool, device=DEVICE)
    text_mask[0, text - pad :] = False
    import flash_attn.cute.interface as interface

    calls = []
    real = interface.flash_attn_func
    monkeypatch.setattr(interface, "flash_attn_func", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    errors._WARNED.clear()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings(
            "error", message="sta:", category=RuntimeWarning
        )  # a fall back fails the test
        out = sta_attention(q, k, v, grid, windows, tile=tile, text_mask=text_mask)
    assert calls == [1]  # the flash-attn-4 kernel ran
    rows = torch.cat([torch.randperm(geom.num_tokens, generator=torch.Generator().manual_seed(0))[:192],
                      torch.arange(geom.num_tokens, geom.num_tokens + text, 37)]).to(DEVICE)  # fmt: skip
    keys = torch.cat([torch.ones(geom.num_tokens, dtype=torch.bool, device=DEVICE), text_mask[0]])
    for h, window in enumerate(windows):
        mask = rows_mask(geom, window, rows, text, device=DEVICE) & keys[None, :]
        ref = F.scaled_dot_product_attention(
            q[0, rows, h].float()[None],
            k[0, :, h].float()[None],
            v[0, :, h].float()[None],
            attn_mask=mask[None],
        )[0]
        assert_close(f"head {h} {window}", ref, out[0, rows, h].float(), 2e-2)
