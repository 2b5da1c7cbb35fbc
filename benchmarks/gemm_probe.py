"""The FP8 block linears of Wan2.1-14B at 81x480x832 (32760 tokens) on one GPU (issue #24): what the
compiled forward's 552 ms of GEMMs could become. Per shape (the attention projections 5120 -> 5120, the
feed-forward 5120 -> 13824 and 13824 -> 5120, and q/k/v as one 5120 -> 15360 product), TFLOPS of:

* bf16 ``torch.mm`` (the baseline's math);
* ``torch._scaled_mm`` with row-wise scales (what ``FP8Linear`` runs), with and without fast accumulation,
  with and without the bias added inside;
* ``torch._scaled_mm`` with one scale per tensor (fast accumulation): the same FP8 math with cuBLASLt's
  tensor-wide scaling, the upper bound a row-wise kernel could reach on this card.

    PYTHONPATH=core/src python benchmarks/gemm_probe.py
"""

from __future__ import annotations

import torch
from sage2_probe import time_ms

FP8 = torch.float8_e4m3fn
TOKENS = 32760
SHAPES = (("q/k/v/o, cross q/o", 5120, 5120), ("ffn up", 5120, 13824), ("ffn down", 13824, 5120))
SHAPES += (("q+k+v fused", 5120, 15360),)


def probe(label: str, k: int, n: int) -> dict[str, object]:
    a = torch.randn(TOKENS, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    a8, w8 = (a / 8).to(FP8), (w * 8).to(FP8)
    sa, sw = torch.full((TOKENS, 1), 8.0, device="cuda"), torch.full((1, n), 1 / 8, device="cuda")
    one = torch.ones((), device="cuda")
    flop = 2 * TOKENS * k * n

    def rowwise(fast: bool, b: torch.Tensor | None = None) -> torch.Tensor:
        return torch._scaled_mm(
            a8, w8.t(), scale_a=sa, scale_b=sw, bias=b, out_dtype=torch.bfloat16, use_fast_accum=fast
        )

    variants = {
        "bf16 mm": lambda: a @ w.t(),
        "fp8 row-wise, fast accum": lambda: rowwise(True),
        "fp8 row-wise, fast accum, bias": lambda: rowwise(True, bias),
        "fp8 row-wise, exact accum": lambda: rowwise(False),
        "fp8 tensor-wise, fast accum": lambda: torch._scaled_mm(
            a8, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True
        ),
    }
    row: dict[str, object] = {"shape": f"{label}: {TOKENS}x{k} @ {k}x{n}"}
    for name, fn in variants.items():
        try:
            ms = time_ms(fn, iters=20)
            row[name] = f"{ms:.3f} ms, {flop / ms / 1e9:.0f} TFLOPS"
        except (RuntimeError, TypeError) as err:
            row[name] = f"failed: {str(err).splitlines()[0][:120]}"
    return row


def main() -> None:
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    for label, k, n in SHAPES:
        print(probe(label, k, n), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
