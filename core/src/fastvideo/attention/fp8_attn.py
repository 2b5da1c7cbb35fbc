"""The ``fp8`` attention backend: attention with Q, K, V and P in float8 e4m3 on Hopper and newer, through
one of two kernels (option ``impl``): cuDNN's fused FP8 attention (:mod:`fastvideo.attention.fp8_cudnn`,
``pip install nvidia-cudnn-frontend``) or FlashAttention-3's FP8 forward (``flash_attn_interface``, built
from flash-attention's ``hopper/``; ``benchmarks/run_gpu_fa3.sh``). ``auto`` takes FlashAttention-3 where it
imports (one scale per batch and head, bf16 output), else cuDNN (one scale per tensor, e4m3 output on
Hopper turned back by our kernel).

Both run on Q, K, V quantized by our Triton kernels (:func:`fastvideo.attention.fp8_quant.quantize_qkv`):
K smoothed by its mean over tokens (SageAttention's trick), Q and K rotated along the head dim by the
orthonormal Hadamard matrix (FlashAttention-3's incoherent processing: outlier channels no longer set the
scale; ``FASTVIDEO_FP8_ATTN_ROTATE=0`` skips it). Both kernels scale ``P`` by 256 before rounding it to e4m3
and accumulate in fp32. :func:`fp8_attention_reference` is the plain-PyTorch spec.

Where SageAttention 2 (the ``sage`` backend) keeps ``Q K^T`` in INT8 with a scale per block of tokens, this
backend is FP8 end to end: coarser for Q and K (3 mantissa bits against INT8's 7), in exchange for kernels
that run near Hopper's FP8 tensor-core rate. Lossy, so never picked automatically (``--attention-backend
fp8``). Masked, causal, gradient-needing calls and head dims other than 64 / 128 fall back to a dense
backend; cross-attention to at most :data:`EXACT_KV_TOKENS` keys runs exact SDPA.
"""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING, Any

from fastvideo.interfaces.attention import AttentionBackend, BackendOption

if TYPE_CHECKING:
    import torch

    from fastvideo.attention.context import StepContext

#: Calls with fewer keys than queries and at most this many keys (cross-attention to text or image
#: tokens) run exact attention: the quantization passes cost more than they save there (as for ``sage``).
EXACT_KV_TOKENS = 1024
#: Head dims the backend hands to the FP8 kernels (Q/K and V alike).
HEAD_DIMS = (64, 128)
#: ``impl`` values.
IMPLS = ("auto", "cudnn", "fa3")


def fp8_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    rotate: bool = True,
    out_fp8: bool = True,
    per_head: bool = False,
) -> torch.Tensor:
    """The backend's math in plain PyTorch, written for clarity. Shapes ``[B, L, H, D]``.

    Q and K - mean(K) (both rotated by the orthonormal Hadamard matrix unless ``rotate=False``) and V in
    e4m3 as :func:`~fastvideo.attention.fp8_quant.quantize_qkv_reference` rounds them (one scale per tensor,
    or per batch and head with ``per_head``); logits = exact products of the e4m3 values times both descales
    and ``scale``; ``P = exp(logits - row max)`` in fp32, rounded to e4m3 after multiplying by 256; the output
    is ``(P8 @ V8) * v_descale / 256`` divided by the fp32 row sums of ``P``; with ``out_fp8`` (cuDNN on
    Hopper) it is rounded to e4m3 after multiplying by ``OUT_MARGIN / v_descale`` and multiplied back. (The
    kernels round ``P`` relative to a running maximum over blocks of keys: the same error size, not always
    the same values.)
    """
    import torch

    from fastvideo.attention.fp8_cudnn import OUT_MARGIN, P_SCALE
    from fastvideo.attention.fp8_quant import quantize_qkv_reference

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q8, k8, v8, descale = quantize_qkv_reference(q, k, v, rotate, per_head)
    if not per_head:  # (3,) -> (3, 1, 1): one shape for both
        descale = descale.view(3, 1, 1)
    dq, dk, dv = (d.double()[..., None, None] for d in descale)  # (B or 1, H or 1, 1, 1)
    qd, kd, vd = (x.double().transpose(1, 2) for x in (q8, k8, v8))  # [B, H, L, D]
    logits = (qd @ kd.transpose(-1, -2)) * (dq * dk * scale)
    p = torch.exp(logits - logits.amax(dim=-1, keepdim=True)).float()
    p8 = (p * P_SCALE).to(torch.float8_e4m3fn).double()
    out = (p8 @ vd) * (dv / P_SCALE) / p.double().sum(dim=-1, keepdim=True)
    if out_fp8:
        o_scale = OUT_MARGIN / dv
        out = (out * o_scale).float().to(torch.float8_e4m3fn).double() / o_scale
    return out.transpose(1, 2).to(q.dtype)


