"""The attention seam: numerics against a softmax reference, backend selection, allow-lists."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import torch

from fastvideo import errors
from fastvideo.attention import (
    ALL,
    DENSE,
    StepContext,
    attention,
    available_backends,
    resolve_backend_name,
    step_context,
    use_backend,
)
from fastvideo.errors import BackendUnavailableError, UnknownNameError
from fastvideo.interfaces import AttentionBackend
from fastvideo.testing import assert_close, fake_plugins, plugin_module


def reference_attention(q, k, v, *, attn_mask=None, scale=None, is_causal=False):  # type: ignore[no-untyped-def]
    """softmax(q k^T * scale + mask) v in float64 on [B, L, H, D]."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = q @ k.transpose(-1, -2) * scale  # [B, H, Lq, Lk]
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask.double()
    return (logits.softmax(-1) @ v).transpose(1, 2)  # [B, Lq, H, Dv]


def _qkv(b: int = 2, lq: int = 5, lk: int = 7, h: int = 3, d: int = 8, dv: int = 8, seed: int = 0):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, lq, h, d, generator=gen),
        torch.randn(b, lk, h, d, generator=gen),
        torch.randn(b, lk, h, dv, generator=gen),
    )


# ---------------------------------------------------------------- numerics of the built-in default


@pytest.mark.usefixtures("isolated_plugins")
@pytest.mark.parametrize(
    "case",
    ["plain", "scale", "bool-mask", "additive-mask", "causal", "cross-dv4"],
)
def test_attention_matches_softmax_reference(case: str) -> None:
    kwargs: dict[str, Any] = {}
    q, k, v = _qkv(lq=7) if case == "causal" else _qkv(dv=4) if case == "cross-dv4" else _qkv()
    if case == "scale":
        kwargs["scale"] = 0.3
    elif case == "bool-mask":
        mask = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(1)) > 0.4
        mask[..., 0] = True  # every query attends to something
        kwargs["attn_mask"] = mask
    elif case == "additive-mask":
        kwargs["attn_mask"] = torch.randn(1, 3, 5, 7, generator=torch.Generator().manual_seed(2))
        kwargs["scale"] = 0.5
    elif case == "causal":
        kwargs["is_causal"] = True
    out = attention(q, k, v, **kwargs)
    assert out.shape == (q.shape[0], q.shape[1], q.shape[2], v.shape[-1])
    assert_close(case, reference_attention(q, k, v, **kwargs), out, 1e-5)


@pytest.mark.usefixtures("isolated_plugins")
def test_default_backend_is_sdpa_and_flash_attn_is_unavailable_on_cpu() -> None:
    assert resolve_backend_name(None) == "sdpa"
    assert "flash-attn" not in available_backends()
    with pytest.raises(
        BackendUnavailableError, match=r"'flash-attn' cannot run here: .* \(pip install flash-attn\)"
    ):
        resolve_backend_name("flash-attn")


_FAKE_FLASH = """
import torch
import torch.nn.functional as F

CALLS = []


def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
    CALLS.append("{impl}")
    if "{impl}" == "fa4":  # like FA4's CuTe-DSL launcher, nothing torch.compile can trace
        torch._dynamo.graph_break()
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=softmax_scale, is_causal=causal
    ).transpose(1, 2)
    return {ret}
"""


