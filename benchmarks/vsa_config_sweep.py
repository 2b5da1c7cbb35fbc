"""Launch-config sweep of the VSA fine-stage kernels on one GPU (beyond their autotune lists).

    PYTHONPATH=core/src:plugins/fastvideo-vsa/src python benchmarks/vsa_config_sweep.py

Times the forward (``fine_forward``), ``dq`` and ``dk, dv`` kernels at the Wan2.1-1.3B shape
(12 heads x 21x30x52 tokens x 128, bf16, with the gate) for every config of a wider grid than the
autotuners search, next to the autotuned default, and checks that each config computes what the
default computes. Prints the configs by time and writes them to ``$OUT/vsa_sweep.json`` when set.
The winners go into ``FWD_CONFIGS`` / ``DQ_CONFIGS`` / ``DKDV_CONFIGS``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_vsa import op_stages
from harness import environment, time_cuda

GRID = (21, 30, 52)
HEADS, DIM = 12, 128


def time_cpu(name: str, fn, *, warmup: int = 1, iters: int = 1):
    """``--dry``: wall time, shaped like :func:`harness.time_cuda`'s result."""
    import time
    from types import SimpleNamespace

    fn()
    start = time.perf_counter()
    out = fn()
    return SimpleNamespace(median_ms=(time.perf_counter() - start) * 1e3), out


def main() -> None:
    from fastvideo_vsa.ops import CubeGeometry, topk_for
    from fastvideo_vsa.ops.triton_bwd import dkdv_backward, dq_backward
    from fastvideo_vsa.ops.triton_fwd import fine_forward

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.875, 0.95])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument(
        "--dry",
        action="store_true",
        help="CPU, TRITON_INTERPRET=1, a tiny grid in fp32: checks the script runs",
    )
    args = ap.parse_args()
    env = environment()
    print(f"{env['card']}, torch {env['torch']}", flush=True)
    grid, heads, dim, device, dtype = GRID, HEADS, DIM, "cuda", torch.bfloat16
    timer = time_cuda
    if args.dry:
        grid, heads, dim, device, dtype = (5, 6, 7), 2, 16, "cpu", torch.float32
        timer = time_cpu
    geom = CubeGeometry(grid)
    scale = dim**-0.5
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, g, dout = (
        torch.randn(1, math.prod(grid), heads, dim, device=device, dtype=dtype, generator=gen)
        for _ in range(5)
    )
    results: list[dict] = []
    if not args.dry:  # the dense baseline of the same run: cuDNN SDPA forward and backward
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        xs = [t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v)]
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            with torch.no_grad():
                fwd = timer(
                    "cudnn fwd", lambda: F.scaled_dot_product_attention(*xs), warmup=3, iters=args.iters
                )
            dense = F.scaled_dot_product_attention(*xs)
            grad = dout.transpose(1, 2)
            bwd = timer(
                "cudnn bwd",
                lambda: torch.autograd.grad(dense, xs, grad, retain_graph=True),
                warmup=2,
                iters=args.iters,
            )
        print(f"cuDNN SDPA dense: fwd {fwd[0].median_ms:.3f} ms, bwd {bwd[0].median_ms:.3f} ms", flush=True)
        results.append(dict(kind="cudnn", fwd_ms=fwd[0].median_ms, bwd_ms=bwd[0].median_ms))
        del dense, xs

    def sweep(kind: str, sparsity: float, run, configs: list[dict]) -> None:
        ref = run(None)
        base = timer(kind, lambda: run(None), warmup=3, iters=args.iters)[0].median_ms
        results.append(dict(kind=kind, sparsity=sparsity, config="autotuned", ms=base, err=0.0))
        for cfg in configs:
            try:
                out = run(cfg)
                err = max(float((a.float() - b.float()).abs().max()) for a, b in zip(out, ref, strict=True))
                ms = timer(kind, lambda cfg=cfg: run(cfg), warmup=2, iters=args.iters)[0].median_ms
            except Exception as exc:  # a config this card cannot run (shared memory, registers)
                print(f"{kind} {cfg}: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
                continue
            results.append(dict(kind=kind, sparsity=sparsity, config=cfg, ms=ms, err=err))
        rows = sorted(
            (r for r in results if r["kind"] == kind and r["sparsity"] == sparsity), key=lambda r: r["ms"]
        )
        print(f"--- {kind} @ {sparsity}: autotuned {base:.3f} ms", flush=True)
        for r in rows[:8]:
            print(f"  {r['ms']:.3f} ms  err {r['err']:.2e}  {r['config']}", flush=True)

    grid3 = lambda name, sizes, warps, stages: [  # noqa: E731
        {name: s, "num_warps": w, "num_stages": st} for s, w, st in itertools.product(sizes, warps, stages)
    ]
    for sparsity in args.sparsity:
        topk = topk_for(sparsity, geom.num_cubes)
        st = op_stages(q, k, v, g, dout, geom, topk, scale)
        oc, key_plan, query_plan, dqc, dkc, dvc, bwd = (
            st.oc,
            st.key_plan,
            st.query_plan,
            st.dqc,
            st.dkc,
            st.dvc,
            st.bwd,
        )
        sweep(
            "fwd",
            sparsity,
            lambda cfg: fine_forward(q, k, v, g, oc, key_plan, geom, scale, config=cfg),  # noqa: B023 (called in this iteration)
            grid3("BLOCK_N", (32, 64, 128), (4, 8), (1, 2, 3, 4)),
        )
        if sparsity != args.sparsity[0]:
            continue
        sweep(
            "dq",
            sparsity,
            lambda cfg: (dq_backward(*bwd, key_plan, geom, scale, dqc, config=cfg),),  # noqa: B023 (called in this iteration)
            grid3("BLOCK_N", (32, 64, 128), (4, 8), (2, 3)),
        )
        sweep(
            "dkdv",
            sparsity,
            lambda cfg: dkdv_backward(*bwd, query_plan, geom, scale, (dkc, dvc), config=cfg),  # noqa: B023 (called in this iteration)
            grid3("BLOCK_M", (16, 32, 64), (4, 8), (2, 3)),
        )
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "vsa_sweep.json"), "w") as f:
            json.dump(dict(env=env, results=results), f, indent=1, default=str)


if __name__ == "__main__":
    main()
