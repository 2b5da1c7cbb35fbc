"""The Cosmos DiT with the fused Triton kernels (:mod:`fastvideo.kernels`) against diffusers: on CPU the
kernels run under ``TRITON_INTERPRET=1`` in fp32; on a GPU (``-m gpu``) in bf16 against our unfused path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from fastvideo import kernels
from fastvideo.testing.kernels import fused_and_unfused, record_calls
from fastvideo.testing.numeric import rel_error
from fastvideo_cosmos import model as cosmos_model
from fastvideo_cosmos.model import CosmosTransformer

from .test_model import make_inputs

pytestmark = pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")


@pytest.mark.parametrize("per_frame", [True, False], ids=["per-frame-t", "scalar-t"])
def test_fused_forward_matches_diffusers(
    tiny_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch, per_frame: bool
) -> None:
    folder, ref = tiny_checkpoint()
    ours = CosmosTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config, batch=2, latent=(3, 4, 6), per_frame=per_frame)
    names = ("adaln_modulate", "rms_norm_rope_pair", "rms_norm", "gated_residual", "gated_residual_adaln")
    calls = record_calls(monkeypatch, kernels, *names)
    with torch.no_grad():
        expected = ref(*args, return_dict=False)[0]
        with kernels.forced():
            out = ours(*args)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    n = ref.config.num_layers
    assert calls.count("rms_norm_rope_pair") == n and calls.count("rms_norm") == 2 * n
    # per block: the first adaLN, two gated residuals fused with the next adaLN, the last residual
    assert calls.count("adaln_modulate") == n + 1 and calls.count("gated_residual") == n
    assert calls.count("gated_residual_adaln") == 2 * n


def test_grad_mode_and_cpu_keep_the_reference_path(
    tiny_checkpoint: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, ref = tiny_checkpoint()
    ours = CosmosTransformer.from_pretrained(folder, dtype=torch.float32)
    args = make_inputs(ref.config, latent=(2, 4, 6))

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("fused kernel called")

    for name in ("adaln_modulate", "rms_norm_rope", "rms_norm_rope_pair", "gated_residual_adaln"):
        monkeypatch.setattr(cosmos_model.kernels, name, boom)
    with torch.no_grad():
        ours(*args)  # CPU tensors, not forced
    with kernels.forced():
        ours(*args)  # grad mode on


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_block_bf16_cuda_matches_unfused() -> None:
    from fastvideo_cosmos.model import CosmosBlock, CosmosConfig, rope_tables

    cfg = CosmosConfig(num_attention_heads=4, attention_head_dim=128, num_layers=1, text_embed_dim=256)
    torch.manual_seed(0)
    block = CosmosBlock(cfg).cuda().to(torch.bfloat16)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.02)
    block.self_attn.norm_q.data.fill_(1.0)
    grid, d, b = (4, 16, 16), cfg.dim, 2
    length = 4 * 16 * 16
    x = torch.randn(b, length, d, device="cuda", dtype=torch.bfloat16)
    context = torch.randn(b, 7, 256, device="cuda", dtype=torch.bfloat16)
    emb = torch.randn(b, 4, d, device="cuda", dtype=torch.bfloat16)
    temb = torch.randn(b, 4, 3 * d, device="cuda", dtype=torch.bfloat16) * 0.1
    frames = torch.arange(4, device="cuda").repeat_interleave(256)
    cos, sin = rope_tables(grid, cfg, 16.0, torch.device("cuda"))
    out, expected = fused_and_unfused(block, x, context, emb, temb, cos, sin, None, frames)
    err = rel_error(expected.float(), out.float())
    assert err < 2e-2, err
