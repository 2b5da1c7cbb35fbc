"""The ``sage`` attention backend: 8-bit attention as SageAttention computes it (Zhang et al.,
"SageAttention: Accurate 8-Bit Attention for Plug-and-play Inference Acceleration", ICLR 2025):
``K`` smoothed by its mean over tokens, ``Q K^T`` in INT8 with one scale per block of tokens,
softmax in fp32, ``P V`` in fp16 (or, option ``pv=fp8``, in e4m3 as SageAttention 2) with fp32
accumulation. Our own Triton kernel (:mod:`fastvideo.attention.sage_triton`); on Hopper, where the
``sageattention`` package is installed with its CUDA kernels (SageAttention 2, built from source: PyPI's
1.0.6 has none), its ``sageattn_qk_int8_pv_fp8_cuda_sm90`` (INT8 ``Q K^T``, FP8 ``P V``) runs instead
(option ``impl``: ``auto``, ``cuda``, ``triton``; Q/K scales per warp unless ``FASTVIDEO_SAGE_QK_GRAN``
says per_thread), except, under ``impl=auto``, on calls with fewer keys than queries and at most
:data:`EXACT_KV_TOKENS` keys (cross-attention), which run exact attention, faster there.
:func:`sage_attention_reference` is the plain-PyTorch spec.

It is a dense backend (every layer may use it, cross-attention included) and lossy; it is never
picked automatically (``--attention-backend sage``). Under sequence parallelism it runs like any
backend, on the gathered sequence of each rank's heads. Masked or causal calls fall back to a dense
backend.
"""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING, Any

from fastvideo.interfaces.attention import AttentionBackend, BackendOption

if TYPE_CHECKING:
    import torch

    from fastvideo.attention.context import StepContext


def sage_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
    pv: str = "fp16",
) -> torch.Tensor:
    """The math of the kernel in plain PyTorch, written for clarity (the spec the kernel is tested against).

    Shapes ``[B, L, H, D]``. For each (batch, head): ``k <- k - mean_tokens(k)``; ``q`` (times
    ``scale``) and ``k`` are quantized to int8 per block of ``block_m`` / ``block_n`` tokens
    (``s = amax / 127``, round to nearest); logits are the exact integer products times both
    scales; ``P = softmax`` in fp32, rounded to fp16 (unnormalized, relative to each row's max) and
    multiplied with ``v`` rounded to fp16; the output is divided by the fp32 row sums.
    ``pv="fp8"`` (SageAttention 2): ``v`` is divided by one scale per channel (its amax over tokens /
    448) and ``P`` multiplied by 448, both rounded to e4m3, and the product is scaled back.
    """
    import torch

    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            qh, kh, vh = q[b, :, h].double() * scale, k[b, :, h].double(), v[b, :, h]
            kh = kh - k[b, :, h].float().mean(0).double()  # the mean over tokens, in fp32
            qi, qs = _quantize_rows_in_blocks(qh, block_m)
            ki, ks = _quantize_rows_in_blocks(kh, block_n)
            logits = (qi @ ki.T) * (qs[:, None] * ks[None, :])  # (Lq, Lk), exact integer products
            p = torch.exp(logits - logits.amax(dim=1, keepdim=True))
            if pv == "fp8":
                vs = (vh.float().abs().amax(dim=0) / 448.0).clamp(min=1e-12)  # (D,) one scale per channel
                v8 = (vh.float() / vs).to(torch.float8_e4m3fn).double()
                p8 = (p.float() * 448.0).to(torch.float8_e4m3fn).double()
                num = (p8 @ v8) * (vs.double() / 448.0)
            else:
                num = p.half().double() @ vh.half().double()
            out[b, :, h] = (num / p.sum(dim=1, keepdim=True)).to(q.dtype)
    return out


