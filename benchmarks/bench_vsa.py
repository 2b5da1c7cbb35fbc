"""VSA on one GPU: correctness at the real shape, kernel timings against SDPA, and Wan2.1-1.3B end to end.

    PYTHONPATH=core/src:plugins/fastvideo-wan/src:plugins/fastvideo-vsa/src python benchmarks/bench_vsa.py

1. ``pytest -m gpu plugins/fastvideo-vsa/tests/test_ops.py``: the Triton kernels against the PyTorch
   reference at 12 heads x 32760 tokens (grid 21x30x52) x 128, bf16, forward and every gradient
   (dq, dk, dv, dgate), on two heads, with and without a gate, at sparsity 0.875 and 0.95.
2. Kernel timings at that shape, bf16: VSA forward and backward (and their stages) at sparsity
   0.875 and 0.95 against torch SDPA's cuDNN and flash backends; the same on a 32768-token grid
   with no partial cube (8x64x64), the shape of FastVideo's published numbers.
3. Wan2.1-T2V-1.3B with random weights at 81x480x832: one DiT forward with ``vsa`` at 0.875 and one
   with dense ``sdpa``, same model, same inputs.

Rows go to docs/benchmarks.md (and ``$OUT/bench_rows.jsonl``); a compact table is printed last.
Takes about 3 minutes on an H100 (``--skip-tests``, ``--skip-e2e`` to shorten).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from harness import ROOT, append_row, environment, time_cuda
from torch.nn.attention import SDPBackend, sdpa_kernel

GRID = (21, 30, 52)  # Wan2.1 at 81x480x832: 32760 tokens, 624 cubes (169 partial)
EVEN_GRID = (8, 64, 64)  # 32768 tokens, 512 whole cubes
HEADS, DIM = 12, 128
KERNEL_HEADER = [
    "date",
    "card",
    "grid (tokens)",
    "what",
    "sparsity",
    "fwd ms",
    "bwd ms",
    "fwd vs cuDNN",
    "bwd vs cuDNN",
    "fwd vs flash",
    "bwd vs flash",
    "fine fwd TFLOP/s (real tokens)",
    "versions",
]
E2E_HEADER = [
    "date",
    "card",
    "model",
    "shape (F x H x W, tokens)",
    "dense sdpa ms",
    "vsa ms",
    "vsa / dense",
    "sparsity",
    "gate",
    "peak GiB (vsa)",
    "versions",
    "command",
]


def run_gpu_tests() -> tuple[int, str]:
    """The ``gpu`` tests of the VSA plugin in a subprocess; returns (exit code, last line)."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "gpu",
        "-p",
        "no:cacheprovider",
        str(ROOT / "plugins/fastvideo-vsa/tests/test_ops.py"),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n")
    last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return proc.returncode, f"{last} ({time.perf_counter() - t0:.0f} s)"


# --------------------------------------------------------------------------------------------------
# Kernel timings
# --------------------------------------------------------------------------------------------------


def tensors(grid: tuple[int, int, int], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    shape = (1, math.prod(grid), HEADS, DIM)
    return [torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(5)]


def time_fwd_bwd(fn, inputs: list[torch.Tensor], dout: torch.Tensor, iters: int):
    """(forward timing, backward timing) of ``fn(*inputs)``; backward = autograd.grad on a kept graph."""
    xs = [x.detach().requires_grad_() for x in inputs]
    with torch.no_grad():
        t_fwd, _ = time_cuda("fwd", lambda: fn(*xs), warmup=3, iters=iters)
    out = fn(*xs)
    t_bwd, _ = time_cuda(
        "bwd", lambda: torch.autograd.grad(out, xs, dout, retain_graph=True), warmup=2, iters=iters
    )
    return t_fwd, t_bwd


def sdpa_timings(grid: tuple[int, int, int], iters: int) -> dict[str, tuple]:
    q, k, v, _, dout = (x.transpose(1, 2).contiguous() for x in tensors(grid))  # (B, H, L, D)
    out = {}
    for name, kernel in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):

        def fn(a, b, c, kernel=kernel):
            with sdpa_kernel([kernel]):
                return F.scaled_dot_product_attention(a, b, c)

        try:
            out[name] = time_fwd_bwd(fn, [q, k, v], dout, iters)
        except RuntimeError as e:  # a kernel this torch build lacks
            print(f"SDPA {name}: {e}")
    return out


