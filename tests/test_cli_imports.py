"""``fv --help``, listing plugins and models, and early errors import neither torch nor diffusers.

Each case runs ``fastvideo.cli.main()`` in a fresh interpreter with the installed plugins and then
reports which heavy modules got imported.
"""

from __future__ import annotations

import json

import pytest

from fastvideo.testing import plugin_env, run_python

HEAVY = ("torch", "diffusers", "transformers", "safetensors", "huggingface_hub")
#: The server's dependencies (the serve extra): fv loads them only inside `fv serve`.
SERVER = ("fastapi", "uvicorn", "starlette", "python_multipart", "fastvideo.serve.app")
SNIPPET = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed
sys.argv = ["fv", *{args!r}]
from fastvideo.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def _run_cli(
    args: list[str], heavy: tuple[str, ...] = HEAVY, blocked: tuple[str, ...] = ()
) -> tuple[int, list[str], str]:
    """Exit code, heavy modules imported, and stdout of ``fv ARGS`` run in-process in a subprocess
    (with the modules ``blocked`` made unimportable)."""
    code = SNIPPET.format(args=args, heavy=heavy, blocked=blocked)
    proc = run_python(code, env=plugin_env(HF_HUB_OFFLINE="1"))
    report = json.loads(proc.stderr.splitlines()[-1])
    return report["code"], report["heavy"], proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["generate", "--help"],
        ["serve", "--help"],
        ["plugins", "list"],
        ["plugins", "list", "--json"],
        ["models", "list", "--json"],
    ],
    ids=" ".join,
)
def test_listing_and_help_import_no_heavy_module(args: list[str]) -> None:
    code, heavy, stdout = _run_cli(args)
    assert code in (0, None)
    assert heavy == []
    assert stdout


def test_help_lists_core_and_plugin_commands() -> None:
    _, _, stdout = _run_cli(["--help"])
    for command in ("generate", "plugins", "models", "doctor", "serve", "wan"):
        assert command in stdout


def test_invalid_request_fails_before_heavy_imports() -> None:
    code, heavy, _ = _run_cli(["generate", "--prompt", "x", "--model", "wan", "--num-frames", "80"])
    assert code == 2
    assert heavy == []


def test_importing_the_package_is_cheap() -> None:
    proc = run_python(
        """
        import sys
        import fastvideo
        from fastvideo import SamplingParams, VideoGenerator, hookimpl
        import fastvideo.testing
        print(sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["serve", "--help"]], ids=" ".join)
def test_help_imports_no_server_dependency(args: list[str]) -> None:
    code, loaded, _ = _run_cli(args, heavy=SERVER)
    assert code in (0, None) and loaded == []


def test_generate_needs_no_server_dependency_and_serve_names_the_extra() -> None:
    """Without fastapi/uvicorn/python-multipart: fv generate still runs its checks; fv serve says
    what to install, on one line, before loading anything."""
    blocked = ("fastapi", "uvicorn", "python_multipart")
    code, heavy, out = _run_cli(
        ["generate", "--prompt", "x", "--model", "wan-toy", "--num-frames", "80"], blocked=blocked
    )
    assert code == 2 and heavy == [] and "num_frames=80 is invalid" in out
    code, heavy, out = _run_cli(["serve", "--model", "wan-toy"], blocked=blocked)
    assert code == 1 and heavy == []
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: fv serve needs fastapi, which is not installed: pip install 'fastvideo-core[serve]'"
    ]
