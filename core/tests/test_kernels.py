"""fastvideo.kernels: the fused Triton kernels (run on CPU under TRITON_INTERPRET=1, fp32) against plain
PyTorch written here independently, and their dispatch. ``-m gpu``: bf16 on CUDA."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fastvideo import kernels
from fastvideo.layers import modulate, rope_apply, rope_tables

needs_triton = pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")


def fused(fn: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    with kernels.forced(), torch.no_grad():
        return fn(*args, **kwargs)


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE with ``cos = [c, c]``, ``sin = [s, s]`` tables (HF / Cosmos convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def interleaved_unsigned(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair RoPE with each pair's cos / sin repeated and no signs (LTX-2's tables)."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return x * cos + torch.stack((-x1, x0), dim=-1).flatten(-2) * sin


# --------------------------------------------------------------------------------------------------
# adaln_modulate
# --------------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("d", [64, 40], ids=["pow2", "odd-width"])
@pytest.mark.parametrize("per", ["sample-2d", "sample-3d", "token-strided"])
def test_adaln_layer_norm_matches_modulate(d: int, per: str) -> None:
    gen = torch.Generator().manual_seed(0)
    b, length = 2, 13
    x = torch.randn(b, length, d, generator=gen) * 3 + 1
    if per == "token-strided":  # (B, L, 6, D) unbound: strided, fp32 (Wan's modulation sum)
        shift, scale = torch.randn(b, length, 6, d, generator=gen).unbind(2)[:2]
    else:
        shift, scale = torch.randn(b, d, generator=gen), torch.randn(b, d, generator=gen)
        if per == "sample-3d":
            shift, scale = shift[:, None], scale[:, None]
    out = fused(kernels.adaln_modulate, x, shift, scale, 1e-6)
    torch.testing.assert_close(out, modulate(x, shift, scale, 1e-6), rtol=1e-5, atol=1e-5)


@needs_triton
def test_adaln_rms_affine_index_and_noncontiguous_x() -> None:
    gen = torch.Generator().manual_seed(1)
    b, length, d, frames = 2, 11, 48, 3
    base = torch.randn(b, 2 * length, d, generator=gen)
    x = base[:, ::2]  # token stride 2 D
    shift, scale = torch.randn(b, frames, d, generator=gen), torch.randn(b, frames, d, generator=gen)
    weight, bias = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    index = torch.arange(length) * frames // length
    out = fused(kernels.adaln_modulate, x, shift, scale, 1e-5, norm="rms", weight=weight, index=index)
    sh, sc = shift[:, index], scale[:, index]
    expected = F.rms_norm(x, (d,), weight, 1e-5) * (1 + sc) + sh
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out = fused(kernels.adaln_modulate, x, shift, scale, 1e-5, weight=weight, bias=bias, index=index)
    expected = F.layer_norm(x, (d,), weight, bias, 1e-5) * (1 + sc) + sh
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # a batch of one broadcasts; fp16 x with fp32 tables rounds once to fp16
    xh = x.half()
    out = fused(kernels.adaln_modulate, xh, shift[:1, :1], scale[:1, :1])
    expected = (F.layer_norm(xh.float(), (d,), eps=1e-6) * (1 + scale[:1, :1]) + shift[:1, :1]).half()
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)


@needs_triton
def test_gated_residual_per_sample_token_and_index() -> None:
    gen = torch.Generator().manual_seed(2)
    b, length, d = 2, 9, 24
    x, y = torch.randn(b, length, d, generator=gen), torch.randn(b, length, d, generator=gen)
    for gate, index in (
        (torch.randn(b, d, generator=gen), None),
        (torch.randn(b, length, d, generator=gen), None),
        (torch.randn(b, 4, d, generator=gen), torch.arange(length) % 4),
    ):
        out = fused(kernels.gated_residual, x, y, gate, index=index)
        g = gate[:, None] if gate.ndim == 2 else gate if index is None else gate[:, index]
        torch.testing.assert_close(out, torch.addcmul(x, g, y), rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("per", ["sample", "token", "index"])
@pytest.mark.parametrize("variant", ["gate", "no-gate", "two-mods"])
def test_gated_residual_adaln_matches_plain_pytorch(norm: str, per: str, variant: str) -> None:
    gen = torch.Generator().manual_seed(3)
    b, length, d = 2, 11, 40
    x, y = torch.randn(b, length, d, generator=gen) * 2, torch.randn(b, length, d, generator=gen)
    rows = {"sample": 1, "token": length, "index": 3}[per]
    gate, shift, scale, shift2, scale2 = (torch.randn(b, rows, d, generator=gen) for _ in range(5))
    index = torch.arange(length) % 3 if per == "index" else None
    gate = None if variant == "no-gate" else gate
    second = (shift2, scale2) if variant == "two-mods" else None
    args = (x, y, gate, shift, scale, 1e-6)
    out = fused(kernels.gated_residual_adaln, *args, norm=norm, index=index, second=second)
    pick = (lambda t: t[:, index]) if index is not None else (lambda t: t)
    want_s = x + (pick(gate) * y if gate is not None else y)
    if norm == "rms":
        normed = want_s * torch.rsqrt(want_s.pow(2).mean(-1, keepdim=True) + 1e-6)
    else:
        centred = want_s - want_s.mean(-1, keepdim=True)
        normed = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-6)
    want = [want_s, normed * (1 + pick(scale)) + pick(shift)]
    if second is not None:
        want.append(normed * (1 + pick(scale2)) + pick(shift2))
    assert len(out) == len(want)
    torch.testing.assert_close(list(out), want, rtol=1e-5, atol=1e-5)
    # not active (grad mode): the reference path gives the same
    ref = kernels.gated_residual_adaln(*args, norm=norm, index=index, second=second)
    torch.testing.assert_close(list(ref), want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# rms_norm_rope / rms_norm
# --------------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("heads", [2, 3])
def test_rms_norm_rope_across_heads_interleaved_matches_layers(heads: int) -> None:
    """Wan's q/k: RMSNorm over H*Dh with its weight, then the per-head interleaved tables (L, 1, Dh)."""
    gen = torch.Generator().manual_seed(3)
    b, grid, axes = 2, (2, 3, 3), (8, 12, 12)
    dh, length = sum(axes), math.prod(grid)
    cos, sin = rope_tables(grid, axes, device=torch.device("cpu"))
    qkv = torch.randn(b, length, 3 * heads * dh, generator=gen)
    q = qkv[..., : heads * dh].unflatten(-1, (heads, dh))  # non-contiguous token stride
    w = torch.randn(heads * dh, generator=gen)
    expected = rope_apply(
        F.rms_norm(q.flatten(2), (heads * dh,), w, 1e-6).unflatten(-1, (heads, dh)), cos, sin
    )
    out = fused(kernels.rms_norm_rope, q, w, cos, sin, 1e-6, heads * dh)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        kernels.rms_norm_rope(q, w, cos, sin, 1e-6, heads * dh), expected, rtol=1e-5, atol=1e-5
    )


