"""STA ops: ``sta_attention`` (Triton, differentiable) and its plain PyTorch spec.

Importing this package imports torch and triton; the reference alone needs only torch
(``from fastvideo_sta.ops.reference import sta_attention_reference``).
"""

from fastvideo_sta.ops.op import sta_attention, window_table
from fastvideo_sta.ops.reference import sta_attention_reference

__all__ = ["sta_attention", "sta_attention_reference", "window_table"]