def useful_flops(idx: torch.Tensor, grid: tuple[int, int, int]) -> float:
    """Forward matmul FLOPs of the fine stage over real tokens only: 4 D sum_i n_i sum_(j kept by i) n_j."""
    from fastvideo_vsa.ops import CubeGeometry

    sizes = torch.tensor(CubeGeometry(grid).cube_sizes(), device=idx.device, dtype=torch.float64)
    keys = sizes[idx.long()].sum(-1)  # (B, H, C): key tokens seen by each query cube
    return float((keys * sizes).sum()) * 4 * DIM


def op_stages(q, k, v, g, dout, geom, topk: int, scale: float) -> SimpleNamespace:
    """Every intermediate of one VSA forward and backward, stage by stage (gated), for timing the
    stages one at a time: cube means, selection, plans, fine output, backward inputs, pooled grads."""
    from fastvideo_vsa.ops.pooling import coarse_backward, coarse_select, plans, pool
    from fastvideo_vsa.ops.triton_bwd import prep_backward
    from fastvideo_vsa.ops.triton_fwd import fine_forward

    qc, kc, vc = pool(q, k, v, geom)
    idx, oc, key_plan = coarse_select(qc, kc, vc, topk, scale, geom)
    _, query_plan = plans(idx, geom, transposed=True, key_plan=key_plan)
    out, lse = fine_forward(q, k, v, g, oc, key_plan, geom, scale)
    delta, _, doc = prep_backward(out, dout, g, oc, geom)
    dqc, dkc, dvc = coarse_backward(qc, kc, vc, doc, scale)
    return SimpleNamespace(
        qc=qc, kc=kc, vc=vc, idx=idx, oc=oc, key_plan=key_plan, query_plan=query_plan, out=out, lse=lse,
        delta=delta, doc=doc, dqc=dqc, dkc=dkc, dvc=dvc, bwd=(q, k, v, dout, lse, delta),
    )  # fmt: skip


def vsa_stage_timings(
    grid: tuple[int, int, int], sparsity: float, iters: int
) -> tuple[dict[str, float], float]:
    """Milliseconds of each stage of the op, forward and backward, with a gate; and the fine stage's
    useful forward FLOPs."""
    from fastvideo_vsa.ops import CubeGeometry, topk_for
    from fastvideo_vsa.ops.pooling import coarse_backward, coarse_select, plans, pool, query_cubes
    from fastvideo_vsa.ops.triton_bwd import dkdv_backward, dq_backward, dq_finish, prep_backward
    from fastvideo_vsa.ops.triton_fwd import fine_forward

    geom = CubeGeometry(grid)
    topk, scale = topk_for(sparsity, geom.num_cubes), DIM**-0.5
    q, k, v, g, dout = tensors(grid)
    st = op_stages(q, k, v, g, dout, geom, topk, scale)
    qc, kc, vc, idx, oc, doc = st.qc, st.kc, st.vc, st.idx, st.oc, st.doc
    key_plan, query_plan, out, dqc, dkc, dvc, bwd = (
        st.key_plan,
        st.query_plan,
        st.out,
        st.dqc,
        st.dkc,
        st.dvc,
        st.bwd,
    )

    def atomic_pass() -> torch.Tensor:
        acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dkdv_backward(*bwd, query_plan, geom, scale, (dkc, dvc), acc)
        return dq_finish(acc, dqc, geom, q.dtype)

    from fastvideo_vsa.ops import hopper

    stages = {
        "pool": lambda: pool(q, k, v, geom),
        "coarse+select+key plan": lambda: coarse_select(qc, kc, vc, topk, scale, geom),
        "fine fwd (Triton)": lambda: fine_forward(q, k, v, g, oc, key_plan, geom, scale),
        "fine fwd (Triton, no gate)": lambda: fine_forward(q, k, v, None, None, key_plan, geom, scale),
        "bwd prep": lambda: prep_backward(out, dout, g, oc, geom),
        "coarse bwd": lambda: coarse_backward(qc, kc, vc, doc, scale),
        "query plan": lambda: plans(idx, geom, transposed=True, key_plan=key_plan),
        "dq": lambda: dq_backward(*bwd, key_plan, geom, scale, dqc),
        "dkdv": lambda: dkdv_backward(*bwd, query_plan, geom, scale, (dkc, dvc)),
        "dkdv+dq atomic": atomic_pass,
    }
    if hopper.supported(q):  # the Hopper kernels (the op's rule: hopper.enabled)
        tiles = q.new_empty((3, q.shape[2] * geom.num_cubes * 64, DIM))
        stages["pool + cube-major copies"] = lambda: pool(q, k, v, geom, tiles=tiles)
        stages["fine fwd (Hopper)"] = lambda: hopper.fine_forward(q, tuple(tiles), g, oc, idx, geom, scale)
        stages["fine fwd (Hopper, no gate)"] = lambda: hopper.fine_forward(
            q, tuple(tiles), None, None, idx, geom, scale
        )
        kv_tiles = hopper.kv_tiles(k, v, geom)
        lse, delta = st.lse, st.delta
        stages["copy k, v tiles (bwd)"] = lambda: hopper.kv_tiles(k, v, geom)
        stages["dq (Hopper)"] = lambda: hopper.dq_backward(
            q, kv_tiles, dout, lse, delta, idx, geom, scale, dqc
        )
        stages["query cube lists (Hopper dkdv)"] = lambda: query_cubes(
            idx, hopper._width_classes(geom, q.device)[0]
        )
        stages["copy q, dout tiles + lse, delta (bwd)"] = lambda: hopper.copy_tiles(
            q, dout, geom, stats=(lse, delta), compact=True
        )
        stages["dkdv (Hopper, with lists and copies)"] = lambda: hopper.dkdv_backward(
            q, kv_tiles, dout, lse, delta, idx, geom, scale, (dkc, dvc)
        )
    times = {name: time_cuda(name, fn, warmup=3, iters=iters)[0].median_ms for name, fn in stages.items()}
    return times, useful_flops(idx, grid)


