"""FP8 linears for the DiT blocks: weights in ``float8_e4m3fn`` with one scale per output row.

Two ways of computing, chosen per device:

* ``compute`` (GPUs with FP8 math, compute capability >= 8.9): activations are quantized per row on
  the fly and the product runs in FP8 (``torch._scaled_mm`` with row-wise scales, or torchao's
  ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` when torchao is installed);
* ``storage`` (any device): the FP8 weight is dequantized to the activation dtype in ``forward``
  and multiplied there; this halves the weights' memory, not the time.

Only ``nn.Linear`` layers inside the DiT's blocks are quantized: embeddings, norms, modulation tables
and the output projection live outside the blocks and stay in their dtype.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` (N, K) -> (FP8 (N, K), fp32 scales (N, 1)) with ``w ~= q.float() * scale`` per row."""
    amax = w.detach().float().abs().amax(dim=-1, keepdim=True)  # (N, 1)
    scale = (amax / FP8_MAX).clamp(min=1e-12)
    q = (w.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight an FP8 linear stands for, in ``dtype`` (fp32 product, then cast)."""
    return (q.float() * scale).to(dtype)


def fp8_math_available(device: torch.device) -> bool:
    """Whether ``device`` multiplies in FP8 (CUDA compute capability >= 8.9: Ada, Hopper, Blackwell)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class FP8Linear(nn.Module):
    """A linear layer whose weight is stored in FP8 (``weight`` (N, K), ``weight_scale`` (N, 1) fp32).

    ``mode="storage"`` dequantizes the weight in ``forward``; ``mode="compute"`` quantizes the
    input per row and multiplies in FP8 with fp32 accumulation (CUDA, compute capability >= 8.9).
    """

    def __init__(
        self, in_features: int, out_features: int, *, bias: bool, dtype: torch.dtype, mode: str = "storage"
    ) -> None:
        super().__init__()
        if mode not in ("storage", "compute"):
            raise ValueError(f"FP8Linear mode must be 'storage' or 'compute', got {mode!r}")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8), requires_grad=False)
        self.weight_scale = nn.Parameter(
            torch.empty(out_features, 1, dtype=torch.float32), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: str = "storage") -> FP8Linear:
        """Quantize ``linear``'s weight per output row (its bias is kept as it is)."""
        w = linear.weight
        out = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None, dtype=w.dtype, mode=mode
        )
        out = out.to(w.device)
        q, scale = quantize_rows(w)
        out.weight.data, out.weight_scale.data = q, scale
        if linear.bias is not None:
            out.bias.data = linear.bias.detach()  # type: ignore[union-attr]
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "compute" and x.is_cuda:
            try:
                return self._forward_fp8(x)
            except RuntimeError as exc:  # a torch / GPU without row-wise scaled FP8 matmul
                _warn_fallback(exc)
                self.mode = "storage"
        w = dequantize_rows(self.weight, self.weight_scale, x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    def _forward_fp8(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        xq, xs = quantize_rows(x2)  # (M, K) fp8, (M, 1) fp32
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        bias = None if self.bias is None else self.bias.to(out_dtype)
        out = torch._scaled_mm(
            xq, self.weight.t(), scale_a=xs, scale_b=self.weight_scale.t(), bias=bias, out_dtype=out_dtype
        )  # (M, N)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def _warn_fallback(exc: Exception) -> None:
    import warnings

    warnings.warn(
        f"FP8 matmul unavailable ({exc}); using FP8 storage with bf16 math", RuntimeWarning, stacklevel=3
    )


def _fp8_shape_ok(linear: nn.Linear) -> bool:
    """``torch._scaled_mm`` needs both sizes to be multiples of 16."""
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def block_linears(model: nn.Module) -> Iterable[tuple[nn.Module, str, nn.Linear]]:
    """``(parent, attribute, linear)`` for every ``nn.Linear`` inside the model's blocks."""
    blocks = model.blocks_in_order() if hasattr(model, "blocks_in_order") else []
    for block in blocks:
        for parent in block.modules():
            for name, child in parent.named_children():
                if type(child) is nn.Linear:
                    yield parent, name, child


def _torchao_quantize(model: nn.Module) -> bool:
    """Quantize the blocks' linears with torchao (dynamic FP8 activations, per-row scales); False
    when torchao is not importable."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError:
        return False
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    for block in model.blocks_in_order():  # type: ignore[operator]
        quantize_(block, config, filter_fn=lambda m, _fqn: type(m) is nn.Linear and _fp8_shape_ok(m))
    return True


def quantize_fp8(model: nn.Module, mode: str = "fp8", *, use_torchao: bool | None = None) -> dict[str, Any]:
    """Replace the linears of ``model``'s blocks by FP8 ones, in place.

    :param mode: ``"fp8"``: FP8 math where the model's device has it (torchao when installed, else
        ``torch._scaled_mm``), else FP8 storage; ``"fp8-storage"``: FP8 weights, math in the
        activation dtype, on any device.
    :param use_torchao: None: when importable (FP8 math only).
    :returns: ``{"linears": how many were quantized, "mode": "compute"|"storage", "via": ...}``.
    """
    if mode not in ("fp8", "fp8-storage"):
        raise ValueError(f"quantize must be 'fp8' or 'fp8-storage', got {mode!r}")
    if not hasattr(model, "blocks_in_order"):
        raise TypeError(f"FP8 quantization needs a fastvideo DiT (with blocks), got {type(model).__name__}")
    device = next(model.parameters()).device
    compute = mode == "fp8" and fp8_math_available(device)
    linears = list(block_linears(model))
    if compute and use_torchao is not False and _torchao_quantize(model):
        return {
            "linears": sum(_fp8_shape_ok(lin) for _, _, lin in linears),
            "mode": "compute",
            "via": "torchao",
        }
    count = 0
    for parent, name, linear in linears:
        fits = _fp8_shape_ok(linear) or not compute
        setattr(parent, name, FP8Linear.from_linear(linear, "compute" if compute and fits else "storage"))
        count += 1
    return {
        "linears": count,
        "mode": "compute" if compute else "storage",
        "via": "scaled_mm" if compute else "dequant",
    }
