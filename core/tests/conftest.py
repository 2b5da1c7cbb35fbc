"""Fixtures of the core's tests.

In-process tests that touch the registry use ``isolated_plugins`` (no installed entry points, a
fresh registry before and after). Subprocess tests of plugin discovery use ``dummy_site``: real
dummy distributions, built and pip-installed once per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fastvideo.testing import DummyDist, fake_plugins, install_dists

_FAMILY = """
from fastvideo.interfaces import ModelFamily, Preset


class GoodFamily(ModelFamily):
    name = "good-family"
    pipeline_class_names = ("GoodPipeline",)
    presets = (Preset(name="good-tiny", repo_id="fvtest/good-tiny-diffusers"),)

    @classmethod
    def build_pipeline(cls, source, config):
        raise NotImplementedError
"""

_BACKEND = """
from fastvideo.interfaces import AttentionBackend


class GoodAttention(AttentionBackend):
    name = "good-attn"
    priority = -5

    def forward(self, q, k, v, *, attn_mask=None, scale=None, is_causal=False, step=None):
        import torch.nn.functional as F

        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale, is_causal=is_causal).transpose(1, 2)
"""

_GOOD = """
from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_model_families():
    from fvtest_good.family import GoodFamily

    return [GoodFamily]


@hookimpl
def fv_register_attention_backends():
    from fvtest_good.backend import GoodAttention

    return [GoodAttention]


@hookimpl
def fv_register_commands(app):
    import typer

    good_app = typer.Typer(help="Tools of fvtest-good.")

    @good_app.command("hello")
    def hello() -> None:
        typer.echo("hello from fvtest-good")

    app.add_typer(good_app, name="good")
"""

_BROKEN = """
raise RuntimeError("fvtest-broken cannot find libfake.so")
"""

_HOOK_FAILS = """
from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_model_families():
    raise ValueError("config file fvtest.toml is missing")
"""

_FUTURE = """
from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 99


@hookimpl
def fv_register_attention_backends():
    raise AssertionError("a plugin for another API must not be called")
"""


def _dup(letter: str) -> str:
    return f"""
from fastvideo import hookimpl
from fastvideo.interfaces import AttentionBackend

FASTVIDEO_PLUGIN_API = 1


class DupAttention{letter.upper()}(AttentionBackend):
    name = "dup-attn"

    def forward(self, q, k, v, **kwargs):
        raise NotImplementedError


@hookimpl
def fv_register_attention_backends():
    return [DupAttention{letter.upper()}]
"""


DUMMY_DISTS = (
    DummyDist(
        name="fvtest-good",
        version="1.2.3",
        plugin=_GOOD,
        modules={"family.py": _FAMILY, "backend.py": _BACKEND},
    ),
    DummyDist(name="fvtest-broken", plugin=_BROKEN),
    DummyDist(name="fvtest-hookfails", plugin=_HOOK_FAILS),
    DummyDist(name="fvtest-future", plugin=_FUTURE),
    DummyDist(name="fvtest-dup-a", plugin=_dup("a")),
    DummyDist(name="fvtest-dup-b", plugin=_dup("b")),
)


@pytest.fixture(scope="session")
def dummy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding every distribution of :data:`DUMMY_DISTS`, installed by pip (put it on PYTHONPATH)."""
    return install_dists(DUMMY_DISTS, tmp_path_factory.mktemp("dummy") / "site")


@pytest.fixture
def isolated_plugins() -> Iterator[None]:
    """Only the core's built-ins: no installed plugin, no FASTVIDEO_* switches, fresh caches."""
    with fake_plugins():
        yield


@pytest.fixture(autouse=True)
def no_silent_kernel_fallback() -> Iterator[None]:
    """A fused kernel that fails under a test falls back to PyTorch (and the test would pass on the
    reference): fail the test instead. Tests of the fallback isolate the failed set themselves."""
    import sys

    yield
    kernels = sys.modules.get("fastvideo.kernels")
    if kernels is not None and kernels.failed_ops():
        failed = sorted(kernels.failed_ops())
        kernels._failed.clear()
        pytest.fail(f"fused kernels fell back to PyTorch during this test: {failed} (see the logged warning)")