def _row(label: str, what: str, sparsity: str, fwd: str, bwd: str, *rest: str) -> list[str]:
    cells = [label, what, sparsity, fwd, bwd, *rest]
    return cells + [""] * (10 - len(cells))


def _speedups(dense: dict, fwd_ms: float | None, bwd_ms: float | None) -> list[str]:
    """``fwd vs cuDNN, bwd vs cuDNN, fwd vs flash, bwd vs flash`` (dense time / ours)."""
    out = []
    for ref in ("cuDNN", "flash"):
        rf, rb = dense.get(ref, (None, None))
        out.append(f"{rf.median_ms / fwd_ms:.2f}x" if rf is not None and fwd_ms else "")
        out.append(f"{rb.median_ms / bwd_ms:.2f}x" if rb is not None and bwd_ms else "")
    return out


def kernel_benchmarks(iters: int, record: bool) -> list[list[str]]:
    from fastvideo_vsa.ops import CubeGeometry, hopper, topk_for, vsa_attention

    env = environment()
    rows: list[list[str]] = []
    for grid, sparsities in ((GRID, (0.875, 0.95)), (EVEN_GRID, (0.875,))):
        label = f"{'x'.join(map(str, grid))} ({math.prod(grid)})"
        dense = sdpa_timings(grid, iters)
        for name, (tf, tb) in dense.items():
            rows.append(_row(label, f"SDPA {name}", "-", f"{tf.median_ms:.2f}", f"{tb.median_ms:.2f}"))
        q, k, v, g, dout = tensors(grid)
        for sparsity in sparsities:
            topk = topk_for(sparsity, CubeGeometry(grid).num_cubes)
            for gated in (True, False):

                def fn(a, b, c, gg=None, sparsity=sparsity, grid=grid):
                    return vsa_attention(a, b, c, grid, sparsity=sparsity, gate=gg)

                ins = [q, k, v, g] if gated else [q, k, v]
                tf, tb = time_fwd_bwd(fn, ins, dout, iters)
                os.environ["FASTVIDEO_VSA_BACKWARD"] = "atomic"
                tb_atomic = time_fwd_bwd(fn, ins, dout, iters)[1]
                del os.environ["FASTVIDEO_VSA_BACKWARD"]
                stages, flops = vsa_stage_timings(grid, sparsity, iters) if gated else ({}, 0.0)
                hopper_fwd = hopper.enabled(q, topk)
                path = (", Hopper fwd" if hopper_fwd else "") + (
                    ", Hopper dq + dk/dv" if hopper.enabled(q, topk, backward=True) else ""
                )
                fine = stages.get("fine fwd (Hopper)" if hopper_fwd else "fine fwd (Triton)")
                tflops = f"{flops / (fine * 1e-3) / 1e12:.0f}" if fine else ""
                what = f"VSA {'gate' if gated else 'no gate'} (k={topk}){path}"
                if path and gated:  # the portable kernels on the same card, side by side
                    os.environ["FASTVIDEO_VSA_HOPPER"] = "0"
                    tp, tpb = time_fwd_bwd(fn, ins, dout, iters)
                    del os.environ["FASTVIDEO_VSA_HOPPER"]
                    portable = f"VSA gate (k={topk}), Triton only"
                    rows.append(_row(label, portable, f"{sparsity}", f"{tp.median_ms:.2f}", f"{tpb.median_ms:.2f}",
                                     *_speedups(dense, tp.median_ms, tpb.median_ms)))  # fmt: skip
                fwd, bwd = f"{tf.median_ms:.2f}", f"{tb.median_ms:.2f}"
                rows.append(
                    _row(
                        label,
                        what,
                        f"{sparsity}",
                        fwd,
                        bwd,
                        *_speedups(dense, tf.median_ms, tb.median_ms),
                        tflops,
                    )
                )
                atomic = _speedups(dense, None, tb_atomic.median_ms)
                what_atomic = what.replace(", Hopper dq + dk/dv", "") + ", atomic bwd (Triton)"
                rows.append(
                    _row(label, what_atomic, f"{sparsity}", "", f"{tb_atomic.median_ms:.2f}", *atomic)
                )
                if stages:
                    rows.append(
                        _row(
                            label,
                            "  stages ms",
                            f"{sparsity}",
                            "; ".join(f"{n} {t:.3f}" for n, t in stages.items()),
                            "",
                        )
                    )
        del q, k, v, g, dout
        gc.collect()
        torch.cuda.empty_cache()
    if record:
        section = "VSA kernels: bf16, 12 heads x 128, forward and backward vs torch SDPA"
        versions = f"torch {env['torch']}, triton {env['triton']}"
        for row in rows:
            if not row[1].startswith("  stages"):
                append_row(section, KERNEL_HEADER, [env["date"], env["card"], *row, versions])
    return rows


