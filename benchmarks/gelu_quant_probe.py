"""The FP8 feed-forward's middle step on one GPU (issue #24): GELU (tanh) of the first linear's output,
then per-row FP8 quantization for the second linear, as inductor fuses it from PyTorch ops (what the
compiled blocks ran) against our Triton quantization kernel with the GELU applied as rows are read
(``quantize_rows_triton(x, gelu=True)``), and the kernel without GELU for scale. Shapes: 32760 tokens by
Wan 14B's 13824 and Wan 1.3B's 8960 hidden width; accuracy against fp32 GELU then quantize_rows.

    PYTHONPATH=core/src python benchmarks/gelu_quant_probe.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sage2_probe import time_ms

from fastvideo.optimize.fp8 import quantize_rows
from fastvideo.optimize.fp8_triton import quantize_rows_triton


def torch_ops(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_rows(F.gelu(x, approximate="tanh"))


def main() -> None:
    print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    compiled = torch.compile(torch_ops, dynamic=False)
    for label, width in (("wan-14b ffn", 13824), ("wan-1.3b ffn", 8960)):
        x = torch.randn(32760, width, device="cuda", dtype=torch.bfloat16) * 2
        q, s = quantize_rows_triton(x, gelu=True)
        rq, rs = quantize_rows(F.gelu(x.float(), approximate="tanh"))
        cq, cs = compiled(x)
        deq, ref = q.float() * s, rq.float() * rs
        row = {
            "shape": f"{label} 32760x{width}",
            "inductor (compiled torch ops) ms": round(time_ms(lambda x=x: compiled(x), iters=20), 3),
            "triton gelu+quant ms": round(
                time_ms(lambda x=x: quantize_rows_triton(x, gelu=True), iters=20), 3
            ),
            "triton quant alone ms": round(time_ms(lambda x=x: quantize_rows_triton(x), iters=20), 3),
            "scale max rel diff (ours, inductor)": [
                ((s - rs).abs() / rs).max().item(),
                ((cs - rs).abs() / rs).max().item(),
            ],
            "q values differing from fp32 reference (ours, inductor)": [
                int((q.float() != rq.float()).sum()),
                int((cq.float() != rq.float()).sum()),
            ],
            "max |dequant - ref| / row amax": ((deq - ref).abs() / (rs * 448)).max().item(),
        }
        print(row, flush=True)
        del x, q, s, rq, rs, cq, cs, deq, ref
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
