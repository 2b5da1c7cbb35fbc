"""Launch-config sweep of the STA Triton kernels (``fastvideo-sta``) on one GPU.

    PYTHONPATH=core/src:plugins/fastvideo-sta/src python benchmarks/sta_config_sweep.py [--out DIR]

At HunyuanVideo's 30x48x80 + 256 text tokens (24 heads) and Wan2.1's 21x30x52 (12 heads), head dim
128, bf16, the paper's windows one per head (as ``bench_sta.py``): times the forward for every config
of ``SWEEP_FWD_CONFIGS`` (``BLOCK_M,BLOCK_N,num_warps,num_stages``) and the backward for every config of
``SWEEP_BWD_CONFIGS``, next to the autotuned default (``auto``) and SDPA's cuDNN dense attention in the
same run, and checks each config's output (and gradients) against the default's. Prints each shape's
configs sorted by time with the effective TFLOP/s and ``time / (cuDNN dense x kept fraction)`` (issue
#19's forward target: <= 1.15), and the line to pin the winner (``FASTVIDEO_STA_CONFIG=...``).

Wan's shape runs the ``--wan-top`` fastest HunyuanVideo configs only. ``--budget-s`` stops starting new
configs after that many seconds (what was measured is printed and kept). Results go to
``$OUT/sta_sweep.json`` (rewritten after every config) when ``--out`` is given. ``--tiny`` runs the whole
script on CPU under ``TRITON_INTERPRET=1`` at toy shapes in fp32 (a dry run: its times mean nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

if "--tiny" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sta import PAPER_WINDOWS, kept_fraction, time_out
from harness import environment

SHAPES = [
    ("HunyuanVideo 117x768x1280", (30, 48, 80), 256, 24),
    ("Wan2.1 81x480x832", (21, 30, 52), 0, 12),
]
TINY_SHAPES = [("tiny even", (2, 16, 16), 6, 2), ("tiny ragged", (4, 9, 10), 0, 1)]


def log(msg: str) -> None:
    print(msg, flush=True)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def max_diff(a: Any, b: Any) -> float:
    if isinstance(a, (tuple, list)):
        return max(max_diff(x, y) for x, y in zip(a, b, strict=True))
    return float((a.float() - b.float()).abs().max())


class Sweep:
    """Collects the rows and writes them (atomically) after each one."""

    def __init__(self, out: str | None, env: dict[str, str], budget_s: float) -> None:
        self.path = Path(out) / "sta_sweep.json" if out else None
        self.rows: list[dict[str, Any]] = []
        self.env = env
        self.start = time.monotonic()
        self.budget_s = budget_s

    def over_budget(self) -> bool:
        return time.monotonic() - self.start > self.budget_s

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"env": self.env, "rows": self.rows}, indent=1))
            tmp.replace(self.path)


def dense_times(q: Any, k: Any, v: Any, do: Any, iters: int) -> tuple[float, float]:
    """cuDNN SDPA dense forward and backward (ms); NaN without CUDA or when cuDNN cannot run it."""
    if not torch.cuda.is_available():
        return math.nan, math.nan
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            fwd = time_out("cudnn fwd", lambda: F.scaled_dot_product_attention(qt, kt, vt), 1, iters)[0]
            xs = [x.detach().requires_grad_() for x in (qt, kt, vt)]
            out = F.scaled_dot_product_attention(*xs)
            dot = do.transpose(1, 2)

            def bwd() -> Any:
                return torch.autograd.grad(out, xs, dot, retain_graph=True)

            back = time_out("cudnn bwd", bwd, 1, iters)[0]
        return fwd.median_ms, back.median_ms
    except RuntimeError as exc:
        log(f"  cuDNN unavailable: {first_line(exc)}")
        return math.nan, math.nan


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    log(f"\n{title}")
    log(f"  {'config':<14} {'ms':>9} {'TFLOP/s':>8} {'/(cuDNN x kept)':>16} {'max diff':>9}  status")
    for r in sorted(rows, key=lambda r: (r["ms"] != r["ms"], r["ms"])):
        log(f"  {r['config']:<14} {r['ms']:>9.2f} {r['tflops']:>8.1f} {r['ratio']:>16.2f} "
            f"{r['max_diff']:>9.2e}  {r['status']}")  # fmt: skip


def sweep_shape(
    args: argparse.Namespace, sweep: Sweep, label: str, grid: tuple[int, int, int], text: int, heads: int,
    fwd_configs: list[Any],
) -> tuple[list[dict[str, Any]], Any]:  # fmt: skip
    """The forward rows of one shape, and a function that adds its backward rows."""
    from fastvideo_sta.ops.triton_bwd import sta_backward
    from fastvideo_sta.ops.triton_fwd import SWEEP_BWD_CONFIGS, slice_rows, sta_forward
    from fastvideo_sta.tiles import TileGeometry

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tile, dim = (6, 8, 8), 128 if not args.tiny else 16
    if args.tiny:
        tile = (2, 8, 8) if "even" in label else (3, 8, 8)
    geom = TileGeometry(grid, tile)
    n = geom.num_tokens
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, do = (
        torch.randn(1, n + text, heads, dim, device=device, dtype=dtype, generator=gen) for _ in range(4)
    )
    valid = None
    if text:
        valid = torch.ones(1, text, dtype=torch.int8, device=device)
        valid[:, text // 2 + 2 :] = 0  # padded prompt tokens, as the pipelines give
    windows = [geom.clamp(PAPER_WINDOWS[h % len(PAPER_WINDOWS)]) for h in range(heads)]
    table = torch.tensor(windows, dtype=torch.int32, device=device)
    kept = kept_fraction(geom, windows, text)
    flop = 4 * (n + text) ** 2 * kept * dim * heads  # forward; the backward is 2.5x
    scale = dim**-0.5
    iters = args.iters if n > 50_000 else max(args.iters, 5)
    warm = 1
    if args.tiny:
        iters, warm = 1, 0
    cudnn_fwd, cudnn_bwd = dense_times(q, k, v, do, iters)
    log(f"\n== {label}: {'x'.join(map(str, grid))} + {text} text, {heads} heads x {dim}, kept {kept:.3f} "
        f"(slice {slice_rows(geom)} rows); cuDNN dense fwd {cudnn_fwd:.2f} ms, bwd {cudnn_bwd:.2f} ms")  # fmt: skip
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-4

    def fwd(config: Any) -> Any:
        return sta_forward(q, k, v, table, valid, geom, scale, config)

    def row(pass_: str, config: Any, ms: float, diff: float, status: str, base: float, work: float) -> dict:
        ratio = ms / (base * kept) if base == base and ms == ms else math.nan
        r = {"shape": label, "pass": pass_, "config": str(config or "auto"), "ms": ms,
             "tflops": work / ms / 1e9 if ms == ms else math.nan, "ratio": ratio, "max_diff": diff,
             "status": status, "kept": kept, "cudnn_ms": base}  # fmt: skip
        sweep.add(r)
        return r

    # the default (autotuned on first use) is the reference of the others
    t, (ref_out, ref_lse) = time_out("sta fwd auto", lambda: fwd(None), warm, iters)
    rows = [row("fwd", None, t.median_ms, 0.0, "ok (reference)", cudnn_fwd, flop)]
    log(f"  fwd auto: {t.median_ms:.2f} ms")
    for config in fwd_configs:
        if sweep.over_budget():
            log(f"  fwd {config}: not run (over the {args.budget_s:.0f} s budget)")
            continue
        try:
            t, (out, _) = time_out(f"sta fwd {config}", lambda c=config: fwd(c), warm, iters)
            diff = max_diff(out, ref_out)
            status = "ok" if diff <= tol else f"MISMATCH (> {tol:g})"
            rows.append(row("fwd", config, t.median_ms, diff, status, cudnn_fwd, flop))
            log(f"  fwd {config}: {t.median_ms:.2f} ms, max diff {diff:.2e} {status}")
        except Exception as exc:  # a config that does not compile or launch (e.g. out of shared memory)
            rows.append(row("fwd", config, math.nan, math.nan, f"failed: {first_line(exc)}", cudnn_fwd, flop))
            log(f"  fwd {config}: failed: {first_line(exc)}")
    print_table(f"{label}: forward by time (cuDNN dense {cudnn_fwd:.2f} ms, kept {kept:.3f})", rows)

    def backward() -> None:
        """The backward's rows (run after every shape's forward: the forward matters most)."""
        bwd_rows = []
        ref_grads = None
        for config in SWEEP_BWD_CONFIGS:
            if sweep.over_budget():
                log(f"  bwd {config or 'auto'}: not run (over the {args.budget_s:.0f} s budget)")
                continue

            def bwd(c: Any = config) -> Any:
                return sta_backward(do, q, k, v, ref_out, ref_lse, table, valid, geom, scale, c)

            try:
                t, grads = time_out(f"sta bwd {config}", bwd, warm, max(1 if args.tiny else 2, iters // 2))
                if ref_grads is None:
                    ref_grads, diff, status = grads, 0.0, "ok (reference)"
                else:
                    diff = max_diff(grads, ref_grads)
                    status = "ok" if diff <= 4 * tol else f"MISMATCH (> {4 * tol:g})"
                bwd_rows.append(row("bwd", config, t.median_ms, diff, status, cudnn_bwd, 2.5 * flop))
                log(f"  bwd {config or 'auto'}: {t.median_ms:.2f} ms, max diff {diff:.2e} {status}")
            except Exception as exc:
                bwd_rows.append(
                    row(
                        "bwd", config, math.nan, math.nan, f"failed: {first_line(exc)}", cudnn_bwd, 2.5 * flop
                    )
                )
                log(f"  bwd {config or 'auto'}: failed: {first_line(exc)}")
        if bwd_rows:
            print_table(f"{label}: backward by time (cuDNN dense {cudnn_bwd:.2f} ms)", bwd_rows)

    return rows, backward


def main() -> None:
    from fastvideo_sta.ops.triton_fwd import SWEEP_FWD_CONFIGS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument(
        "--wan-top", type=int, default=4, help="HunyuanVideo's fastest configs timed at Wan's shape"
    )
    ap.add_argument("--budget-s", type=float, default=170.0, help="start no config after this many seconds")
    ap.add_argument("--skip-backward", action="store_true")
    ap.add_argument("--out", help="write sta_sweep.json here")
    ap.add_argument(
        "--tiny", action="store_true", help="CPU dry run under TRITON_INTERPRET=1, toy shapes, fp32"
    )
    args = ap.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit(
            "error: the sweep times CUDA kernels and no GPU is visible; use --tiny for a CPU dry run"
        )
    env = environment()
    log(f"{env['card']}, torch {env['torch']}, triton {env.get('triton', '?')}")
    sweep = Sweep(args.out, env, args.budget_s)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    configs = list(SWEEP_FWD_CONFIGS) if not args.tiny else list(SWEEP_FWD_CONFIGS[:3])
    best: list[str] = []
    backwards = []
    for i, (label, grid, text, heads) in enumerate(shapes):
        rows, backward = sweep_shape(args, sweep, label, grid, text, heads, configs)
        backwards.append(backward)
        ranked = sorted(
            (r for r in rows if r["ms"] == r["ms"] and r["status"].startswith("ok")), key=lambda r: r["ms"]
        )
        if ranked:
            best.append(f"{label}: fastest forward {ranked[0]['config']} ({ranked[0]['ms']:.2f} ms, "
                        f"{ranked[0]['ratio']:.2f} x cuDNN x kept)")  # fmt: skip
        if i == 0:  # the next shape: the fastest few only
            by_name = {str(c): c for c in configs}
            configs = [by_name[r["config"]] for r in ranked if r["config"] in by_name][: args.wan_top]
    if not args.skip_backward:
        for backward in backwards:
            backward()
    log("")
    for line in best:
        log(line)
    if best:
        log("pin one with FASTVIDEO_STA_CONFIG=BLOCK_M,BLOCK_N,num_warps,num_stages (docs/sta.md)")


if __name__ == "__main__":
    main()
