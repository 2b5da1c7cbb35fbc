"""The ``sage`` backend: its Triton kernel (under TRITON_INTERPRET=1 on CPU) against the plain-PyTorch
spec and against SDPA, and its dispatch through the seam."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastvideo.attention import attention, use_backend
from fastvideo.attention.sage import SageBackend, sage_attention_reference
from fastvideo.attention.sage_triton import block_config, interpreting, sage_attention_triton

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or interpreting()), reason="needs CUDA or TRITON_INTERPRET=1"
)
DEVICE = "cuda" if torch.cuda.is_available() and not interpreting() else "cpu"


@pytest.fixture(autouse=True)
def _fixed_gpu_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the GPU: the default blocks, warps and stages, not autotuned (one compile per variant; the
    sweep, benchmarks/sage_config_sweep.py, exercises autotuning)."""
    if DEVICE == "cuda":
        from fastvideo.attention.sage_triton import GPU_CONFIG

        monkeypatch.setenv("FASTVIDEO_SAGE_CONFIG", ",".join(map(str, GPU_CONFIG)))


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    qt, kt, vt = (x.transpose(1, 2).float() for x in (q, k, v))
    return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)


def _inputs(b: int, lq: int, lk: int, h: int, d: int, dtype: torch.dtype, offset: float = 0.0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(lq * 7 + d)
    q, k, v = (torch.randn(b, n, h, d, generator=g) for n in (lq, lk, lk))
    k = k + offset * torch.randn(1, 1, h, d, generator=g)  # a channel bias shared by all keys
    return tuple(x.to(DEVICE, dtype) for x in (q, k, v))


CASES = [
    pytest.param(1, 100, 77, 2, 64, torch.float16, 0.0, id="B1-Lq100-Lk77-H2-D64-fp16"),
    pytest.param(2, 130, 130, 1, 128, torch.float16, 4.0, id="B2-L130-H1-D128-fp16-kbias"),
    pytest.param(1, 65, 40, 2, 64, torch.bfloat16, 4.0, id="B1-Lq65-Lk40-H2-D64-bf16-kbias"),
    pytest.param(1, 33, 33, 1, 48, torch.float32, 0.0, id="B1-L33-H1-D48-fp32"),
]


@pytest.mark.parametrize(("b", "lq", "lk", "h", "d", "dtype", "offset"), CASES)
def test_kernel_matches_reference_and_sdpa(b, lq, lk, h, d, dtype, offset) -> None:  # type: ignore[no-untyped-def]
    q, k, v = _inputs(b, lq, lk, h, d, dtype, offset)
    out = sage_attention_triton(q, k, v)
    assert out.shape == q.shape and out.dtype == dtype
    block_m, block_n, _, _ = block_config()
    ref = sage_attention_reference(q, k, v, block_m=block_m, block_n=block_n)
    exact = _sdpa(q, k, v)
    # the kernel computes the spec's math (fp16 rounding of P relative to a running max aside)
    rounding = 2 * torch.finfo(dtype).eps * float(ref.float().abs().max())  # one ulp of the output either way
    assert (out.float() - ref.float()).abs().max() < 4e-3 + rounding
    # 8-bit Q K^T stays close to exact attention; smoothing keeps a large key bias harmless
    err = (out.float() - exact).abs()
    assert err.max() < 0.04 and err.mean() < 6e-3
    assert F.cosine_similarity(out.float().flatten(), exact.flatten(), dim=0) > 0.999


@pytest.mark.parametrize(("b", "lq", "lk", "h", "d", "dtype", "offset"), CASES)
def test_fp8_pv_matches_its_reference_and_sdpa(b, lq, lk, h, d, dtype, offset) -> None:  # type: ignore[no-untyped-def]
    """SageAttention 2's P V: V e4m3 per channel, P * 448 in e4m3, fp32 sums."""
    q, k, v = _inputs(b, lq, lk, h, d, dtype, offset)
    out = sage_attention_triton(q, k, v, pv="fp8")
    assert out.shape == q.shape and out.dtype == dtype
    block_m, block_n, _, _ = block_config()
    ref = sage_attention_reference(q, k, v, block_m=block_m, block_n=block_n, pv="fp8")
    exact = _sdpa(q, k, v)
    diff = (out.float() - ref.float()).abs()
    rounding = 2 * torch.finfo(dtype).eps * float(ref.float().abs().max())
    if lk <= block_n and DEVICE == "cpu":  # one key block: the running max is the row max, P rounds as in
        assert diff.max() < 1e-3 + rounding  # the spec (the GPU's exp2 may flip an e4m3 rounding of P)
    else:  # P is rounded to e4m3 relative to a running max: the same error size, not the same values
        assert diff.max() < 0.04 and diff.mean() < 2e-3
    err = (out.float() - exact).abs()
    assert err.max() < 0.08 and err.mean() < 0.01
    assert F.cosine_similarity(out.float().flatten(), exact.flatten(), dim=0) > 0.999


def test_fast_int_to_float_conversion_is_exact() -> None:
    """The logits' int32 -> fp32 by the 1.5 * 2**23 bit trick equal the conversion instruction's."""
    q, k, v = _inputs(1, 70, 70, 2, 128, torch.bfloat16, 4.0)
    q = q * 50  # large logits: int32 sums far from zero
    for pv in ("fp16", "fp8"):
        assert torch.equal(
            sage_attention_triton(q, k, v, pv=pv, fast_i2f=True),
            sage_attention_triton(q, k, v, pv=pv, fast_i2f=False),
        )


def test_tensor_descriptor_loads_give_the_same_output() -> None:
    """The TMA variant (Q, K, V blocks through tensor descriptors) reads the same blocks as pointers."""
    q, k, v = _inputs(2, 100, 77, 3, 64, torch.bfloat16, 2.0)
    for pv in ("fp16", "fp8"):
        assert torch.equal(
            sage_attention_triton(q, k, v, pv=pv, tma=True), sage_attention_triton(q, k, v, pv=pv)
        )


def test_prepare_v_fp8_is_v_over_its_channel_scale() -> None:
    from fastvideo.attention.sage_triton import prepare_v

    v = _inputs(2, 10, 70, 3, 48, torch.bfloat16)[2]
    v8, vs = prepare_v(v, 64, "fp8")
    assert v8.dtype == torch.float8_e4m3fn and v8.shape == (2, 3, 64, 128) and vs.shape == (2, 3, 64)
    scale = (v.float().abs().amax(dim=1) / 448.0).clamp(min=1e-12)  # (B, H, D)
    torch.testing.assert_close(vs[..., :48], scale, rtol=1e-6, atol=0)
    assert bool((vs[..., 48:] == 1).all())
    ref = (v.float() / scale[:, None]).to(torch.float8_e4m3fn).float().permute(0, 2, 3, 1)  # (B, H, D, L)
    assert torch.equal(v8[:, :, :48, :70].float(), ref)
    assert not v8[:, :, 48:].float().any() and not v8[..., 70:].float().any()  # padding: zeros
    v16, none = prepare_v(v, 64, "fp16")
    assert none is None and v16.shape == (2, 3, 128, 64)
    assert torch.equal(v16[:, :, :70, :48], v.half().transpose(1, 2)) and not v16[:, :, 70:].any()


def test_pv_choice_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastvideo.attention.sage_triton import parse_config, resolve_pv

    assert resolve_pv("fp8", torch.device("cpu")) == "fp8"
    assert resolve_pv("auto", torch.device("cpu")) == "fp16"
    monkeypatch.setenv("FASTVIDEO_SAGE_PV", "fp8")
    assert resolve_pv("auto", torch.device("cpu")) == "fp8"
    with pytest.raises(ValueError, match="sage pv must be one of"):
        resolve_pv("int4", torch.device("cpu"))
    assert parse_config("128,64,8,3") == (128, 64, 8, 3)
    for bad in ("128,64,8", "96,64,8,3", "a,b,c,d"):
        with pytest.raises(ValueError, match="sage config"):
            parse_config(bad)
    from fastvideo.attention.options import check_options, cli_flags

    assert any(flags == ("--sage-pv",) and backend == "sage" for flags, backend, _ in cli_flags())
    assert check_options("sage", {"sage": {"pv": "fp8"}}) == {"pv": "fp8"}
    option = SageBackend.options[0]
    assert option.check("fp8", "sage") == "fp8"
    with pytest.raises(ValueError, match=r"sage option 'pv' \(--sage-pv\) must be auto, fp16 or fp8"):
        option.check("fp4", "sage")


@pytest.mark.parametrize(
    ("length", "d", "block", "dtype"), [(100, 64, 64, torch.bfloat16), (33, 48, 32, torch.float32)]
)
def test_fused_quantization_matches_the_torch_one(
    length: int, d: int, block: int, dtype: torch.dtype
) -> None:
    from fastvideo.attention.sage_triton import quantize_blocks, quantize_blocks_triton

    x = _inputs(2, length, length, 3, d, dtype, offset=2.0)[1]
    mean = x.float().mean(dim=1).contiguous()  # (B, H, D)
    q, s = quantize_blocks_triton(x, block, 0.5, mean=mean)
    ref_q, ref_s = quantize_blocks(x.float() - mean.unsqueeze(1), block, 0.5)
    assert q.dtype == torch.int8 and q.shape == ref_q.shape and s.shape == ref_s.shape
    torch.testing.assert_close(s, ref_s, rtol=1e-6, atol=0)
    assert (q.int() - ref_q.int()).abs().max() <= 1  # rounding ties aside, the same integers
    assert (q != ref_q).float().mean() < 1e-3


def test_smoothing_is_what_keeps_a_key_bias_harmless() -> None:
    """A large bias shared by all keys eats the INT8 range unless K is smoothed (SageAttention's reason)."""
    from fastvideo.attention.sage_triton import quantize_blocks, smooth_k

    q, k, v = _inputs(1, 64, 64, 1, 64, torch.float32)
    k = k + 30.0

    def quantization_error(x: torch.Tensor) -> float:
        xq, xs = quantize_blocks(x, 64)  # (B, H, L, D) int8, (B, H, nb)
        return float(
            (xq.float() * xs[..., None, None].squeeze(-1)[..., None] - x.transpose(1, 2)).abs().max()
        )

    assert quantization_error(smooth_k(k)) < quantization_error(k) / 5
    assert torch.allclose(smooth_k(k).mean(1).cpu(), torch.zeros(1, 1, 64), atol=1e-4)
    out = sage_attention_triton(q, k, v)
    assert (out - _sdpa(q, k, v)).abs().max() < 0.04


def test_seam_dispatches_to_sage_and_falls_back_for_a_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SageBackend, "unavailable_reason", classmethod(lambda cls: None))  # CPU: interpreter
    q, k, v = _inputs(1, 40, 40, 2, 64, torch.float16)
    with use_backend("sage"):
        out = attention(q, k, v)
        assert torch.equal(out, SageBackend().forward(q, k, v))
        mask = torch.ones(40, 40, dtype=torch.bool, device=DEVICE).tril()
        with pytest.warns(RuntimeWarning, match="sage takes no attention mask"):
            masked = attention(q, k, v, attn_mask=mask)
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    assert torch.allclose(masked, F.scaled_dot_product_attention(qt, kt, vt, mask).transpose(1, 2), atol=1e-3)
    assert SageBackend().supports(q, k, v, attn_mask=mask) == "sage takes no attention mask"


