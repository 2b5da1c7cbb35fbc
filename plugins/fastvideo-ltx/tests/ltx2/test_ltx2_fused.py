"""LTX-2 / LTX-2.3 with the fused Triton kernels (:mod:`fastvideo.kernels`, run on CPU under
``TRITON_INTERPRET=1`` in fp32) against diffusers: interleaved and split RoPE, RMSNorm + modulation."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastvideo import kernels
from fastvideo.testing.kernels import fused_and_unfused, record_calls
from fastvideo_ltx.ltx2.model import LTX2Transformer

from .test_ltx2_model import LTX23, TINY, _diffusers, _inputs, _ours, _rel, _run_both

pytestmark = pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")


@pytest.mark.parametrize(
    ("overrides", "kwargs", "per_token"),
    [
        pytest.param({}, {}, False, id="ltx2-interleaved"),
        pytest.param({}, {}, True, id="ltx2-per-token-t"),
        pytest.param({}, {}, "shared", id="ltx2-per-token-t-rows"),
        pytest.param(LTX23, {"use_cross_timestep": True}, False, id="ltx2.3-split"),
        pytest.param(LTX23, {"isolate_modalities": True, "stg_blocks": [0]}, False, id="ltx2.3-isolated-stg"),
    ],
)
def test_fused_forward_matches_diffusers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict, kwargs: dict, per_token: bool | str
) -> None:
    """``per_token="shared"``: the samples share their per-token timesteps (one conditioning frame at 0),
    so the fused path computes the modulation for the 2 distinct values and indexes it per token."""
    cfg = {**TINY, **overrides}
    ref = _diffusers(cfg)
    ours = _ours(ref, tmp_path)
    names = ("adaln_modulate", "rms_norm_rope", "rms_norm_rope_pair", "rms_norm", "gated_residual")
    calls = record_calls(monkeypatch, kernels, *names, "gated_residual_adaln")
    with kernels.forced():
        inp = _inputs(cfg, per_token=bool(per_token))
        if per_token == "shared":
            inp["t"][1], inp["audio_t"][1], inp["sigma"][1] = inp["t"][0], inp["audio_t"][0], inp["sigma"][0]
        rows: list = []
        find_rows = LTX2Transformer._timestep_rows
        monkeypatch.setattr(
            LTX2Transformer, "_timestep_rows", staticmethod(lambda *a: rows.append(find_rows(*a)) or rows[-1])
        )
        ov, rv, oa, ra = _run_both(ref, ours, inp, **kwargs)
    if per_token == "shared":
        assert rows[0] is not None and rows[0][0].tolist() == [0.0, float(inp["t"][0, -1])]
    else:
        assert rows == [None]
    assert _rel(ov, rv) <= 1e-4, _rel(ov, rv)
    assert _rel(oa, ra) <= 1e-4, _rel(oa, ra)
    n = cfg["num_layers"]
    cross = not kwargs.get("isolate_modalities", False)
    stg = len(kwargs.get("stg_blocks", ()))  # those blocks' self-attention passes the values through
    # per block: q and k of video / audio self-attention (one launch each stream); of the two
    # audio<->video attentions, the projections of the video tokens together, those of the audio apart
    assert calls.count("rms_norm_rope_pair") == 2 * (n - stg) + (n if cross else 0)
    assert calls.count("rms_norm_rope") == (2 * n if cross else 0)
    # per block and stream: the self-attention's adaLN; the residual + next norm / modulation between
    # self and text attention, text and audio<->video attention, audio<->video attention and
    # feed-forward; the feed-forward's residual; text attention's q and k norms
    assert calls.count("adaln_modulate") == 2 * n
    assert calls.count("gated_residual_adaln") == (6 if cross else 4) * n
    assert calls.count("gated_residual") == 2 * n
    assert calls.count("rms_norm") == 4 * n


def test_cpu_and_grad_mode_keep_the_pytorch_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No kernel runs for CPU tensors (not forced) or with grad mode on (forced): the PyTorch code runs."""
    cfg = {**TINY, **LTX23}
    ref = _diffusers(cfg)
    ours = _ours(ref, tmp_path)

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("fused kernel called")

    for name in ("adaln_modulate", "rms_norm_rope", "rms_norm_rope_pair", "rms_norm", "gated_residual",
                 "gated_residual_adaln"):  # fmt: skip
        monkeypatch.setattr(kernels, name, boom)
    inp = _inputs(cfg)
    args = (inp["video"], inp["audio"], inp["text"], inp["audio_text"], inp["t"])
    kw = {
        "sigma": inp["sigma"],
        "encoder_attention_mask": inp["mask"],
        "audio_encoder_attention_mask": inp["mask"],
    }
    import torch

    with torch.no_grad():
        ours(*args, **kw)  # CPU tensors, not forced
    with kernels.forced():
        ours(*args, **kw)  # grad mode on


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("overrides", "per_token"),
    [({}, False), ({}, True), (LTX23, False)],
    ids=["ltx2", "ltx2-per-token-t", "ltx2.3"],
)
def test_fused_forward_bf16_cuda_matches_unfused(overrides: dict, per_token: bool) -> None:
    """bf16 on CUDA at moderate widths: the fused eager path against our PyTorch path (same weights)."""
    import torch

    from fastvideo_ltx.ltx2.model import LTX2Transformer

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cfg = {**TINY, **overrides, "num_attention_heads": 8, "attention_head_dim": 64, "cross_attention_dim": 512,
           "audio_num_attention_heads": 8, "audio_attention_head_dim": 32, "audio_cross_attention_dim": 256}  # fmt: skip
    if not overrides:
        cfg["caption_channels"] = 64
    torch.manual_seed(0)
    model = LTX2Transformer.from_config(cfg, device="cuda").to(torch.bfloat16).eval()
    inp = {
        k: v.cuda()
        for k, v in _inputs(
            cfg, batch=1, latent=(4, 8, 8), audio_len=20, text_len=16, per_token=per_token
        ).items()
    }
    if not overrides:
        inp["text"] = torch.randn(1, 16, 64, device="cuda")
        inp["audio_text"] = torch.randn(1, 16, 64, device="cuda")
    args = (inp["video"], inp["audio"], inp["text"], inp["audio_text"], inp["t"])
    kw = {
        "sigma": inp["sigma"],
        "encoder_attention_mask": inp["mask"],
        "audio_encoder_attention_mask": inp["mask"],
        "audio_timestep": inp["audio_t"],
    }
    (ov, oa), (ev, ea) = fused_and_unfused(model, *args, **kw)
    assert _rel(ov.float(), ev.float()) < 2e-2, _rel(ov.float(), ev.float())
    assert _rel(oa.float(), ea.float()) < 2e-2, _rel(oa.float(), ea.float())
