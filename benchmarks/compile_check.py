"""Compile every Triton kernel of the repository ahead of time for ``sm_90`` (H100), no GPU needed:
Triton's compiler, ptxas and cuobjdump ship in the triton wheel.

    PYTHONPATH=core/src:plugins/fastvideo-sta/src python benchmarks/compile_check.py [--only core] [--arch 90]

Each kernel is compiled with the dtypes and constexpr values its launcher really uses at the models'
shapes (bf16 activations, fp32 modulation / RoPE tables, head dims 64 / 128, row widths 1536 to
5120, the block sizes and warps the launchers compute; every config of an autotune list). One line
per kernel and config: ``ok`` with registers per thread, spilled bytes and shared memory, or
``FAIL`` with the compile error in one line. Exit status 1 when any compile failed.

Groups (``--only``): ``core`` (:mod:`fastvideo.kernels` and the FP8 row quantization: the default-on
paths), ``sage`` (the 8-bit attention backends: sage's kernels and the fp8 backend's quantization), ``sta`` (the STA plugin's forward and backward).
The numbers are the installed triton's; the GPU machine (triton 3.6) may allocate differently.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

os.environ["TRITON_INTERPRET"] = "0"  # compile, do not interpret
os.environ.setdefault(
    "TRITON_DEFAULT_FP_FUSION", "1"
)  # triton 3.9 warns when unset; 1 is the launchers' default

WIDTHS = (1536, 2048, 3072, 4096, 5120)
HEAD_DIMS = (64, 128)


@dataclass
class Case:
    """One kernel compile: ``fn`` (a ``triton.jit`` function) with ``types`` for its runtime arguments
    (default ``i32``), ``consts`` for its constexprs, and launch options."""

    group: str
    name: str
    label: str
    fn: Any
    types: dict[str, str]
    consts: dict[str, Any]
    num_warps: int
    num_stages: int = 3
    extra: dict[str, Any] = field(default_factory=dict)


def compile_case(case: Case, arch: int):  # type: ignore[no-untyped-def]
    """``case`` compiled for ``sm_{arch}``; pointers and strides are 16-divisible as the launchers'
    tensors are at the models' shapes (Triton specializes on it)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(case.fn.fn).parameters)
    signature, attrs = {}, {}
    for i, name in enumerate(names):
        if name in case.consts:
            signature[name] = "constexpr"
            continue
        kind = case.types.get(name, "i32")
        signature[name] = kind
        if kind.startswith("*") or (kind == "i32" and name.startswith("s")):
            attrs[(i,)] = [["tt.divisibility", 16]]
    missing = [n for n in case.consts if n not in names]
    if missing:
        raise KeyError(f"{case.name}: no parameters {missing}")
    src = ASTSource(
        fn=case.fn,
        signature=signature,
        constexprs={(names.index(k),): v for k, v in case.consts.items()},
        attrs=attrs,
    )
    options = dict(num_warps=case.num_warps, num_stages=case.num_stages, **case.extra)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


#: Registers and shared memory of one SM (H100; the CTAs-per-SM estimate of :func:`resources`)
SM_REGS, SM_SMEM = 65536, 232448


