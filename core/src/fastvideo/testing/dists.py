"""Real (pip-installed) dummy plugin distributions, and running ``fv`` against them in a subprocess.

Entry-point discovery is only tested for real with installed metadata, so these helpers write a
tiny project per distribution (``pyproject.toml`` + one package), install them all with one
``pip install --no-deps --no-build-isolation --target DIR`` call, and build an environment whose
``PYTHONPATH`` starts with ``DIR``::

    good = DummyDist(name="my-plugin", plugin="from fastvideo import hookimpl\\n...")
    target = install_dists([good], tmp_path / "site")
    proc = run_fv(["plugins", "list", "--json"], env=plugin_env(target))
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "{version}"
requires-python = ">=3.10"

[project.entry-points.fastvideo]
{entry_point} = "{package}.plugin"

[tool.setuptools]
packages = ["{package}"]
"""


@dataclass(frozen=True, kw_only=True)
class DummyDist:
    """One distribution with an entry point ``<entry_point> = "<package>.plugin"`` in group ``fastvideo``.

    ``plugin`` is the source of ``<package>/plugin.py``; ``modules`` adds other files of the
    package (``{"family.py": "..."}``). Sources are dedented.
    """

    name: str  # distribution name, "fvtest-good"
    plugin: str
    version: str = "0.1.0"
    entry_point: str | None = None  # default: the name without its first dash-separated word
    modules: Mapping[str, str] = field(default_factory=dict)

    @property
    def package(self) -> str:
        return self.name.replace("-", "_").replace(".", "_")

    @property
    def ep_name(self) -> str:
        return self.entry_point or self.name.split("-", 1)[-1]


def write_dist(dist: DummyDist, root: str | Path) -> Path:
    """Write the project of ``dist`` under ``root/<name>`` and return its folder."""
    project = Path(root) / dist.name
    package = project / dist.package
    package.mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        _PYPROJECT.format(
            name=dist.name, version=dist.version, entry_point=dist.ep_name, package=dist.package
        )
    )
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(textwrap.dedent(dist.plugin))
    for filename, source in dist.modules.items():
        (package / filename).write_text(textwrap.dedent(source))
    return project


def install_dists(dists: Iterable[DummyDist], target: str | Path, *, python: str = sys.executable) -> Path:
    """Build and install ``dists`` into ``target`` with one offline pip call; returns ``target``.

    Needs setuptools in ``python``'s environment (``--no-build-isolation``). The projects are
    written next to ``target`` in ``<target>-src``.
    """
    target = Path(target)
    src = target.with_name(f"{target.name}-src")
    projects = [str(write_dist(d, src)) for d in dists]
    cmd = [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    cmd += ["--disable-pip-version-check", "--target", str(target), *projects]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install of the dummy distributions failed:\n{proc.stdout}\n{proc.stderr}")
    return target


def plugin_env(
    *paths: str | Path, base: Mapping[str, str] | None = None, **overrides: str | None
) -> dict[str, str]:
    """``base`` (default ``os.environ``) with ``paths`` first on ``PYTHONPATH``; an override of
    ``None`` removes that variable. The fastvideo switches are cleared unless overridden."""
    env = dict(os.environ if base is None else base)
    for var in ("FASTVIDEO_DISABLE_PLUGIN_AUTOLOAD", "FASTVIDEO_PLUGINS", "FASTVIDEO_ATTENTION_BACKEND"):
        env.pop(var, None)
    pythonpath = [str(p) for p in paths] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def fv_command() -> list[str]:
    """The ``fv`` console script of the running interpreter's environment (else ``-m fastvideo.cli``)."""
    script = Path(sys.executable).with_name("fv")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fastvideo.cli"]


def run_fv(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``fv ARGS`` in a subprocess and return it (text stdout/stderr captured, never raising)."""
    return subprocess.run(
        [*fv_command(), *args],
        env=dict(env) if env is not None else None,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fv_generate(model: str | Path, output: Path, **options: object) -> tuple[dict, object]:
    """``fv generate --model MODEL --output OUTPUT --device cpu --lossless --json``, offline, plus
    ``--key value`` per option (``num_frames=9`` -> ``--num-frames 9``).

    :returns: the JSON summary (its ``path`` checked to be ``output``) and the frames ``(T, H, W, 3)``
        uint8 read back from the lossless mp4.
    """
    import json

    from fastvideo.video import read_mp4

    args = [
        "generate",
        "--model",
        str(model),
        "--device",
        "cpu",
        "--lossless",
        "--output",
        str(output),
        "--json",
    ]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = run_fv(args, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["path"] == str(output), summary
    return summary, read_mp4(output)


def run_python(
    code: str, *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a (dedented) Python snippet in a fresh interpreter of this environment."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=dict(env) if env is not None else None,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
