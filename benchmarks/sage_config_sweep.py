"""Sweep the sage kernel's launch configs and P V recipes against cuDNN / flash SDPA (issue #24).

For each shape (Wan2.1 1.3B: 12 heads, 14B: 40 heads; 32760 tokens = 81x480x832, head dim 128) it
times ``sage_attention_triton`` end to end (Q/K quantization, V preparation and the kernel) for each
``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` of ``CONFIGS`` and ``pv`` in (fp16, fp8), plus the
default (autotuned) launch (also with the int32 -> fp32 conversion instruction: ``fast_i2f=False``, and
with Q / K / V blocks loaded through tensor descriptors, TMA: ``tma=True``), against SDPA with cuDNN and flash in bf16; each config's accuracy is checked
against fp32 SDPA at a smaller length (cosine similarity, max and mean abs error). The last lines name
the fastest config and recipe per shape and whether FP8 P V wins (what ``SM90_DEFAULT_PV`` should say).

    python benchmarks/sage_config_sweep.py            # on the GPU, about 2 minutes on one H100
    python benchmarks/sage_config_sweep.py --tiny     # CPU dry run (TRITON_INTERPRET=1), tiny shapes

Lines go to stdout and ${OUT}/speed.jsonl (section "sweep").
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import time
from typing import Any

if __name__ == "__main__" and "--tiny" in os.sys.argv:  # the interpreter must be chosen before triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
import torch.nn.functional as F

OUT = os.environ.get("OUT", "/tmp/out")
DEV = "cuda" if torch.cuda.is_available() else "cpu"

#: (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates on Hopper.
CONFIGS = [
    (128, 64, 8, 3),
    (128, 64, 8, 4),
    (128, 128, 8, 3),
    (128, 128, 8, 2),
    (64, 64, 4, 3),
]
TINY_CONFIGS = [(64, 64, 4, 1), (32, 64, 4, 1)]


def record(**row: Any) -> None:
    row = {"section": "sweep", **row}
    print(json.dumps(row), flush=True)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "speed.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def timed_ms(fn: Any, iters: int) -> float:
    """Median milliseconds of ``fn()`` (one warm-up call, which also compiles / autotunes)."""
    fn()
    times = []
    for _ in range(iters):
        if DEV == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def qkv(heads: int, length: int, d: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=DEV).manual_seed(seed)
    q, k, v = (
        torch.randn(1, length, heads, d, device=DEV, generator=g, dtype=torch.bfloat16) for _ in range(3)
    )
    k = k + 2.0 * torch.randn(1, 1, heads, d, device=DEV, generator=g, dtype=torch.bfloat16)  # a key bias
    return q, k, v


def accuracy(out: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    err = (out.float() - exact).abs()
    cos = F.cosine_similarity(out.float().flatten(), exact.flatten(), dim=0)
    return {"cos_sim": round(float(cos), 6), "max_abs_err": round(float(err.max()), 4),
            "mean_abs_err": round(float(err.mean()), 5)}  # fmt: skip


def sdpa_ms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str, iters: int) -> float | None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if DEV != "cuda":
        return None
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    with contextlib.suppress(RuntimeError), sdpa_kernel([getattr(SDPBackend, kernel)]):
        return round(timed_ms(lambda: F.scaled_dot_product_attention(qt, kt, vt), iters), 3)
    return None


def main() -> None:
    from fastvideo.attention.sage_triton import sage_attention_triton

    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="CPU dry run under TRITON_INTERPRET=1")
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    card = torch.cuda.get_device_name() if DEV == "cuda" else "cpu"
    fp8_ok = DEV == "cpu" or torch.cuda.get_device_capability() >= (8, 9)
    pvs = ["fp16", "fp8"] if fp8_ok else ["fp16"]
    if args.tiny:
        shapes, check_len, configs, iters = [("tiny", 2, 130, 64)], 130, TINY_CONFIGS, 1
    else:
        shapes = [("wan-1.3b", 12, 32760, 128), ("wan-14b", 40, 32760, 128)]
        check_len, configs, iters = 8190, CONFIGS, args.iters
    # accuracy of every (config, pv) at a length where fp32 SDPA is cheap
    q, k, v = qkv(12 if not args.tiny else 2, check_len, 128 if not args.tiny else 64, seed=1)
    exact = F.scaled_dot_product_attention(*(x.transpose(1, 2).float() for x in (q, k, v))).transpose(1, 2)
    bad: set[tuple[Any, str]] = set()
    for config in [None, *configs]:
        for pv in pvs:
            try:
                acc = accuracy(sage_attention_triton(q, k, v, pv=pv, config=config), exact)
            except Exception as exc:  # a config this card cannot compile (shared memory, registers)
                record(
                    card=card,
                    check="accuracy",
                    config=config,
                    pv=pv,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
                bad.add((config, pv))
                continue
            record(card=card, check="accuracy", tokens=check_len, config=config or "default", pv=pv, **acc)
            if acc["cos_sim"] < 0.999:
                bad.add((config, pv))
    del q, k, v, exact
    best: dict[str, Any] = {}
    for name, heads, length, d in shapes:
        q, k, v = qkv(heads, length, d)
        base = {"card": card, "shape": name, "heads": heads, "tokens": length, "head_dim": d}
        cudnn, flash = sdpa_ms(q, k, v, "CUDNN_ATTENTION", iters), sdpa_ms(q, k, v, "FLASH_ATTENTION", iters)
        record(**base, sdpa_cudnn_ms=cudnn, sdpa_flash_ms=flash)
        rows = []
        for config in [None, *configs]:
            for pv in pvs:
                if (config, pv) in bad:
                    continue
                try:
                    ms = timed_ms(
                        functools.partial(sage_attention_triton, q, k, v, pv=pv, config=config), iters
                    )
                except Exception as exc:
                    record(**base, config=config, pv=pv, error=f"{type(exc).__name__}: {exc}"[:300])
                    continue
                row = {
                    "config": list(config) if config else "default (autotuned)",
                    "pv": pv,
                    "sage_ms": round(ms, 3),
                }
                if cudnn:
                    row["vs_cudnn"] = round(ms / cudnn, 3)
                record(**base, **row)
                rows.append(row)
        for config in (None, (128, 128, 8, 3)):  # loads through tensor descriptors (TMA)
            for pv in pvs:
                try:
                    fn = functools.partial(sage_attention_triton, q, k, v, pv=pv, config=config, tma=True)
                    ms = timed_ms(fn, iters)
                except Exception as exc:
                    record(**base, config=config, pv=pv, tma=True, error=f"{type(exc).__name__}: {exc}"[:300])
                    continue
                row = {"config": list(config) if config else "default (autotuned)", "pv": pv, "tma": True,
                       "sage_ms": round(ms, 3)}  # fmt: skip
                if cudnn:
                    row["vs_cudnn"] = round(ms / cudnn, 3)
                record(**base, **row)
                rows.append(row)
        for pv in pvs:  # the int32 -> fp32 conversion instruction instead of the bit trick (as before)
            try:
                ms = timed_ms(functools.partial(sage_attention_triton, q, k, v, pv=pv, fast_i2f=False), iters)
            except Exception as exc:
                record(**base, pv=pv, fast_i2f=False, error=f"{type(exc).__name__}: {exc}"[:300])
                continue
            record(**base, config="default (autotuned)", pv=pv, fast_i2f=False, sage_ms=round(ms, 3))
        if rows:
            fastest = min(rows, key=lambda r: r["sage_ms"])
            per_pv = {pv: min((r["sage_ms"] for r in rows if r["pv"] == pv), default=None) for pv in pvs}
            best[name] = {"fastest": fastest, "best_ms_by_pv": per_pv, "sdpa_cudnn_ms": cudnn}
        del q, k, v
        if DEV == "cuda":
            torch.cuda.empty_cache()
    for name, b in best.items():
        fp8_wins = (
            b["best_ms_by_pv"].get("fp8") is not None
            and b["best_ms_by_pv"]["fp8"] < b["best_ms_by_pv"]["fp16"]
        )
        record(card=card, summary=name, **b, fp8_pv_wins=fp8_wins)  # fmt: skip


if __name__ == "__main__":
    main()