def test_backend_option_pv_picks_the_fp8_product() -> None:
    from fastvideo.attention.context import StepContext

    q, k, v = _inputs(1, 40, 40, 2, 64, torch.float16)
    step = StepContext(options={"sage": {"pv": "fp8"}})
    out = SageBackend().forward(q, k, v, step=step)
    assert torch.equal(out, sage_attention_triton(q, k, v, pv="fp8"))
    assert not torch.equal(out, sage_attention_triton(q, k, v, pv="fp16"))


def ulysses_suite(rank: int, world: int) -> dict[str, torch.Tensor]:
    """On each rank: the small DiT's forward with ``sage``, its blocks under Ulysses over ``world`` ranks."""
    from fastvideo.configs import ParallelConfig
    from fastvideo.parallel.sequence import SequenceSharding
    from fastvideo.parallel.state import init_parallel, teardown
    from fastvideo.testing.speed import toy_dit

    SageBackend.unavailable_reason = classmethod(lambda cls: None)  # type: ignore[method-assign]  # interpreter
    model = toy_dit(num_layers=2, heads=4, dim=64)
    state = init_parallel(ParallelConfig(num_gpus=world, sp_size=world), "cpu")
    SequenceSharding(model, state).apply(model)
    g = torch.Generator().manual_seed(5)
    x, text = torch.randn(1, 4, 2, 5, 7, generator=g), torch.randn(1, 6, 16, generator=g)
    with use_backend("sage"), torch.no_grad():
        out = model(x, torch.tensor([400.0]), text)
    teardown()
    return {"out": out}