def _rotate_wanted() -> bool:
    """Q and K rotated by the Hadamard matrix before quantization (:mod:`fastvideo.attention.fp8_quant`):
    on unless ``FASTVIDEO_FP8_ATTN_ROTATE=0`` (read when a block is traced or run)."""
    import os

    return os.environ.get("FASTVIDEO_FP8_ATTN_ROTATE", "").strip().lower() not in ("0", "false", "no", "off")


def fa3_installed() -> bool:
    """Whether FlashAttention-3 (``flash_attn_interface``) is installed (not imported)."""
    return importlib.util.find_spec("flash_attn_interface") is not None


def fa3_fp8_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, rotate: bool = True
) -> torch.Tensor:
    """FP8 attention through FlashAttention-3's Hopper forward on our quantization (one scale per batch and
    head, handed over as its descales); the output, [B, L, H, D], in q's dtype (FlashAttention-3 writes bf16:
    an fp16 model's output is rounded to bf16 first)."""
    import flash_attn_interface

    from fastvideo.attention.fp8_quant import quantize_qkv

    q8, k8, v8, descale = quantize_qkv(q, k, v, rotate, per_head=True)
    out = flash_attn_interface.flash_attn_func(
        q8, k8, v8, softmax_scale=scale, q_descale=descale[0], k_descale=descale[1], v_descale=descale[2]
    )
    out = out[0] if isinstance(out, tuple) else out
    return out if out.dtype == q.dtype else out.to(q.dtype)


def _cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, rotate: bool) -> torch.Tensor:
    from fastvideo.attention.fp8_cudnn import cudnn_fp8_attention

    return cudnn_fp8_attention(q, k, v, scale, rotate)


#: The custom ops, once defined: name -> op.
_OPS: dict[str, Any] = {}


def _op(impl: str) -> Any:
    """The ``impl`` path (``cudnn`` or ``fa3``) as the custom op ``fastvideo::fp8_attn_<impl>``, opaque to
    torch.compile (the DiT blocks are compiled by default on CUDA); defined in eager code before a compiled
    block needs it. A call the kernel cannot run (no cuDNN build for a shape, a package that fails) warns
    once and runs exact attention, inside the op, so compiled blocks fall back too."""
    if impl not in _OPS:
        import torch

        run = _cudnn if impl == "cudnn" else fa3_fp8_attention

        def fp8_attn(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, rotate: bool
        ) -> torch.Tensor:
            try:
                return run(q, k, v, scale, rotate)
            except Exception as err:  # the kernel cannot take this call: exact attention
                from fastvideo.attention.backends import exact_attention
                from fastvideo.errors import warn_once

                first = str(err).splitlines()[0][:300] if str(err) else ""
                warn_once(
                    f"fp8 attention ({impl}) failed ({type(err).__name__}: {first}); exact attention (SDPA) runs"
                )
                return exact_attention(q, k, v, scale).contiguous()

        op = torch.library.custom_op(
            f"fastvideo::fp8_attn_{impl}",
            fp8_attn,
            mutates_args=(),
            schema="(Tensor q, Tensor k, Tensor v, float scale, bool rotate) -> Tensor",
        )

        @op.register_fake
        def _(q, k, v, scale, rotate):  # type: ignore[no-untyped-def]
            return q.new_empty((*q.shape[:-1], v.shape[-1]))

        _OPS[impl] = op
    return _OPS[impl]


def _check_impl(value: str) -> str | None:
    return None if value in IMPLS else f"must be {', '.join(IMPLS[:-1])} or {IMPLS[-1]}"


#: FlashAttention-3's import, tried once: ``{"error": message or None}``.
_FA3: dict[str, str | None] = {}


def _impl_reason(impl: str) -> str | None:
    """Why ``impl`` (``cudnn`` or ``fa3``) cannot run here, the GPU aside (``None``: it can); each package is
    imported once to know (an installed build that does not load is not usable)."""
    if impl == "cudnn":
        from fastvideo.attention.fp8_cudnn import cudnn_reason

        return cudnn_reason()
    if not fa3_installed():
        return "FlashAttention-3 (flash_attn_interface) is not installed"
    if "error" not in _FA3:
        try:
            importlib.import_module("flash_attn_interface")
            _FA3["error"] = None
        except Exception as err:  # a build for another torch or CUDA
            first = str(err).splitlines()[0] if str(err) else ""
            _FA3["error"] = f"FlashAttention-3 does not load ({type(err).__name__}: {first})"
    return _FA3["error"]


