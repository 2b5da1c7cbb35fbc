"""The safety net of the default-on fused kernels: a kernel that fails to build or launch warns once,
returns the PyTorch result and is not retried; the caller's errors still raise. Plus (slow) the
ahead-of-time sm_90 compile of every core kernel (``benchmarks/compile_check.py``)."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fastvideo import kernels

needs_triton = pytest.mark.skipif(not kernels.available(), reason="Triton is not installed")
REPO = Path(__file__).resolve().parents[2]


class CompilationError(Exception):
    """Shaped like Triton's: the source excerpt, then the message on the last line."""

    __module__ = "triton.compiler.errors"


def compile_error() -> Exception:
    return CompilationError("at 12:4:\n    x = tl.load(X + cols)\n    ^\nunsupported feature: tl.frobnicate")


def out_of_resources() -> Exception:
    from triton.runtime.errors import OutOfResources

    return OutOfResources(262144, 232448, "shared memory")


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "_failed", set())


def break_launcher(monkeypatch: pytest.MonkeyPatch, name: str, error: Any) -> list[int]:
    """Replace ``_triton.<name>`` by a launcher that raises ``error()``; returns its call counter."""
    from fastvideo.kernels import _triton

    calls: list[int] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise error()

    monkeypatch.setattr(_triton, name, broken)
    return calls


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == kernels.__name__
    ]


