"""The ``fp8`` attention backend: its quantization kernels (under TRITON_INTERPRET=1 on CPU) against plain
PyTorch, its spec against exact attention, its gating, fallback and FlashAttention-3 plumbing (a stand-in
module) on CPU, and (``gpu``) the cuDNN and FlashAttention-3 kernels against the spec and SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastvideo.attention.fp8_attn import FP8AttentionBackend, fp8_attention_reference
from fastvideo.attention.fp8_quant import E4M3_MAX, qkv_scales, quantize_qkv, quantize_qkv_reference
from fastvideo.attention.sage_triton import interpreting

DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"
needs_triton = pytest.mark.skipif(
    not (torch.cuda.is_available() or interpreting()), reason="needs CUDA or TRITON_INTERPRET=1"
)


def _inputs(
    b: int, lq: int, lk: int, h: int, d: int, dtype: torch.dtype, offset: float = 0.0, device: str = DEVICE
):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(lq * 7 + d + lk)
    q, k, v = (torch.randn(b, n, h, d, generator=g) for n in (lq, lk, lk))
    k = k + offset * torch.randn(1, 1, h, d, generator=g)  # a channel bias shared by all keys
    return tuple(x.to(device, dtype) for x in (q, k, v))


def _exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    qt, kt, vt = (x.transpose(1, 2).double() for x in (q, k, v))
    return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)


@needs_triton
@pytest.mark.parametrize("rotate", [True, False], ids=["rotate", "plain"])
@pytest.mark.parametrize(
    ("b", "length", "h", "d", "dtype"),
    [(1, 70, 2, 64, torch.bfloat16), (2, 33, 3, 128, torch.float16), (1, 40, 1, 64, torch.float32)],
)
def test_quantize_kernel_matches_plain_pytorch(b, length, h, d, dtype, rotate) -> None:  # type: ignore[no-untyped-def]
    q, k, v = _inputs(b, length, length + 5, h, d, dtype, offset=3.0)
    got = quantize_qkv(q, k, v, rotate)
    want = quantize_qkv_reference(q, k, v, rotate)
    for which, (x8, r8, src) in enumerate(zip(got[:3], want[:3], (q, k, v), strict=True)):
        assert x8.dtype == torch.float8_e4m3fn and x8.shape == src.shape and x8.is_contiguous()
        # K's mean is summed in another order (one pass over Q, K, V), and a rotation's sums may be too
        # (fp32 inputs, or tensor cores' accumulation): a rare last bit may round a value to its neighbour
        if which == 1 or (rotate and (dtype == torch.float32 or DEVICE == "cuda")):
            steps = _e4m3_steps(x8, r8)
            assert steps.max() <= 1 and (steps > 0).float().mean() < 0.01
        else:  # fp16/bf16 times +-1, summed in fp32: the same e4m3 values, rounding included
            assert torch.equal(x8.float(), r8.float())
    torch.testing.assert_close(got[3], want[3], rtol=1e-6, atol=0)


@needs_triton
@pytest.mark.parametrize("rotate", [True, False], ids=["rotate", "plain"])
def test_per_head_scales_match_plain_pytorch(rotate: bool) -> None:
    """One scale per (batch, head) (FlashAttention-3's descales): heads of very different sizes each fill
    e4m3's range, and the kernel rounds as the reference does."""
    q, k, v = _inputs(2, 45, 50, 3, 64, torch.bfloat16, offset=2.0)
    sizes = torch.tensor([1.0, 30.0, 0.05], device=DEVICE, dtype=torch.bfloat16).view(1, 1, 3, 1)
    q, k, v = q * sizes, k * sizes, v * sizes
    got = quantize_qkv(q, k, v, rotate, per_head=True)
    want = quantize_qkv_reference(q, k, v, rotate, per_head=True)
    assert got[3].shape == want[3].shape == (3, 2, 3)
    torch.testing.assert_close(got[3], want[3], rtol=1e-6, atol=0)
    for which, (x8, r8) in enumerate(zip(got[:3], want[:3], strict=True)):
        steps = _e4m3_steps(x8, r8)
        assert steps.max() <= (1 if which == 1 or (rotate and DEVICE == "cuda") else 0)
        assert (steps > 0).float().mean() < 0.01
    v8, v_descale = got[2].float(), got[3][2]  # every head's largest |v| lands near 448
    assert bool((v8.abs().amax(dim=(1, 3)) > 400).all())
    err = (v8 * v_descale[:, None, :, None] - v.float()).abs()
    head_amax = v.float().abs().amax(dim=(1, 3), keepdim=True)  # e4m3: 2^-4 relative, subnormals absolute
    assert bool((err <= 0.07 * v.float().abs() + 2e-3 * head_amax).all())


@needs_triton
def test_one_pass_stats_match_torch() -> None:
    """The maxima of |q|, |k|, |v| exactly and K's mean over tokens to fp32 rounding, Q and K of different
    lengths and V of another head dim included."""
    from fastvideo.attention.fp8_quant import qkv_stats

    q = _inputs(2, 70, 70, 3, 64, torch.bfloat16)[0]
    _, k, _ = _inputs(2, 70, 131, 3, 64, torch.bfloat16, offset=2.0)
    v = torch.randn(2, 131, 3, 128).to(DEVICE, torch.bfloat16)
    amax, mean = qkv_stats(q, k, v)
    want = torch.stack([x.float().abs().max() for x in (q, k, v)])
    assert torch.equal(amax, want)
    torch.testing.assert_close(mean, k.float().mean(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)
    per_head, _ = qkv_stats(q, k, v, per_head=True)
    assert torch.equal(per_head, torch.stack([x.float().abs().amax(dim=(1, 3)).flatten() for x in (q, k, v)]))


def _e4m3_steps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many e4m3 values lie between a and b (elementwise; both float8_e4m3fn)."""

    def order(x: torch.Tensor) -> torch.Tensor:  # e4m3 bit patterns in the order of their values
        bits = x.view(torch.int8).int()
        return torch.where(bits < 0, -(bits & 0x7F), bits)

    return (order(a) - order(b)).abs()


@needs_triton
def test_rotation_is_orthonormal_and_keeps_the_logits() -> None:
    """Dequantized rotated Q and K give the logits of the plain ones (up to e4m3 rounding), and S S^T = D I."""
    from fastvideo.attention.fp8_quant import hadamard_signs

    signs = hadamard_signs(64)
    torch.testing.assert_close(signs @ signs.T, 64 * torch.eye(64))
    q, k, v = _inputs(1, 40, 50, 2, 64, torch.bfloat16, offset=2.0)
    q8, k8, _, descale = quantize_qkv(q, k, v)
    qd, kd = q8.float() * descale[0], k8.float() * descale[1]
    got = torch.einsum("blhd,bmhd->bhlm", qd, kd)
    want = torch.einsum("blhd,bmhd->bhlm", q.float(), k.float() - k.float().mean(1, keepdim=True))
    assert (got - want).abs().max() < 0.08 * want.abs().max()


@needs_triton
def test_quantize_reads_strided_views() -> None:
    """Q, K, V as views of one fused projection (rows strided by 3 x H x D) quantize as their copies do."""
    b, length, h, d = 2, 37, 2, 64
    qkv = torch.randn(b, length, 3, h, d).to(DEVICE, torch.bfloat16)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    got = quantize_qkv(q, k, v)
    want = quantize_qkv(q.contiguous(), k.contiguous(), v.contiguous())
    for x, y in zip(got, want, strict=True):
        assert torch.equal(x.float(), y.float())


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_is_e4m3_times_its_descale(dtype: torch.dtype) -> None:
    """cuDNN's e4m3 output back to the model's dtype in one pass (odd size: the last block masked)."""
    from fastvideo.attention.fp8_quant import dequantize

    gen = torch.Generator().manual_seed(0)  # e4m3 holds +-448 (a value beyond becomes NaN, never equal)
    x8 = (torch.randn(3, 1001, 5, generator=gen) * 100).clamp(-448, 448).to(torch.float8_e4m3fn).to(DEVICE)
    descale = torch.tensor([0.0371], device=DEVICE)
    out = dequantize(x8, descale, dtype)
    want = (x8.float() * descale).to(dtype)
    assert out.dtype == dtype and out.shape == x8.shape
    if dtype == torch.bfloat16 and interpreting():  # the interpreter's fp32 -> bf16 cast truncates
        ulp = want.float().abs() * 2.0**-7
        assert bool(((out.float() - want.float()).abs() <= ulp).all())
    else:
        assert torch.equal(out, want)


def test_scales_bound_the_smoothed_keys_and_survive_zeros() -> None:
    q, k, v = _inputs(1, 20, 30, 2, 64, torch.float32, offset=5.0, device="cpu")
    rotated, _ = qkv_scales(q, k, v)
    torch.testing.assert_close(rotated[:2] * 8, qkv_scales(q, k, v, rotate=False)[0][:2])  # bound x sqrt(64)
    scales, mean = qkv_scales(q, k, v, rotate=False)
    assert mean.shape == (1, 1, 2, 64)
    torch.testing.assert_close(mean, k.mean(dim=1, keepdim=True))
    assert float(q.abs().max() * scales[0]) == pytest.approx(E4M3_MAX, rel=1e-6)
    assert float((k - mean).abs().max() * scales[1]) <= E4M3_MAX  # the bound never overflows e4m3
    assert float(v.abs().max() * scales[2]) == pytest.approx(E4M3_MAX, rel=1e-6)
    zeros = torch.zeros(1, 4, 1, 64)
    scales, _ = qkv_scales(zeros, zeros, zeros)
    assert bool(torch.isfinite(scales).all())
    q8, k8, v8, descale = quantize_qkv_reference(zeros, zeros, zeros)
    assert (
        not q8.float().any()
        and not k8.float().any()
        and not v8.float().any()
        and bool(torch.isfinite(descale).all())
    )


@pytest.mark.parametrize("offset", [0.0, 6.0])
def test_reference_is_close_to_exact_attention(offset: float) -> None:
    """Per-tensor e4m3 for Q, K and V and e4m3 P stay close to exact attention, and smoothing makes a large
    key bias (shared by all keys) harmless."""
    q, k, v = _inputs(1, 96, 80, 2, 64, torch.float32, offset=offset, device="cpu")
    out = fp8_attention_reference(q, k, v).double()
    exact = _exact(q, k, v)
    err = (out - exact).abs()
    assert err.mean() < 0.01 and err.max() < 0.1  # (SageAttention 2's spec here: 0.005, 0.044)
    assert F.cosine_similarity(out.flatten(), exact.flatten(), dim=0) > 0.998


def test_rotation_rescues_outlier_channels() -> None:
    """A few channels 20x larger in Q and K (as trained transformers have) set the per-tensor scales; without
    the rotation the other channels keep few bits and the output drifts, with it the error stays near
    SageAttention 2's (its spec on the same data: relative error 0.041)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 256, 2, 64, generator=g) for _ in range(3))
    outliers = torch.tensor([3, 17, 40])
    q[..., outliers] *= 20
    k[..., outliers] *= 20
    q, k = q * 0.5, k + 2 * torch.randn(1, 1, 2, 64, generator=g)
    exact = _exact(q, k, v)

    def rel(out: torch.Tensor) -> float:
        return float((out.double() - exact).abs().mean() / exact.abs().mean())

    plain, rotated = (
        rel(fp8_attention_reference(q, k, v, rotate=False)),
        rel(fp8_attention_reference(q, k, v)),
    )
    assert plain > 0.12 and rotated < 0.06


def test_reference_smoothing_makes_a_key_bias_harmless() -> None:
    """A bias added to every key moves each logit row by a constant, which exact attention ignores; smoothed,
    the spec's error against exact attention stays what it is without the bias."""
    q, k, v = _inputs(1, 50, 60, 1, 64, torch.float32, device="cpu")
    bias = torch.randn(1, 1, 1, 64) * 8
    exact = _exact(q, k, v)
    assert (_exact(q, k + bias, v) - exact).abs().max() < 1e-5
    plain = (fp8_attention_reference(q, k, v).double() - exact).abs().mean()
    biased = (fp8_attention_reference(q, k + bias, v).double() - exact).abs().mean()
    assert biased < 1.3 * plain < 0.02


def test_backend_is_registered_lossy_and_gated_on_cpu() -> None:
    from fastvideo.registry import get_registry

    assert "fp8" in get_registry().names("attention_backend")
    assert FP8AttentionBackend.priority < 0  # never the automatic choice
    if not torch.cuda.is_available():
        reason = FP8AttentionBackend.unavailable_reason()
        assert reason is not None and ("cudnn" in reason or "CUDA" in reason)


def _hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``names`` look not installed to ``importlib.util.find_spec``."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a)
    )


def test_asking_for_it_without_either_kernel_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastvideo.attention import resolve_backend_name
    from fastvideo.errors import BackendUnavailableError

    _hide(monkeypatch, "cudnn", "flash_attn_interface")
    with pytest.raises(BackendUnavailableError) as err:
        resolve_backend_name("fp8")
    assert str(err.value) == (
        "Attention backend 'fp8' cannot run here: no FP8 attention kernel here (cudnn: the cudnn Python "
        "frontend (nvidia-cudnn-frontend) is not installed; fa3: FlashAttention-3 (flash_attn_interface) is "
        "not installed) (pip install nvidia-cudnn-frontend)"
    )


def test_impl_auto_prefers_flash_attention_3_where_it_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` takes FlashAttention-3 where it is installed and imports, else cuDNN; an installed build that
    does not import is reported as such."""
    import sys
    import types

    from fastvideo.attention import fp8_attn

    monkeypatch.setattr(fp8_attn, "fa3_installed", lambda: True)
    for module, want in ((types.SimpleNamespace(flash_attn_func=None), "fa3"), (None, "cudnn")):
        monkeypatch.setitem(sys.modules, "flash_attn_interface", module)  # None: its import raises
        monkeypatch.setattr(fp8_attn, "_AUTO", {})
        monkeypatch.setattr(fp8_attn, "_FA3", {})
        assert fp8_attn.resolve_impl("auto") == want
    assert fp8_attn._impl_reason("fa3") == (
        "FlashAttention-3 does not load (ModuleNotFoundError: import of flash_attn_interface halted; None in "
        "sys.modules)"
    )
    monkeypatch.setattr(fp8_attn, "fa3_installed", lambda: False)
    monkeypatch.setattr(fp8_attn, "_AUTO", {})
    assert fp8_attn.resolve_impl("auto") == "cudnn"
    assert fp8_attn.resolve_impl("fa3") == "fa3"  # asked for: its op warns and runs SDPA if it cannot
    with pytest.raises(ValueError, match="must be auto, cudnn or fa3"):
        FP8AttentionBackend.options[0].check("cuda", "fp8")


def test_the_op_falls_back_to_exact_attention_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernel cannot run a call (here cuDNN: no frontend, CPU tensors) the custom op warns once and
    runs exact attention, inside the op, so a compiled graph (no break: the op has a fake) falls back too."""
    import warnings

    from fastvideo.attention import fp8_attn, fp8_cudnn
    from fastvideo.attention.backends import exact_attention
    from fastvideo.errors import _WARNED

    monkeypatch.setattr(fp8_cudnn, "_frontend", lambda: None)
    monkeypatch.setattr(fp8_cudnn, "_FRONTEND", {"error": "ImportError: no cudnn here"})
    _WARNED.clear()
    q, k, v = _inputs(1, 20, 24, 2, 64, torch.float32, device="cpu")
    op = fp8_attn._op("cudnn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eager = op(q, k, v, 0.125, True)
        compiled = torch.compile(
            lambda a, b_, c: op(a, b_, c, 0.125, True), backend="aot_eager", fullgraph=True
        )(q, k, v)
    assert torch.equal(eager, exact_attention(q, k, v, 0.125)) and torch.equal(compiled, eager)
    messages = [str(w.message) for w in caught if "fp8 attention" in str(w.message)]
    assert messages == [
        "fp8 attention (cudnn) failed (RuntimeError: the cudnn frontend does not load (ImportError: no cudnn "
        "here)); exact attention (SDPA) runs"
    ]


@needs_triton
def test_flash_attention_3_path_hands_over_e4m3_and_per_head_descales(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fa3 path with a stand-in ``flash_attn_interface`` (the real one needs a Hopper build): it receives
    e4m3 Q, K, V and (B, H) fp32 descales, and attention on their dequantized values, with P rounded as the
    kernel does, is the spec with per-head scales and a bf16 output."""
    import sys
    import types

    from fastvideo.attention import fp8_attn

    seen: dict = {}

    def flash_attn_func(q8, k8, v8, softmax_scale, q_descale, k_descale, v_descale):  # type: ignore[no-untyped-def]
        seen.update(
            dtypes={x.dtype for x in (q8, k8, v8)},
            shapes=[d.shape for d in (q_descale, k_descale, v_descale)],
        )
        q, k, v = (
            x.double() * d.double()[:, None, :, None]
            for x, d in ((q8, q_descale), (k8, k_descale), (v8, v_descale))
        )
        logits = torch.einsum("blhd,bmhd->bhlm", q, k) * softmax_scale
        p = torch.exp(logits - logits.amax(dim=-1, keepdim=True)).float()
        p8 = (p * 256).to(torch.float8_e4m3fn).double() / 256  # FlashAttention-3 scales P by 2^8 for FP8
        out = torch.einsum("bhlm,bmhd->blhd", p8, v) / p.double().sum(-1).permute(0, 2, 1)[..., None]
        return out.to(torch.bfloat16)

    monkeypatch.setitem(
        sys.modules, "flash_attn_interface", types.SimpleNamespace(flash_attn_func=flash_attn_func)
    )
    q, k, v = _inputs(2, 40, 56, 3, 64, torch.bfloat16, offset=2.0)
    q = q * torch.tensor([1.0, 8.0, 0.2], device=DEVICE, dtype=torch.bfloat16).view(1, 1, 3, 1)
    out = fp8_attn.fa3_fp8_attention(q, k, v, 0.125)
    assert seen == {"dtypes": {torch.float8_e4m3fn}, "shapes": [(2, 3)] * 3}
    assert torch.equal(fp8_attn._op("fa3")(q, k, v, 0.125, True), out)  # the custom op runs the same path
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    ref = fp8_attention_reference(q.cpu(), k.cpu(), v.cpu(), 0.125, out_fp8=False, per_head=True)
    torch.testing.assert_close(out.float().cpu(), ref.float(), atol=2e-2, rtol=2e-2)
    exact = _exact(q.cpu(), k.cpu(), v.cpu())
    assert (
        F.cosine_similarity(out.double().cpu().flatten(), exact.flatten(), dim=0) > 0.995
    )  # a head 8x sharper


def test_supports_names_what_it_cannot_take() -> None:
    backend = FP8AttentionBackend.__new__(FP8AttentionBackend)  # no GPU needed to ask
    q, k, v = _inputs(1, 8, 8, 2, 64, torch.bfloat16, device="cpu")
    assert "mask" in backend.supports(q, k, v, attn_mask=torch.ones(8, 8, dtype=torch.bool))
    assert "causal" in backend.supports(q, k, v, is_causal=True)
    assert "fp16/bf16" in backend.supports(q.float(), k.float(), v.float())
    q96 = torch.zeros(1, 8, 2, 96, dtype=torch.bfloat16)
    assert "head dims 64 or 128" in backend.supports(q96, q96, q96)
    assert "K/V heads" in backend.supports(q, k[:, :, :1], v[:, :, :1])
    assert "CUDA" in backend.supports(q, k, v)


gpu = pytest.mark.gpu


def _impls() -> list:  # type: ignore[type-arg]
    """The kernels installed here, each a test parameter (the GPU run installs both)."""
    from fastvideo.attention.fp8_attn import _impl_reason

    usable = torch.cuda.is_available() and FP8AttentionBackend.unavailable_reason() is None
    return [
        pytest.param(
            impl, marks=pytest.mark.skipif(not usable or _impl_reason(impl) is not None, reason=f"no {impl}")
        )
        for impl in ("cudnn", "fa3")
    ]


def _run(impl: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from fastvideo.attention.fp8_attn import fa3_fp8_attention
    from fastvideo.attention.fp8_cudnn import cudnn_fp8_attention

    return (cudnn_fp8_attention if impl == "cudnn" else fa3_fp8_attention)(q, k, v, q.shape[-1] ** -0.5)


@gpu
@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize(
    ("b", "lq", "lk", "h", "d", "offset"),
    [(1, 1000, 1000, 2, 128, 0.0), (2, 515, 700, 3, 64, 5.0), (1, 4096, 4096, 4, 128, 2.0)],
)
def test_kernel_matches_the_spec_and_exact_attention(impl, b, lq, lk, h, d, offset) -> None:  # type: ignore[no-untyped-def]
    q, k, v = _inputs(b, lq, lk, h, d, torch.bfloat16, offset=offset, device="cuda")
    out = _run(impl, q, k, v)  # (a FlashAttention-3 build without head dim 64 runs it in its 128 kernel)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    ref = fp8_attention_reference(q, k, v, out_fp8=impl == "cudnn", per_head=impl == "fa3").float()
    exact = _exact(q, k, v).float()
    # the kernels round P relative to a running maximum: the spec's error size, not always its values
    assert (out.float() - ref).abs().mean() < 5e-3
    err = (out.float() - exact).abs()
    assert err.mean() < 0.02 and err.max() < 0.2
    assert F.cosine_similarity(out.float().flatten(), exact.flatten(), dim=0) > 0.997


@gpu
@pytest.mark.parametrize("impl", _impls())
def test_backend_through_the_seam_eager_and_compiled(impl: str) -> None:
    from fastvideo.attention import attention, use_backend
    from fastvideo.attention.context import StepContext, step_context

    q, k, v = _inputs(1, 2048, 2048, 2, 128, torch.bfloat16, offset=2.0, device="cuda")
    text_k, text_v = k[:, :77], v[:, :77]
    exact = _exact(q, k, v).float()
    direct = _run(impl, q, k, v)  # what the op must run (not its exact fallback)
    with use_backend("fp8"), step_context(StepContext(options={"fp8": {"impl": impl}})):
        eager = attention(q, k, v)
        cross = attention(q, text_k, text_v)  # few keys: exact SDPA
        compiled = torch.compile(lambda a, b_, c: attention(a, b_, c), fullgraph=True)(q, k, v)
    assert torch.equal(eager, direct)
    assert F.cosine_similarity(eager.float().flatten(), exact.flatten(), dim=0) > 0.997
    torch.testing.assert_close(cross.float(), _exact(q, text_k, text_v).float(), atol=2e-2, rtol=2e-2)
    assert torch.equal(compiled, eager)
