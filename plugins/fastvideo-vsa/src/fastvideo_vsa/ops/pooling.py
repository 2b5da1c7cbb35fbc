"""The coarse stage and the plans of the fine stage.

* Pooling (Triton) reads ``q``, ``k`` (and ``v`` when a gate needs the coarse output) once, in
  raster order, and writes fp32 cube means ``[B, H, C, D]``: one program per (cube, batch x head).
* The cube-level attention is ``C x C`` per head (624 x 624 for 81x480x832 Wan), small enough for
  torch's batched matmul in fp32, which also makes the selection exact; ``torch.topk`` picks the key
  cubes.
* Plans: the fine-stage kernels stream the tokens of a list of cubes as *runs* (up to 4 tokens along
  W, see :func:`fastvideo_vsa.ops.geometry.run_table`), so the empty lines of partial cubes are
  skipped. :func:`cube_runs` expands per-segment cube lists (a query cube's selected key cubes, or the
  query cubes that selected a key cube) into run lists with a small Triton kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastvideo_vsa.ops.geometry import CubeGeometry, run_table
from fastvideo_vsa.ops.triton_fwd import compact_tokens, cube_count, cube_tokens, d_pad, geometry_args, launch

# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

POOL_CONFIGS = [triton.Config({}, num_warps=w) for w in (4, 8)]
RUNS_BLOCK = 64  # cube-list entries per program of the run expansion
#: The fused selection holds a query cube's scores in one program; beyond this many cubes (videos far
#: larger than 720p x 81 frames' 1440) selection falls back to ``torch.topk`` and :func:`plans`.
SELECT_MAX_CUBES = 4096

# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _pool_one(X, XC, XT, b, h, bh, cube, rows, dd, dmask, valid, tok, count, sb, sl, sh, C, D: tl.constexpr,
              MEAN: tl.constexpr, TILES: tl.constexpr):  # fmt: skip
    x = tl.load(
        X + b * sb + h * sh + tok[:, None] * sl + dd[None, :], mask=valid[:, None] & dmask[None, :], other=0.0
    )
    if MEAN:
        mean = tl.sum(x.to(tl.float32), 0) / count  # (D,)
        tl.store(XC + (bh.to(tl.int64) * C + cube) * D + dd, mean, mask=dmask)
    if TILES:  # the cube's 64 rows in the order of ``tok``, zeros where not ``valid``
        out_rows = (bh.to(tl.int64) * C + cube) * 64 + rows
        tl.store(XT + out_rows[:, None] * D + dd[None, :], x, mask=dmask[None, :])


@triton.jit
def _pool_kernel(
    Q, K, V, QC, KC, VC, QT, KT, VT,
    sqb, sql, sqh, skb, skl, skh, svb, svl, svh,
    H, T, HG, W, NCH, NCW, L, C,
    D: tl.constexpr,
    D_PAD: tl.constexpr,
    POOL_V: tl.constexpr,
    TILES: tl.constexpr,
):  # fmt: skip
    cube = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = bh % H
    rows = tl.arange(0, 64)
    dd = tl.arange(0, D_PAD)
    dmask = dd < D
    tok, valid = cube_tokens(cube, rows, T, HG, W, NCH, NCW)
    count = cube_count(cube, T, HG, W, NCH, NCW).to(tl.float32)
    _pool_one(Q, QC, QT, b, h, bh, cube, rows, dd, dmask, valid, tok, count, sqb, sql, sqh, C, D, True, TILES)
    # keys and values in compacted row order (the cube's tokens first): the tiles' layout, and the same
    # summation order for the means whether or not tiles are written
    tok, valid = compact_tokens(cube, rows, T, HG, W, NCH, NCW)
    _pool_one(K, KC, KT, b, h, bh, cube, rows, dd, dmask, valid, tok, count, skb, skl, skh, C, D, True, TILES)
    if POOL_V or TILES:
        _pool_one(
            V, VC, VT, b, h, bh, cube, rows, dd, dmask, valid, tok, count, svb, svl, svh, C, D, POOL_V, TILES
        )


@triton.jit
def _runs_kernel(LISTS, FIRST, TABLE, COUNTS, RUNS, N, BLOCK_E: tl.constexpr):
    """Copy the runs of each listed cube to ``RUNS[FIRST[e]:]`` (``FIRST``: prefix sums of counts)."""
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    ok = e < N
    cube = tl.load(LISTS + e, mask=ok, other=0)
    first = tl.load(FIRST + e, mask=ok, other=0)
    count = tl.load(COUNTS + cube, mask=ok, other=0)
    j = tl.arange(0, 16)
    runs = tl.load(TABLE + cube[:, None] * 16 + j[None, :])
    tl.store(RUNS + first[:, None] + j[None, :], runs, mask=ok[:, None] & (j[None, :] < count[:, None]))


@triton.jit
def _select_kernel(SCORES, COUNTS, IDX, FIRST_E, FIRST, COUNT, C, TOPK, BLOCK_C: tl.constexpr):
    """One (batch x head, query cube) row: keep the ``TOPK`` highest of its ``C`` cube scores (ties: the
    lower cube first), write them ascending to ``IDX`` and lay out the row's key plan: entry ``e``'s runs
    start at ``FIRST_E[e]`` (row ``r`` owns ``RUNS[r * TOPK * 16 :]``), the row streams ``COUNT[r]`` runs
    from ``FIRST[r]``."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    inside = cols < C
    s = tl.load(SCORES + row * C + cols, mask=inside, other=float("-inf"))
    s = tl.where(s != s, float("inf"), s)  # NaN ranks highest, as in torch.topk: always TOPK kept
    ordered = tl.sort(s, descending=True)
    t = tl.max(tl.where(cols == TOPK - 1, ordered, float("-inf")), 0)  # the TOPK-th highest score
    above = (s > t) & inside
    tied = (s == t) & inside
    room = TOPK - tl.sum(above.to(tl.int32), 0)  # how many of the tied cubes still fit
    keep = above | (tied & (tl.cumsum(tied.to(tl.int32), 0) <= room))
    pos = tl.cumsum(keep.to(tl.int32), 0) - 1  # ascending cube order
    runs = tl.where(keep, tl.load(COUNTS + cols, mask=inside, other=0), 0)
    before = tl.cumsum(runs, 0) - runs  # runs of the kept cubes ahead of this one
    base = row * TOPK
    tl.store(IDX + base + pos, cols, mask=keep)
    tl.store(FIRST_E + base + pos, base * 16 + before, mask=keep)
    tl.store(FIRST + row, base * 16)
    tl.store(COUNT + row, tl.sum(runs, 0))


