# /// script
# dependencies = ["nox>=2024.3"]
# ///
"""Task runner: `nox -s tests`, `nox -s lint`, `nox -s isolation`, `nox -s plugin-tests`, `nox -s demo`,
`nox -s bench`, `nox -s minimums`."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
#: The local CPU build on the project's machines; users on GPUs bring their own CUDA torch.
TORCH = os.environ.get("FV_TORCH_SPEC", "torch==2.13.0")
PLUGINS = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file())
EXAMPLE = "examples/fastvideo-example-plugin"
DEMO_PROMPT = "a blue square moving up on a black background"
#: At most this many pytest processes (`nox -s tests`): each holds a copy of torch and the tiny models.
TEST_WORKERS = 4


def _install(session: nox.Session, *packages: str) -> None:
    """Install torch (pinned CPU build) first, then the given local packages in editable mode."""
    session.install(TORCH)
    args: list[str] = []
    for pkg in packages:
        args += ["-e", str(ROOT / pkg)]
    if args:
        session.install(*args)


@nox.session
def tests(session: nox.Session) -> None:
    """The CPU test suite of core, every plugin and the cross-package tests (what CI runs)."""
    # the example plugin: core's and vsa's tests use it as an installed plugin (entry points, `fv example`)
    _install(session, "core[serve]", *(f"plugins/{p}" for p in PLUGINS), EXAMPLE)
    session.install(
        "pytest>=8",
        "setuptools>=68",
        "wheel",
        "peft>=0.15",
        "triton",
        "scikit-image",
        "openai",
        "httpx",
        "playwright",
        "pytest-xdist>=3.5",
    )  # peft: diffusers' LoRA loading (interop); triton: the VSA kernels, interpreted on CPU;
    # scikit-image: the independent SSIM reference; openai, httpx, playwright: fv serve's clients (the
    # browser is the system's Chromium, which .ci/run installs; playwright downloads none);
    # pytest-xdist: one test process per core
    # one intra-op thread per test process: the tiny CPU shapes gain nothing from more, and the
    # multi-process (gloo) tests would oversubscribe a small CI machine (measured: 6:03 -> 4:59 on 2 cores)
    env = {"TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if session.posargs:  # the tests asked for, in this process
        session.run("pytest", "-q", *session.posargs, env=env)
        return
    # every test but those marked `serial` spread over the cores (2 cores: 12:18 -> 7:49 for the whole
    # suite), then the `serial` ones (they change the environment the others run in) alone
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = str(min(cores, TEST_WORKERS))
    session.run("pytest", "-q", "-n", workers, "-m", "not serial", "--durations=25", env=env)
    session.run("pytest", "-q", "-m", "serial", "--durations=5", env=env)


def _floor_pins(pyproject: Path) -> list[str]:
    """``name==floor`` for every ``name>=floor`` dependency of ``pyproject`` (torch excepted: see TORCH)."""
    import tomllib
    from packaging.requirements import Requirement

    pins = []
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        req = Requirement(line)
        floors = [spec.version for spec in req.specifier if spec.operator == ">="]
        if req.name != "torch" and floors:
            pins.append(f"{req.name}=={floors[0]}")
    return pins


@nox.session(default=False)
def minimums(session: nox.Session) -> None:
    """The lowest versions core/pyproject.toml allows (every `>=` floor pinned with `==`, torch 2.13.0):
    `fv` starts, lists models, wan-toy's tokenizer loads, and core's CPU tests pass.

    `nox -s minimums -- PYTEST_ARGS` runs other tests (default: core/tests).
    """
    session.install("torch==2.13.0")
    session.install(
        *_floor_pins(ROOT / "core" / "pyproject.toml"),
        "pytest>=8",
        "setuptools>=68",
        "wheel",
        "peft>=0.15",
        "triton",
        "scikit-image",
    )
    session.install("--no-deps", "-e", str(ROOT / "core"))
    session.install("-e", str(ROOT / "plugins" / "fastvideo-wan"))  # its own deps (ftfy) at their newest
    session.run("pip", "list")
    env = {"TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1", "FASTVIDEO_PLUGINS": "fastvideo-wan"}
    session.run("fv", "--help", env=env)
    session.run("fv", "models", "list", env=env)
    tokenizer = ROOT / "plugins/fastvideo-wan/src/fastvideo_wan/assets/wan-toy/tokenizer"
    code = f"from transformers import AutoTokenizer; print(AutoTokenizer.from_pretrained({str(tokenizer)!r})('a corgi'))"
    session.run("python", "-c", code, env=env)
    session.run(
        "pytest",
        "-q",
        *(session.posargs or ["core/tests"]),
        env={"TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + format check on everything, mypy on core."""
    session.install("ruff>=0.6", "mypy>=1.10")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    _install(session, "core")  # mypy sees torch's and the libraries' real types
    session.run("mypy", "core/src/fastvideo")