#: ``impl=auto``'s choice, once made (looked up in eager code: find_spec and imports break compiled graphs).
_AUTO: dict[str, str] = {}


def resolve_impl(impl: str) -> str:
    """``impl`` with ``auto`` resolved: ``fa3`` where FlashAttention-3 is installed and loads, else ``cudnn``
    (decided once, in eager code: the backend's availability check)."""
    if impl != "auto":
        return impl
    if "impl" not in _AUTO:
        _AUTO["impl"] = "fa3" if _impl_reason("fa3") is None else "cudnn"
    return _AUTO["impl"]


class FP8AttentionBackend(AttentionBackend):
    """Attention in FP8 (Q, K rotated and smoothed, V and P in e4m3) through cuDNN or FlashAttention-3; lossy,
    chosen only by name."""

    name = "fp8"
    priority = -20  # lossy: never the automatic choice
    requires = "nvidia-cudnn-frontend"
    options = (
        BackendOption(
            name="impl",
            type=str,
            default="auto",
            help="kernel: cudnn (cuDNN's FP8 attention), fa3 (FlashAttention-3's FP8 forward) or auto (fa3 "
            "where installed, else cudnn)",
            cli_flags=("--fp8-attn-impl",),
            validate=_check_impl,
        ),
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        reasons = {impl: _impl_reason(impl) for impl in ("fa3", "cudnn")}
        if all(reasons.values()):
            return f"no FP8 attention kernel here (cudnn: {reasons['cudnn']}; fa3: {reasons['fa3']})"
        import torch

        if not torch.cuda.is_available():
            return "fp8 attention needs a CUDA GPU"
        from fastvideo.attention.sage_triton import device_capability

        major, minor = device_capability(torch.device("cuda"))  # read here, before any compiled graph
        if major < 9:
            return f"fp8 attention needs Hopper or newer (sm_90+), this GPU is sm_{major}{minor}"
        for impl in reasons:  # both ops defined here, in eager code (an unusable one warns and runs SDPA)
            _op(impl)
        resolve_impl("auto")
        return None

    def supports(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> str | None:
        import torch

        if kwargs.get("attn_mask") is not None:
            return "fp8 attention takes no attention mask"
        if kwargs.get("is_causal"):
            return "fp8 attention is not causal"
        if q.dtype not in (torch.float16, torch.bfloat16):
            return f"fp8 attention needs fp16/bf16 inputs, got {q.dtype}"
        if q.shape[-1] not in HEAD_DIMS or k.shape[-1] != q.shape[-1] or v.shape[-1] != q.shape[-1]:
            dims = " or ".join(map(str, HEAD_DIMS))
            return f"fp8 attention takes head dims {dims}, got {q.shape[-1]} / {v.shape[-1]}"
        if k.shape[2] != q.shape[2] or v.shape[2] != q.shape[2]:
            return f"fp8 attention needs as many K/V heads as Q heads, got {q.shape[2]} / {k.shape[2]}"
        if q.device.type != "cuda":
            return "fp8 attention runs on CUDA tensors"
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            return "fp8 attention has no backward (inference only)"
        return None

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
        is_causal: bool = False,
        step: StepContext | None = None,
    ) -> torch.Tensor:
        from fastvideo.attention.backends import exact_attention

        scale = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
        if k.shape[1] < q.shape[1] and k.shape[1] <= EXACT_KV_TOKENS:
            return exact_attention(q, k, v, scale)  # cross-attention to a few keys
        impl = resolve_impl(self.option(step, "impl"))
        return _op(impl)(q, k, v, scale, _rotate_wanted())

    @classmethod
    def doctor_notes(cls) -> list[str]:
        """Which FP8 kernels are installed, and the cuDNN the frontend found."""
        from fastvideo.attention.fp8_cudnn import _FRONTEND, frontend_installed

        version, error = _FRONTEND.get("version"), _FRONTEND.get("error")
        if not frontend_installed():
            cudnn = "no"
        elif error:
            cudnn = f"installed but does not load ({error})"
        else:
            cudnn = f"installed; cuDNN {version if version else '(not loaded yet)'}"
        return [
            f"nvidia-cudnn-frontend (impl=cudnn): {cudnn}; "
            f"FlashAttention-3 (impl=fa3): {'installed' if fa3_installed() else 'no'}"
        ]