@pytest.fixture
def fake_flash(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Installs stand-ins of the flash-attention packages under ``tmp_path`` on demand; each stand-in
    computes SDPA in the package's layout and records its name."""
    import importlib
    import sys

    def drop() -> None:
        for name in list(sys.modules):
            if name.split(".")[0] in ("flash_attn", "flash_attn_interface", "cutlass"):
                del sys.modules[name]

    def install(*impls: str) -> None:
        for impl in impls:
            if impl == "fa3":  # returns (out, lse) as FA3 does
                (tmp_path / "flash_attn_interface.py").write_text(
                    _FAKE_FLASH.format(impl=impl, ret="out, None")
                )
            elif impl == "fa4":
                (tmp_path / "flash_attn" / "cute").mkdir(parents=True, exist_ok=True)
                (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text(
                    _FAKE_FLASH.format(impl=impl, ret="out, None")
                )
                (tmp_path / "cutlass").mkdir(exist_ok=True)
                (tmp_path / "cutlass" / "__init__.py").write_text("")
            else:
                (tmp_path / "flash_attn").mkdir(exist_ok=True)
                (tmp_path / "flash_attn" / "__init__.py").write_text(_FAKE_FLASH.format(impl=impl, ret="out"))
        importlib.invalidate_caches()

    from fastvideo.attention import backends

    if backends.flash_attn_installed():
        pytest.skip("a real flash-attn is installed here; the stand-ins need a machine without one")
    drop()
    backends._FLASH_ATTN_LOADED.clear()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("FASTVIDEO_FLASH_ATTN", raising=False)
    yield install
    drop()
    backends._FLASH_ATTN_LOADED.clear()


@pytest.mark.parametrize(
    ("installed", "pinned", "runs"),
    [
        (("fa2",), None, "fa2"),
        (("fa4",), None, "fa4"),  # flash-attn-4 alone: a flash_attn namespace holding only cute/
        (("fa2", "fa4"), None, "fa4"),
        (("fa2", "fa3", "fa4"), None, "fa3"),
        (("fa2", "fa3", "fa4"), "fa2", "fa2"),
        (("fa2", "fa4"), "FA4", "fa4"),
        (("fa2",), "fa4", None),
        ((), None, None),
    ],
)
def test_flash_attn_backend_picks_fa3_then_fa4_then_fa2(fake_flash, monkeypatch, installed, pinned, runs):  # type: ignore[no-untyped-def]
    import sys

    from fastvideo.attention import backends

    fake_flash(*installed)
    if pinned:
        monkeypatch.setenv("FASTVIDEO_FLASH_ATTN", pinned)
    assert backends.flash_attn_impl() == runs
    if runs is None:
        reason = backends.FlashAttnBackend.unavailable_reason()
        assert reason is not None and ("not installed" in reason)
        return
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 9, 2, 16, generator=gen) for _ in range(3))
    out = backends.FlashAttnBackend().forward(q, k, v, scale=0.3)
    assert_close(runs, reference_attention(q, k, v, scale=0.3), out, 1e-5)
    module = sys.modules[backends.FLASH_ATTN_IMPLS[runs]]
    assert module.CALLS == [runs]


def test_an_installed_flash_attn_that_does_not_import_gives_way(fake_flash, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """FA4 present but broken (its compiler does not load here): FA2 runs; pinned, the error names it."""
    import sys

    from fastvideo.attention import backends

    fake_flash("fa2", "fa4")
    (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text(
        "raise ImportError('libcute_dsl_runtime.so: cannot open')"
    )
    assert backends.flash_attn_impl() == "fa4"  # found by its files
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 5, 2, 8, generator=gen) for _ in range(3))
    out = backends.FlashAttnBackend().forward(q, k, v)
    assert_close("fa2 after a broken fa4", reference_attention(q, k, v), out, 1e-5)
    assert sys.modules["flash_attn"].CALLS == ["fa2"]
    monkeypatch.setenv("FASTVIDEO_FLASH_ATTN", "fa4")
    with pytest.raises(
        ImportError, match=r"fa4: ImportError: libcute_dsl_runtime.so: cannot open.*pip install"
    ):
        backends.FlashAttnBackend().forward(q, k, v)


def test_flash_attn_backend_names_a_bad_pin(fake_flash, monkeypatch):  # type: ignore[no-untyped-def]
    from fastvideo.attention import backends

    fake_flash("fa2")
    monkeypatch.setenv("FASTVIDEO_FLASH_ATTN", "fa5")
    with pytest.raises(ValueError, match=r"FASTVIDEO_FLASH_ATTN='fa5': expected one of fa3, fa4, fa2"):
        backends.flash_attn_impl()


# ---------------------------------------------------------------- selection with fake backends


