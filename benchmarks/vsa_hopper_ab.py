"""The Hopper (Gluon) VSA kernels against the portable Triton ones, side by side on one GPU.

    PYTHONPATH=core/src:plugins/fastvideo-wan/src:plugins/fastvideo-vsa/src python benchmarks/vsa_hopper_ab.py

bf16, 12 heads x 128, random q, k, v, gate and output gradient; Wan's 21x30x52 grid at sparsity 0.875 and
0.95 and an 8x64x64 grid (no partial cubes) at 0.875. Per case: the largest differences between the
Triton and Hopper dq and dk/dv kernels, the times of dq and dk/dv (Triton; Hopper, dk/dv with and without the
narrow kernel for partial key cubes), of the copies and lists the Hopper kernels read, and the whole op's forward and backward with
``FASTVIDEO_VSA_HOPPER=1`` (the Hopper kernels wherever the card runs them) and ``=0`` (Triton only).
Prints; records nothing (the figures go to docs/benchmarks.md by hand).
"""

from __future__ import annotations

import os

import torch
from bench_vsa import DIM, GRID, tensors, time_fwd_bwd
from harness import environment, time_cuda

from fastvideo_vsa.ops import CubeGeometry, hopper, topk_for, vsa_attention
from fastvideo_vsa.ops.pooling import coarse_select, plans, pool, query_cubes
from fastvideo_vsa.ops.triton_bwd import dkdv_backward, dq_backward, prep_backward
from fastvideo_vsa.ops.triton_fwd import fine_forward


def report(grid: tuple[int, int, int], sparsity: float, xs: list[torch.Tensor]) -> None:
    """Print the comparison for one grid and sparsity (``xs``: q, k, v, gate, output gradient)."""
    q, k, v, g, dout = xs
    geom = CubeGeometry(grid)
    scale = DIM**-0.5
    topk = topk_for(sparsity, geom.num_cubes)
    qc, kc, vc = pool(q, k, v, geom)
    idx, oc, key_plan = coarse_select(qc, kc, vc, topk, scale, geom)
    out, lse = fine_forward(q, k, v, g, oc, key_plan, geom, scale)
    delta, _, _ = prep_backward(out, dout, g, oc, geom)
    dqc, dkc, dvc = (torch.randn_like(qc) for _ in range(3))
    tiles = hopper.kv_tiles(k, v, geom)
    query_plan = plans(idx, geom, transposed=True, key_plan=key_plan)[1]
    tag = f"{'x'.join(map(str, grid))}, sparsity {sparsity} (k={topk})"
    ref = dq_backward(q, k, v, dout, lse, delta, key_plan, geom, scale, dqc)
    got = hopper.dq_backward(q, tiles, dout, lse, delta, idx, geom, scale, dqc, narrow=False)
    wide = (got.float() - ref.float()).abs().max().item()
    got = hopper.dq_backward(q, tiles, dout, lse, delta, idx, geom, scale, dqc)
    diffs = [
        f"dq (64-row) {wide:.2e}",
        f"dq (narrow) {(got.float() - ref.float()).abs().max().item():.2e} (|dq| <= {ref.float().abs().max().item():.2f})",
    ]
    ref = dkdv_backward(q, k, v, dout, lse, delta, query_plan, geom, scale, (dkc, dvc))
    for narrow in (True, False):
        got = hopper.dkdv_backward(q, tiles, dout, lse, delta, idx, geom, scale, (dkc, dvc), narrow=narrow)
        for name, a, b in zip(("dk", "dv"), got, ref, strict=True):
            diffs.append(f"{name} ({'narrow' if narrow else '64-row'}) {(a.float() - b.float()).abs().max().item():.2e} "
                         f"(|{name}| <= {b.float().abs().max().item():.2f})")  # fmt: skip
    tiles3 = q.new_empty((3, q.shape[2] * geom.num_cubes * 64, DIM))
    pool(q, k, v, geom, tiles=tiles3)
    for narrow in (True, False):
        got = hopper.fine_forward(q, tuple(tiles3), g, oc, idx, geom, scale, narrow=narrow)[0]
        diffs.append(
            f"out ({'packed' if narrow else '64-row'}) {(got.float() - out.float()).abs().max().item():.2e}"
        )
    print(f"{tag}: Hopper vs Triton max |diff|: " + ", ".join(diffs))
    for name, fn in (
        ("fine fwd, Triton", lambda: fine_forward(q, k, v, g, oc, key_plan, geom, scale)),
        ("fine fwd, Hopper, partial key cubes packed", lambda: hopper.fine_forward(q, tuple(tiles3), g, oc, idx, geom, scale)),
        ("fine fwd, Hopper, 64-row steps only", lambda: hopper.fine_forward(q, tuple(tiles3), g, oc, idx, geom, scale, narrow=False)),
        ("dq, Triton", lambda: dq_backward(q, k, v, dout, lse, delta, key_plan, geom, scale, dqc)),
        ("k, v copies", lambda: hopper.kv_tiles(k, v, geom)),
        ("selection by key width (dq)", lambda: hopper._by_width(idx, geom, True)),
        ("dq, Hopper, partial key cubes packed 2 or 4 to a step", lambda: hopper.dq_backward(q, tiles, dout, lse, delta, idx, geom, scale, dqc)),
        ("dq, Hopper, 64-row tiles only", lambda: hopper.dq_backward(q, tiles, dout, lse, delta, idx, geom, scale, dqc, narrow=False)),
        ("dkdv, Triton", lambda: dkdv_backward(q, k, v, dout, lse, delta, query_plan, geom, scale, (dkc, dvc))),
        ("query cube lists", lambda: query_cubes(idx, hopper._width_classes(geom, q.device)[0])),
        ("q, dout copies + lse, delta", lambda: hopper.copy_tiles(q, dout, geom, stats=(lse, delta), compact=True)),
        *(
            (f"dkdv, Hopper, {'narrow tiles for partial cubes' if n else '64-row tiles only'} (with lists, copies)",
             lambda n=n: hopper.dkdv_backward(q, tiles, dout, lse, delta, idx, geom, scale, (dkc, dvc), narrow=n))
            for n in (True, False)
        ),
    ):  # fmt: skip
        print(f"  {name}: {time_cuda(name, fn, warmup=3, iters=20)[0].median_ms:.3f} ms")

    def op(a, b, c, gg):
        return vsa_attention(a, b, c, grid, sparsity=sparsity, gate=gg)

    for mode in ("1", "0"):
        os.environ["FASTVIDEO_VSA_HOPPER"] = mode
        tf, tb = time_fwd_bwd(op, [q, k, v, g], dout, 10)
        print(
            f"  op, FASTVIDEO_VSA_HOPPER={mode}: forward {tf.median_ms:.3f} ms, backward {tb.median_ms:.3f} ms"
        )
    del os.environ["FASTVIDEO_VSA_HOPPER"]


def main() -> None:
    env = environment()
    print(f"{env['card']}, torch {env['torch']}, triton {env['triton']}")
    q0 = torch.empty(1, 1, 1, DIM, device="cuda", dtype=torch.bfloat16)
    if not hopper.supported(q0):
        raise SystemExit("the Hopper kernels do not run on this card (CUDA capability 9.x and Gluon needed)")
    for grid, sparsities in ((GRID, (0.875, 0.95)), ((8, 64, 64), (0.875,))):
        xs = tensors(grid)
        for sparsity in sparsities:
            report(grid, sparsity, xs)


if __name__ == "__main__":
    main()
