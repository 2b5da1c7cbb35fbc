"""LTX-Video with the fused Triton kernels (:mod:`fastvideo.kernels`, run on CPU under
``TRITON_INTERPRET=1`` in fp32) against diffusers; ``-m gpu``: bf16 block fused vs unfused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fastvideo import kernels
from fastvideo.attention import use_backend
from fastvideo.testing.kernels import fused_and_unfused, record_calls
from fastvideo.testing.numeric import rel_error
from fastvideo_ltx.ltxv.model import LTXVideoTransformer

from .test_model import make_inputs, packed_reference

pytestmark = pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")


@pytest.mark.parametrize("per_token", [False, True], ids=["scalar-t", "per-token-t"])
def test_fused_forward_matches_diffusers(
    tiny_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch, per_token: bool
) -> None:
    folder, ref = tiny_checkpoint()
    ours = LTXVideoTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config, batch=2, per_token=per_token)
    calls = record_calls(monkeypatch, kernels, "adaln_modulate", "rms_norm_rope")
    with torch.no_grad(), use_backend("sdpa"):
        expected = packed_reference(ref, args)
        with kernels.forced():
            out = ours(*args)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    n = ref.config.num_layers
    assert calls.count("rms_norm_rope") == 2 * n
    assert calls.count("adaln_modulate") == 2 * n + 1  # + the head's (layers.modulate)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_block_bf16_cuda_matches_unfused() -> None:
    from fastvideo_ltx.ltxv.model import LTXVideoBlock, LTXVideoConfig, rope_grid, rope_tables_full_width

    cfg = LTXVideoConfig(num_attention_heads=8, attention_head_dim=64, num_layers=1, cross_attention_dim=512)
    torch.manual_seed(0)
    block = LTXVideoBlock(cfg).cuda().to(torch.bfloat16)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.02)
    grid, b, d = (4, 16, 16), 2, cfg.dim
    cos, sin = rope_tables_full_width(
        rope_grid(grid, (8 / 25, 32.0, 32.0), (1, 1, 1), torch.device("cuda")), d
    )
    cos, sin = cos.bfloat16(), sin.bfloat16()
    x = torch.randn(b, 1024, d, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(b, 7, d, device="cuda", dtype=torch.bfloat16)
    temb = torch.randn(b, 1, 6, d, device="cuda", dtype=torch.bfloat16) * 0.1
    out, expected = fused_and_unfused(block, x, text, temb, cos, sin, None)
    err = rel_error(expected.float(), out.float())
    assert err < 2e-2, err