def resources(kernel) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Registers per thread, spilled bytes (stack + local), shared memory and how many CTAs fit on one
    SM by registers and shared memory, of a compiled kernel (``cuobjdump -res-usage``)."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        text = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", text)
    if found is None:
        raise RuntimeError(f"cuobjdump printed no resource usage: {text[:200]!r}")
    regs, stack, local = (int(x) for x in found.groups())
    warps, smem = kernel.metadata.num_warps, kernel.metadata.shared
    by_regs = SM_REGS // (-(-regs // 8) * 8 * 32 * warps)
    by_smem = SM_SMEM // (smem + 1024)
    return {"regs": regs, "spill": stack + local, "smem_kb": smem // 1024, "ctas": min(by_regs, by_smem)}


# --------------------------------------------------------------------------------------------------
# fastvideo.kernels (default on for CUDA eager inference)
# --------------------------------------------------------------------------------------------------


def core_cases() -> Iterator[Case]:
    import triton

    from fastvideo.kernels import _triton as k

    bf, f32 = "*bf16", "*fp32"
    for d in WIDTHS:
        block = triton.next_power_of_2(d)
        warps = k._warps(block)
        # LayerNorm without affine (Wan, HunyuanVideo, Cosmos), RMSNorm with a weight and per-frame rows
        # (LTX-2 image to video), LayerNorm with weight and bias
        for rms, has_index, has_w, has_b in ((False, False, False, False), (True, True, True, False),
                                             (False, False, True, True)):  # fmt: skip
            yield Case(
                "core", "adaln_modulate", f"D={d} rms={int(rms)} index={int(has_index)} w={int(has_w)} b={int(has_b)}",
                k._adaln_kernel,
                dict(X=bf, SHIFT=f32, SCALE=f32, INDEX="*i64", W=bf, BIAS=bf, OUT=bf, eps="fp32"),
                dict(BLOCK=block, RMS=rms, HAS_INDEX=has_index, HAS_W=has_w, HAS_B=has_b), warps,
            )  # fmt: skip
        for has_index in (False, True):
            yield Case(
                "core", "gated_residual", f"D={d} index={int(has_index)}", k._gated_residual_kernel,
                dict(X=bf, Y=bf, GATE=f32, INDEX="*i64", OUT=bf),
                dict(BLOCK=block, HAS_INDEX=has_index), warps,
            )  # fmt: skip
        for rms, has_index, has_gate, two in ((False, False, True, False), (True, True, True, True),
                                              (True, False, False, False)):  # fmt: skip
            yield Case(
                "core", "gated_residual_adaln",
                f"D={d} rms={int(rms)} index={int(has_index)} gate={int(has_gate)} two={int(two)}",
                k._gated_residual_adaln_kernel,
                dict(X=bf, Y=bf, GATE=f32, SHIFT=f32, SCALE=f32, SHIFT2=f32, SCALE2=f32, INDEX="*i64",
                     SOUT=bf, HOUT=bf, HOUT2=bf, eps="fp32"),
                dict(BLOCK=block, RMS=rms, HAS_INDEX=has_index, HAS_GATE=has_gate, TWO=two), warps,
            )  # fmt: skip
    # RMSNorm (+ RoPE): per-head groups (Dh) or across the heads (group = width), rotation width Dh
    rope_types = dict(X="*bf16", W="*bf16", COS="*fp32", SIN="*fp32", OUT="*bf16", X2="*bf16", W2="*bf16",
                      OUT2="*bf16", eps="fp32")  # fmt: skip
    for d in WIDTHS:
        for dh in HEAD_DIMS:
            for per_head in (True, False):
                group = dh if per_head else d
                ng = d // group
                ng_block, g_block = triton.next_power_of_2(ng), triton.next_power_of_2(group)
                warps = k._warps(ng_block * g_block)
                variants = [
                    ("rms_norm_rope", dict(HALF=False, SIGNED=True, TW=dh, ROPE=True, PAIR=False)),
                    ("rms_norm_rope_pair", dict(HALF=True, SIGNED=False, TW=dh // 2, ROPE=True, PAIR=True)),
                    ("rms_norm", dict(HALF=False, SIGNED=True, TW=2, ROPE=False, PAIR=False)),
                ]
                for name, flags in variants:
                    r = dh if flags["ROPE"] else 2
                    consts = dict(NG=ng, NG_BLOCK=ng_block, GROUP=group, G_BLOCK=g_block, R=r, HAS_W=True,
                                  **flags)  # fmt: skip
                    label = f"D={d} Dh={dh} group={group} half={int(flags['HALF'])}"
                    yield Case("core", name, label, k._rms_rope_kernel, rope_types, consts, warps)
    # other dtypes the ops take (fp16 / fp32 activations, bf16 tables and weights), at one width
    d, block = 3072, 4096
    for x_t, tab in (("*fp16", "*fp32"), ("*fp32", "*fp32"), ("*bf16", "*bf16")):
        label = f"D={d} x={x_t[1:]} tables={tab[1:]}"
        yield Case(
            "core", "adaln_modulate", label, k._adaln_kernel,
            dict(X=x_t, SHIFT=tab, SCALE=tab, INDEX="*i64", W=tab, BIAS=tab, OUT=x_t, eps="fp32"),
            dict(BLOCK=block, RMS=False, HAS_INDEX=True, HAS_W=True, HAS_B=True), k._warps(block),
        )  # fmt: skip
        yield Case(
            "core", "gated_residual_adaln", label, k._gated_residual_adaln_kernel,
            dict(X=x_t, Y=x_t, GATE=tab, SHIFT=tab, SCALE=tab, SHIFT2=tab, SCALE2=tab, INDEX="*i64",
                 SOUT=x_t, HOUT=x_t, HOUT2=x_t, eps="fp32"),
            dict(BLOCK=block, RMS=True, HAS_INDEX=True, HAS_GATE=True, TWO=True), k._warps(block),
        )  # fmt: skip
        yield Case(
            "core", "rms_norm_rope_pair", label, k._rms_rope_kernel,
            dict(rope_types, X=x_t, X2=x_t, OUT=x_t, OUT2=x_t, W=tab, W2=tab, COS=tab, SIN=tab),
            dict(NG=24, NG_BLOCK=32, GROUP=128, G_BLOCK=128, R=128, TW=128, HALF=False, SIGNED=True,
                 HAS_W=True, ROPE=True, PAIR=True), k._warps(32 * 128),
        )  # fmt: skip
    # FP8 row quantization of the FP8 linears' activations: the widths and the MLPs' hidden widths
    from fastvideo.optimize import fp8_triton as q

    for width, x_t in [(w, "bf16") for w in (*WIDTHS, 8192, 8960, 13824, 16384, 20480)] + [
        (3072, "fp16"), (3072, "fp32"), (20480, "fp32")
    ]:  # fmt: skip
        rows, block_k, one_pass, warps = q.launch_config(width)
        yield Case(
            "core", "fp8_quantize_rows", f"K={width} x={x_t} rows={rows} block={block_k} one_pass={int(one_pass)}",
            q._quantize_rows_fwd, dict(X=f"*{x_t}", Q="*fp8e4nv", S="*fp32"),
            dict(ROWS=rows, BLOCK_K=block_k, ONE_PASS=one_pass, EXACT_ROUND=False), warps,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Sage attention (8-bit attention backend)
# --------------------------------------------------------------------------------------------------


def sage_cases() -> Iterator[Case]:
    from fastvideo.attention import fp8_quant as f
    from fastvideo.attention import sage_triton as s

    for (
        dh
    ) in HEAD_DIMS:  # the fp8 attention backend's quantization: Q and K rotated, K with its mean, V plain
        for rotate, mean in ((True, False), (True, True), (False, False)):
            yield Case(
                "sage", "fp8_quantize", f"Dh={dh} rotate={int(rotate)} mean={int(mean)}", f._quantize,
                dict(X="*bf16", S="*bf16" if rotate else "*fp32", MEAN="*fp32", SCALES="*fp32", OUT="*fp8e4nv",
                     INV_NORM="fp32"),
                dict(D=dh, ROTATE=rotate, HAS_MEAN=mean, IEEE=False, BLOCK_L=f.BLOCK_L, EXACT_ROUND=False), 4,
            )  # fmt: skip
    for dh in HEAD_DIMS:
        yield Case("sage", "fp8_stats", f"Dh={dh}", f._stats, dict(Q="*bf16", K="*bf16", V="*bf16", AMAX="*fp32",
                   KSUM="*fp32"), dict(D=dh, DV=dh, BLOCK_L=f.BLOCK_L), 4)  # fmt: skip
    yield Case("sage", "fp8_dequantize", "bf16 out", f._dequantize, dict(X="*fp8e4nv", SCALE="*fp32", OUT="*bf16"),
               dict(BLOCK=4096), 8)  # fmt: skip

    block_m, block_n, warps, stages = s.GPU_CONFIG
    for dh in HEAD_DIMS:
        bd = s._block_d(dh)
        for block, has_mean in ((block_m, False), (block_n, True)):
            yield Case(
                "sage", "sage_quantize", f"Dh={dh} block={block} mean={int(has_mean)}", s._quantize_fwd,
                dict(X="*bf16", MEAN="*fp32", Q="*i8", S="*fp32", multiplier="fp32"),
                dict(HAS_MEAN=has_mean, BLOCK=block, BLOCK_D=bd), s.quantize_warps(block, bd),
            )  # fmt: skip
        for fp8 in (False, True):
            yield Case(
                "sage", "sage_prepare_v", f"Dh={dh} fp8={int(fp8)}", s._prepare_v,
                dict(X="*bf16", VS="*fp32", Out="*fp8e4nv" if fp8 else "*fp16"),
                dict(BLOCK=block_n, BLOCK_D=bd, FP8=fp8, EXACT_ROUND=False), 4,
            )  # fmt: skip
        configs = [(warps, stages)] + [(c.num_warps, c.num_stages) for c in s.GPU_TUNING]
        for pv_fp8 in (False, True):
            for tma in (False, True):
                v_type = "fp8e4nv" if pv_fp8 else "fp16"
                if tma:
                    v_box = f"[{bd}, {block_n}]" if pv_fp8 else f"[{block_n}, {bd}]"
                    types = dict(Q=f"tensordesc<i8[{block_m}, {bd}]>", K=f"tensordesc<i8[{block_n}, {bd}]>",
                                 V=f"tensordesc<{v_type}{v_box}>")  # fmt: skip
                else:
                    types = dict(Q="*i8", K="*i8", V=f"*{v_type}")
                types.update(Out="*bf16", QS="*fp32", KS="*fp32", VS="*fp32")
                for w, st in dict.fromkeys(configs):
                    consts = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=bd, PV_FP8=pv_fp8,
                                  EXACT_ROUND=False, FAST_I2F=True, TMA=tma)  # fmt: skip
                    label = f"Dh={dh} pv={'fp8' if pv_fp8 else 'fp16'} tma={int(tma)} {block_m},{block_n},{w},{st}"
                    yield Case("sage", "sage_fwd", label, s._sage_fwd, types, consts, w, st)


# --------------------------------------------------------------------------------------------------
# STA (plugin): forward over its autotune candidates and TMA variants, backward over its autotune lists
# --------------------------------------------------------------------------------------------------


def sta_cases() -> Iterator[tuple[str, str, Callable[[int], Any]]]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import sta_kernel_resources as r

    from fastvideo_sta.ops import triton_bwd
    from fastvideo_sta.ops.triton_fwd import (
        FWD_CANDIDATES,
        FWD_TMA_CANDIDATES,
        SWEEP_FWD_CONFIGS,
        LaunchConfig,
    )

    fwd = list(
        dict.fromkeys([*FWD_CANDIDATES, *FWD_TMA_CANDIDATES, *(c for c in SWEEP_FWD_CONFIGS if c.tma)])
    )
    for config in fwd:
        for ragged in (False, True):
            label = f"{config} {'ragged' if ragged else 'even'}"
            yield "sta_fwd", label, lambda arch, c=config, g=ragged: r.compile_forward(c, g, arch)
    for name, configs in (("dq", triton_bwd.DQ_CONFIGS), ("dkdv", triton_bwd.DKDV_CONFIGS)):
        for cfg in configs:
            qs, ks = cfg.kwargs["QS"], cfg.kwargs["KS"]
            config = LaunchConfig(qs * 64, ks * 64, cfg.num_warps, cfg.num_stages)
            for ragged in (False, True):
                label = f"{config} {'ragged' if ragged else 'even'}"
                yield (
                    f"sta_{name}",
                    label,
                    lambda arch, n=name, c=config, g=ragged: r.compile_backward(n, c, g, arch),
                )


# --------------------------------------------------------------------------------------------------


def run(groups: tuple[str, ...], arch: int, out=sys.stdout) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    """Compile every case of ``groups``; prints one line each; returns ``(kernel, config, error)`` of the
    failures."""
    jobs: list[tuple[str, str, Callable[[int], Any]]] = []
    if "core" in groups:
        jobs += [(c.name, c.label, lambda a, c=c: compile_case(c, a)) for c in core_cases()]
    if "sage" in groups:
        jobs += [(c.name, c.label, lambda a, c=c: compile_case(c, a)) for c in sage_cases()]
    if "sta" in groups:
        jobs += list(sta_cases())
    failures = []
    for name, label, build in jobs:
        try:
            res = resources(build(arch))
        except Exception as exc:  # report and go on
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            msg = f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:200]
            failures.append((name, label, msg))
            print(f"FAIL {name:<22} {label:<50} {msg}", file=out, flush=True)
            continue
        spill = f"spills {res['spill']} B" if res["spill"] else "no spills"
        print(f"ok   {name:<22} {label:<50} regs {res['regs']:>3}, {spill}, smem {res['smem_kb']} KB",
              file=out, flush=True)  # fmt: skip
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA capability to compile for (90: Hopper)")
    ap.add_argument("--only", nargs="*", choices=("core", "sage", "sta"), default=["core", "sage", "sta"])
    args = ap.parse_args()
    import triton

    start = time.perf_counter()
    print(f"triton {triton.__version__}, sm_{args.arch}")
    failures = run(tuple(args.only), args.arch)
    print(f"{len(failures)} failed, {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