def _quantize_rows_in_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (L, D) -> (integer-valued (L, D), per-row scale (L,)): one scale per block of rows."""
    import torch

    ints, scales = torch.empty_like(x), torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], block):
        rows = x[start : start + block]
        s = max(float(rows.float().abs().max()) / 127.0, 1e-12)
        ints[start : start + block] = (rows.float() / s).round().clamp(-127, 127).double()
        scales[start : start + block] = s
    return ints, scales


def _check_pv(value: str) -> str | None:
    return None if value in ("auto", "fp16", "fp8") else "must be auto, fp16 or fp8"


def _check_impl(value: str) -> str | None:
    return None if value in ("auto", "cuda", "triton") else "must be auto, cuda or triton"


#: The ``sageattention`` package's Hopper kernel (SageAttention 2's CUDA build) and its extension module.
SAGE_PACKAGE_FN = "sageattn_qk_int8_pv_fp8_cuda_sm90"
SAGE_PACKAGE_EXT = "_qattn_sm90"


#: ``{"installed": bool}`` once looked up: filled in eager code (:meth:`SageBackend.unavailable_reason`,
#: the backend's construction) so a compiled block reads a dict, not the file system (``find_spec`` and
#: ``glob`` would break the graph; dynamo re-traces a ``functools.cache`` body).
_PACKAGE: dict[str, bool] = {}


def sage_package_installed() -> bool:
    """Whether ``sageattention`` is installed with its compiled Hopper kernels, found without importing it
    (the PyPI 1.0.6 release and builds for other GPUs have no ``_qattn_sm90`` extension); cached in
    :data:`_PACKAGE` (``_PACKAGE.clear()`` looks again)."""
    if "installed" not in _PACKAGE:
        from pathlib import Path

        spec = importlib.util.find_spec("sageattention")
        places = (spec.submodule_search_locations or []) if spec is not None else []
        _PACKAGE["installed"] = any(any(Path(p).glob(f"{SAGE_PACKAGE_EXT}*")) for p in places)
    return _PACKAGE["installed"]


def _pv_fp16_asked(pv: str) -> bool:
    """``pv=fp16``, or ``auto`` with ``FASTVIDEO_SAGE_PV=fp16`` (read when the block is traced or run)."""
    import os

    return pv == "fp16" or (
        pv == "auto" and os.environ.get("FASTVIDEO_SAGE_PV", "").strip().lower() == "fp16"
    )


def package_reason(q: torch.Tensor, impl: str, pv: str, grad: bool) -> str | None:
    """Why the ``sageattention`` package's Hopper kernel does not take a call (``None``: it does); ``impl``
    is the backend option, ``triton`` never asking for it."""
    import torch

    if impl == "triton":
        return "impl=triton"
    if not sage_package_installed():
        return "the sageattention package with its Hopper CUDA kernels (SageAttention 2) is not installed"
    if grad:
        return "a gradient is needed (the package has no backward)"
    if _pv_fp16_asked(pv):
        return "pv=fp16 (the package's Hopper kernel computes P V in FP8)"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"{q.dtype} (the package takes fp16 or bf16)"
    if q.shape[-1] > 128:
        return f"head dim {q.shape[-1]} (the package's Hopper kernel takes up to 128)"
    if q.is_cuda:
        from fastvideo.attention.sage_triton import device_capability

        major, minor = device_capability(q.device)  # cached: no query inside a compiled graph
        if (major, minor) != (9, 0):
            return f"sm_{major}{minor} (the package's kernel used here is Hopper's, sm_90)"
    elif impl == "auto":  # impl=cuda on CPU tensors: a stand-in package in tests
        return "CPU tensors"
    return None


_SAGE2_OP: list[Any] = []

#: The package kernel's Q/K INT8 scale granularity when ``FASTVIDEO_SAGE_QK_GRAN`` is unset: per_warp
#: (one scale per 16 query rows) measured faster than per_thread at the same accuracy on an H100
#: (Wan2.1-14B self-attention, 40 x 32760 x 128: 26.78 against 27.71 ms, cosine 0.99923 against 0.99925).
SAGE_QK_GRAN = "per_warp"

#: Calls with fewer keys than queries and at most this many keys (cross-attention to text or image tokens)
#: run exact attention (SDPA, cuDNN on Hopper) instead of the package kernel under ``impl=auto``: its
#: quantization passes cost more than they save there (H100, 32760 queries x 40 heads: 512 keys 0.65
#: against 0.87 ms, 257 keys 0.57 against 0.79 ms). ``FASTVIDEO_SAGE_EXACT_KV`` overrides it (0: never).
EXACT_KV_TOKENS = 1024


def _exact_kv_tokens() -> int:
    import os

    text = os.environ.get("FASTVIDEO_SAGE_EXACT_KV", "").strip()
    if not text:
        return EXACT_KV_TOKENS
    try:
        return max(0, int(text))
    except ValueError:
        raise ValueError(
            f"FASTVIDEO_SAGE_EXACT_KV must be a whole number of keys (0: never), got {text!r}"
        ) from None


def _v_pack_wanted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gran: str) -> bool:
    """Whether V is packed by our kernels (:mod:`fastvideo.attention.sage_pack`) and the package's kernel
    called with the package's own Q/K quantization: by default (``FASTVIDEO_SAGE_V_PACK=0`` turns it off;
    H100, Wan 14B self-attention: 0.37 against the package's 1.30 ms a call, the I2V-14B forward 1.887
    against 1.917 s), with per-warp scales, head dim 64 or 128, as many K/V as Q heads, and the package's
    internals importable."""
    import os

    wanted = os.environ.get("FASTVIDEO_SAGE_V_PACK", "").strip().lower() not in ("0", "false", "no", "off")
    if not wanted or gran != "per_warp":
        return False
    if q.shape[-1] not in (64, 128) or k.shape[2] != q.shape[2] or v.shape[-1] != q.shape[-1]:
        return False
    if "parts" not in _PACKAGE_PARTS:
        try:
            quant = importlib.import_module("sageattention.quant")
            sm90 = importlib.import_module("sageattention.sm90_compile")
            _PACKAGE_PARTS["parts"] = (
                quant.per_warp_int8,
                sm90.qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf,
            )
        except (ImportError, AttributeError):  # another layout of the package: its public function
            _PACKAGE_PARTS["parts"] = None
    return _PACKAGE_PARTS["parts"] is not None


#: The package's Q/K quantization and attention kernel, once imported (``None``: not found, or the
#: packed path failed once and the package's public function serves from then on).
_PACKAGE_PARTS: dict[str, Any] = {}


def _sage2_packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """What ``sageattn_qk_int8_pv_fp8_cuda_sm90(..., qk_quant_gran="per_warp")`` computes, with V packed
    by :func:`fastvideo.attention.sage_pack.pack_v_sm90` (two Triton passes and a few small per-channel
    ops instead of the package's four steps). On the inputs' device, as the package's function sets it
    (its kernels launch on the current device)."""
    import contextlib

    import torch

    from fastvideo.attention.sage_pack import pack_v_sm90

    per_warp_int8, kernel = _PACKAGE_PARTS["parts"]
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        km = k.mean(dim=1, keepdim=True)  # K smoothed by its mean over tokens, as the package does
        q8, q_scale, k8, k_scale = per_warp_int8(q, k, km, tensor_layout="NHD", BLKQ=64, WARPQ=16, BLKK=128)
        v8, v_scale = pack_v_sm90(v)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        # layout NHD (0), not causal (0), per-warp Q/K scales (2), no log-sum-exp (0)
        kernel(q8, k8, v8, out, q_scale, k_scale, v_scale, 0, 0, 2, scale, 0)
    return out


def _qk_gran() -> str:
    """``FASTVIDEO_SAGE_QK_GRAN`` (per_thread or per_warp; read inside the custom op, so per call), else
    :data:`SAGE_QK_GRAN`; another value raises, naming both."""
    import os

    value = os.environ.get("FASTVIDEO_SAGE_QK_GRAN", "").strip().lower() or SAGE_QK_GRAN
    if value not in ("per_thread", "per_warp"):
        raise ValueError(f"FASTVIDEO_SAGE_QK_GRAN must be per_thread or per_warp, got {value!r}")
    return value


def _sage2_op() -> Any:
    """The package's Hopper forward as the custom op ``fastvideo::sage2_sm90_fwd``: opaque to torch.compile
    (the DiT blocks are compiled by default on CUDA). Defined in eager code (the backend's availability
    check and construction), before any compiled block needs it. A package call that fails (say an
    extension built for another torch) warns once and runs our Triton kernel, inside the op, so compiled
    graphs fall back too."""
    if not _SAGE2_OP:
        import torch

        @torch.library.custom_op(
            "fastvideo::sage2_sm90_fwd",
            mutates_args=(),
            schema="(Tensor q, Tensor k, Tensor v, float scale, str pv) -> Tensor",
        )
        def sage2_sm90_fwd(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, pv: str
        ) -> torch.Tensor:
            gran = _qk_gran()  # a bad value raises here, not into the fallback
            from fastvideo.errors import warn_once

            if _v_pack_wanted(q, k, v, gran):
                try:
                    return _sage2_packed(q, k, v, scale)
                except Exception as err:  # our packing or the package's internals: its public function
                    _PACKAGE_PARTS["parts"] = None
                    first = str(err).splitlines()[0][:200] if str(err) else ""
                    warn_once(
                        f"sage: our V packing for the package kernel failed ({type(err).__name__}: {first}; "
                        "FASTVIDEO_SAGE_V_PACK=0 turns it off); "
                        "the sageattention package's own function runs"
                    )
            try:
                fn = getattr(importlib.import_module("sageattention"), SAGE_PACKAGE_FN)
                out = fn(q, k, v, tensor_layout="NHD", is_causal=False, sm_scale=scale, qk_quant_gran=gran)
                return (out[0] if isinstance(out, tuple) else out).contiguous()
            except Exception as err:  # any failure of the package: our kernel runs
                from fastvideo.attention.sage_triton import sage_attention_triton

                first = str(err).splitlines()[0][:200] if str(err) else ""
                warn_once(
                    f"sage: the sageattention package failed ({type(err).__name__}: {first}); the Triton kernel runs"
                )
                return sage_attention_triton(q, k, v, scale, pv=pv)

        @sage2_sm90_fwd.register_fake
        def _(q, k, v, scale, pv):  # type: ignore[no-untyped-def]
            return q.new_empty((*q.shape[:-1], v.shape[-1]))

        _SAGE2_OP.append(sage2_sm90_fwd)
    return _SAGE2_OP[0]


class SageBackend(AttentionBackend):
    """INT8 ``Q K^T`` + fp16 (or FP8) ``P V`` attention (our Triton kernel); lossy, chosen only by name."""

    name = "sage"
    priority = -20  # lossy: never the automatic choice
    requires = "triton"
    options = (
        BackendOption(
            name="pv",
            type=str,
            default="auto",
            help="P V precision: fp16, fp8 (e4m3, sm89+) or auto (the card's default)",
            cli_flags=("--sage-pv",),
            validate=_check_pv,
        ),
        BackendOption(
            name="impl",
            type=str,
            default="auto",
            help="kernel: cuda (the sageattention package's Hopper kernel), triton (ours) or auto (cuda where "
            "installed and it takes the call, else triton)",
            cli_flags=("--sage-impl",),
            validate=_check_impl,
        ),
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        import torch

        if not torch.cuda.is_available():
            return "sage needs a CUDA GPU"
        from fastvideo.attention.sage_triton import device_capability

        device_capability(torch.device("cuda"))  # read here, before any compiled graph needs it
        if sage_package_installed():
            _sage2_op()  # defined here too, in eager code
        return None

    def __init__(self) -> None:
        super().__init__()
        if sage_package_installed():  # looked up and the op defined eagerly (see _PACKAGE)
            _sage2_op()

    def supports(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> str | None:
        import torch

        if kwargs.get("attn_mask") is not None:
            return "sage takes no attention mask"
        if kwargs.get("is_causal"):
            return "sage is not causal"
        if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"sage needs fp16/bf16/fp32 inputs, got {q.dtype}"
        if q.shape[-1] > 256:
            return f"sage supports head dims up to 256, got {q.shape[-1]}"
        if q.device.type != "cuda" and not _interpreting():
            return "sage runs on CUDA tensors"
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
        import torch

        from fastvideo.attention.sage_triton import sage_attention_triton
        from fastvideo.errors import warn_once

        scale = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
        impl, pv = self.option(step, "impl"), self.option(step, "pv")
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        reason = package_reason(q, impl, pv, grad)
        if reason is None:
            if impl == "auto" and k.shape[1] < q.shape[1] and k.shape[1] <= _exact_kv_tokens():
                from fastvideo.attention.backends import exact_attention

                return exact_attention(q, k, v, scale)  # a few keys: faster exact (see EXACT_KV_TOKENS)
            return _sage2_op()(q, k, v, scale, pv)
        if impl == "cuda":
            warn_once(f"sage: impl=cuda but the Triton kernel runs: {reason}")
        return sage_attention_triton(q, k, v, scale, pv=pv)

    @classmethod
    def doctor_notes(cls) -> list[str]:
        """Which sage kernel runs: the sageattention package's Hopper kernel where installed, else ours."""
        have = "installed" if sage_package_installed() else "not installed"
        return [
            f"sageattention package with Hopper CUDA kernels (SageAttention 2): {have}; impl=auto uses it on sm_90"
        ]


def _interpreting() -> bool:
    from fastvideo.attention.sage_triton import interpreting

    return interpreting()
