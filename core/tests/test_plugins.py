"""Plugin discovery with real installed distributions (see ``DUMMY_DISTS`` in conftest.py), run in subprocesses."""

from __future__ import annotations

import json
import subprocess
import time
import types
from pathlib import Path

import pytest

from fastvideo import plugins
from fastvideo.testing import DummyDist, install_dists, plugin_env, run_fv, run_python

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
    assert rows["fastvideo-core"]["registers"]["attention_backend"] == ["sdpa", "flash-attn", "sage", "fp8"]
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
        "attention_backend": ["sdpa", "flash-attn", "sage", "fp8"],
        "parallel_strategy": ["ulysses", "ring", "usp", "cfg", "fsdp", "tp"],
        "training_algorithm": ["finetune", "lora", "vae"],
        "sampler": ["checkpoint", "flow-euler", "unipc", "few-step"],
        "pipeline_transform": [
            "cfg-parallel",
            "parallel-vae",
            "text-kv-cache",
            "step-cache",
            "fp8",
            "layer-offload",
        ],
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
    assert lines[0] == "['flash-attn', 'fp8', 'good-attn', 'sage', 'sdpa'] ['good-family', 'wan']"
    assert lines[1] == "[]"


def test_fake_plugins_autoloads_only_the_named_distributions(dummy_site: Path) -> None:
    """What a plugin's tests use to load a test dependency through its entry point: only the
    named distributions load (whatever FASTVIDEO_PLUGINS says outside), and nothing stays after."""
    proc = run_python(
        """
        from fastvideo.registry import get_registry
        from fastvideo.testing import fake_plugins
        with fake_plugins(autoload=("fvtest-good", "fastvideo-wan")):
            print(sorted(get_registry().names("model_family")))
        with fake_plugins():
            print(sorted(get_registry().names("model_family")))
        try:
            with fake_plugins(autoload="fvtest-good"):
                pass
        except TypeError as exc:
            print(exc)
        """,
        env=plugin_env(dummy_site, FASTVIDEO_PLUGINS="fvtest-dup-a"),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "['good-family', 'wan']",
        "[]",
        "autoload takes a bool or a collection of distribution names, got 'fvtest-good'",
    ]


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


# ---------------------------------------------------------------- plugins that misbehave

_PRINTER = """
from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1
print("hello from fvtest-printer's import")


@hookimpl
def fv_register_model_families():
    print("registering fvtest-printer's families")
    return []
"""

_HIJACK = """
from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_commands(app):
    @app.command("generate")
    def generate() -> None:
        print("hijacked by fvtest-hijack")

    @app.command("hijack-extra")
    def extra() -> None:
        print("an extra command of fvtest-hijack")
"""

_HOOK_HANGS = """
import time

from fastvideo import hookimpl

FASTVIDEO_PLUGIN_API = 1


@hookimpl
def fv_register_attention_backends():
    time.sleep(600)
"""

MISBEHAVING = (
    DummyDist(name="fvtest-printer", plugin=_PRINTER),
    DummyDist(name="fvtest-exits", plugin="raise SystemExit(3)\n"),
    DummyDist(name="fvtest-interrupts", plugin="raise KeyboardInterrupt\n"),
    DummyDist(name="fvtest-hijack", plugin=_HIJACK),
    DummyDist(name="fvtest-hangs", plugin="import time\ntime.sleep(600)\n"),
    DummyDist(name="fvtest-hookhangs", plugin=_HOOK_HANGS),
    DummyDist(name="fvtest-old", plugin="FASTVIDEO_PLUGIN_API = 0\n"),
)