@pytest.mark.slow  # two processes over gloo, kernels in the interpreter: ~10 s
@pytest.mark.skipif(
    not interpreting(), reason="gloo ranks hold CPU tensors: sage runs on them only in the interpreter"
)
def test_sage_under_ulysses_is_as_accurate_as_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ulysses hands each rank whole sequences of half the heads (self-attention); cross-attention runs
    on each rank's token shard, so its query blocks (and their INT8 scales) differ from one process:
    the outputs differ by quantization noise, never by more than sage's own error."""
    from fastvideo.parallel.testing import run_ranks
    from fastvideo.testing.speed import toy_dit

    monkeypatch.setattr(SageBackend, "unavailable_reason", classmethod(lambda cls: None))
    model = toy_dit(num_layers=2, heads=4, dim=64)
    g = torch.Generator().manual_seed(5)
    x, text = torch.randn(1, 4, 2, 5, 7, generator=g), torch.randn(1, 6, 16, generator=g)
    with use_backend("sage"), torch.no_grad():
        one_process = model(x, torch.tensor([400.0]), text)
    with use_backend("sdpa"), torch.no_grad():
        exact = model(x, torch.tensor([400.0]), text)
    sage_error = float((one_process - exact).abs().max())
    assert sage_error > 0  # sage really ran
    for result in run_ranks(f"{__file__}:ulysses_suite", world=2):
        error = float((result["out"] - exact).abs().max())
        assert error < 2 * sage_error, (error, sage_error)
        assert float((result["out"] - one_process).abs().max()) < 2 * sage_error


