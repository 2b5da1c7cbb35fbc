"""LTX-2 / LTX-2.3 with the fused Triton kernels (:mod:`fastvideo.kernels`, run on CPU under
``TRITON_INTERPRET=1`` in fp32) against diffusers: interleaved and split RoPE, RMSNorm + modulation."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastvideo import kernels

from .test_ltx2_model import LTX23, TINY, _diffusers, _inputs, _ours, _rel, _run_both

pytestmark = pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")


@pytest.mark.parametrize(
    ("overrides", "kwargs"),
    [
        pytest.param({}, {}, id="ltx2-interleaved"),
        pytest.param(LTX23, {"use_cross_timestep": True}, id="ltx2.3-split"),
    ],
)
def test_fused_forward_matches_diffusers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict, kwargs: dict
) -> None:
    cfg = {**TINY, **overrides}
    ref = _diffusers(cfg)
    ours = _ours(ref, tmp_path)
    calls: list[str] = []
    for name in ("adaln_modulate", "rms_norm_rope", "rms_norm", "gated_residual"):
        fn = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=fn, _n=name, **k: calls.append(_n) or _f(*a, **k))
    with kernels.forced():
        ov, rv, oa, ra = _run_both(ref, ours, _inputs(cfg), **kwargs)
    assert _rel(ov, rv) <= 1e-4, _rel(ov, rv)
    assert _rel(oa, ra) <= 1e-4, _rel(oa, ra)
    n = cfg["num_layers"]
    # per block: q and k of video / audio self-attention and of the two audio<->video attentions
    assert calls.count("rms_norm_rope") == 8 * n
    # per block: self-attention and feed-forward of each stream (+ text attention with LTX-2.3's
    # modulation), and the four norm + modulations of the audio<->video attention's inputs
    assert calls.count("adaln_modulate") == (6 if overrides else 4) * n + 4 * n
    # per block: text attention's q and k of each stream, and (without text modulation) its input norm
    assert calls.count("rms_norm") == (4 if overrides else 6) * n
    # per block: self-attention, audio<->video and feed-forward of each stream (+ text with modulation)
    assert calls.count("gated_residual") == (8 if overrides else 6) * n
