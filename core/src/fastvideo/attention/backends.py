"""The core's built-in attention backends: ``sdpa`` (torch SDPA) and ``flash-attn``."""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any, ClassVar

from fastvideo.interfaces.attention import AttentionBackend

if TYPE_CHECKING:
    import torch

    from fastvideo.attention.context import StepContext

#: ``FASTVIDEO_SDPA_KERNEL`` values -> torch SDPBackend member names (tried in this order).
SDPA_KERNELS = {
    "cudnn": "CUDNN_ATTENTION",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Plain SDPA on ``[B, L, H, D]`` tensors (the lossy backends' path for cross-attention to a few keys)."""
    import torch.nn.functional as F

    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


class SDPABackend(AttentionBackend):
    """``torch.nn.functional.scaled_dot_product_attention``.

    torch's own kernel choice is used (on Hopper with torch >= 2.5 it already takes cuDNN's fused
    attention for bf16, the fastest there); ``FASTVIDEO_SDPA_KERNEL=cudnn|flash|efficient|math``,
    read when the backend is created, pins one kernel on CUDA.
    """

    name = "sdpa"
    priority = 0
    requires = "torch>=2.5"

    def __init__(self) -> None:
        self._kernels: list[Any] | None = None
        pinned = os.environ.get("FASTVIDEO_SDPA_KERNEL", "").strip().lower()
        if pinned and pinned not in SDPA_KERNELS:
            raise ValueError(
                f"FASTVIDEO_SDPA_KERNEL={pinned!r} is not a kernel; expected one of {', '.join(SDPA_KERNELS)}"
            )
        self._pinned = pinned or None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        return None

    def _kernel_list(self) -> list[Any]:
        if self._kernels is None:
            from torch.nn.attention import SDPBackend

            assert self._pinned is not None
            self._kernels = [getattr(SDPBackend, SDPA_KERNELS[self._pinned])]
        return self._kernels

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
        import torch.nn.functional as F
        from torch.nn.attention import sdpa_kernel

        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
        if q.is_cuda and self._pinned is not None:
            with sdpa_kernel(self._kernel_list()):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale, is_causal=is_causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale, is_causal=is_causal)
        return out.transpose(1, 2)  # [B, L, H, D]


#: The packages of :class:`FlashAttnBackend`, in the order tried: FlashAttention-3 (Hopper build,
#: module ``flash_attn_interface``), FlashAttention-4 (``pip install flash-attn-4``: CuTe-DSL kernels
#: for sm_80/90/100/120, module ``flash_attn.cute``), FlashAttention-2 (``pip install flash-attn``).
#: ``FASTVIDEO_FLASH_ATTN=fa3|fa4|fa2`` pins one.
FLASH_ATTN_IMPLS = {"fa3": "flash_attn_interface", "fa4": "flash_attn.cute", "fa2": "flash_attn"}


def flash_attn_installed() -> list[str]:
    """Which of :data:`FLASH_ATTN_IMPLS` are installed, in their order, found without importing them
    (FA2's package loads its CUDA extension on import). FA4 installs ``flash_attn/cute`` beside or
    without FA2's ``flash_attn/__init__.py`` and runs on ``cutlass`` (nvidia-cutlass-dsl), so the two
    are told apart by those files."""
    found = []
    if importlib.util.find_spec("flash_attn_interface") is not None:
        found.append("fa3")
    spec = importlib.util.find_spec("flash_attn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    cute = any(os.path.isfile(os.path.join(loc, "cute", "__init__.py")) for loc in locations)
    if cute and importlib.util.find_spec("cutlass") is not None:
        found.append("fa4")
    if any(os.path.isfile(os.path.join(loc, "__init__.py")) for loc in locations):
        found.append("fa2")
    return found


def _pinned_flash_attn() -> str | None:
    pinned = os.environ.get("FASTVIDEO_FLASH_ATTN", "").strip().lower()
    if pinned and pinned not in FLASH_ATTN_IMPLS:
        raise ValueError(
            f"FASTVIDEO_FLASH_ATTN={pinned!r}: expected one of {', '.join(FLASH_ATTN_IMPLS)} (or unset)"
        )
    return pinned or None


def flash_attn_impl() -> str | None:
    """The implementation :class:`FlashAttnBackend` would run (a key of :data:`FLASH_ATTN_IMPLS`), or
    None: the pinned one if installed, else the first installed. (One that is installed but fails to
    import is skipped when the backend loads it, unless pinned.)"""
    found = flash_attn_installed()
    pinned = _pinned_flash_attn()
    if pinned:
        return pinned if pinned in found else None
    return found[0] if found else None


_FLASH_ATTN_LOADED: dict[str | None, tuple[str, Any]] = {}


def load_flash_attn() -> tuple[str, Any]:
    """``(impl, flash_attn_func)``: the pinned implementation, else the first installed one that imports
    (an FA4 whose compiler does not load on this Python, say, gives way to FA2). Cached per pin.

    :raises ImportError: none imports (the first error named), or the pinned one does not.
    """
    pinned = _pinned_flash_attn()
    if pinned not in _FLASH_ATTN_LOADED:
        candidates = [pinned] if pinned else flash_attn_installed()
        errors = []
        for impl in candidates:
            try:
                module = importlib.import_module(FLASH_ATTN_IMPLS[impl])
                _FLASH_ATTN_LOADED[pinned] = (impl, module.flash_attn_func)
                break
            except (ImportError, OSError, AttributeError) as err:  # a broken install: try the next one
                errors.append(f"{impl}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        else:
            raise ImportError(
                "flash-attn: no FlashAttention package imports here ("
                + ("; ".join(errors) or "none is installed")
                + "); pip install flash-attn (FA2) or flash-attn-4, or pick another --attention-backend"
            )
    return _FLASH_ATTN_LOADED[pinned]


class FlashAttnBackend(AttentionBackend):
    """Tri Dao's FlashAttention: FA3 (``flash_attn_interface``), else FA4 (``flash_attn.cute``), else
    FA2 (``flash_attn``); see :data:`FLASH_ATTN_IMPLS`."""

    name = "flash-attn"
    priority = -1  # cuDNN SDPA is faster on Hopper than FA2; flash-attn must be asked for
    requires = "flash-attn"
    _HEAD_DIMS: ClassVar[frozenset[int]] = frozenset({32, 64, 96, 128, 160, 192, 224, 256})

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if flash_attn_impl() is None:
            pinned = os.environ.get("FASTVIDEO_FLASH_ATTN")
            if pinned:
                return f"FASTVIDEO_FLASH_ATTN={pinned} but that flash-attention package is not installed"
            return "the flash_attn package is not installed (FA2, FA3 or flash-attn-4)"
        import torch

        if not torch.cuda.is_available():
            return "flash-attn needs a CUDA GPU"
        if flash_attn_impl() == "fa4":
            _fa4_op()  # defined here, in eager code: defining it while a block is traced breaks the graph
        return None

    @classmethod
    def doctor_notes(cls) -> list[str]:
        """Which FlashAttention packages are installed and which one runs."""
        found = flash_attn_installed()
        try:
            runs = flash_attn_impl()
        except ValueError as err:
            return [f"installed: {', '.join(found) or 'none'}", str(err)]
        chosen = f"{runs} ({FLASH_ATTN_IMPLS[runs]})" if runs else "none"
        return [
            f"installed: {', '.join(found) or 'none'}; runs: {chosen} (FASTVIDEO_FLASH_ATTN=fa3|fa4|fa2 pins)"
        ]

    def supports(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> str | None:
        import torch

        if kwargs.get("attn_mask") is not None:
            return "flash-attn takes no attention mask"
        if q.dtype not in (torch.float16, torch.bfloat16):
            return f"flash-attn needs fp16/bf16, got {q.dtype}"
        if q.shape[-1] not in self._HEAD_DIMS:
            return f"flash-attn does not support head dim {q.shape[-1]}"
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

        impl, flash_attn_func = load_flash_attn()
        if impl == "fa4" and not (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))):
            return _fa4_op()(q, k, v, scale, is_causal)  # opaque to torch.compile
        out = flash_attn_func(q, k, v, softmax_scale=scale, causal=is_causal)
        return out[0] if isinstance(out, tuple) else out  # [B, L, H, D]


_FA4_OP: list[Any] = []


def _fa4_op() -> Any:
    """FlashAttention-4's forward as the custom op ``fastvideo::flash_attn4_fwd`` (inference), defined on
    first use: FA2 and FA3 register their own ops, FA4's CuTe-DSL launcher is plain Python that
    torch.compile cannot trace (the DiT blocks are compiled by default on CUDA)."""
    if not _FA4_OP:
        import torch

        @torch.library.custom_op(
            "fastvideo::flash_attn4_fwd",
            mutates_args=(),
            schema="(Tensor q, Tensor k, Tensor v, float? scale, bool causal) -> Tensor",  # annotations are strings here
        )
        def flash_attn4_fwd(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, causal: bool
        ) -> torch.Tensor:
            _impl, fn = load_flash_attn()
            out = fn(q, k, v, softmax_scale=scale, causal=causal)
            return (out[0] if isinstance(out, tuple) else out).contiguous()

        @flash_attn4_fwd.register_fake
        def _(q, k, v, scale, causal):  # type: ignore[no-untyped-def]
            return q.new_empty((*q.shape[:-1], v.shape[-1]))

        _FA4_OP.append(flash_attn4_fwd)
    return _FA4_OP[0]