def autotune_choices() -> dict[str, str]:
    """The configs Triton's autotuner picked, per kernel and key."""
    from fastvideo_vsa.ops import pooling, triton_bwd, triton_fwd

    tuned = {
        "fwd": triton_fwd._fwd_tuned,
        "pool": pooling._pool_tuned,
        "prep": triton_bwd._prep_tuned,
        "dq": triton_bwd._dq_tuned,
        "dkdv": triton_bwd._dkdv_tuned,
        "dkdv+dq": triton_bwd._dkdvq_tuned,
    }
    return {
        name: "; ".join(f"{key[:3]} -> {cfg}" for key, cfg in getattr(t, "cache", {}).items())
        for name, t in tuned.items()
    }


# --------------------------------------------------------------------------------------------------
# Wan2.1-1.3B end to end
# --------------------------------------------------------------------------------------------------


def e2e(
    sparsity: float, gate: bool, frames: int, height: int, width: int, compile_blocks: bool, record: bool
):
    from fastvideo.attention import StepContext, step_context, use_backend
    from fastvideo.attention.layers import attach_layer_modules
    from fastvideo.testing import fake_plugins
    from fastvideo_vsa import plugin as vsa_plugin
    from fastvideo_wan.configs import CONFIGS
    from fastvideo_wan.model import WanConfig, WanTransformer

    cfg = WanConfig.from_diffusers_config(CONFIGS["wan2.1-t2v-1.3b"])
    torch.manual_seed(0)
    model = WanTransformer.from_config(cfg, device="cuda").to(torch.bfloat16).eval()
    if gate:  # vsa's gate projections (attached by core as the backend declares), trained-looking,
        with fake_plugins(vsa_plugin):  # so that nothing can skip the coarse branch
            attach_layer_modules(model, "vsa")
        with torch.no_grad():
            for b in model.blocks:
                b.self_attn.gate_compress.weight.normal_(0, 0.02)
    if compile_blocks:
        model.compile_blocks()
    gen = torch.Generator(device="cuda").manual_seed(1)
    latents = torch.randn(
        1,
        16,
        (frames - 1) // 4 + 1,
        height // 8,
        width // 8,
        device="cuda",
        generator=gen,
        dtype=torch.bfloat16,
    )
    text = torch.randn(1, 512, cfg.text_dim, device="cuda", generator=gen, dtype=torch.bfloat16)
    t = torch.tensor([500.0], device="cuda")
    grid = model.token_grid(latents.shape)
    results = {}
    with fake_plugins(vsa_plugin), torch.inference_mode():
        for name, backend, s in (("dense", "sdpa", 0.0), ("vsa", "vsa", sparsity)):
            with use_backend(backend), step_context(StepContext(grid=grid, options={"vsa": {"sparsity": s}})):
                timing, out = time_cuda(name, lambda: model(latents, t, text), warmup=2, iters=5)
            assert bool(out.isfinite().all()), f"{name}: non-finite output"
            results[name] = timing
    dense, vsa = results["dense"], results["vsa"]
    ratio = vsa.median_ms / dense.median_ms
    env = environment()
    shape = f"{frames}x{height}x{width}, {math.prod(grid)}"
    row = [
        env["date"],
        env["card"],
        "wan2.1-t2v-1.3b" + (" (compile_blocks)" if compile_blocks else ""),
        shape,
        f"{dense.median_ms:.1f}",
        f"{vsa.median_ms:.1f}",
        f"{ratio:.3f}",
        f"{sparsity}",
        "yes" if gate else "no",
        f"{vsa.peak_gib:.2f}",
        f"torch {env['torch']}, triton {env['triton']}",
        f"`{env['command']}`",
    ]
    if record:
        append_row("Wan DiT forward: VSA vs dense SDPA (same random weights)", E2E_HEADER, row)
    return dense.median_ms, vsa.median_ms, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-kernels", action="store_true")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument(
        "--compile", action="store_true", help="also time the end to end forward with compile_blocks()"
    )
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    os.environ.pop("TRITON_INTERPRET", None)
    start = time.perf_counter()
    record = not args.no_record
    tests = run_gpu_tests() if not args.skip_tests else (0, "skipped")
    rows = kernel_benchmarks(args.iters, record) if not args.skip_kernels else []
    ends = []
    if not args.skip_e2e:
        for gate in (True, False):
            ends.append((gate, False, *e2e(0.875, gate, 81, 480, 832, False, record)))
            gc.collect()
            torch.cuda.empty_cache()
        if args.compile:
            ends.append((True, True, *e2e(0.875, True, 81, 480, 832, True, record)))

    env = environment()
    print(
        f"\n{env['card']}, torch {env['torch']}, triton {env['triton']}, {time.perf_counter() - start:.0f} s"
    )
    print("autotuned:", *(f"  {k}: {v}" for k, v in autotune_choices().items()), sep="\n")
    print(f"GPU correctness tests (pytest -m gpu): {'PASS' if tests[0] == 0 else 'FAIL'} - {tests[1]}")
    if rows:
        print(
            "\n| grid | what | sparsity | fwd ms | bwd ms | fwd vs cuDNN | bwd vs cuDNN | fwd vs flash | bwd vs flash | fine TF/s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    for gate, compiled, d, v, r in ends:
        tag = f"gate={'yes' if gate else 'no'}{', compile_blocks' if compiled else ''}"
        print(
            f"Wan2.1-1.3B 81x480x832 DiT forward ({tag}): dense sdpa {d:.1f} ms, vsa@0.875 {v:.1f} ms, "
            f"ratio {r:.3f} (target <= 0.45)"
        )
    sys.exit(tests[0])


if __name__ == "__main__":
    main()