def fused(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with kernels.forced(), torch.no_grad():
        return fn(*args, **kwargs)


# Each op with its launcher and plain PyTorch written here (fp32 math, one rounding to x's dtype).


def adaln_case(gen: torch.Generator) -> tuple[Any, Any]:
    x = torch.randn(2, 5, 16, generator=gen).to(torch.bfloat16)
    shift, scale = torch.randn(2, 3, 16, generator=gen), torch.randn(2, 3, 16, generator=gen)
    index = torch.tensor([0, 0, 1, 2, 2])
    w = torch.randn(16, generator=gen)

    def plain() -> torch.Tensor:
        n = F.rms_norm(x.float(), (16,), w, 1e-6)
        return (n * (1 + scale[:, index]) + shift[:, index]).to(x.dtype)

    return (lambda: kernels.adaln_modulate(x, shift, scale, 1e-6, norm="rms", weight=w, index=index)), plain


def gated_case(gen: torch.Generator) -> tuple[Any, Any]:
    x, y = torch.randn(2, 5, 16, generator=gen).half(), torch.randn(2, 5, 16, generator=gen).half()
    gate = torch.randn(2, 16, generator=gen)
    return (lambda: kernels.gated_residual(x, y, gate)), (
        lambda: (x.float() + gate[:, None] * y.float()).half()
    )


def gated_adaln_case(gen: torch.Generator) -> tuple[Any, Any]:
    x, y = torch.randn(1, 4, 16, generator=gen).half(), torch.randn(1, 4, 16, generator=gen).half()
    gate, shift, scale = (torch.randn(1, 16, generator=gen) for _ in range(3))

    def plain() -> tuple[torch.Tensor, torch.Tensor]:
        s = (x.float() + gate[:, None] * y.float()).half()
        h = F.layer_norm(s.float(), (16,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
        return s, h.half()

    return (lambda: kernels.gated_residual_adaln(x, y, gate, shift, scale, 1e-6)), plain


def rms_plain(x: torch.Tensor, w: torch.Tensor, group: int) -> torch.Tensor:
    xg = x.float().unflatten(-1, (-1, group))
    return (xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + 1e-6) * w).flatten(-2)


def rope_plain(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs, signed sin tables (``(-s, +s)`` per pair)."""
    partner = y.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return y * cos + partner * sin


def rope_tables(gen: torch.Generator, length: int, dh: int) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.rand(length, 1, dh // 2, generator=gen) * 6
    cos = angles.cos().repeat_interleave(2, -1)
    sin = torch.stack((-angles.sin(), angles.sin()), -1).flatten(-2)
    return cos, sin


def rope_case(gen: torch.Generator) -> tuple[Any, Any]:
    x, w = torch.randn(2, 5, 3, 8, generator=gen).half(), torch.randn(8, generator=gen)
    cos, sin = rope_tables(gen, 5, 8)
    return (lambda: kernels.rms_norm_rope(x, w, cos, sin, 1e-6, 8)), (
        lambda: rope_plain(rms_plain(x, w, 8), cos, sin).half()
    )


def pair_case(gen: torch.Generator) -> tuple[Any, Any]:
    q, k = torch.randn(1, 5, 2, 8, generator=gen).half(), torch.randn(1, 5, 2, 8, generator=gen).half()
    wq, wk = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    cos, sin = rope_tables(gen, 5, 8)
    return (lambda: kernels.rms_norm_rope_pair(q, k, wq, wk, cos, sin, 1e-6, 16)), (
        lambda: (
            rope_plain(rms_plain(q.flatten(2), wq, 16).unflatten(-1, (2, 8)), cos, sin).half(),
            rope_plain(rms_plain(k.flatten(2), wk, 16).unflatten(-1, (2, 8)), cos, sin).half(),
        )
    )


def rms_case(gen: torch.Generator) -> tuple[Any, Any]:
    x, w = torch.randn(2, 5, 4, 8, generator=gen).half(), torch.randn(8, generator=gen)
    return (lambda: kernels.rms_norm(x, w, 1e-6, 8)), (lambda: rms_plain(x, w, 8).half())


CASES = {
    "adaln_modulate": ("adaln", adaln_case),
    "gated_residual": ("gated_residual", gated_case),
    "gated_residual_adaln": ("gated_residual_adaln", gated_adaln_case),
    "rms_norm_rope": ("rms_rope", rope_case),
    "rms_norm_rope_pair": ("rms_rope_pair", pair_case),
    "rms_norm": ("rms_rope", rms_case),
}


def as_tuple(x: Any) -> tuple[torch.Tensor, ...]:
    return x if isinstance(x, tuple) else (x,)


@needs_triton
@pytest.mark.parametrize(
    "error", [compile_error, out_of_resources], ids=["compile-error", "out-of-resources"]
)
@pytest.mark.parametrize("op", list(CASES))
def test_failed_kernel_falls_back_once(
    op: str, error: Any, fresh: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    launcher, make = CASES[op]
    call, plain = make(torch.Generator().manual_seed(0))
    with kernels.forced(False), torch.no_grad():
        reference = as_tuple(call())  # the module's own PyTorch path
    calls = break_launcher(monkeypatch, launcher, error)
    caplog.set_level(logging.WARNING, logger=kernels.__name__)
    first = as_tuple(fused(call))
    second = as_tuple(fused(call))
    assert len(calls) == 1, "a failed kernel must not be retried"
    for got, again, ref, want in zip(first, second, reference, as_tuple(plain()), strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)  # exactly the reference math
        torch.testing.assert_close(again, ref, rtol=0, atol=0)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=2e-3)  # and right
    (message,) = warnings_of(caplog)
    assert message.startswith(f"fused kernel {op} failed")
    assert "\n" not in message
    assert "falling back to PyTorch for this op; FASTVIDEO_FUSED=0 turns the fused kernels off" in message
    assert ("unsupported feature: tl.frobnicate" if error is compile_error else "OutOfResources") in message
    assert kernels.failed_ops() == {op}


@needs_triton
def test_other_ops_keep_their_kernels(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    break_launcher(monkeypatch, "adaln", compile_error)
    _, make = CASES["gated_residual"]
    call, plain = make(torch.Generator().manual_seed(1))
    fused(CASES["adaln_modulate"][1](torch.Generator().manual_seed(1))[0])
    from fastvideo.kernels import _triton

    seen: list[int] = []
    real = _triton.gated_residual
    monkeypatch.setattr(_triton, "gated_residual", lambda *a: seen.append(1) or real(*a))
    torch.testing.assert_close(fused(call), plain(), rtol=1e-3, atol=2e-3)
    assert seen == [1] and kernels.failed_ops() == {"adaln_modulate"}


@needs_triton
def test_caller_errors_still_raise(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    break_launcher(monkeypatch, "adaln", compile_error)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match="shift must be"):  # checked before the launch
        fused(kernels.adaln_modulate, x, torch.randn(3, 16), torch.randn(2, 16))
    assert kernels.failed_ops() == set()
    fused(kernels.adaln_modulate, x, torch.randn(2, 16), torch.randn(2, 16))  # now the op has failed
    with pytest.raises(ValueError, match="shift must be"):
        fused(kernels.adaln_modulate, x, torch.randn(3, 16), torch.randn(2, 16))
    # a ValueError / TypeError from inside the launch is the caller's too: raised, the op stays on
    for error in (ValueError, TypeError):
        break_launcher(monkeypatch, "gated_residual", lambda e=error: e("bad pointer argument"))
        with pytest.raises(error, match="bad pointer"):
            fused(kernels.gated_residual, x, x, torch.randn(2, 16))
    assert kernels.failed_ops() == {"adaln_modulate"}


@needs_triton
def test_fp8_activation_quantization_falls_back(
    fresh: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from fastvideo.optimize import fp8, fp8_triton

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("FASTVIDEO_FP8_ACT_QUANT", "auto")
    calls: list[int] = []

    def broken(x: torch.Tensor, gelu: bool = False) -> Any:
        calls.append(1)
        raise compile_error()

    monkeypatch.setattr(fp8_triton, "quantize_rows_triton", broken)
    caplog.set_level(logging.WARNING, logger=kernels.__name__)
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    amax = x.float().abs().amax(-1, keepdim=True)
    for _ in range(2):
        q, scale = fp8.quantize_activation(x)
        torch.testing.assert_close(scale, amax / 448.0, rtol=1e-6, atol=0)
        torch.testing.assert_close(
            q, (x.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn), rtol=0, atol=0
        )
    assert calls == [1]
    (message,) = warnings_of(caplog)
    assert "fp8_quantize_rows" in message and "FASTVIDEO_FP8_ACT_QUANT=torch" in message


def sm90_compiler() -> str | None:
    """Why Triton cannot compile for sm_90 here (``None``: it can)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists() and not os.environ.get("TRITON_PTXAS_PATH"):
        return f"triton {triton.__version__} ships no ptxas ({ptxas})"
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        return "triton has no NVIDIA backend"
    return None


@pytest.mark.slow
def test_core_kernels_compile_for_sm90() -> None:
    """Every kernel of fastvideo.kernels and the FP8 quantization (the default-on paths) compiles for the
    H100 at the models' shapes and the launchers' constexprs and block sizes (a compile error there would
    otherwise show only on a GPU; ~17 s with an empty Triton cache). The opt-in sage and sta kernels are
    checked by ``benchmarks/compile_check.py`` itself (``run_gpu_kcheck.sh``; ~40 s more)."""
    reason = sm90_compiler()
    if reason:
        pytest.skip(f"no sm_90 compiler: {reason}")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    script = REPO / "benchmarks" / "compile_check.py"
    done = subprocess.run(
        [sys.executable, str(script), "--only", "core"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = done.stdout.splitlines()
    failed = [ln for ln in lines if ln.startswith("FAIL")]
    assert done.returncode == 0 and not failed, "\n".join(failed) or done.stderr[-2000:]
    ok = [ln for ln in lines if ln.startswith("ok")]
    names = {ln.split()[1] for ln in ok}
    assert names == {*CASES, "fp8_quantize_rows"}, names
    assert len(ok) >= 100


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("d", [1536, 2048, 3072, 4096, 5120])
def test_gpu_every_op_runs_its_kernel_at_model_widths(d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the GPU (triton 3.6 there), each op builds and launches its kernel at the models' widths in
    bf16 (strict: a build error raises instead of falling back) and matches the PyTorch reference."""
    from fastvideo.optimize.fp8 import quantize_rows
    from fastvideo.optimize.fp8_triton import quantize_rows_triton

    monkeypatch.setenv(kernels.STRICT_ENV, "1")
    gen = torch.Generator(device="cuda").manual_seed(d)
    dev, bf = "cuda", torch.bfloat16

    def rand(*shape: int, dtype: torch.dtype = bf) -> torch.Tensor:
        return torch.randn(*shape, device=dev, generator=gen).to(dtype)

    b, length = 2, 300
    x, y = rand(b, length, d), rand(b, length, d)
    shift, scale, gate = rand(b, 1, d, dtype=torch.float32), rand(b, 1, d, dtype=torch.float32), rand(b, d)
    index = torch.arange(length, device=dev) // 100
    tables = rand(b, 3, d, dtype=torch.float32)
    calls: list[tuple[Any, ...]] = [
        (kernels.adaln_modulate, (x, shift, scale), {}),
        (kernels.adaln_modulate, (x, tables, tables), {"norm": "rms", "weight": rand(d), "index": index}),
        (kernels.gated_residual, (x, y, gate), {}),
        (kernels.gated_residual_adaln, (x, y, gate, shift, scale), {"second": (tables[:, :1], shift)}),
    ]
    for dh in (64, 128):
        h = d // dh
        q, k = rand(b, length, h, dh), rand(b, length, h, dh)
        angles = torch.rand(length, 1, dh // 2, device=dev, generator=gen) * 6
        cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
        for group in (dh, d):
            calls += [
                (kernels.rms_norm_rope, (q, rand(group), cos, sin, 1e-6, group), {"signed_sin": False}),
                (
                    kernels.rms_norm_rope_pair,
                    (q, k, rand(group), rand(group), cos, sin, 1e-6, group),
                    {"signed_sin": False},
                ),
                (kernels.rms_norm, (q, rand(group), 1e-6, group), {}),
            ]
    for fn, args, kwargs in calls:
        with torch.no_grad():
            got = as_tuple(fn(*args, **kwargs))
        with kernels.forced(False), torch.no_grad():
            want = as_tuple(fn(*args, **kwargs))
        for g, w in zip(got, want, strict=True):
            err = (g.float() - w.float()).abs().max().item()
            assert err <= 0.02 * w.float().abs().max().item() + 1e-2, (fn.__name__, d, err)
    assert not kernels.failed_ops()
    for width in (d, 4 * d):
        a = rand(257, width)
        qa, sa = quantize_rows_triton(a)
        qr, sr = quantize_rows(a)
        torch.testing.assert_close(sa, sr)
        assert (qa.float() - qr.float()).abs().max() <= 0.07 * qr.float().abs().max()
