"""``fv --help``, listing plugins and models, and early errors import neither torch nor diffusers.

Each case runs ``fastvideo.cli.main()`` in a fresh interpreter with the installed plugins and then
reports which heavy modules got imported.
"""

from __future__ import annotations

import json

import pytest

from fastvideo.testing import plugin_env, run_python

HEAVY = ("torch", "diffusers", "transformers", "safetensors", "huggingface_hub")
SNIPPET = """
import json, sys
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


def _run_cli(args: list[str]) -> tuple[int, list[str], str]:
    """Exit code, heavy modules imported, and stdout of ``fv ARGS`` run in-process in a subprocess."""
    proc = run_python(SNIPPET.format(args=args, heavy=HEAVY), env=plugin_env(HF_HUB_OFFLINE="1"))
    report = json.loads(proc.stderr.splitlines()[-1])
    return report["code"], report["heavy"], proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["generate", "--help"],
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
    for command in ("generate", "plugins", "models", "doctor", "wan"):
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