@needs_triton
def test_rms_norm_rope_per_head_rotate_half() -> None:
    """Cosmos' q/k: per-head RMSNorm (group Dh) with a (Dh,) weight, rotate-half with unsigned fp32 tables."""
    gen = torch.Generator().manual_seed(4)
    b, length, heads, dh = 2, 7, 3, 24
    q = torch.randn(b, length, heads, dh, generator=gen)
    w = torch.randn(dh, generator=gen)
    angles = torch.rand(length, 1, dh // 2, generator=gen) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    expected = rotate_half(F.rms_norm(q, (dh,), w, 1e-5), cos, sin)
    for impl in (lambda *a, **k: fused(kernels.rms_norm_rope, *a, **k), kernels.rms_norm_rope):
        out = impl(q, w, cos, sin, 1e-5, dh, layout="half", signed_sin=False)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    expected = F.rms_norm(q, (dh,), w, 1e-5)
    torch.testing.assert_close(fused(kernels.rms_norm, q, w, 1e-5, dh), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernels.rms_norm(q, w, 1e-5, dh), expected, rtol=1e-5, atol=1e-5)


@needs_triton
def test_rms_norm_rope_full_width_batched_tables() -> None:
    """LTX's q/k: one norm over D, full-width (B, L, D) tables; signed (LTX-Video) and unsigned (LTX-2) sin."""
    gen = torch.Generator().manual_seed(5)
    b, length, d = 2, 5, 36
    q = torch.randn(b, length, d, generator=gen)
    w = torch.randn(d, generator=gen)
    angles = (torch.rand(b, length, d // 2, generator=gen) * 6).repeat_interleave(2, -1)
    cos, sin = angles.cos(), angles.sin()
    normed = F.rms_norm(q, (d,), w, 1e-5)
    expected = interleaved_unsigned(normed, cos, sin)
    out = fused(kernels.rms_norm_rope, q, w, cos, sin, 1e-5, d, signed_sin=False)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    signed = sin * torch.tensor([-1.0, 1.0]).repeat(d // 2)
    out = fused(kernels.rms_norm_rope, q, None, cos[:1], signed[:1], 1e-5, d)  # batch-1 tables broadcast
    torch.testing.assert_close(
        out, rope_apply(F.rms_norm(q, (d,), None, 1e-5), cos[:1], signed[:1]), rtol=1e-5, atol=1e-5
    )


@needs_triton
def test_rms_norm_rope_split_half_width_per_head_tables() -> None:
    """LTX-2's split RoPE: norm across heads, then rotate-half per head by (B, H, L, Dh/2) tables."""
    gen = torch.Generator().manual_seed(6)
    b, length, heads, dh = 2, 5, 3, 16
    r = dh // 2
    q = torch.randn(b, length, heads * dh, generator=gen)
    w = torch.randn(heads * dh, generator=gen)
    angles = torch.rand(b, heads, length, r, generator=gen) * 6
    cos, sin = angles.cos(), angles.sin()
    normed = F.rms_norm(q, (heads * dh,), w, 1e-6).reshape(b, length, heads, 2, r)
    c, s = cos.transpose(1, 2), sin.transpose(1, 2)  # (B, L, H, r)
    first, second = normed[..., 0, :], normed[..., 1, :]
    expected = torch.stack((first * c - second * s, second * c + first * s), dim=-2).reshape(
        b, length, heads, dh
    )
    args = (q.unflatten(-1, (heads, dh)), w, c, s, 1e-6, heads * dh)
    for impl in (lambda *a, **k: fused(kernels.rms_norm_rope, *a, **k), kernels.rms_norm_rope):
        out = impl(*args, layout="half", signed_sin=False)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("case", ["cosmos-per-head-half", "ltx2-split-across-heads", "interleaved-no-weight"])
def test_rms_norm_rope_pair_matches_two_plain_rotations(case: str) -> None:
    """q and k in one launch (shared tables) against plain PyTorch norms and rotations of each."""
    gen = torch.Generator().manual_seed(7)
    b, length, heads, dh = 2, 6, 3, 16
    q, k = (torch.randn(b, length, heads, dh, generator=gen) * 2 for _ in range(2))
    if case == "cosmos-per-head-half":
        group, wq, wk = dh, torch.randn(dh, generator=gen), torch.randn(dh, generator=gen)
        angles = torch.rand(length, 1, dh // 2, generator=gen) * 6
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
        kw = {"layout": "half", "signed_sin": False}

        def plain(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
            return rotate_half(F.rms_norm(x, (dh,), w, 1e-6), cos, sin)

    elif case == "ltx2-split-across-heads":
        group = heads * dh
        wq, wk = torch.randn(group, generator=gen), torch.randn(group, generator=gen)
        angles = torch.rand(b, length, heads, dh // 2, generator=gen) * 6
        cos, sin = angles.cos(), angles.sin()
        kw = {"layout": "half", "signed_sin": False}

        def plain(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
            normed = F.rms_norm(x.flatten(2), (group,), w, 1e-6).unflatten(-1, (heads, dh))
            first, second = normed.chunk(2, dim=-1)
            return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)

    else:
        group, wq, wk = heads * dh, None, None
        angles = torch.rand(length, 1, dh // 2, generator=gen) * 6
        cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
        kw = {"signed_sin": False}

        def plain(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
            normed = F.rms_norm(x.flatten(2), (group,), w, 1e-6).unflatten(-1, (heads, dh))
            return interleaved_unsigned(normed, cos, sin)

    expected = (plain(q, wq), plain(k, wk))
    args = (q, k, wq, wk, cos, sin, 1e-6, group)
    for impl in (lambda *a, **k: fused(kernels.rms_norm_rope_pair, *a, **k), kernels.rms_norm_rope_pair):
        out = impl(*args, **kw)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_one_line_value_errors() -> None:
    x = torch.zeros(1, 4, 8)
    cases = [
        (lambda: kernels.adaln_modulate(x, x, x, norm="group"), "norm='group'"),
        (lambda: kernels.adaln_modulate(x[0], x, x), r"x must be \(B, L, D\)"),
        (lambda: kernels.adaln_modulate(x, torch.zeros(1, 3, 8), x), r"shift must be"),
        (lambda: kernels.rms_norm_rope(x, None, x, x, 1e-6, 3), "group=3"),
        (lambda: kernels.rms_norm_rope(x, None, torch.zeros(4, 3), x, 1e-6, 8), "does not broadcast"),
        (lambda: kernels.rms_norm_rope(x, torch.ones(4), x, x, 1e-6, 8), r"weight must be \(8,\)"),
        (lambda: kernels.rms_norm_rope(x, None, x[..., :4], x[..., :4], 1e-6, 8), "full-width tables"),
        (lambda: kernels.gated_residual(x, x, torch.zeros(1, 3, 8)), "gate must be"),
        (lambda: kernels.rms_norm_rope_pair(x, x[:, :2], None, None, x, x, 1e-6, 8), "same shape"),
        (lambda: kernels.rms_norm_rope_pair(x, x, torch.ones(8), None, x, x, 1e-6, 8), "both be tensors"),
        (lambda: kernels.gated_residual_adaln(x, x, x, x, torch.zeros(2, 8, 8)), "scale must be"),
        (lambda: kernels.gated_residual_adaln(x, x[:, :2], x, x, x), r"y must be \(B or 1, L, D\)"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match) as err:
            fn()
        assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


def test_dispatch_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(2, 3, 8)
    with torch.no_grad():
        assert not kernels.active(x)  # CPU tensors: the PyTorch path
        with kernels.forced():
            assert kernels.active(x) == kernels.available()
            with kernels.forced(False):
                assert not kernels.active(x)
    with kernels.forced():
        assert not kernels.active(x)  # grad mode: no kernel without a backward
    # on a "GPU" (the device check patched), FASTVIDEO_FUSED=0 turns the kernels off
    monkeypatch.setattr(kernels, "_on_gpu", lambda tensors: True)
    monkeypatch.setattr(kernels, "available", lambda: True)
    with torch.no_grad():
        assert kernels.active(x)
        monkeypatch.setenv("FASTVIDEO_FUSED", "0")
        assert not kernels.active(x)


def test_reference_path_when_not_active(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors never reach the Triton launchers; layers.modulate stays bit-for-bit."""
    from fastvideo.kernels import _triton

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("kernel launched")

    for name in ("adaln", "rms_rope", "gated_residual"):
        monkeypatch.setattr(_triton, name, boom, raising=False)
    x, s = torch.randn(1, 5, 16), torch.randn(1, 16)
    with torch.no_grad():
        kernels.adaln_modulate(x, s, s)
        kernels.gated_residual(x, x, s)
        kernels.rms_norm(x, None, 1e-6, 16)
        out = modulate(x, s, s)
    torch.testing.assert_close(
        out, torch.addcmul(s[:, None], F.layer_norm(x, (16,), eps=1e-6), 1 + s[:, None]), rtol=0, atol=0
    )


@needs_triton
def test_testing_helpers_record_calls_and_run_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """fastvideo.testing.kernels: record_calls counts the wrapped ops and still runs them;
    fused_and_unfused runs the callable without grad, first as it runs, then with the kernels off."""
    from fastvideo.testing.kernels import fused_and_unfused, record_calls

    calls = record_calls(monkeypatch, kernels, "adaln_modulate", "gated_residual")
    x, s = torch.randn(1, 5, 16, requires_grad=True), torch.randn(1, 16)
    seen: list[tuple[bool, bool]] = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        seen.append((kernels.active(t), torch.is_grad_enabled()))
        return kernels.gated_residual(t, kernels.adaln_modulate(t, s, s), s)

    expected = x + s[:, None] * modulate(x, s, s)
    with kernels.forced():  # stands in for a GPU: active wherever not forced off
        fused, unfused = fused_and_unfused(fn, x)
    assert seen == [(False, False), (True, False)]
    assert calls == ["adaln_modulate", "gated_residual"] * 2
    torch.testing.assert_close(unfused, expected.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused, expected.detach(), rtol=1e-5, atol=1e-5)  # the interpreted kernels
    assert not fused.requires_grad and not unfused.requires_grad


@needs_triton
def test_torch_compile_traces_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastvideo.kernels import _triton

    def boom(*a: Any, **k: Any) -> None:
        raise AssertionError("kernel launched under torch.compile")

    monkeypatch.setattr(_triton, "adaln", boom)
    x, s = torch.randn(1, 5, 16), torch.randn(1, 16)
    fn = torch.compile(lambda x, s: modulate(x, s, s), backend="eager")
    with kernels.forced(), torch.no_grad():
        out = fn(x, s)
    torch.testing.assert_close(out, modulate(x, s, s))


# --------------------------------------------------------------------------------------------------
# GPU: bf16 kernels against the fp32 reference
# --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("per_token", [False, True])
def test_gpu_adaln_bf16(per_token: bool) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    b, length, d = 2, 4096, 2048
    x = torch.randn(b, length, d, device="cuda", dtype=torch.bfloat16)
    rows = length if per_token else 1
    shift, scale = (torch.randn(b, rows, d, device="cuda") * 0.5 for _ in range(2))
    with torch.no_grad():
        out = kernels.adaln_modulate(x, shift, scale)
        with kernels.forced(False):
            expected = kernels.adaln_modulate(x, shift, scale)
    torch.testing.assert_close(out.float(), expected.float(), rtol=1e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_gpu_rms_norm_rope_bf16(layout: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    b, length, heads, dh = 1, 4096, 16, 128
    q = torch.randn(b, length, heads * dh, device="cuda", dtype=torch.bfloat16).unflatten(-1, (heads, dh))
    angles = torch.rand(length, 1, dh // 2, device="cuda") * 6
    if layout == "half":
        cos, sin, group, w = (
            torch.cat([angles.cos()] * 2, -1),
            torch.cat([angles.sin()] * 2, -1),
            dh,
            torch.rand(dh, device="cuda"),
        )
    else:
        cos, sin = rope_tables(
            (1, length, 1), (32, 48, 48), device=torch.device("cuda"), dtype=torch.bfloat16
        )
        group, w = heads * dh, torch.rand(heads * dh, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        out = kernels.rms_norm_rope(
            q, w, cos, sin, 1e-6, group, layout=layout, signed_sin=layout == "interleaved"
        )
        with kernels.forced(False):
            expected = kernels.rms_norm_rope(
                q, w, cos, sin, 1e-6, group, layout=layout, signed_sin=layout == "interleaved"
            )
    torch.testing.assert_close(out.float(), expected.float(), rtol=1e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("per_frame", [False, True])
def test_gpu_gated_residual_adaln_bf16(per_frame: bool) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    b, length, d = 1, 8192, 2048
    x, y = (torch.randn(b, length, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    rows = 8 if per_frame else 1
    gate, shift, scale = (
        torch.randn(b, rows, d, device="cuda", dtype=torch.bfloat16) * 0.5 for _ in range(3)
    )
    index = torch.arange(length, device="cuda") // (length // rows) if per_frame else None
    with torch.no_grad():
        s, h = kernels.gated_residual_adaln(x, y, gate, shift, scale, index=index)
        with kernels.forced(False):
            s_ref, h_ref = kernels.gated_residual_adaln(x, y, gate, shift, scale, index=index)
    torch.testing.assert_close(s.float(), s_ref.float(), rtol=1e-2, atol=2e-2)
    torch.testing.assert_close(h.float(), h_ref.float(), rtol=1e-2, atol=2e-2)


@pytest.mark.gpu
def test_gpu_rms_norm_rope_pair_bf16() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    b, length, heads, dh = 1, 4096, 32, 128
    q, k = (torch.randn(b, length, heads, dh, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    wq, wk = (torch.rand(heads * dh, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    angles = torch.rand(b, heads, length, dh // 2, device="cuda") * 6  # LTX-2's (B, H, L, Dh/2) fp32 tables
    cos, sin = angles.cos().transpose(1, 2), angles.sin().transpose(1, 2)
    args = (q, k, wq, wk, cos, sin, 1e-6, heads * dh)
    with torch.no_grad():
        out = kernels.rms_norm_rope_pair(*args, layout="half", signed_sin=False)
        with kernels.forced(False):
            expected = kernels.rms_norm_rope_pair(*args, layout="half", signed_sin=False)
    for o, e in zip(out, expected, strict=True):
        torch.testing.assert_close(o.float(), e.float(), rtol=1e-2, atol=2e-2)
