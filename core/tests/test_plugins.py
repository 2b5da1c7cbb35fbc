"""Plugin discovery with real installed distributions (see ``DUMMY_DISTS`` in conftest.py), run in subprocesses."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from fastvideo import plugins
from fastvideo.testing import plugin_env, run_fv, run_python

DUMMIES = {
    "fvtest-good",
    "fvtest-broken",
    "fvtest-hookfails",
    "fvtest-future",
    "fvtest-dup-a",
    "fvtest-dup-b",
}


def _plugins(site: Path, **env: str | None) -> dict[str, dict]:
    proc = run_fv(["plugins", "list", "--json"], env=plugin_env(site, **env))
    assert proc.returncode == 0, proc.stderr
    return {row["distribution"]: row for row in json.loads(proc.stdout)}


def test_good_plugin_is_listed_with_version_and_registrations(dummy_site: Path) -> None:
    rows = _plugins(dummy_site, FASTVIDEO_PLUGINS="fvtest-good")
    assert set(rows) == {"fastvideo-core", "fvtest-good"}
    good = rows["fvtest-good"]
    assert good["version"] == "1.2.3"
    assert good["name"] == "good"
    assert good["module"] == "fvtest_good.plugin"
    assert good["registers"] == {"model_family": ["good-family"], "attention_backend": ["good-attn"]}
    assert good["broken"] is None
    assert rows["fastvideo-core"]["registers"]["attention_backend"] == ["sdpa", "flash-attn"]
    check = run_fv(
        ["plugins", "list", "--check"], env=plugin_env(dummy_site, FASTVIDEO_PLUGINS="fvtest-good")
    )
    assert check.returncode == 0, check.stderr
    assert "fvtest-good 1.2.3 [good]  model family: good-family; attention backend: good-attn" in check.stdout


def test_good_plugin_family_command_and_backend_are_usable(dummy_site: Path) -> None:
    env = plugin_env(dummy_site, FASTVIDEO_PLUGINS="fvtest-good,fastvideo-wan")
    models = json.loads(run_fv(["models", "list", "--json"], env=env).stdout)
    assert {m["family"]: m["distribution"] for m in models} == {
        "good-family": "fvtest-good",
        "wan": "fastvideo-wan",
    }
    hello = run_fv(["good", "hello"], env=env)
    assert (hello.returncode, hello.stdout.strip()) == (0, "hello from fvtest-good")
    out = run_python(
        """
        import torch
        from fastvideo.attention import attention, use_backend
        from fastvideo.attention.selector import get_backend
        q = torch.randn(1, 4, 2, 8)
        with use_backend("good-attn"):
            good = attention(q, q, q)
        with use_backend("sdpa"):
            print(torch.allclose(good, attention(q, q, q)), type(get_backend("good-attn")).__module__)
        """,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "fvtest_good.backend"]


def test_broken_plugins_are_reported_and_the_others_keep_working(dummy_site: Path) -> None:
    rows = _plugins(dummy_site)
    assert DUMMIES | {"fastvideo-core", "fastvideo-wan"} <= set(rows)
    assert rows["fvtest-broken"]["broken"] == (
        "import of fvtest_broken.plugin failed: RuntimeError: fvtest-broken cannot find libfake.so"
    )
    assert rows["fvtest-broken"]["registers"] == {}
    assert rows["fvtest-hookfails"]["broken"] == (
        "fv_register_model_families raised ValueError: config file fvtest.toml is missing"
    )
    for ok in ("fastvideo-core", "fastvideo-wan", "fvtest-good", "fvtest-dup-a"):
        assert rows[ok]["broken"] is None, rows[ok]
    assert rows["fvtest-good"]["registers"]["attention_backend"] == ["good-attn"]
    assert rows["fastvideo-wan"]["registers"] == {"model_family": ["wan"]}
    text = run_fv(["plugins", "list"], env=plugin_env(dummy_site))
    assert "fvtest-broken 0.1.0 [broken]  BROKEN: import of fvtest_broken.plugin failed" in text.stdout
    assert run_fv(["plugins", "list", "--check"], env=plugin_env(dummy_site)).returncode == 1
    models = run_fv(["models", "list", "--json"], env=plugin_env(dummy_site))
    assert models.returncode == 0, models.stderr
    assert {"good-family", "wan"} <= {m["family"] for m in json.loads(models.stdout)}


def test_duplicate_backend_name_is_rejected_naming_both_distributions(dummy_site: Path) -> None:
    env = plugin_env(
        dummy_site, FASTVIDEO_PLUGINS="fvtest-dup-b,fvtest-dup-a"
    )  # order of the list is irrelevant
    rows = _plugins(dummy_site, FASTVIDEO_PLUGINS="fvtest-dup-b,fvtest-dup-a")
    assert rows["fvtest-dup-a"]["broken"] is None
    assert rows["fvtest-dup-a"]["registers"] == {"attention_backend": ["dup-attn"]}
    reason = rows["fvtest-dup-b"]["broken"]
    assert reason is not None and "'dup-attn' is registered twice" in reason
    assert "fvtest_dup_a.plugin.DupAttentionA from fvtest-dup-a 0.1.0" in reason
    assert "fvtest_dup_b.plugin.DupAttentionB from fvtest-dup-b 0.1.0" in reason
    assert rows["fvtest-dup-b"]["registers"] == {}
    check = run_fv(["plugins", "list", "--check"], env=env)
    assert check.returncode == 1
    assert (
        "fvtest-dup-b 0.1.0 [dup-b]  BROKEN: attention backend 'dup-attn' is registered twice" in check.stdout
    )


def test_unsupported_plugin_api_is_skipped_with_a_message(dummy_site: Path) -> None:
    rows = _plugins(dummy_site, FASTVIDEO_PLUGINS="fvtest-future")
    reason = rows["fvtest-future"]["broken"]
    assert reason is not None
    assert "fvtest-future needs fastvideo plugin API 99" in reason
    assert "supports [1]" in reason
    assert "upgrade fastvideo-core" in reason
    assert rows["fvtest-future"]["registers"] == {}  # its hook (which raises) was never called


def test_missing_plugin_api_declaration_is_explained() -> None:
    module = types.ModuleType("legacy_plugin")
    reason = plugins._check_api(module, "fastvideo-legacy")
    assert reason is not None
    assert "fastvideo-legacy does not declare FASTVIDEO_PLUGIN_API in legacy_plugin" in reason
    assert "add FASTVIDEO_PLUGIN_API = 1" in reason


@pytest.mark.parametrize(
    ("allow", "expected"),
    [
        ("fvtest-good", {"fvtest-good"}),
        (" FVTEST_Good , fvtest-dup-a", {"fvtest-good", "fvtest-dup-a"}),  # names are normalized
        ("good,dup-b", {"fvtest-good", "fvtest-dup-b"}),  # entry-point names select too
        ("fastvideo-wan", {"fastvideo-wan"}),
        ("", set()),  # empty: no plugins at all
    ],
    ids=["dist", "normalized", "entry-point", "wan", "empty"],
)
def test_allow_list_selects_plugins(dummy_site: Path, allow: str, expected: set[str]) -> None:
    rows = _plugins(dummy_site, FASTVIDEO_PLUGINS=allow)
    assert set(rows) == {"fastvideo-core"} | expected
    assert all(row["broken"] is None for row in rows.values())


def test_disable_autoload_keeps_only_builtins(dummy_site: Path) -> None:
    rows = _plugins(dummy_site, FASTVIDEO_DISABLE_PLUGIN_AUTOLOAD="1", FASTVIDEO_PLUGINS="fvtest-good")
    assert set(rows) == {"fastvideo-core"}
    assert rows["fastvideo-core"]["registers"] == {
        "attention_backend": ["sdpa", "flash-attn"],
        "parallel_strategy": ["ulysses", "ring", "usp", "cfg", "fsdp", "tp"],
        "training_algorithm": ["finetune", "lora", "vae"],
        "sampler": ["checkpoint", "flow-euler", "unipc", "few-step"],
        "pipeline_transform": ["cfg-parallel", "parallel-vae"],
    }
    models = run_fv(["models", "list"], env=plugin_env(dummy_site, FASTVIDEO_DISABLE_PLUGIN_AUTOLOAD="1"))
    assert "no model families installed (pip install fastvideo-wan)" in models.stdout


def test_discovery_imports_no_heavy_modules(dummy_site: Path) -> None:
    proc = run_python(
        """
        import sys
        from fastvideo.registry import get_registry
        reg = get_registry()
        print(sorted(reg.names("attention_backend")), sorted(reg.names("model_family")))
        print(sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
        """,
        env=plugin_env(dummy_site, FASTVIDEO_PLUGINS="fvtest-good,fastvideo-wan"),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "['flash-attn', 'good-attn', 'sdpa'] ['good-family', 'wan']"
    assert lines[1] == "[]"


def test_load_plugins_is_idempotent(isolated_plugins: None) -> None:
    pm = plugins.load_plugins()
    assert plugins.load_plugins() is pm
    assert plugins.load_plugins(reload=True) is not pm
    assert [info.key for info in plugins.plugin_infos()] == ["builtin"]


def test_import_string() -> None:
    assert plugins.import_string("fastvideo.plugins:load_plugins") is plugins.load_plugins
    assert plugins.import_string("fastvideo.plugins.load_plugins") is plugins.load_plugins


def test_cli_reports_a_rejected_plugin_as_one_warning_line(dummy_site: Path) -> None:
    env = plugin_env(
        dummy_site, FASTVIDEO_PLUGINS="fvtest-dup-a,fvtest-dup-b,fastvideo-wan", HF_HUB_OFFLINE="1"
    )
    proc = run_fv(["generate", "--prompt", "x", "--model", "wan", "--num-frames", "80"], env=env)
    assert proc.returncode == 2
    warning, error = proc.stderr.splitlines()
    assert warning.startswith("warning: attention backend 'dup-attn' is registered twice: by ")
    assert error == "error: num_frames=80 is invalid for wan: it must be 4*k+1 (e.g. 77 or 81)"
