"""VSA ops: ``vsa_attention`` (Triton, differentiable) and its plain PyTorch spec.

Importing this package imports torch and triton; the reference alone needs only torch
(``from fastvideo_vsa.ops.reference import vsa_attention_reference``).
"""

from fastvideo_vsa.ops.geometry import CubeGeometry, topk_for
from fastvideo_vsa.ops.op import vsa_attention, vsa_select
from fastvideo_vsa.ops.reference import vsa_attention_reference

__all__ = ["CubeGeometry", "topk_for", "vsa_attention", "vsa_attention_reference", "vsa_select"]
