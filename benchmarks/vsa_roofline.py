"""What bounds the VSA fine forward: its key/value traffic or its arithmetic (one GPU).

    PYTHONPATH=core/src:plugins/fastvideo-wan/src:plugins/fastvideo-vsa/src python benchmarks/vsa_roofline.py

The fine stage gives every (batch x head, query cube) program the keys and values of its selected
cubes: at sparsity 0.875 on Wan's 21x30x52 grid about 3300 key rows x (256 + 256) bytes, 1.7 MB per
program, 12.7 GB per call, read again and again from L2 (each key cube is selected by ~78 query
cubes). Over the same plan (the real selection of random q and k), three kernels run:

* ``fine``: the real fine forward (``fastvideo_vsa.ops.triton_fwd.fine_forward``, autotuned);
* ``loads``: the same key/value gathers, ``BLOCK_N`` rows a step, summed instead of attended (the
  floor the traffic sets for this access pattern);
* ``math``: the same matmuls and online softmax, step for step, on one key/value tile loaded once
  (the floor the arithmetic sets at 64 query rows a program);
* on Hopper, the Gluon kernel (:mod:`fastvideo_vsa.ops.hopper`, on the cube-major copies) whole, with
  its loads alone (the TMA ring, no math) and with its math alone (no loads after the first tiles).

Prints each time, the bytes and FLOPs behind it and the rate; records nothing (the figures go to the
prose of docs/benchmarks.md by hand).
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
import triton
import triton.language as tl
from bench_vsa import DIM, GRID, HEADS, tensors, useful_flops
from harness import environment, time_cuda

from fastvideo_vsa.ops.triton_fwd import mm, run_tokens


@triton.jit
def _probe_kernel(
    Q, K, V, OUT, RUNS, FIRST, COUNT,
    stride_l, stride_h, L, C, qk_scale,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    LOADS: tl.constexpr,
):  # fmt: skip
    """One (query cube, head) program (batch 1): with ``LOADS`` gather every selected key/value row
    and sum them; else attend 64 query rows to the program's first key tile, once per step of its plan."""
    cube_q = tl.program_id(0)
    h = tl.program_id(1)
    dd = tl.arange(0, D)
    base = h.to(tl.int64) * stride_h
    segment = h * C + cube_q
    runs_base = RUNS + tl.load(FIRST + segment)
    n_runs = tl.load(COUNT + segment)
    steps = tl.cdiv(n_runs, BLOCK_N // 4)
    if LOADS:
        acc = tl.zeros([BLOCK_N, D], tl.float32)
        for step in range(0, steps):
            ktok, kvalid = run_tokens(runs_base, step, n_runs, BLOCK_N)
            m = kvalid[:, None]
            k = tl.load(K + base + ktok[:, None] * stride_l + dd[None, :], mask=m, other=0.0)
            v = tl.load(V + base + ktok[:, None] * stride_l + dd[None, :], mask=m, other=0.0)
            acc += k.to(tl.float32) + v.to(tl.float32)
        tl.store(OUT + (segment.to(tl.int64) * D) + dd, tl.sum(acc, 0))
    else:
        rows = tl.arange(0, 64)
        qtok = ((cube_q * 64 + rows) % L).to(tl.int64)  # any 64 query rows: only the time matters
        q = tl.load(Q + base + qtok[:, None] * stride_l + dd[None, :])
        ktok, kvalid = run_tokens(runs_base, 0, n_runs, BLOCK_N)
        m = kvalid[:, None]
        k = tl.load(K + base + ktok[:, None] * stride_l + dd[None, :], mask=m, other=0.0)
        v = tl.load(V + base + ktok[:, None] * stride_l + dd[None, :], mask=m, other=0.0)
        m_i = tl.full([64], float("-inf"), tl.float32)
        l_i = tl.zeros([64], tl.float32)
        acc = tl.zeros([64, D], tl.float32)
        for _ in range(0, steps):
            s = mm(q, tl.trans(k), tl.zeros([64, BLOCK_N], tl.float32), False) * qk_scale
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = mm(p.to(v.dtype), v, acc * alpha[:, None], False)
            m_i = m_new
        tl.store(OUT + (segment.to(tl.int64) * D) + dd, tl.sum(acc / l_i[:, None], 0))


def report(sparsity: float, iters: int) -> None:
    """Time the three kernels over the plan of one sparsity and print them."""
    from fastvideo_vsa.ops import CubeGeometry, topk_for
    from fastvideo_vsa.ops.pooling import coarse_select, pool
    from fastvideo_vsa.ops.triton_fwd import fine_forward

    geom = CubeGeometry(GRID)
    q, k, v, g, _ = tensors(GRID)
    scale = DIM**-0.5
    topk = topk_for(sparsity, geom.num_cubes)
    qc, kc, vc = pool(q, k, v, geom)
    idx, oc, plan = coarse_select(qc, kc, vc, topk, scale, geom)
    out = torch.empty(HEADS * geom.num_cubes, DIM, device=q.device, dtype=torch.float32)
    sizes = torch.tensor(geom.cube_sizes(), device=q.device, dtype=torch.float64)
    keys = float(sizes[idx.long()].sum())  # key rows gathered, over all programs
    nbytes = keys * DIM * q.element_size() * 2  # their K and V rows
    flops = useful_flops(idx, GRID)
    print(
        f"sparsity {sparsity} (k={topk}): {keys / 1e6:.1f} M key rows gathered, {nbytes / 1e9:.2f} GB of K+V, "
        f"{flops / 1e12:.3f} TFLOP useful"
    )

    def probe(loads: bool, block_n: int, warps: int, stages: int) -> None:
        _probe_kernel[(geom.num_cubes, HEADS)](
            q, k, v, out, *plan, q.stride(1), q.stride(2), q.shape[1], geom.num_cubes, scale * 1.4426950408889634,
            D=DIM, BLOCK_N=block_n, LOADS=loads, num_warps=warps, num_stages=stages,
        )  # fmt: skip

    def fine() -> object:
        return fine_forward(q, k, v, g, oc, plan, geom, scale)

    t = time_cuda("fine", fine, warmup=3, iters=iters)[0].median_ms
    print(
        f"  fine forward (autotuned): {t:.3f} ms = {nbytes / t / 1e9:.2f} TB/s K+V, {flops / t / 1e9:.0f} TFLOP/s"
    )
    for config in ((64, 4, 2), (64, 4, 3), (128, 4, 3), (64, 8, 3), (128, 8, 3)):
        t = time_cuda("loads", partial(probe, True, *config), warmup=3, iters=iters)[0].median_ms
        print(f"  loads only, BLOCK_N {config[0]}, {config[1]} warps, {config[2]} stages: {t:.3f} ms = "
              f"{nbytes / t / 1e9:.2f} TB/s")  # fmt: skip
    for config in ((64, 4, 2), (128, 4, 2), (128, 8, 2)):
        t = time_cuda("math", partial(probe, False, *config), warmup=3, iters=iters)[0].median_ms
        print(f"  math only (one tile), BLOCK_N {config[0]}, {config[1]} warps: {t:.3f} ms = "
              f"{flops / t / 1e9:.0f} TFLOP/s")  # fmt: skip
    from fastvideo_vsa.ops import hopper

    if hopper.supported(q):  # the Gluon kernel on cube-major copies, and its two probes
        tiles = q.new_empty((3, HEADS * geom.num_cubes * 64, DIM))
        pool(q, k, v, geom, tiles=tiles)
        tile_bytes = HEADS * geom.num_cubes * topk * 64 * DIM * q.element_size() * 2  # whole 64-row tiles
        for mode, name in (
            (0, "Hopper fine forward"),
            (1, "Hopper kernel, loads only"),
            (2, "Hopper kernel, math only"),
        ):
            t = time_cuda(name, partial(hopper.fine_forward, q, tuple(tiles), g, oc, idx, geom, scale, mode),
                          warmup=3, iters=iters)[0].median_ms  # fmt: skip
            print(f"  {name}: {t:.3f} ms = {tile_bytes / t / 1e9:.2f} TB/s of K+V tiles "
                  f"({tile_bytes / 1e9:.2f} GB), {flops / t / 1e9:.0f} TFLOP/s useful")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.875, 0.95])
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    env = environment()
    print(f"{env['card']}, torch {env['torch']}, triton {env['triton']}, grid {GRID}, {HEADS} heads x {DIM}")
    for sparsity in args.sparsity:
        report(sparsity, args.iters)


if __name__ == "__main__":
    main()
