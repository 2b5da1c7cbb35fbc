"""The ``fp8`` attention backend's kernels, cuDNN's fused FP8 attention and FlashAttention-3's FP8 forward (where
installed), against SageAttention 2's Hopper kernel (the ``sage`` backend, our V packing) and bf16 attention
(cuDNN SDPA, FlashAttention-3) at Wan's self-attention shapes (1 x 32760 tokens x 40 or 12 heads x 128), one
GPU, same process (issue #24): milliseconds of each whole call (cuDNN FP8 with and without the Hadamard
rotation of Q and K), of the FP8 kernels alone (inputs already quantized) and of our quantization alone, and
each output's error against fp32 attention on 256 sampled query rows (keys with a shared channel bias,
sharper-than-random logits and a few 4x outlier channels in Q and K, as trained models have).

    source benchmarks/gpu_env.sh && python benchmarks/fp8_attn_probe.py
(carry ``.whl`` holding ``nvidia_cudnn_frontend-*.whl``: ``bash benchmarks/cudnn_frontend_bundle.sh``; and for
FlashAttention-3 its wheel from ``benchmarks/run_gpu_fa3.sh``)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sage2_probe import time_ms
from torch.nn.attention import SDPBackend, sdpa_kernel

TOKENS, HEAD_DIM = 32760, 128


def _error(out: torch.Tensor, ref: torch.Tensor, rows: torch.Tensor) -> dict:
    got = out[:, rows].float().flatten()
    return {
        "cos": round(float(F.cosine_similarity(got, ref.flatten(), dim=0)), 6),
        "rel_l1": round(float((got - ref.flatten()).abs().mean() / ref.abs().mean()), 5),
    }


def main() -> None:
    from fastvideo.attention import fp8_cudnn
    from fastvideo.attention.fp8_attn import FP8AttentionBackend, _impl_reason
    from fastvideo.attention.fp8_cudnn import _frontend

    reason = FP8AttentionBackend.unavailable_reason()
    cudnn = _frontend()
    print({"fp8 backend": reason or "available", "cudnn impl": _impl_reason("cudnn") or "available",
           "fa3 impl": _impl_reason("fa3") or "available", "cuDNN": fp8_cudnn._FRONTEND.get("version"),
           "frontend": getattr(cudnn, "__version__", None), "torch": torch.__version__,
           "card": torch.cuda.get_device_name()}, flush=True)  # fmt: skip
    for heads in (40, 12):
        print(shape_row(heads, fp8=reason is None and _impl_reason("cudnn") is None), flush=True)


def shape_row(heads: int, fp8: bool) -> dict:
    """One self-attention shape: each kernel's time, rate and error on sampled rows (``fp8``: cuDNN's rows)."""
    from fastvideo.attention.fp8_cudnn import _frontend, _plan, cudnn_fp8_attention, run_plan
    from fastvideo.attention.fp8_quant import quantize_qkv
    from fastvideo.attention.sage import SageBackend, _sage2_op, sage_package_installed

    g = torch.Generator(device="cuda").manual_seed(heads)
    shape = (1, TOKENS, heads, HEAD_DIM)
    outliers = torch.ones(HEAD_DIM, device="cuda")
    outliers[[5, 37, 90]] = 4.0  # a few channels much larger in Q and K
    q = (torch.randn(shape, device="cuda", generator=g) * outliers).bfloat16()
    bias = torch.randn(1, 1, heads, HEAD_DIM, device="cuda", generator=g) * 3  # shared by all keys
    k = (torch.randn(shape, device="cuda", generator=g) * outliers + bias).bfloat16()
    v = torch.randn(shape, device="cuda", generator=g).bfloat16()
    scale = HEAD_DIM**-0.5
    rows = torch.randperm(TOKENS, device="cuda", generator=g)[:256]
    ref = F.scaled_dot_product_attention(
        *(x.transpose(1, 2).float() for x in (q[:, rows], k, v)), scale=scale
    ).transpose(1, 2)
    flops = 4 * TOKENS * TOKENS * heads * HEAD_DIM
    row: dict = {"shape": f"1x{TOKENS}x{heads}x{HEAD_DIM}"}

    def sdpa() -> torch.Tensor:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)

    ms = time_ms(sdpa)
    row.update({"cudnn bf16 ms": round(ms, 3), "cudnn bf16 TFLOPS": round(flops / ms / 1e9)})
    row["cudnn bf16 err"] = _error(sdpa(), ref, rows)
    if sage_package_installed() and SageBackend.unavailable_reason() is None:
        op = _sage2_op()
        ms = time_ms(lambda: op(q, k, v, scale, "auto"))
        row.update({"sage ms": round(ms, 3), "sage TOPS": round(flops / ms / 1e9)})
        row["sage err"] = _error(op(q, k, v, scale, "auto"), ref, rows)
    row.update(_fa3_rows(q, k, v, scale, ref, rows, flops))
    if not fp8:
        return row
    try:
        cudnn = _frontend()
        out = cudnn_fp8_attention(q, k, v, scale)
        plan = _plan(cudnn, q, k, v, scale)
        row["fp8 output dtype"] = str(plan.out_dtype)
        row["fp8 built with stats"] = plan.stats is not None
        row["fp8 ms"] = round(time_ms(lambda: cudnn_fp8_attention(q, k, v, scale)), 3)
        row["fp8 err"] = _error(out, ref, rows)
        plain = cudnn_fp8_attention(q, k, v, scale, rotate=False)  # Q and K not rotated
        row["fp8 no-rotation ms"] = round(
            time_ms(lambda: cudnn_fp8_attention(q, k, v, scale, rotate=False)), 3
        )
        row["fp8 no-rotation err"] = _error(plain, ref, rows)
        row["fp8 quantize ms"] = round(time_ms(lambda: quantize_qkv(q, k, v)), 3)
        q8, k8, v8, descale = quantize_qkv(q, k, v)
        ms = time_ms(lambda: run_plan(cudnn, plan, q8, k8, v8, descale))
        row.update({"fp8 kernel ms": round(ms, 3), "fp8 kernel TFLOPS": round(flops / ms / 1e9)})
    except Exception as err:  # record what failed; the other rows still print
        row["fp8 error"] = f"{type(err).__name__}: {str(err)[:400]}"
    return row


def _fa3_rows(q, k, v, scale, ref, rows, flops) -> dict:  # type: ignore[no-untyped-def]
    """FlashAttention-3 (``flash_attn_interface``, built by run_gpu_fa3.sh) where installed: bf16, and the
    backend's FP8 path (our quantization with one scale per batch and head, then its FP8 forward)."""
    from fastvideo.attention.fp8_attn import fa3_fp8_attention, fa3_installed
    from fastvideo.attention.fp8_quant import quantize_qkv

    if not fa3_installed():
        return {}
    import flash_attn_interface as fa3

    def call(*args, **kw):  # type: ignore[no-untyped-def]
        out = fa3.flash_attn_func(*args, softmax_scale=scale, **kw)
        return out[0] if isinstance(out, tuple) else out

    row: dict = {}
    try:
        ms = time_ms(lambda: call(q, k, v))
        row.update({"fa3 bf16 ms": round(ms, 3), "fa3 bf16 TFLOPS": round(flops / ms / 1e9)})
        row["fa3 bf16 err"] = _error(call(q, k, v), ref, rows)
        row["fa3 fp8 ms"] = round(time_ms(lambda: fa3_fp8_attention(q, k, v, scale)), 3)
        row["fa3 fp8 err"] = _error(fa3_fp8_attention(q, k, v, scale), ref, rows)
        q8, k8, v8, descale = quantize_qkv(q, k, v, per_head=True)
        d = {"q_descale": descale[0], "k_descale": descale[1], "v_descale": descale[2]}
        ms = time_ms(lambda: call(q8, k8, v8, **d))
        row.update({"fa3 fp8 kernel ms": round(ms, 3), "fa3 fp8 kernel TFLOPS": round(flops / ms / 1e9)})
    except Exception as err:  # record what failed
        row["fa3 error"] = f"{type(err).__name__}: {str(err)[:400]}"
    return row


if __name__ == "__main__":
    main()