@triton.jit
def _mark_kernel(IDX, BITS, C, WORDS, TOPK, BLOCK_K: tl.constexpr):
    """One (batch x head, query cube ``i``) row of the selection: set bit ``i`` of every selected key
    cube's row of ``BITS`` ``[B*H, C, WORDS]`` int32 (row ``j``: which query cubes selected ``j``)."""
    row = tl.program_id(0).to(tl.int64)
    bh = row // C
    i = (row % C).to(tl.int32)
    t = tl.arange(0, BLOCK_K)
    ok = t < TOPK
    key = tl.load(IDX + row * TOPK + t, mask=ok, other=0).to(tl.int64)
    bit = tl.full((BLOCK_K,), 1, tl.int32) << (i % 32)
    tl.atomic_or(BITS + (bh * C + key) * WORDS + i // 32, bit, mask=ok)


@triton.jit
def _chosen(BITS, seg, C, WORDS, BLOCK_C: tl.constexpr):
    """Query cubes ``0..BLOCK_C`` and whether each selected the key cube of segment ``seg``."""
    cols = tl.arange(0, BLOCK_C)
    inside = cols < C
    word = tl.load(BITS + seg * WORDS + cols // 32, mask=inside, other=0)
    return cols, (((word >> (cols % 32)) & 1) != 0) & inside


@triton.jit
def _selectors(BITS, COUNTS, seg, C, WORDS, BLOCK_C: tl.constexpr):
    """Query cubes ``0..BLOCK_C`` for key segment ``seg``: whether each selected it, and its run count
    there (0 when not selected)."""
    cols, chosen = _chosen(BITS, seg, C, WORDS, BLOCK_C)
    runs = tl.where(chosen, tl.load(COUNTS + cols, mask=cols < C, other=0), 0)
    return cols, chosen, runs


@triton.jit
def by_class(values, cls, ok, OUT, WIDTHS):
    """Write the ``values`` where ``ok`` to ``OUT`` by class (``cls``: 0, 1, 2), in their order within
    each class, and how many of each class to ``WIDTHS[0:3]``; returns how many in all."""
    base = 0
    for k in tl.static_range(3):
        sel = ok & (cls == k)
        tl.store(OUT + base + tl.cumsum(sel.to(tl.int32), 0) - 1, values, mask=sel)
        n = tl.sum(sel.to(tl.int32), 0)
        tl.store(WIDTHS + k, n)
        base += n
    return base


@triton.jit
def _query_cubes_kernel(BITS, CLS, LISTS, COUNT, WIDTHS, C, WORDS, BLOCK_C: tl.constexpr):
    """The query cubes that selected one segment's key cube, from ``LISTS[seg * C]``: by width class
    (``CLS``: 0 whole cubes, 1 at most 32 tokens, 2 at most 16), ascending within each; their number, and
    how many of each class."""
    seg = tl.program_id(0).to(tl.int64)
    cols, chosen = _chosen(BITS, seg, C, WORDS, BLOCK_C)
    cls = tl.load(CLS + cols, mask=cols < C, other=3)
    tl.store(COUNT + seg, by_class(cols, cls, chosen, LISTS + seg * C, WIDTHS + seg * 3))


@triton.jit
def _query_count_kernel(BITS, COUNTS, COUNT, C, WORDS, BLOCK_C: tl.constexpr):
    """The number of query runs of one (batch x head, key cube) segment."""
    seg = tl.program_id(0).to(tl.int64)
    _, _, runs = _selectors(BITS, COUNTS, seg, C, WORDS, BLOCK_C)
    tl.store(COUNT + seg, tl.sum(runs, 0))


@triton.jit
def _query_runs_kernel(BITS, TABLE, COUNTS, FIRST, RUNS, C, WORDS, BLOCK_C: tl.constexpr):
    """Write one segment's query runs from ``RUNS[FIRST[seg]]``: the runs of the query cubes that
    selected its key cube, query cubes ascending."""
    seg = tl.program_id(0).to(tl.int64)
    cols, chosen, runs = _selectors(BITS, COUNTS, seg, C, WORDS, BLOCK_C)
    at = tl.load(FIRST + seg) + (tl.cumsum(runs, 0) - runs)
    for r in tl.static_range(16):
        run = tl.load(TABLE + cols * 16 + r, mask=chosen, other=0)
        tl.store(RUNS + at + r, run, mask=chosen & (r < runs))


_pool_tuned = triton.autotune(POOL_CONFIGS, key=["D_PAD", "POOL_V", "TILES"])(_pool_kernel)

# --------------------------------------------------------------------------------------------------
# Launchers and the torch part
# --------------------------------------------------------------------------------------------------


def pool(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    geom: CubeGeometry,
    *,
    tiles: torch.Tensor | None = None,
    mean_v: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """fp32 cube means ``[B, H, C, D]`` of ``q``, ``k`` and (when given and ``mean_v``) ``v``.

    :param tiles: a ``[3, B*H*C*64, D]`` buffer (q's dtype) that also receives cube-major copies of q,
        k and ``v`` (required then): cube ``c`` of batch x head ``n`` in rows ``(n*C + c)*64 ..``, q in
        slot order, k and v compacted (the cube's tokens first, see
        :func:`fastvideo_vsa.ops.triton_fwd.compact_tokens`), zeros in the rows a partial cube lacks
        (what :mod:`fastvideo_vsa.ops.hopper` reads). The tokens are read once for both.
    """
    batch, _, heads, dim = q.shape
    shape = (batch, heads, geom.num_cubes, dim)
    qc = q.new_empty(shape, dtype=torch.float32)
    kc = q.new_empty(shape, dtype=torch.float32)
    vc = q.new_empty(shape, dtype=torch.float32) if v is not None and mean_v else None
    if tiles is not None and v is None:
        raise ValueError("pool(tiles=...) copies v too: pass v")
    vv = v if v is not None else k
    tt = tiles if tiles is not None else (q, q, q)
    args = (
        q, k, vv, qc, kc, vc if vc is not None else kc, tt[0], tt[1], tt[2],
        *q.stride()[:3], *k.stride()[:3], *vv.stride()[:3],
        heads, *geometry_args(geom),
    )  # fmt: skip
    meta = dict(D=dim, D_PAD=d_pad(dim), POOL_V=vc is not None, TILES=tiles is not None)
    launch(_pool_kernel, _pool_tuned, (geom.num_cubes, batch * heads), args, meta, None, {"num_warps": 4})
    return qc, kc, vc


def coarse_select(
    qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor | None, topk: int, scale: float, geom: CubeGeometry
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
    """Selected key cubes ``[B, H, C, topk]`` int32 (ascending); with ``vc`` the coarse output
    ``softmax(qc kc^T * scale) vc`` ``[B, H, C, D]`` fp32 (else ``None``); and the fine stage's key
    plan, as :func:`plans` builds it from the selection.

    Below ``topk = C`` (and up to :data:`SELECT_MAX_CUBES` cubes), one Triton program per query cube
    selects from its scores and lays out its key runs (:func:`select_and_plan`), in place of
    ``torch.topk``, a sort and the plan's passes.
    """
    scores = torch.matmul(qc, kc.transpose(-1, -2)) * scale  # (B, H, C, C) fp32
    num_cubes = scores.shape[-1]
    if topk >= num_cubes:
        idx = torch.arange(num_cubes, device=qc.device, dtype=torch.int32).expand(scores.shape).contiguous()
        plan = plans(idx, geom)[0]
    elif num_cubes <= SELECT_MAX_CUBES:
        idx, plan = select_and_plan(scores, topk, geom)
    else:
        idx = torch.topk(scores, topk, dim=-1, sorted=False).indices.sort(dim=-1).values.to(torch.int32)
        plan = plans(idx, geom)[0]
    runs, first, count = plan  # one layout whichever way it was built (the op returns it)
    plan = (runs, first.to(torch.int64), count.to(torch.int32))
    oc = torch.matmul(torch.softmax(scores, dim=-1), vc) if vc is not None else None
    return idx, oc, plan


def key_runs_length(geom: CubeGeometry, segments: int, topk: int) -> int:
    """Length of the ``runs`` tensor of :func:`coarse_select`'s key plan (for fake tensors): every run
    of the grid once when every cube is kept (one shared stream), else ``16`` slots per selected cube."""
    if topk >= geom.num_cubes:
        (t, h, _), (_, _, ncw) = geom.grid, geom.cube_grid
        return t * h * ncw  # one run per (t, h) line of every column of cubes
    return segments * topk * 16


def select_and_plan(
    scores: torch.Tensor, topk: int, geom: CubeGeometry
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The ``topk`` highest-scoring key cubes of every query cube (``[B, H, C, topk]`` int32,
    ascending; ties go to the lower cube) and their key plan ``(runs, first, count)``."""
    batch, heads, cubes, _ = scores.shape
    rows = batch * heads * cubes
    table, counts = _run_table(geom, scores.device)
    idx = torch.empty(rows * topk, dtype=torch.int32, device=scores.device)
    entry_first = torch.empty(rows * topk, dtype=torch.int64, device=scores.device)
    first = torch.empty(rows, dtype=torch.int64, device=scores.device)
    count = torch.empty(rows, dtype=torch.int32, device=scores.device)
    block = max(16, triton.next_power_of_2(cubes))
    args = (scores.contiguous(), counts, idx, entry_first, first, count, cubes, topk)
    warps = {"num_warps": 8 if block > 1024 else 4}
    launch(_select_kernel, _select_kernel, (rows,), args, {"BLOCK_C": block}, warps, {})
    runs = idx.new_empty(rows * topk * 16)  # row r's runs from r * topk * 16, at most 16 per cube
    launch(_runs_kernel, _runs_kernel, (triton.cdiv(rows * topk, RUNS_BLOCK),),
           (idx, entry_first, table, counts, runs, rows * topk), {"BLOCK_E": RUNS_BLOCK}, {"num_warps": 4}, {})  # fmt: skip
    return idx.view(batch, heads, cubes, topk), (runs, first, count)


def coarse_backward(
    qc: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, doc: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the cube means ``(dqc, dkc, dvc)`` from that of the coarse output (fp32)."""
    probs = torch.softmax(torch.matmul(qc, kc.transpose(-1, -2)) * scale, dim=-1)  # (B, H, C, C)
    dvc = torch.matmul(probs.transpose(-1, -2), doc)
    dprobs = torch.matmul(doc, vc.transpose(-1, -2))
    dscores = probs * (dprobs - (dprobs * probs).sum(-1, keepdim=True)) * scale
    return torch.matmul(dscores, kc), torch.matmul(dscores.transpose(-1, -2), qc), dvc


def transpose_selection(indices: torch.Tensor, num_cubes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each key cube, the query cubes that selected it, as CSR: ``(lists, offsets)``, both int32.

    The query cubes that selected key cube ``j`` of batch x head ``n`` are
    ``lists[offsets[n * C + j] : offsets[n * C + j + 1]]``, ascending; ``offsets`` has ``B*H*C + 1``
    entries. Memory is that of ``indices`` (not ``C x C`` per head).
    """
    batch, heads, cubes, _ = indices.shape
    device = indices.device
    bh = torch.arange(batch * heads, device=device).view(batch, heads, 1, 1)
    query = torch.arange(cubes, device=device).view(1, 1, cubes, 1)
    keys = torch.sort(
        ((bh * num_cubes + indices.long()) * cubes + query).flatten()
    ).values  # (bh, key, query)
    counts = torch.bincount(keys // cubes, minlength=batch * heads * num_cubes)
    offsets = torch.zeros(batch * heads * num_cubes + 1, dtype=torch.int32, device=device)
    offsets[1:] = torch.cumsum(counts, 0)
    return (keys % cubes).to(torch.int32), offsets


_RUN_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _run_table(geom: CubeGeometry, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = (geom.grid, str(device))
    if key not in _RUN_TABLES:
        _RUN_TABLES[key] = run_table(geom, device)
    return _RUN_TABLES[key]


def cube_runs(
    lists: torch.Tensor, segments: torch.Tensor | int, geom: CubeGeometry
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The runs of listed cubes, per segment: ``(runs, first, count)``, all int32.

    :param lists: cube ids, flat, segment after segment.
    :param segments: CSR offsets of the segments in ``lists`` (``S + 1`` entries), or an int ``K``
        when every segment holds ``K`` cubes.
    :returns: segment ``s`` streams ``runs[first[s] : first[s] + count[s]]``.
    """
    table, counts = _run_table(geom, lists.device)
    lists = lists.reshape(-1)
    n = lists.numel()
    if isinstance(segments, int):
        segments = torch.arange(0, n + 1, segments, device=lists.device)
    prefix = torch.zeros(n + 1, dtype=torch.int32, device=lists.device)
    prefix[1:] = torch.cumsum(counts[lists.long()], 0)
    runs = lists.new_empty(n * 16)  # an upper bound: entries past a segment's count are never read
    launch(_runs_kernel, _runs_kernel, (triton.cdiv(n, RUNS_BLOCK),), (lists, prefix, table, counts, runs, n),
           {"BLOCK_E": RUNS_BLOCK}, {"num_warps": 4}, {})  # fmt: skip
    bounds = prefix[segments.long()]
    return runs, bounds[:-1].contiguous(), (bounds[1:] - bounds[:-1]).contiguous()


def all_cube_runs(geom: CubeGeometry, segments: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """:func:`cube_runs` when every segment lists all cubes in order (sparsity 0): one shared list."""
    key = (geom.grid, str(device), "all")
    if key not in _RUN_TABLES:
        table, _ = _run_table(geom, device)
        _RUN_TABLES[key] = (table[table >= 0].contiguous(), table)  # cube after cube, runs in order
    runs = _RUN_TABLES[key][0]
    first = torch.zeros(segments, dtype=torch.int32, device=device)
    return runs, first, torch.full_like(first, runs.numel())


def plans(
    indices: torch.Tensor,
    geom: CubeGeometry,
    *,
    transposed: bool = False,
    key_plan: tuple[torch.Tensor, ...] | None = None,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """The fine stage's run streams from a selection ``[B, H, C, topk]``: the key runs of every
    (batch x head, query cube) and, with ``transposed``, the query runs of every key cube.
    ``key_plan``: the key runs already built (the forward's), reused."""
    batch, heads, cubes, topk = indices.shape
    segments = batch * heads * cubes
    if topk == geom.num_cubes:  # dense: every segment streams every cube, in order
        shared = all_cube_runs(geom, segments, indices.device)
        return shared, shared if transposed else None
    if key_plan is None:
        key_plan = cube_runs(indices, topk, geom)
    if not transposed:
        return key_plan, None
    if geom.num_cubes <= SELECT_MAX_CUBES:
        return key_plan, query_runs(indices, geom)
    lists, offsets = transpose_selection(indices, geom.num_cubes)
    return key_plan, cube_runs(lists, offsets, geom)


def query_runs(indices: torch.Tensor, geom: CubeGeometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The query plan ``(runs, first, count)`` of a selection ``[B, H, C, topk]``: per (batch x head,
    key cube), the runs of the query cubes that selected it, ascending; what :func:`transpose_selection`
    and :func:`cube_runs` give, in three small kernels: the selection as a bit matrix (key cube x
    query cube, ``C * C / 8`` bytes per head), each segment's run count, and the runs themselves."""
    batch, heads, cubes, topk = indices.shape
    device, segments = indices.device, batch * heads * cubes
    table, counts = _run_table(geom, device)
    bits, words, block, warps = _selection_bits(indices)
    count = torch.empty(segments, dtype=torch.int32, device=device)
    launch(_query_count_kernel, _query_count_kernel, (segments,), (bits, counts, count, cubes, words),
           {"BLOCK_C": block}, warps, {})  # fmt: skip
    first = torch.cumsum(count, 0, dtype=torch.int64) - count
    runs = torch.empty(segments * topk * 16, dtype=torch.int32, device=device)  # at most 16 per entry
    launch(_query_runs_kernel, _query_runs_kernel, (segments,), (bits, table, counts, first, runs, cubes, words),
           {"BLOCK_C": block}, warps, {})  # fmt: skip
    return runs, first, count


def _selection_bits(indices: torch.Tensor) -> tuple[torch.Tensor, int, int, dict]:
    """The selection ``[B, H, C, topk]`` as a bit matrix (per batch x head: key cube x query cube,
    ``C / 32`` int32 words a row), with the block and warps of a program that reads one row."""
    batch, heads, cubes, topk = indices.shape
    segments = batch * heads * cubes
    words = triton.cdiv(cubes, 32)
    bits = torch.zeros(segments * words, dtype=torch.int32, device=indices.device)
    block_k = max(16, triton.next_power_of_2(topk))
    launch(_mark_kernel, _mark_kernel, (segments,), (indices.contiguous(), bits, cubes, words, topk),
           {"BLOCK_K": block_k}, {"num_warps": 4}, {})  # fmt: skip
    block = max(16, triton.next_power_of_2(cubes))
    return bits, words, block, {"num_warps": 8 if block > 1024 else 4}


def query_cubes(
    indices: torch.Tensor, classes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each (batch x head, key cube) segment, the query cubes that selected it:
    ``(lists, first, count, widths)`` (int32, int64, int32, int32 ``[S, 3]``); segment ``s`` reads
    ``lists[first[s] : first[s] + count[s]]``.

    With ``classes`` (int32 per cube: 0, 1 or 2, e.g. whole cubes, cubes of at most 32 and of at most 16
    tokens) each list holds class 0 first, then 1, then 2, ascending within each, and ``widths[s]`` how
    many of each; without, ascending, all counted in ``widths[s, 0]``. Up to :data:`SELECT_MAX_CUBES`
    cubes from the selection's bit matrix (``C`` entries reserved per segment), beyond that by
    :func:`transpose_selection` (ascending, classes not applied)."""
    batch, heads, cubes, _ = indices.shape
    segments = batch * heads * cubes
    device = indices.device
    if cubes > SELECT_MAX_CUBES:
        lists, offsets = transpose_selection(indices, cubes)
        count = (offsets[1:] - offsets[:-1]).to(torch.int32)
        widths = torch.zeros(segments, 3, dtype=torch.int32, device=device)
        widths[:, 0] = count
        return lists, offsets[:-1].to(torch.int64), count, widths
    if classes is None:
        classes = torch.zeros(cubes, dtype=torch.int32, device=device)
    bits, words, block, warps = _selection_bits(indices)
    lists = torch.empty(segments * cubes, dtype=torch.int32, device=device)
    count = torch.empty(segments, dtype=torch.int32, device=device)
    widths = torch.empty(segments, 3, dtype=torch.int32, device=device)
    launch(_query_cubes_kernel, _query_cubes_kernel, (segments,), (bits, classes, lists, count, widths, cubes, words),
           {"BLOCK_C": block}, warps, {})  # fmt: skip
    first = torch.arange(0, segments * cubes, cubes, dtype=torch.int64, device=device)
    return lists, first, count, widths