@nox.session
@nox.parametrize("plugin", PLUGINS)
def isolation(session: nox.Session, plugin: str) -> None:
    """A fresh venv with core plus one plugin only: the entry point loads and nothing is broken."""
    session.install(TORCH)
    session.install(str(ROOT / "core"), str(ROOT / "plugins" / plugin))
    session.run("fv", "plugins", "list", "--check")
    session.run("fv", "models", "list")


def _dist_name(project: Path) -> str:
    import tomllib

    return tomllib.loads((project / "pyproject.toml").read_text())["project"]["name"]


def _test_extra(project: Path) -> list[str]:
    """The requirements of ``project``'s ``test`` extra (what its tests need beyond the core)."""
    import tomllib

    extras = tomllib.loads((project / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {}
    )
    return list(extras.get("test", []))


@nox.session(name="plugin-tests")
@nox.parametrize("plugin", PLUGINS)
def plugin_tests(session: nox.Session, plugin: str) -> None:
    """One plugin's tests in a fresh venv holding only the core, that plugin and its `test` extra
    (the test dependencies it declares; local distributions among them, such as the example plugin,
    are installed from this repository): no other plugin can be imported or discovered.

    `nox -s "plugin-tests(plugin='fastvideo-vsa')" -- PYTEST_ARGS` passes arguments to pytest.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    local = {
        canonicalize_name(_dist_name(p)): p.relative_to(ROOT).as_posix()
        for p in [ROOT / "core", *(ROOT / "plugins").iterdir(), *(ROOT / "examples").iterdir()]
        if (p / "pyproject.toml").is_file()
    }
    needs = [canonicalize_name(Requirement(r).name) for r in _test_extra(ROOT / "plugins" / plugin)]
    # the local test dependencies first, from here: pip must not look them up on an index
    _install(session, "core", *(local[n] for n in needs if n in local and local[n] != "core"))
    session.install("-e", f"{ROOT / 'plugins' / plugin}[test]")
    session.run("pip", "list")
    session.run(
        "pytest",
        "-q",
        f"plugins/{plugin}/tests",
        *session.posargs,
        env={"TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1"},
    )


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main job: generate a video offline on what the repository ships."""
    _install(session, "core", "plugins/fastvideo-wan")
    session.run(
        "fv",
        "generate",
        "--model",
        "wan-toy",
        "--prompt",
        DEMO_PROMPT,
        "--output",
        "outputs/demo.mp4",
        "--overwrite",
        env={"HF_HUB_OFFLINE": "1"},
    )


@nox.session(default=False, tags=["gpu"])
def bench(session: nox.Session) -> None:
    """GPU benchmarks (ours vs diffusers, same weights); appends rows to docs/benchmarks.md."""
    session.install("-e", str(ROOT / "core"), "-e", str(ROOT / "plugins/fastvideo-wan"))
    session.run("python", "benchmarks/bench_wan_dit.py", *session.posargs)


@nox.session
def build(session: nox.Session) -> None:
    """sdist and wheel of every distribution into dist/."""
    session.install("build")
    for pkg in ["core", *(f"plugins/{p}" for p in PLUGINS)]:
        session.run("python", "-m", "build", "--outdir", str(ROOT / "dist"), str(ROOT / pkg))