class Recorder(AttentionBackend):
    """Computes the reference and records which backend ran, with its step context."""

    calls: ClassVar[list[tuple[str, StepContext | None]]] = []

    def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None):  # type: ignore[no-untyped-def]
        Recorder.calls.append((self.name, step))
        return reference_attention(q, k, v, attn_mask=attn_mask, scale=scale, is_causal=is_causal).to(q.dtype)


class FakeDense(Recorder):
    name = "fake-dense"
    priority = 5

    def supports(self, q, k, v, **kwargs):  # type: ignore[no-untyped-def]
        return "fake-dense takes no mask" if kwargs.get("attn_mask") is not None else None


class FakeSparse(Recorder):
    name = "fake-sparse"
    priority = 50  # higher than every dense one: still never chosen automatically
    sparse = True


class FakeMissing(Recorder):
    name = "fake-missing"
    priority = 100
    requires = "fastvideo-fake-kernels"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "the fake kernels are not installed"


@pytest.fixture
def fakes() -> Iterator[None]:
    backends = [FakeDense, FakeSparse, FakeMissing]
    with fake_plugins(plugin_module("fake-attn", fv_register_attention_backends=lambda: backends)):
        Recorder.calls.clear()
        yield


def _ran() -> list[str]:
    names = [name for name, _ in Recorder.calls]
    Recorder.calls.clear()
    return names


def test_automatic_choice_is_the_best_available_dense_backend(fakes: None) -> None:
    assert available_backends() == ["fake-sparse", "fake-dense", "sdpa"]  # fake-missing cannot run
    assert resolve_backend_name(None) == "fake-dense"
    q, k, v = _qkv()
    attention(q, k, v, allow=ALL)
    assert _ran() == ["fake-dense"]