@pytest.fixture(scope="module")
def bad_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The misbehaving distributions above, installed (apart from :data:`DUMMY_DISTS`, so that the
    tests that load every dummy do not wait on the hanging ones)."""
    return install_dists(MISBEHAVING, tmp_path_factory.mktemp("bad") / "site")


def _no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr


def test_plugin_printing_on_stdout_cannot_corrupt_json(bad_site: Path) -> None:
    env = plugin_env(bad_site, FASTVIDEO_PLUGINS="fvtest-printer,fastvideo-wan")
    proc = run_fv(["plugins", "list", "--json"], env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {row["distribution"]: row for row in json.loads(proc.stdout)}  # stdout is pure JSON
    printer = rows["fvtest-printer"]
    assert printer["broken"] is None
    assert printer["output"] == [
        "import of fvtest_printer.plugin: hello from fvtest-printer's import",
        "fv_register_model_families: registering fvtest-printer's families",
    ]
    models = run_fv(["models", "list", "--json"], env=env)
    assert models.returncode == 0, models.stderr
    assert [m["family"] for m in json.loads(models.stdout)] == ["wan"]
    text = run_fv(["plugins", "list"], env=env)
    assert "  note: printed on stdout during import of fvtest_printer.plugin: hello from" in text.stdout
    assert not any(line.startswith(("hello", "registering")) for line in text.stdout.splitlines())


def test_systemexit_or_keyboardinterrupt_on_import_marks_the_plugin_broken(
    bad_site: Path, dummy_site: Path
) -> None:
    env = plugin_env(bad_site, dummy_site, FASTVIDEO_PLUGINS="fvtest-exits,fvtest-interrupts,fvtest-good")
    proc = run_fv(["plugins", "list", "--json"], env=env)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    rows = {row["distribution"]: row for row in json.loads(proc.stdout)}
    assert rows["fvtest-exits"]["broken"] == "import of fvtest_exits.plugin failed: SystemExit: 3"
    assert (
        rows["fvtest-interrupts"]["broken"] == "import of fvtest_interrupts.plugin failed: KeyboardInterrupt"
    )
    assert rows["fvtest-good"]["broken"] is None
    hello = run_fv(["good", "hello"], env=env)  # the good plugin's command still works
    assert (hello.returncode, hello.stdout.strip()) == (0, "hello from fvtest-good")


def test_plugin_cannot_replace_a_builtin_command(bad_site: Path) -> None:
    env = plugin_env(bad_site, FASTVIDEO_PLUGINS="fvtest-hijack,fastvideo-wan", HF_HUB_OFFLINE="1")
    proc = run_fv(["generate", "--prompt", "x", "--model", "wan", "--num-frames", "80"], env=env)
    _no_traceback(proc)
    assert "hijacked" not in proc.stdout
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: num_frames=80 is invalid for wan: it must be 4*k+1 (e.g. 77 or 81)"
    extra = run_fv(["hijack-extra"], env=env)  # all of a hook's commands are undone, not only the clash
    assert extra.returncode == 2
    assert extra.stderr.startswith("error: No such command 'hijack-extra'")
    rows = {
        row["distribution"]: row for row in json.loads(run_fv(["plugins", "list", "--json"], env=env).stdout)
    }
    assert rows["fvtest-hijack"]["broken"] == (
        "fv_register_commands tried to replace the command(s) 'generate' of `fv`; "
        "a plugin may only add new command names"
    )
    assert rows["fvtest-hijack"]["commands"] == []


def test_plugins_list_shows_the_commands_a_plugin_adds(dummy_site: Path) -> None:
    env = plugin_env(dummy_site, FASTVIDEO_PLUGINS="fvtest-good")
    rows = _plugins(dummy_site, FASTVIDEO_PLUGINS="fvtest-good")
    assert rows["fvtest-good"]["commands"] == ["good"]
    assert rows["fastvideo-core"]["commands"] == ["train", "preprocess"]
    text = run_fv(["plugins", "list"], env=env).stdout
    assert (
        "fvtest-good 1.2.3 [good]  model family: good-family; attention backend: good-attn; commands: good"
        in text
    )


@pytest.mark.parametrize(
    ("dist", "what"),
    [
        ("fvtest-hangs", "import of fvtest_hangs.plugin"),
        ("fvtest-hookhangs", "fv_register_attention_backends"),
    ],
    ids=["import", "hook"],
)
def test_a_hanging_plugin_is_given_up_after_the_timeout(
    bad_site: Path, dummy_site: Path, dist: str, what: str
) -> None:
    env = plugin_env(
        bad_site, dummy_site, FASTVIDEO_PLUGINS=f"{dist},fvtest-good", FASTVIDEO_PLUGIN_TIMEOUT="1"
    )
    start = time.monotonic()
    proc = run_fv(["plugins", "list", "--json"], env=env, timeout=60)
    assert time.monotonic() - start < 20  # the plugin sleeps for 600 s
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    rows = {row["distribution"]: row for row in json.loads(proc.stdout)}
    assert rows[dist]["broken"] == (
        f"{what} did not finish within 1 s (FASTVIDEO_PLUGIN_TIMEOUT); exclude it with "
        f"FASTVIDEO_PLUGINS=fvtest-good (the plugins to load) or pip uninstall {dist}"
    )
    assert rows["fvtest-good"]["broken"] is None


def test_plugin_older_than_the_core_says_to_upgrade_the_plugin(bad_site: Path) -> None:
    rows = _plugins(bad_site, FASTVIDEO_PLUGINS="fvtest-old")
    reason = rows["fvtest-old"]["broken"]
    assert reason == (
        "fvtest-old needs fastvideo plugin API 0, but fastvideo-core 0.1.0 supports [1]; "
        "the plugin is older than the core: upgrade fvtest-old (pip install -U fvtest-old)"
    )


def test_plugin_newer_than_the_core_says_to_upgrade_the_core(dummy_site: Path) -> None:
    reason = _plugins(dummy_site, FASTVIDEO_PLUGINS="fvtest-future")["fvtest-future"]["broken"]
    assert reason is not None
    assert reason.endswith(
        "the core is older than the plugin: upgrade fastvideo-core (pip install -U fastvideo-core)"
    )


def test_broken_plugin_is_named_where_the_user_fails(dummy_site: Path, tmp_path: Path) -> None:
    env = plugin_env(
        dummy_site,
        FASTVIDEO_PLUGINS="fvtest-broken,fastvideo-wan",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        FASTVIDEO_DEBUG=None,
    )
    note = (
        "(note: plugins that failed to load, whose names are missing: fvtest-broken (import of "
        "fvtest_broken.plugin failed: RuntimeError: fvtest-broken cannot find libfake.so); see `fv plugins list`)"
    )
    for args in (["--model", "good-tiny"], ["--model", "wan", "--attention-backend", "good-attn"]):
        proc = run_fv(["generate", "--prompt", "x", *args], env=env, cwd=tmp_path)
        _no_traceback(proc)
        assert proc.returncode == 2
        (line,) = proc.stderr.splitlines()
        assert line.startswith("error: Unknown ") and line.endswith(note), line
    assert not (tmp_path / "outputs").exists()
    models = run_fv(["models", "list", "--json"], env=env)
    assert models.returncode == 0
    assert [m["family"] for m in json.loads(models.stdout)] == ["wan"]
    assert models.stderr.splitlines() == [
        "warning: plugin fvtest-broken is broken, so its model families are missing here: "
        "import of fvtest_broken.plugin failed: RuntimeError: fvtest-broken cannot find libfake.so"
    ]
    debug = run_fv(["models", "list", "--json"], env={**env, "FASTVIDEO_DEBUG": "1"})
    assert "traceback of plugin fvtest-broken" in debug.stderr
    assert 'raise RuntimeError("fvtest-broken cannot find libfake.so")' in debug.stderr


def test_doctor_lists_broken_plugins_and_a_second_fastvideo_distribution(
    dummy_site: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-site"
    info = other / "fastvideo-0.9.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fastvideo\nVersion: 0.9.0\n")
    (info / "RECORD").write_text("fastvideo/__init__.py,,\nfastvideo-0.9.0.dist-info/METADATA,,\n")
    (info / "top_level.txt").write_text("fastvideo\n")
    env = plugin_env(dummy_site, other, FASTVIDEO_PLUGINS="fvtest-broken,fvtest-good")
    proc = run_fv(["doctor"], env=env)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert (
        "  fvtest-broken 0.1.0: BROKEN: import of fvtest_broken.plugin failed: RuntimeError: "
        "fvtest-broken cannot find libfake.so" in proc.stdout
    )
    assert "  fvtest-good 1.2.3: ok" in proc.stdout
    assert "warning: 1 broken plugin(s): fvtest-broken; see `fv plugins list`" in proc.stderr
    assert (
        "warning: the distribution fastvideo 0.9.0 also installs the import package 'fastvideo'"
        in proc.stderr
    )
    assert "pip uninstall fastvideo" in proc.stderr
    clean = run_fv(["doctor"], env=plugin_env(dummy_site, FASTVIDEO_PLUGINS="fvtest-good"))
    assert clean.returncode == 0 and "warning" not in clean.stderr, clean.stderr


def test_registration_hooks_are_called_through_pluggy() -> None:
    """Hook monitoring (pluggy's tracing) sees every registration call, one plugin at a time, and a
    plugin's ``tryfirst`` wrapper around its own implementation runs."""
    from fastvideo.hookspecs import hookimpl
    from fastvideo.registry import get_registry
    from fastvideo.testing import fake_plugins, plugin_module

    class Wrapped:
        __name__ = "fvtest-wrapped"
        seen: list[str] = []  # noqa: RUF012

        @hookimpl(wrapper=True)
        def fv_register_samplers(self):  # type: ignore[no-untyped-def]
            result = yield
            self.seen.append("wrapped")
            return result

        @hookimpl(specname="fv_register_samplers")
        def samplers(self):  # type: ignore[no-untyped-def]
            return []

    calls: list[tuple[str, list[str]]] = []
    with fake_plugins(plugin_module("fvtest-plain", fv_register_samplers=lambda: []), Wrapped()) as pm:
        undo = pm.add_hookcall_monitoring(
            lambda name, impls, kwargs: calls.append((name, [i.plugin_name for i in impls])),
            lambda outcome, name, impls, kwargs: None,
        )
        try:
            get_registry()
        finally:
            undo()
    sampler_calls = [impls for name, impls in calls if name == "fv_register_samplers"]
    assert ["fvtest-plain"] in sampler_calls  # each plugin alone
    assert ["Wrapped", "Wrapped"] in sampler_calls or ["fvtest-wrapped", "fvtest-wrapped"] in sampler_calls
    assert Wrapped.seen == ["wrapped"]


def test_cli_main_twice_in_one_process_keeps_the_core_and_its_commands() -> None:
    """``fv``'s entry point run again in the same process (tests, notebooks) registers nothing twice:
    the core's own commands are not taken for a hijack, so its samplers and backends stay."""
    import sys

    from fastvideo import cli
    from fastvideo.plugins import plugin_infos
    from fastvideo.registry import get_registry
    from fastvideo.testing import fake_plugins

    with fake_plugins():
        for _ in range(2):
            argv, sys.argv = sys.argv, ["fv", "plugins", "list"]
            try:
                with pytest.raises(SystemExit) as exit_:
                    cli.main()
            finally:
                sys.argv = argv
            assert exit_.value.code == 0
        core = next(i for i in plugin_infos() if i.dist == "fastvideo-core")
        assert core.broken is None and core.commands == ["train", "preprocess"]
        assert "checkpoint" in get_registry().names("sampler")
