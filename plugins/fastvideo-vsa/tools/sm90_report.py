"""Compile every VSA kernel config for Hopper (sm_90) without a GPU and report what the compiler made.

    python plugins/fastvideo-vsa/tools/sm90_report.py [--head-dim 128] [--gluon-only]

The Gluon kernels of :mod:`fastvideo_vsa.ops.hopper` are compiled too (the tests run this with
``--gluon-only`` to catch a triton whose Gluon API the kernels no longer match).

Uses the ``ptxas``/``cuobjdump`` that ship with the triton wheel. Per autotuning config: registers
per thread, spill stack bytes, shared memory, and counts of Hopper tensor-core instructions
(``HGMMA``), async copies (``LDGSTS``) and ``MUFU.EX2`` in the SASS. A config that spills or shows
no ``HGMMA`` is worth a look before timing it on a GPU. The codegen of the triton installed here can
differ from the GPU machine's.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # must be unset before the kernels are defined

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastvideo_vsa.ops import hopper, pooling, triton_bwd, triton_fwd

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
BF16, F32, I32 = "*bf16", "*fp32", "*i32"
SCALARS_F32 = {"qk_scale", "scale"}


def compile_sm90(fn, pointers: dict[str, str], constexprs: dict, num_warps: int, num_stages: int):
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
        else:
            signature[name] = "fp32" if name in SCALARS_F32 else "i32"
    aligned = [
        (i,) for i, n in enumerate(fn.arg_names) if n in pointers or (n.startswith("s") and n != "scale")
    ]
    src = ASTSource(fn, signature, constexprs, {k: [["tt.divisibility", 16]] for k in aligned})
    return triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )


def describe(kernel) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run(
            [BIN / "cuobjdump", "-res-usage", f.name], capture_output=True, text=True
        ).stdout
        sass = subprocess.run([BIN / "cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    regs, stack = (m.group(1), m.group(2)) if m else ("?", "?")
    counts = " ".join(f"{op}={sass.count(op)}" for op in ("HGMMA", "LDGSTS", "UTMALDG", "MUFU.EX2"))
    return f"regs {regs:>3}  spill {stack:>4} B  smem {kernel.metadata.shared // 1024:>3} KiB  {counts}"


def compile_gluon_sm90(fn, d: int, constexprs: dict):
    """Compile a Gluon kernel of :mod:`fastvideo_vsa.ops.hopper` for sm_90 (4 warps), bf16, head dim ``d``."""
    import torch
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    tile = torch.empty(64, d, dtype=torch.bfloat16)
    desc = mangle_type(hopper._descriptors((tile,))[0])
    nk = constexprs.get("NK", 64)  # the narrow dk/dv kernel: key tiles of NK rows, P and dS tiles 64 x NK
    key_desc = mangle_type(hopper._descriptors((tile,), rows=nk)[0])
    if "NK" in constexprs:
        constexprs = {
            **constexprs,
            "P_LAYOUT": hopper.gl.NVMMASharedLayout.get_default_for([64, nk], hopper.gl.bfloat16),
        }
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in ("k_desc", "v_desc"):
            signature[name] = key_desc
        elif name in (
            "k32_desc",
            "v32_desc",
            "k16_desc",
            "v16_desc",
            "q32_desc",
            "do32_desc",
            "q16_desc",
            "do16_desc",
        ):
            signature[name] = mangle_type(
                hopper._descriptors((tile,), rows=int("".join(ch for ch in name if ch.isdigit())))[0]
            )
        elif name.endswith("_desc"):
            signature[name] = desc
        elif name in ("Q", "DO", "G", "OUT", "DQ", "DK", "DV"):
            signature[name] = BF16
        elif name in ("OC", "LSE", "DELTA", "DQC", "LT", "DT", "DKC", "DVC"):
            signature[name] = F32
        elif name in ("IDX", "ORDER", "LISTS", "COUNT", "WIDTHS", "QW"):
            signature[name] = I32
        elif name == "FIRST":
            signature[name] = "*i64"
        else:
            signature[name] = "fp32" if name in SCALARS_F32 else "i32"
    src = GluonASTSource(fn, signature, constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--gluon-only", action="store_true")
    args = ap.parse_args()
    d = args.head_dim
    if hopper.HAVE_GLUON and d in hopper.HEAD_DIMS:
        for name, fn, consts in (
            ("gluon fwd", hopper._fwd_kernel, {"D": d, "HAS_GATE": True, "MODE": 0, "PACKED": True}),
            ("gluon dq", hopper._dq_kernel, {"D": d, "HAS_COARSE": True, "PACKED": True}),
            ("gluon dkdv", hopper._dkdv_kernel, {"D": d, "HAS_COARSE": True, "NS": 2}),
            ("gluon dkdv", hopper._dkdv_kernel, {"D": d, "HAS_COARSE": True, "NS": 3}),
            *(
                (
                    "gluon dkdv narrow",
                    hopper._dkdv_narrow_kernel,
                    {"D": d, "NK": nk, "HAS_COARSE": True, "NS": hopper.NARROW_STAGES[nk]},
                )
                for nk in hopper.NARROW_WIDTHS
            ),
        ):
            print(f"{name:8} (4 warps): {describe(compile_gluon_sm90(fn, d, consts))}")
    if args.gluon_only:
        return
    dims = dict(D=d, D_PAD=triton_fwd.d_pad(d), F32DOT=False)
    rows = {n: BF16 for n in ("Q", "K", "V", "G", "OUT", "DO", "DG", "DQ", "DK", "DV")}
    rows.update({n: BF16 for n in ("QT", "KT", "VT")})
    f32 = {n: F32 for n in ("OC", "LSE", "DELTA", "DOC", "DQC", "DKC", "DVC", "QC", "KC", "VC", "DQACC")}
    ptrs = {**rows, **f32, "RUNS": I32, "FIRST": I32, "COUNT": I32}
    plan = [
        ("fwd", triton_fwd._fwd_kernel, triton_fwd.FWD_CONFIGS, {"HAS_GATE": True}),
        ("dq", triton_bwd._dq_kernel, triton_bwd.DQ_CONFIGS, {"HAS_GATE": True}),
        ("dkdv", triton_bwd._dkdv_kernel, triton_bwd.DKDV_CONFIGS, {"HAS_GATE": True, "DQ_ATOMIC": False}),
        ("dkdv+dq", triton_bwd._dkdv_kernel, triton_bwd.DKDVQ_CONFIGS, {"HAS_GATE": True, "DQ_ATOMIC": True}),
        ("prep", triton_bwd._prep_kernel, triton_bwd.PREP_CONFIGS, {"HAS_GATE": True}),
        ("pool", pooling._pool_kernel, pooling.POOL_CONFIGS, {"POOL_V": True, "TILES": False}),
        ("pool+tiles", pooling._pool_kernel, pooling.POOL_CONFIGS, {"POOL_V": True, "TILES": True}),
    ]
    for name, fn, configs, extra in plan:
        for cfg in configs:
            consts = {k: v for k, v in {**dims, **extra, **cfg.kwargs}.items() if k in fn.arg_names}
            kernel = compile_sm90(fn, ptrs, consts, cfg.num_warps, cfg.num_stages)
            print(f"{name:8} {cfg.kwargs} warps={cfg.num_warps} stages={cfg.num_stages}: {describe(kernel)}")


if __name__ == "__main__":
    main()
