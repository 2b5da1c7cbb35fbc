"""SageAttention 2's Hopper kernel (``sageattention.sageattn_qk_int8_pv_fp8_cuda_sm90``: INT8 Q K^T, FP8 P V)
against cuDNN SDPA (bf16) and our Triton ``sage`` kernel at Wan shapes, same process; accuracy against an fp32
reference on sampled query rows. Run by benchmarks/run_gpu_sage2.sh after it builds the package (issue #24)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(fn, iters: int = 10) -> float:  # type: ignore[no-untyped-def]
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def parts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    """The package's Hopper forward piece by piece (its own functions, per_warp granularity): the mean
    of K, Q/K INT8 quantization, V's padding to 128 tokens, V's FP8 quantization, the attention kernel."""
    from sageattention import sm90_compile
    from sageattention.quant import per_channel_fp8, per_warp_int8

    km = k.mean(dim=1, keepdim=True)
    q8, qs, k8, ks = per_warp_int8(q, k, km, tensor_layout="NHD", BLKQ=64, WARPQ=16, BLKK=128)
    pad = (-k.size(1)) % 128
    vp = torch.cat([v, v.new_zeros(v.size(0), pad, v.size(2), v.size(3))], dim=1) if pad else v
    v8, vs, _ = per_channel_fp8(vp, tensor_layout="NHD", smooth_v=False)
    o = torch.empty_like(q)

    def kernel() -> None:
        sm90_compile.qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf(
            q8, k8, v8, o, qs, ks, vs, 0, 0, 2, q.size(-1) ** -0.5, 0
        )

    return {
        "k_mean": round(time_ms(lambda: k.mean(dim=1, keepdim=True)), 3),
        "qk_int8_per_warp": round(
            time_ms(lambda: per_warp_int8(q, k, km, tensor_layout="NHD", BLKQ=64, WARPQ=16, BLKK=128)), 3
        ),
        "v_pad": round(
            time_ms(lambda: torch.cat([v, v.new_zeros(v.size(0), pad, v.size(2), v.size(3))], dim=1)), 3
        )
        if pad
        else 0.0,
        "v_fp8": round(time_ms(lambda: per_channel_fp8(vp, tensor_layout="NHD", smooth_v=False)), 3),
        "kernel": round(time_ms(kernel), 3),
    }


def main() -> None:
    import sageattention
    from sageattention import sageattn_qk_int8_pv_fp8_cuda_sm90

    from fastvideo.attention.backends import FlashAttnBackend, load_flash_attn
    from fastvideo.attention.sage_triton import sage_attention_triton

    print(torch.cuda.get_device_name(), "torch", torch.__version__, "sageattention", sageattention.__file__)
    for label, length, heads in (("wan-14b self", 32760, 40), ("wan-1.3b self", 32760, 12)):
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (
            torch.randn(1, length, heads, 128, device="cuda", dtype=torch.bfloat16, generator=g)
            for _ in range(3)
        )
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

        def cudnn(qt=qt, kt=kt, vt=vt) -> torch.Tensor:  # type: ignore[no-untyped-def]
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                return F.scaled_dot_product_attention(qt, kt, vt)

        def sage2(q=q, k=k, v=v) -> torch.Tensor:  # type: ignore[no-untyped-def]
            return sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, tensor_layout="NHD", is_causal=False)

        def sage2_warp(q=q, k=k, v=v) -> torch.Tensor:  # type: ignore[no-untyped-def]
            return sageattn_qk_int8_pv_fp8_cuda_sm90(
                q, k, v, tensor_layout="NHD", is_causal=False, qk_quant_gran="per_warp"
            )

        def ours(q=q, k=k, v=v) -> torch.Tensor:  # type: ignore[no-untyped-def]
            return sage_attention_triton(q, k, v)

        kernels = [("cudnn", cudnn), ("sage2_sm90", sage2), ("sage2_sm90_per_warp", sage2_warp),
                   ("ours_triton_sage", ours)]  # fmt: skip
        if FlashAttnBackend.unavailable_reason() is None:  # FA3 / flash-attn-4 where installed
            fa = FlashAttnBackend()
            kernels.append(
                ("flash_attn_" + load_flash_attn()[0], lambda q=q, k=k, v=v, fa=fa: fa.forward(q, k, v))
            )

        rows = torch.randperm(length, generator=torch.Generator().manual_seed(0))[:256].cuda()
        ref = F.scaled_dot_product_attention(qt[:, :, rows].float(), kt.float(), vt.float()).transpose(1, 2)
        result = {"shape": label}
        for name, fn in kernels:
            try:
                out = fn()
                out = out.transpose(1, 2) if name == "cudnn" else out
                err = out[:, rows].float() - ref
                cos = F.cosine_similarity(out[:, rows].float().flatten(), ref.flatten(), dim=0).item()
                ms = time_ms(fn)
                flops = 4 * length * length * 128 * heads
                result[name] = {
                    "ms": round(ms, 2),
                    "tflops": round(flops / ms / 1e9),
                    "max_err": round(err.abs().max().item(), 4),
                    "mean_err": round(err.abs().mean().item(), 5),
                    "cos": round(cos, 6),
                }
            except Exception as exc:  # report and go on
                result[name] = (
                    f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                )
        if isinstance(result.get("sage2_sm90"), dict) and isinstance(result.get("cudnn"), dict):
            result["sage2/cudnn"] = round(result["sage2_sm90"]["ms"] / result["cudnn"]["ms"], 3)
        print(result, flush=True)
        try:
            print({"shape": label, "sage2 parts (ms)": parts(q, k, v)}, flush=True)
        except Exception as exc:  # the package's internals moved: report and go on
            print({"shape": label, "parts": f"failed: {type(exc).__name__}: {exc}"}, flush=True)
        del q, k, v, qt, kt, vt, cudnn, sage2, ours
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
