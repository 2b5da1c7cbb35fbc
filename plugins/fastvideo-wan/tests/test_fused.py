"""Wan with the fused Triton kernels (:mod:`fastvideo.kernels`, run on CPU under ``TRITON_INTERPRET=1``
in fp32) against diffusers; ``-m gpu``: bf16 block fused vs unfused."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fastvideo import kernels
from fastvideo.attention import use_backend
from fastvideo.testing.kernels import fused_and_unfused, record_calls
from fastvideo.testing.numeric import rel_error
from fastvideo_wan.model import WanTransformer

from .test_model import make_inputs

pytestmark = pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")


@pytest.mark.parametrize("per_token", [False, True], ids=["scalar-t", "per-token-t"])
def test_fused_forward_matches_diffusers(
    tiny_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch, per_token: bool
) -> None:
    folder, ref = tiny_checkpoint()
    ours = WanTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config, batch=2, latent=(2, 4, 6), per_token=per_token)
    calls = record_calls(monkeypatch, kernels, "adaln_modulate", "rms_norm_rope_pair")
    with torch.no_grad(), use_backend("sdpa"):
        expected = ref(*args, return_dict=False)[0]
        with kernels.forced():
            out = ours(*args)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    n = ref.config.num_layers
    assert calls.count("rms_norm_rope_pair") == n and calls.count("adaln_modulate") == 2 * n + 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_block_bf16_cuda_matches_unfused() -> None:
    from fastvideo.layers import rope_tables
    from fastvideo_wan.model import WanBlock, WanConfig

    cfg = WanConfig(num_attention_heads=4, attention_head_dim=128, ffn_dim=1024, num_layers=1)
    torch.manual_seed(0)
    block = WanBlock(cfg).cuda().to(torch.bfloat16)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.02)
    b, d = 2, cfg.dim
    cos, sin = rope_tables((4, 16, 16), (44, 42, 42), device=torch.device("cuda"), dtype=torch.bfloat16)
    x = torch.randn(b, 1024, d, device="cuda", dtype=torch.bfloat16)
    context = torch.randn(b, 7, d, device="cuda", dtype=torch.bfloat16)
    temb6 = torch.randn(b, 1, 6, d, device="cuda", dtype=torch.bfloat16) * 0.1
    out, expected = fused_and_unfused(block, x, context, None, temb6, cos, sin)
    err = rel_error(expected.float(), out.float())
    assert err < 2e-2, err