def test_env_var_beats_automatic_and_use_backend_beats_env(
    fakes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    q, k, v = _qkv()
    monkeypatch.setenv("FASTVIDEO_ATTENTION_BACKEND", "SDPA")  # case and _/- are normalized
    assert resolve_backend_name(None) == "sdpa"
    attention(q, k, v)
    assert _ran() == []  # sdpa is not a recorder
    monkeypatch.setenv("FASTVIDEO_ATTENTION_BACKEND", "fake_dense")
    attention(q, k, v)
    assert _ran() == ["fake-dense"]
    with use_backend("sdpa") as chosen:
        assert chosen == "sdpa"
        attention(q, k, v)
    assert _ran() == []
    attention(q, k, v)  # the env var applies again after the block
    assert _ran() == ["fake-dense"]


def test_sparse_backend_runs_only_where_the_allow_list_admits_it(fakes: None) -> None:
    q, k, v = _qkv()
    ctx = StepContext(grid=(1, 1, 5), step_index=3, num_steps=4)
    with use_backend("fake-sparse"), step_context(ctx):
        out = attention(q, k, v, allow=ALL)  # video self-attention
        assert _ran() == ["fake-sparse"]
        attention(q, k, v, allow=DENSE)  # cross-attention: best dense instead
        attention(q, k, v)  # DENSE is the default
        assert _ran() == ["fake-dense", "fake-dense"]
        attention(q, k, v, allow={"fake-sparse"})
        attention(q, k, v, allow={"sdpa"})  # a named dense backend is preferred as the fallback
        assert _ran() == ["fake-sparse"]
    assert_close("sparse", reference_attention(q, k, v), out, 1e-5)


def test_backend_receives_the_step_context(fakes: None) -> None:
    q, k, v = _qkv()
    ctx = StepContext(grid=(1, 1, 5), step_index=2, num_steps=4, options={"fake-sparse": {"window": 3}})
    with use_backend("fake-sparse"):
        with step_context(ctx):
            attention(q, k, v, allow=ALL)
        attention(q, k, v, allow=ALL)
    assert Recorder.calls == [("fake-sparse", ctx), ("fake-sparse", None)]


def test_backend_that_declines_the_inputs_falls_back(fakes: None) -> None:
    q, k, v = _qkv()
    mask = torch.ones(1, 1, 5, 7, dtype=torch.bool)
    errors._WARNED.clear()
    with use_backend("fake-dense"):
        with pytest.warns(RuntimeWarning, match=r"'fake-dense' cannot take this call \(.*\); using 'sdpa'"):
            out = attention(q, k, v, attn_mask=mask)
        assert _ran() == []  # fake-dense declined the mask: sdpa ran
        attention(q, k, v)
        assert _ran() == ["fake-dense"]
    assert_close("fallback", reference_attention(q, k, v, attn_mask=mask), out, 1e-5)


def test_explicit_request_for_an_unavailable_backend_names_the_package(
    fakes: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = r"'fake-missing' cannot run here: the fake kernels are not installed \(pip install fastvideo-fake-kernels\)"
    with pytest.raises(BackendUnavailableError, match=expected):
        resolve_backend_name("fake-missing")
    with pytest.raises(BackendUnavailableError, match=expected), use_backend("fake-missing"):
        pass
    monkeypatch.setenv("FASTVIDEO_ATTENTION_BACKEND", "fake-missing")
    with pytest.raises(BackendUnavailableError, match=expected):
        attention(*_qkv())


def test_unknown_backend_lists_the_registered_ones(fakes: None) -> None:
    with pytest.raises(UnknownNameError) as err:
        resolve_backend_name("vsa")
    assert str(err.value) == (
        "Unknown attention backend 'vsa'. Available: fake-dense, fake-missing, fake-sparse, flash-attn, fp8, sage, sdpa. "
        "'vsa' is provided by fastvideo-vsa (pip install fastvideo-vsa)."
    )
    with pytest.raises(UnknownNameError, match="Did you mean 'fake-dense'"):
        resolve_backend_name("fake-dens")


def test_choice_follows_registry_changes() -> None:
    q, k, v = _qkv()
    with fake_plugins(plugin_module("fake-attn", fv_register_attention_backends=lambda: [FakeDense])):
        Recorder.calls.clear()
        attention(q, k, v)
        assert _ran() == ["fake-dense"]
    with fake_plugins():
        attention(q, k, v)
        assert _ran() == []  # the cached choice was forgotten with the plugin


def test_flash_attn_4_runs_as_one_custom_op_under_torch_compile(fake_flash) -> None:  # type: ignore[no-untyped-def]
    """FA4's launcher is plain Python: the backend calls it through ``fastvideo::flash_attn4_fwd`` in
    inference, so a compiled block takes it whole (fullgraph: no graph break)."""
    import sys

    from fastvideo.attention import backends

    fake_flash("fa4")
    backend = backends.FlashAttnBackend()
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 7, 2, 16, generator=gen) for _ in range(3))
    torch.library.opcheck(
        backends._fa4_op(), (q, k, v, 0.25, False), test_utils=("test_schema", "test_faketensor")
    )
    with torch.inference_mode():
        compiled = torch.compile(
            lambda q, k, v: backend.forward(q, k, v, scale=0.25), fullgraph=True, backend="eager"
        )
        out = compiled(q, k, v)
    assert_close("fa4 compiled", reference_attention(q, k, v, scale=0.25), out, 1e-5)
    assert "fa4" in sys.modules["flash_attn.cute"].CALLS


def test_flash_attn_doctor_notes_say_what_is_installed_and_what_runs(fake_flash, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fastvideo.attention import backends

    assert backends.FlashAttnBackend.doctor_notes() == [
        "installed: none; runs: none (FASTVIDEO_FLASH_ATTN=fa3|fa4|fa2 pins)"
    ]
    fake_flash("fa2", "fa4")
    assert backends.FlashAttnBackend.doctor_notes() == [
        "installed: fa4, fa2; runs: fa4 (flash_attn.cute) (FASTVIDEO_FLASH_ATTN=fa3|fa4|fa2 pins)"
    ]
    monkeypatch.setenv("FASTVIDEO_FLASH_ATTN", "fa9")
    notes = backends.FlashAttnBackend.doctor_notes()  # a diagnostic: says what is wrong, does not raise
    assert notes[0] == "installed: fa4, fa2" and "FASTVIDEO_FLASH_ATTN='fa9'" in notes[1]