# ---- the sageattention package's Hopper kernel (SageAttention 2), through a stand-in on CPU ---------------

_FAKE_SAGE = '''
import torch
import torch.nn.functional as F

CALLS = []


def sageattn_qk_int8_pv_fp8_cuda_sm90(
    q, k, v, tensor_layout="HND", is_causal=False, qk_quant_gran="per_thread", sm_scale=None, **kw
):
    """Exact attention standing in for the package's kernel, with its argument checks."""
    assert tensor_layout == "NHD" and not is_causal and q.dtype in (torch.float16, torch.bfloat16)
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    assert qk_quant_gran in ("per_warp", "per_thread")
    CALLS.append((tuple(q.shape), sm_scale, qk_quant_gran))
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float(), scale=sm_scale
    )
    return out.transpose(1, 2).to(q.dtype)
'''


@pytest.fixture
def fake_sage_package(tmp_path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """A stand-in ``sageattention`` with a ``_qattn_sm90`` extension file on ``sys.path``."""
    import importlib
    import sys

    pkg = tmp_path / "sageattention"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(_FAKE_SAGE)
    (pkg / "_qattn_sm90.cpython-312-x86_64-linux-gnu.so").write_bytes(b"")  # found, never loaded
    sys.modules.pop("sageattention", None)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    from fastvideo import errors
    from fastvideo.attention import sage

    errors._WARNED.clear()
    sage._PACKAGE.clear()
    sage._PACKAGE_PARTS.clear()
    monkeypatch.setattr(sage, "EXACT_KV_TOKENS", 0)  # the tests' short sequences reach the package
    yield lambda: importlib.import_module("sageattention").CALLS
    for name in ("sageattention", "sageattention.quant", "sageattention.sm90_compile"):
        sys.modules.pop(name, None)
    errors._WARNED.clear()
    sage._PACKAGE.clear()
    sage._PACKAGE_PARTS.clear()


def test_package_detection_and_reasons(fake_sage_package, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fastvideo.attention.sage import package_reason, sage_package_installed

    assert sage_package_installed()
    assert SageBackend.doctor_notes() == [
        "sageattention package with Hopper CUDA kernels (SageAttention 2): installed; impl=auto uses it on sm_90"
    ]
    q = torch.zeros(1, 4, 2, 64, dtype=torch.bfloat16)
    assert package_reason(q, "cuda", "auto", grad=False) is None
    assert package_reason(q, "auto", "auto", grad=False) == "CPU tensors"
    assert package_reason(q, "triton", "auto", grad=False) == "impl=triton"
    assert "gradient" in package_reason(q, "cuda", "auto", grad=True)
    assert "pv=fp16" in package_reason(q, "cuda", "fp16", grad=False)
    monkeypatch.setenv("FASTVIDEO_SAGE_PV", "fp16")  # auto with fp16 asked through the environment
    assert "pv=fp16" in package_reason(q, "cuda", "auto", grad=False)
    assert package_reason(q, "cuda", "fp8", grad=False) is None
    monkeypatch.delenv("FASTVIDEO_SAGE_PV")
    assert "head dim 256" in package_reason(
        torch.zeros(1, 4, 2, 256, dtype=torch.bfloat16), "cuda", "auto", False
    )
    assert "float32" in package_reason(q.float(), "cuda", "auto", grad=False)
    (
        tmp_path / "sageattention" / "_qattn_sm90.cpython-312-x86_64-linux-gnu.so"
    ).unlink()  # PyPI 1.0.6: Triton only
    assert sage_package_installed()  # looked up once
    from fastvideo.attention import sage

    sage._PACKAGE.clear()
    assert not sage_package_installed()
    assert "not installed" in package_reason(q, "cuda", "auto", grad=False)
    assert ": not installed;" in SageBackend.doctor_notes()[0]


def test_impl_cuda_runs_the_package_kernel_as_one_custom_op(fake_sage_package) -> None:  # type: ignore[no-untyped-def]
    from fastvideo.attention import sage
    from fastvideo.attention.context import StepContext

    q, k, v = _inputs(1, 40, 24, 2, 64, torch.bfloat16)
    out = SageBackend().forward(q, k, v, step=StepContext(options={"sage": {"impl": "cuda"}}))
    assert fake_sage_package() == [((1, 40, 2, 64), 0.125, sage.SAGE_QK_GRAN)]
    assert torch.allclose(out.float(), _sdpa(q, k, v), atol=1e-2)
    # auto on CPU tensors, and triton: our kernel, the package untouched
    for impl in ("auto", "triton"):
        again = SageBackend().forward(q, k, v, step=StepContext(options={"sage": {"impl": impl}}))
        assert torch.equal(again, sage_attention_triton(q, k, v))
    assert len(fake_sage_package()) == 1
    torch.library.opcheck(
        torch.ops.fastvideo.sage2_sm90_fwd.default,
        (q, k, v, 0.125, "auto"),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_qk_granularity_from_the_environment(fake_sage_package, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fastvideo.attention.context import StepContext

    q, k, v = _inputs(1, 40, 24, 2, 64, torch.bfloat16)
    ctx = StepContext(options={"sage": {"impl": "cuda"}})
    for value in ("per_warp", " PER_THREAD "):
        monkeypatch.setenv("FASTVIDEO_SAGE_QK_GRAN", value)
        SageBackend().forward(q, k, v, step=ctx)
    assert [call[2] for call in fake_sage_package()] == ["per_warp", "per_thread"]
    monkeypatch.setenv("FASTVIDEO_SAGE_QK_GRAN", "per_block")  # a typo raises; it does not fall back
    with pytest.raises(
        ValueError, match=r"FASTVIDEO_SAGE_QK_GRAN must be per_thread or per_warp, got 'per_block'"
    ):
        SageBackend().forward(q, k, v, step=ctx)


def test_short_key_calls_run_exact_attention_not_the_package(fake_sage_package, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Under impl=auto, cross-attention (fewer keys than queries, at most EXACT_KV_TOKENS of them) skips
    the package kernel for exact SDPA; longer key sequences, self-attention and impl=cuda take it;
    FASTVIDEO_SAGE_EXACT_KV overrides the limit."""
    from fastvideo.attention import sage
    from fastvideo.attention.context import StepContext

    real_reason = sage.package_reason  # auto on CPU tensors would pick our Triton kernel: as on a GPU
    monkeypatch.setattr(sage, "package_reason", lambda q, impl, pv, grad: real_reason(q, "cuda", pv, grad))
    monkeypatch.setattr(sage, "EXACT_KV_TOKENS", 24)
    auto = StepContext(options={"sage": {"impl": "auto", "pv": "auto"}})

    def run(lq, lk, ctx=auto):  # type: ignore[no-untyped-def]
        q, k, v = _inputs(1, lq, lk, 2, 64, torch.bfloat16)
        return q, k, v, SageBackend().forward(q, k, v, scale=0.3, step=ctx)

    q, k, v, out = run(40, 24)
    assert fake_sage_package() == []
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    assert torch.equal(out, F.scaled_dot_product_attention(qt, kt, vt, scale=0.3).transpose(1, 2))
    run(40, 25)  # more keys than the limit
    run(24, 24)  # self-attention
    run(40, 24, StepContext(options={"sage": {"impl": "cuda"}}))  # the package asked for by name
    monkeypatch.setenv("FASTVIDEO_SAGE_EXACT_KV", "0")
    run(40, 24)
    shapes = [call[0] for call in fake_sage_package()]
    assert shapes == [(1, 40, 2, 64), (1, 24, 2, 64), (1, 40, 2, 64), (1, 40, 2, 64)]
    monkeypatch.setenv("FASTVIDEO_SAGE_EXACT_KV", "many")
    with pytest.raises(ValueError, match="FASTVIDEO_SAGE_EXACT_KV must be a whole number of keys"):
        run(40, 24)


_FAKE_QUANT = '''
import torch
import torch.nn.functional as F

CALLS = []


def _rows(x, rows):
    b, n, h, d = x.shape
    blocks = -(-n // rows)
    xf = F.pad(x, (0, 0, 0, 0, 0, blocks * rows - n)).view(b, blocks, rows, h, d)
    amax = xf.abs().amax(dim=(2, 4)).clamp_min(1e-7)  # (B, blocks, H)
    q = torch.round(xf * (127.0 / amax)[:, :, None, :, None]).to(torch.int8).view(b, blocks * rows, h, d)
    return q[:, :n].contiguous(), (amax / 127.0).transpose(1, 2).contiguous()


def per_warp_int8(q, k, km=None, BLKQ=128, WARPQ=32, BLKK=64, tensor_layout="HND"):
    """Q with one scale per WARPQ rows, K (minus km) per BLKK rows, of a head (the package's contract)."""
    assert tensor_layout == "NHD" and (BLKQ, WARPQ, BLKK) == (64, 16, 128)
    CALLS.append("per_warp_int8")
    q8, qs = _rows(q.float(), WARPQ)
    k8, ks = _rows(k.float() - (km.float() if km is not None else 0.0), BLKK)
    return q8, qs, k8, ks
'''

_FAKE_SM90 = '''
import torch
import torch.nn.functional as F

CALLS = []


def position(m):
    """Where key m of a group of 16 sits (the package's TransposePadPermuteKernel: smem_load_row)."""
    return (m // 8) * 2 + ((m // 2) % 4) * 4 + (m % 2)


def qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf(q8, k8, v8, o, qs, ks, vs, layout, causal, gran, scale, lse):
    """Dequantize what the kernel takes and attend exactly; V (B, D, H, Lp) FP8, keys permuted."""
    assert (layout, causal, gran, lse) == (0, 0, 2, 0) and v8.dtype == torch.float8_e4m3fn
    CALLS.append(tuple(v8.shape))
    b, n, h, d = q8.shape
    m = k8.shape[1]
    lp = v8.shape[-1]
    assert lp % 128 == 0 and lp >= m and v8.shape[:3] == (b, d, h)
    qf = q8.float() * qs.transpose(1, 2).repeat_interleave(16, dim=1)[:, :n, :, None]
    kf = k8.float() * ks.transpose(1, 2).repeat_interleave(128, dim=1)[:, :m, :, None]
    where = [position(i) for i in range(16)]  # key i sits at position where[i]
    vf = v8.float().view(b, d, h, lp // 16, 16)[..., where].reshape(b, d, h, lp).permute(0, 3, 2, 1)
    assert bool((vf[:, m:] == 0).all())  # zeros past the last key
    vf = vf[:, :m] * vs[:, None]
    out = F.scaled_dot_product_attention(qf.transpose(1, 2), kf.transpose(1, 2), vf.transpose(1, 2), scale=scale)
    o.copy_(out.transpose(1, 2).to(o.dtype))
'''


def test_v_pack_kernels_against_the_plain_pytorch_packing() -> None:
    """Our two Triton passes against the reference packing, bit for bit: a length that is not a whole
    number of 128 keys (zeros after it), two heads, head dims 64 and 128, an all-zero channel."""
    from fastvideo.attention.sage_pack import pack_v_reference, pack_v_sm90

    for b, n, h, d in ((1, 200, 2, 64), (2, 130, 3, 128)):
        g = torch.Generator().manual_seed(n)
        v = (torch.randn(b, n, h, d, generator=g) * torch.logspace(-1, 1, d)).to(torch.bfloat16)
        v[:, :, 0, 5] = 0.0
        v8, vs = pack_v_sm90(v)
        r8, rs = pack_v_reference(v)
        assert v8.dtype == torch.float8_e4m3fn and v8.shape == (b, d, h, -(-n // 128) * 128)
        assert torch.equal(vs, rs) and vs.shape == (b, h, d)
        assert torch.equal(v8.float(), r8.float())
        assert float(vs[0, 0, 5]) == 0.0 and bool((v8[:, 5, 0].float() == 0).all())
    qkv = torch.randn(1, 150, 3, 2, 64).to(torch.bfloat16)  # V as a view of a fused projection
    v = qkv[:, :, 2]
    assert not v.is_contiguous()
    v8, vs = pack_v_sm90(v)
    r8, rs = pack_v_reference(v.contiguous())
    assert torch.equal(vs, rs) and torch.equal(v8.float(), r8.float())
    with pytest.raises(ValueError, match="head dim 64 or 128, got 96"):
        pack_v_sm90(torch.zeros(1, 4, 1, 96))


def test_package_kernel_with_our_v_packing(fake_sage_package, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With the package's internals present (its per-warp Q/K quantization and kernel: stand-ins that
    dequantize exactly what they are given), per-warp calls (by default, or FASTVIDEO_SAGE_V_PACK=1) pack V
    with our kernels and call the kernel; the result is exact attention to 8-bit accuracy, so a wrong V
    layout or scale fails. With FASTVIDEO_SAGE_V_PACK=0, and with per-thread scales, the package's public
    function runs."""
    import importlib
    import sys

    from fastvideo.attention.context import StepContext

    (tmp_path / "sageattention" / "quant.py").write_text(_FAKE_QUANT)
    (tmp_path / "sageattention" / "sm90_compile.py").write_text(_FAKE_SM90)
    for name in ("sageattention.quant", "sageattention.sm90_compile"):
        sys.modules.pop(name, None)
    ctx = StepContext(options={"sage": {"impl": "cuda"}})
    q, k, v = _inputs(1, 150, 140, 2, 64, torch.bfloat16, 2.0)
    monkeypatch.delenv("FASTVIDEO_SAGE_V_PACK", raising=False)  # the default
    out = SageBackend().forward(q, k, v, step=ctx)
    kernel_calls = importlib.import_module("sageattention.sm90_compile").CALLS
    assert kernel_calls == [(1, 64, 2, 256)] and importlib.import_module("sageattention.quant").CALLS
    assert fake_sage_package() == []  # the public function was not called
    exact = _sdpa(q, k, v)
    cos = F.cosine_similarity(out.float().flatten(), exact.flatten(), dim=0).item()
    assert cos > 0.999 and (out.float() - exact).abs().max() < 0.05, cos
    monkeypatch.setenv("FASTVIDEO_SAGE_V_PACK", "1")
    SageBackend().forward(q, k, v, step=ctx)
    assert len(kernel_calls) == 2 and fake_sage_package() == []
    monkeypatch.setenv("FASTVIDEO_SAGE_V_PACK", "0")
    SageBackend().forward(q, k, v, step=ctx)
    monkeypatch.setenv("FASTVIDEO_SAGE_V_PACK", "1")
    monkeypatch.setenv("FASTVIDEO_SAGE_QK_GRAN", "per_thread")
    SageBackend().forward(q, k, v, step=ctx)
    assert [c[2] for c in fake_sage_package()] == ["per_warp", "per_thread"] and len(kernel_calls) == 2


def test_package_path_compiles_whole_and_falls_back_inside_the_graph(fake_sage_package, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Under torch.compile (the DiT blocks are compiled on CUDA) the package path is one opaque op: no
    graph break (fullgraph), and a package that fails at run time still falls back to our kernel."""
    import importlib

    from fastvideo.attention.context import StepContext

    q, k, v = _inputs(1, 40, 24, 2, 64, torch.bfloat16)
    backend = SageBackend()  # eager: the package looked up, the op defined
    ctx = StepContext(options={"sage": {"impl": "cuda"}})

    def fn(q, k, v):  # type: ignore[no-untyped-def]
        return backend.forward(q, k, v, step=ctx) * 2

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    out = compiled(q, k, v)
    assert len(fake_sage_package()) == 1
    assert torch.allclose(out.float(), 2 * _sdpa(q, k, v), atol=2e-2)

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("SM90 kernel is not available.")

    monkeypatch.setattr(importlib.import_module("sageattention"), "sageattn_qk_int8_pv_fp8_cuda_sm90", broken)
    with pytest.warns(RuntimeWarning, match="the sageattention package failed"):
        again = compiled(q, k, v)
    assert torch.equal(again, 2 * sage_attention_triton(q, k, v))
    torch._dynamo.reset()


def test_a_failing_package_call_falls_back_to_triton_with_a_warning(fake_sage_package, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib

    from fastvideo.attention.context import StepContext

    fake_sage_package()
    pkg = importlib.import_module("sageattention")

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("SM90 kernel is not available. Make sure you GPUs with compute capability 9.0.")

    monkeypatch.setattr(pkg, "sageattn_qk_int8_pv_fp8_cuda_sm90", broken)
    q, k, v = _inputs(1, 40, 40, 2, 64, torch.float16)
    with pytest.warns(RuntimeWarning, match=r"sage: the sageattention package failed \(AssertionError: SM90"):
        out = SageBackend().forward(q, k, v, step=StepContext(options={"sage": {"impl": "cuda"}}))
    assert torch.equal(out, sage_attention_triton(q, k, v))
    # impl=cuda where the package cannot take the call: our kernel, one warning saying why
    with pytest.warns(RuntimeWarning, match=r"impl=cuda but the Triton kernel runs: pv=fp16"):
        SageBackend().forward(q, k, v, step=StepContext(options={"sage": {"impl": "cuda", "pv": "fp16"}}))


def test_impl_option_is_checked() -> None:
    from fastvideo.attention.options import check_options, cli_flags

    assert any(flags == ("--sage-impl",) and backend == "sage" for flags, backend, _ in cli_flags())
    assert check_options("sage", {"sage": {"impl": "triton"}}) == {"impl": "triton"}
    with pytest.raises(ValueError, match=r"sage option 'impl' \(--sage-impl\) must be auto, cuda or triton"):
        check_options("sage", {"sage": {"impl": "cudnn"}})


@pytest.mark.gpu
@pytest.mark.skipif(
    DEVICE != "cuda" or not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
    reason="needs a Hopper GPU",
)
def test_package_kernel_on_hopper_against_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real sageattention Hopper kernel where installed (benchmarks/run_gpu_sage2.sh builds it) under
    the default ``impl=auto``: with ``FASTVIDEO_SAGE_V_PACK=0`` through the package's public function, by
    default (``1``) through its raw kernel with V packed by ours (no fallback); both outputs
    are SDPA's to 8-bit accuracy and nearly each other's, and our V packing is the package's but for its
    fast-math divisions (scales to 3e-7, under 0.1 % of the values one e4m3 step apart)."""
    import warnings

    from fastvideo.attention import sage
    from fastvideo.attention.sage import sage_package_installed

    if not sage_package_installed():
        pytest.skip("the sageattention package with its Hopper kernels is not installed")
    import sageattention
    from sageattention import sm90_compile
    from sageattention.quant import per_channel_fp8

    from fastvideo.attention.sage_pack import pack_v_sm90

    q, k, v = _inputs(1, 4000, 4000, 4, 128, torch.bfloat16, 2.0)  # 4000: V padded to 4096
    calls: list[int] = []
    kernel_calls: list[int] = []
    real = sageattention.sageattn_qk_int8_pv_fp8_cuda_sm90
    monkeypatch.setattr(
        sageattention, "sageattn_qk_int8_pv_fp8_cuda_sm90", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    raw = sm90_compile.qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf
    monkeypatch.setattr(
        sm90_compile,
        "qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf",
        lambda *a: kernel_calls.append(1) or raw(*a),
    )
    sage._PACKAGE_PARTS.clear()  # looked up again: the spy above
    exact = _sdpa(q, k, v)
    outs = []
    for pack in ("0", "1"):
        monkeypatch.setenv("FASTVIDEO_SAGE_V_PACK", pack)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a fallback warns: fail instead
            outs.append(SageBackend().forward(q, k, v).float())
    sage._PACKAGE_PARTS.clear()
    # the public function once (it calls the kernel itself), then the raw kernel directly, no fallback
    assert calls == [1] and kernel_calls == [1, 1]
    for out in outs:
        cos = F.cosine_similarity(out.flatten(), exact.flatten(), dim=0).item()
        assert cos > 0.999 and (out - exact).abs().mean() < 2e-3, cos
    assert (outs[0] - outs[1]).abs().mean() < 1e-4 and (outs[0] - outs[1]).abs().max() < 1e-2
    padded = torch.cat([v, v.new_zeros(1, 96, 4, 128)], dim=1)
    ref8, ref_scale, _ = per_channel_fp8(padded, tensor_layout="NHD", smooth_v=False)
    v8, v_scale = pack_v_sm90(v)
    torch.testing.assert_close(v_scale, ref_scale, rtol=3e-7, atol=0)
    ours, theirs = v8.float(), ref8.float()
    step = theirs.abs().clamp_min(2.0**-6) / 8  # one e4m3 step (3 mantissa bits)
    assert float((ours != theirs).float().mean()) < 1e-3 and bool(
        ((ours - theirs).abs() <= step * 1.01).all()
    )
