"""Two questions about SageAttention 2's Hopper path in Wan2.1-I2V-14B's forward (issue #24), on one GPU:

1. Cross-attention (32760 queries against 512 text or 257 image keys, 40 heads): the package's kernel
   (with its quantization) against exact bf16 attention (cuDNN, flash SDPA, the flash-attn backend).
2. The package's input preparation (Q per-warp INT8, K mean-smoothed per-block INT8, V transposed, padded,
   permuted and per-channel FP8: five kernels and a ``torch.cat``) written as PyTorch ops and compiled
   (what inductor would fuse into the block's graph): bit-for-bit against the package's functions, and
   the time of each.

    PYTHONPATH=/tmp/sage2-site:core/src python benchmarks/sage_fused_probe.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sage2_probe import time_ms
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastvideo.attention.sage_pack import pack_v_reference


def prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What ``sageattn_qk_int8_pv_fp8_cuda_sm90(..., qk_quant_gran="per_warp")`` feeds its kernel, in
    PyTorch ops: (q8, q_scale, k8, k_scale, v8, v_scale) for (B, L, H, 128) bf16 inputs."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    # Q: one scale per 16 rows of a head (scale tensor sized for 64-row blocks)
    nq = -(-lq // 64) * 4
    qf = F.pad(q.float(), (0, 0, 0, 0, 0, nq * 16 - lq)).view(b, nq, 16, h, d)
    qa = qf.abs().amax(dim=(2, 4)).clamp_min(1e-7)  # (B, nq, H)
    q8 = torch.round(qf * (127.0 / qa)[:, :, None, :, None]).to(torch.int8).view(b, nq * 16, h, d)[:, :lq]
    q_scale = (qa / 127.0).transpose(1, 2).contiguous()  # (B, H, nq)
    # K: minus its mean over tokens (bf16, as the package computes it), one scale per 128 rows
    km = k.mean(dim=1, keepdim=True)
    nk = -(-lk // 128)
    kf = F.pad(k.float() - km.float(), (0, 0, 0, 0, 0, nk * 128 - lk)).view(b, nk, 128, h, d)
    ka = kf.abs().amax(dim=(2, 4)).clamp_min(1e-7)
    k8 = torch.round(kf * (127.0 / ka)[:, :, None, :, None]).to(torch.int8).view(b, nk * 128, h, d)[:, :lk]
    k_scale = (ka / 127.0).transpose(1, 2).contiguous()
    # V: padded to 128 tokens, (B, D, H, L) with tokens permuted in groups of 16, FP8 per channel
    v8, v_scale = pack_v_reference(v)
    return q8.contiguous(), q_scale, k8.contiguous(), k_scale, v8, v_scale


def package_v(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The package's V packing as its sm90 function runs it: zeros to 128 tokens, then per_channel_fp8."""
    from sageattention.quant import per_channel_fp8

    pad = (-v.size(1)) % 128
    vp = torch.cat([v, v.new_zeros(v.size(0), pad, v.size(2), v.size(3))], dim=1) if pad else v
    v8, vs, _ = per_channel_fp8(vp, tensor_layout="NHD", smooth_v=False)
    return v8, vs


def package_prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    from sageattention.quant import per_warp_int8

    km = k.mean(dim=1, keepdim=True)
    q8, qs, k8, ks = per_warp_int8(q, k, km, tensor_layout="NHD", BLKQ=64, WARPQ=16, BLKK=128)
    return (q8, qs, k8, ks, *package_v(v))


def run_kernel(parts: tuple[torch.Tensor, ...], q: torch.Tensor) -> torch.Tensor:
    from sageattention import sm90_compile

    q8, qs, k8, ks, v8, vs = parts
    o = torch.empty_like(q)
    sm90_compile.qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf(
        q8, k8, v8, o, qs, ks, vs, 0, 0, 2, q.size(-1) ** -0.5, 0
    )
    return o


def main() -> None:
    from sageattention import sageattn_qk_int8_pv_fp8_cuda_sm90

    from fastvideo.attention.backends import FlashAttnBackend, load_flash_attn

    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=g)

    # 1. cross-attention
    for label, lk in (("text 512", 512), ("image 257", 257)):
        q, k, v = rand(1, 32760, 40, 128), rand(1, lk, 40, 128), rand(1, lk, 40, 128)
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        fns = {
            "sage2_per_warp": lambda q=q, k=k, v=v: sageattn_qk_int8_pv_fp8_cuda_sm90(
                q, k, v, tensor_layout="NHD", qk_quant_gran="per_warp"
            ),
        }
        for name, kind in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash_sdpa", SDPBackend.FLASH_ATTENTION)):

            def sdpa(qt=qt, kt=kt, vt=vt, kind=kind) -> torch.Tensor:  # type: ignore[no-untyped-def]
                with sdpa_kernel([kind]):
                    return F.scaled_dot_product_attention(qt, kt, vt)

            fns[name] = sdpa
        if FlashAttnBackend.unavailable_reason() is None:
            fa = FlashAttnBackend()
            fns["flash_attn_" + load_flash_attn()[0]] = lambda q=q, k=k, v=v, fa=fa: fa.forward(q, k, v)
        row = {"cross": label}
        for name, fn in fns.items():
            try:
                row[name] = round(time_ms(fn, iters=20), 3)
            except Exception as exc:  # report and go on
                row[name] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
        print(row, flush=True)

    # 2. input preparation: ours (compiled) against the package's, bit for bit, then timed
    compiled = torch.compile(prepare, dynamic=False)
    for label, lq, h in (("wan-14b self", 32760, 40), ("wan-1.3b self", 32760, 12), ("odd 1000", 1000, 2)):
        q, k, v = rand(1, lq, h, 128), rand(1, lq, h, 128), rand(1, lq, h, 128)
        ref = package_prepare(q, k, v)
        row: dict = {"shape": label}
        for impl, fn in (("eager", prepare), ("compiled", compiled)):
            ours = fn(q, k, v)
            same = []
            for name, a, r in zip(("q8", "qs", "k8", "ks", "v8", "vs"), ours, ref, strict=True):
                n = min(a.shape[-1], r.shape[-1])  # the package may size scales past the last block
                a2, r2 = a[..., :n], r[..., :n]
                if a2.shape != r2.shape:
                    same.append(f"{name}: shape {tuple(a.shape)} vs {tuple(r.shape)}")
                    continue
                diff = (a2.float() - r2.float()).abs()
                bad = int((diff > 0).sum())
                same.append(
                    f"{name}: {'equal' if bad == 0 else f'{bad} differ, max {diff.max().item():.3g}'}"
                )
            row[impl] = same
            out, want = run_kernel(ours, q), run_kernel(ref, q)
            row[f"{impl} attention max|diff|"] = (out.float() - want.float()).abs().max().item()
        row["ms package"] = round(time_ms(lambda q=q, k=k, v=v: package_prepare(q, k, v), iters=20), 3)
        row["ms ours compiled"] = round(time_ms(lambda q=q, k=k, v=v: compiled(q, k, v), iters=20), 3)
        print(row, flush=True)


if __name__ == "__main__":
    main()
