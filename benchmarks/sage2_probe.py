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


def main() -> None:
    import sageattention
    from sageattention import sageattn_qk_int8_pv_fp8_cuda_sm90

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

        def ours(q=q, k=k, v=v) -> torch.Tensor:  # type: ignore[no-untyped-def]
            return sage_attention_triton(q, k, v)

        rows = torch.randperm(length, generator=torch.Generator().manual_seed(0))[:256].cuda()
        ref = F.scaled_dot_product_attention(qt[:, :, rows].float(), kt.float(), vt.float()).transpose(1, 2)
        result = {"shape": label}
        for name, fn in (("cudnn", cudnn), ("sage2_sm90", sage2), ("ours_triton_sage", ours)):
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
        del q, k, v, qt, kt, vt, cudnn, sage2, ours
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
