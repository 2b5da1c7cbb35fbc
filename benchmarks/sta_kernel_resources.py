"""Registers, spills and shared memory of the STA forward kernel per launch config, compiled for sm_90
on any machine (no GPU needed: Triton's compiler, ptxas and cuobjdump ship in the triton wheel).

    PYTHONPATH=core/src:plugins/fastvideo-sta/src python benchmarks/sta_kernel_resources.py [--arch 90]

For every config of ``SWEEP_FWD_CONFIGS`` (and with ``--backward`` the dq and dk/dv kernels over
``SWEEP_BWD_CONFIGS``) (bf16, head dim 128, 64-row slices, text keys with a mask), on
a grid of whole tiles (the unmasked key path) and a ragged one: registers per thread, bytes of stack
(spilled registers), shared memory, and how many CTAs fit on one SM by registers and by shared memory
(H100: 64K registers, 227 KB of shared memory per SM). A config that spills or fits one small CTA per
SM is unlikely to win the GPU sweep (``benchmarks/sta_config_sweep.py``). The numbers are the
installed triton's: the GPU machine's version may allocate differently.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"  # compile, do not interpret
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compile_check import resources


def compile_forward(config, ragged: bool, arch: int):  # type: ignore[no-untyped-def]
    """The forward kernel compiled for ``sm_{arch}`` with ``config`` (a ``LaunchConfig``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastvideo_sta.ops import triton_fwd

    qs, ks = config.slices(64)
    consts = dict(D=128, D_PAD=128, SLICE=64, HAS_TV=True, F32DOT=False, EVEN=not ragged,
                  TILE_T=0 if ragged else 6, QS=qs, KS=ks, TMA=config.tma)  # fmt: skip
    names = list(inspect.signature(triton_fwd._fwd_kernel.fn).parameters)
    pointers = {
        "Q": "*bf16",
        "K": "*bf16",
        "V": "*bf16",
        "OUT": "*bf16",
        "LSE": "*fp32",
        "WIN": "*i32",
        "TV": "*i8",
    }
    signature = {}
    for name in names:
        if name in consts:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        elif name in ("K_DESC", "V_DESC"):
            signature[name] = f"tensordesc<bf16[1, {ks}, 8, 8, 128]>" if config.tma else "*bf16"
        elif name == "qk_scale":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    # what the launcher specialises on: 16-aligned pointers and strides
    aligned = [n for n in names if n in pointers or (n.startswith("s") and signature[n] == "i32")]
    src = ASTSource(
        fn=triton_fwd._fwd_kernel,
        signature=signature,
        constexprs={(names.index(k),): v for k, v in consts.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    if config.maxnreg:
        options["maxnreg"] = config.maxnreg
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def compile_backward(name: str, config, ragged: bool, arch: int):  # type: ignore[no-untyped-def]
    """Backward kernel ``name`` (``dq`` or ``dkdv``) compiled for ``sm_{arch}`` with ``config``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastvideo_sta.ops import triton_bwd

    fn = triton_bwd._dq_kernel if name == "dq" else triton_bwd._dkdv_kernel
    qs, ks = config.slices(64)
    consts = dict(D=128, D_PAD=128, SLICE=64, HAS_TV=True, F32DOT=False, EVEN=not ragged,
                  TILE_T=0 if ragged else 6, QS=qs, KS=ks)  # fmt: skip
    names = list(inspect.signature(fn.fn).parameters)
    pointers = {n: "*bf16" for n in ("Q", "K", "V", "DO", "DQ", "DK", "DV")}
    pointers.update(LSE="*fp32", DELTA="*fp32", WIN="*i32", TV="*i8")
    signature = {}
    for n in names:
        if n in consts:
            signature[n] = "constexpr"
        elif n in pointers:
            signature[n] = pointers[n]
        elif n in ("scale", "qk_scale"):
            signature[n] = "fp32"
        else:
            signature[n] = "i32"
    aligned = [n for n in names if n in pointers or (n.startswith("s") and signature[n] == "i32")]
    src = ASTSource(
        fn=fn,
        signature=signature,
        constexprs={(names.index(k),): v for k, v in consts.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in aligned},
    )
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def main() -> None:
    from fastvideo_sta.ops.triton_fwd import (
        FWD_CANDIDATES,
        FWD_TMA_CANDIDATES,
        SWEEP_BWD_CONFIGS,
        SWEEP_FWD_CONFIGS,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA capability to compile for (90: Hopper)")
    ap.add_argument("--tiny", action="store_true", help="the first configs only (a quick check)")
    ap.add_argument("--backward", action="store_true", help="also dq and dk/dv over SWEEP_BWD_CONFIGS")
    args = ap.parse_args()
    import triton

    configs = [("fwd", c) for c in list(SWEEP_FWD_CONFIGS)[: 2 if args.tiny else None]]
    if args.backward:
        bwd = [c for c in SWEEP_BWD_CONFIGS if c is not None][: 1 if args.tiny else None]
        configs += [(name, c) for name in ("dq", "dkdv") for c in bwd]
    print(f"triton {triton.__version__}, sm_{args.arch}, bf16, head dim 128, 64-row slices")
    print(
        f"  {'kernel':<6} {'config':<16} {'grid':<7} {'regs':>5} {'stack B':>8} {'smem KB':>8} {'CTAs/SM':>8}  note"
    )
    for kernel, config in configs:
        for ragged in (False, True):
            grid = "ragged" if ragged else "even"
            try:
                if kernel == "fwd":
                    r = resources(compile_forward(config, ragged, args.arch))
                else:
                    r = resources(compile_backward(kernel, config, ragged, args.arch))
            except Exception as exc:  # report and go on
                first = str(exc).splitlines()[0][:120] if str(exc) else ""
                print(f"  {kernel:<6} {config!s:<16} {grid:<7} failed: {type(exc).__name__}: {first}")
                continue
            note = (
                "default candidate"
                if kernel == "fwd" and config in FWD_CANDIDATES + FWD_TMA_CANDIDATES
                else ""
            )
            if r["spill"]:
                note = (note + ", " if note else "") + "spills"
            print(f"  {kernel:<6} {config!s:<16} {grid:<7} {r['regs']:>5} {r['spill']:>8} {r['smem_kb']:>8} "
                  f"{r['ctas']:>8}  {note}", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
