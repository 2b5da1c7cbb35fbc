"""HunyuanVideo with the fused Triton kernels (:mod:`fastvideo.kernels`, run on CPU under
``TRITON_INTERPRET=1`` in fp32) against diffusers: adaLN through ``layers.modulate``, per-head q/k
RMSNorm + RoPE of the video tokens."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fastvideo import kernels
from fastvideo.testing.kernels import record_calls
from fastvideo_hunyuan.model import HunyuanTransformer

from .test_model import make_inputs

pytestmark = pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")


def test_fused_forward_matches_diffusers(tiny_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, ref = tiny_checkpoint()
    ours = HunyuanTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config, lengths=(5, 9))
    calls = record_calls(monkeypatch, kernels, "adaln_modulate", "rms_norm_rope_pair")
    with torch.no_grad():
        expected = ref(*args, return_dict=False)[0]
        with kernels.forced():
            out = ours(*args)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    blocks = ref.config.num_layers + ref.config.num_single_layers
    assert calls.count("rms_norm_rope_pair") == blocks and calls.count("adaln_modulate") > blocks
