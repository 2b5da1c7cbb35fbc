"""``fv plugins new``: what each template writes, the refusals, atomic writes, and that the packages
it writes install, pass their own tests and (family) generate a video through ``fv generate``.

The generated packages are installed for real (``pip install --no-deps --no-build-isolation
--target``, offline: their only dependency, fastvideo-core, is this environment's) and used from
subprocesses, as a user would after ``pip install -e .``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastvideo import scaffold
from fastvideo.testing import plugin_env, run_fv

EXPECTED_FILES = {
    "attention": {"backend.py"},
    "training": {"algorithm.py"},
    "family": {"family.py", "model.py", "pipeline.py", "checkpoint.py", "commands.py"},
}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _venv(root: Path) -> Path:
    """A fresh venv whose interpreter also sees this environment's packages; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True, timeout=300)
    python = root / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout
    # this environment's site-packages and what its .pth files added (editable installs' src folders),
    # not the standard library (the venv has its own)
    stdlib = Path(sys.base_prefix).resolve()
    parents = [
        p
        for p in sys.path
        if p
        and Path(p).is_dir()
        and (p.endswith("site-packages") or not Path(p).resolve().is_relative_to(stdlib))
    ]
    (Path(out.strip()) / "_fastvideo_test_parent.pth").write_text("\n".join(parents) + "\n")
    return python


def _pip_install(project: Path, *, target: Path | None = None, python: str | Path = sys.executable) -> None:
    """Build and install ``project`` offline (into ``target`` when given, else ``python``'s environment)."""
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "--disable-pip-version-check", *(["--target", str(target)] if target else [])]
    proc = subprocess.run([*cmd, str(project)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"pip install of {project.name} failed:\n{proc.stdout}\n{proc.stderr}"


def _run_generated_tests(project: Path, *paths: Path, python: str | Path = sys.executable) -> None:
    """``python -m pytest tests`` in the generated project, with ``paths`` first on PYTHONPATH."""
    env = plugin_env(*paths, HF_HUB_OFFLINE="1")
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (
        f"the generated tests of {project.name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr}"
    )
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout


# ---------------------------------------------------------------- what is written


@pytest.mark.parametrize("kind", scaffold.KINDS)
def test_each_kind_writes_a_complete_package(kind: str, tmp_path: Path) -> None:
    import tomllib

    target = scaffold.create_plugin("my-thing", kind, tmp_path)
    assert target == tmp_path / "fastvideo-my-thing"
    package = "src/fastvideo_my_thing"
    expected = {
        "pyproject.toml",
        "README.md",
        "tests/test_plugin.py",
        f"{package}/__init__.py",
        f"{package}/plugin.py",
    }
    expected |= {f"{package}/{name}" for name in EXPECTED_FILES[kind]}
    assert _files(target) == expected
    assert _files(tmp_path) == {f"fastvideo-my-thing/{f}" for f in expected}  # nothing left beside it

    meta = tomllib.loads((target / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] == "fastvideo-my-thing"
    assert project["dependencies"] == ["fastvideo-core>=0.1,<0.2"]
    assert project["entry-points"]["fastvideo"] == {"my-thing": "fastvideo_my_thing.plugin"}
    assert any(req.startswith("pytest") for req in project["optional-dependencies"]["test"])
    for rel in expected:
        text = (target / rel).read_text()
        assert "${" not in text and "$name" not in text and "$module" not in text, f"unrendered in {rel}"
        if rel.endswith(".py"):
            compile(text, rel, "exec")
    plugin = (target / package / "plugin.py").read_text()
    assert "FASTVIDEO_PLUGIN_API = 1" in plugin and "@hookimpl" in plugin
    assert "import torch" not in plugin  # discovery stays light
    readme = (target / "README.md").read_text()
    assert "pip install" in readme and "pytest" in readme and "fastvideo-my-thing" in readme


def test_names_are_derived_from_the_kebab_name() -> None:
    names = scaffold.check_name("my-video2-model")
    assert (names.dist, names.module, names.cls) == (
        "fastvideo-my-video2-model",
        "fastvideo_my_video2_model",
        "MyVideo2Model",
    )


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("MyModel", "not lower-kebab"),
        ("my_model", "not lower-kebab"),
        ("1model", "not lower-kebab"),
        ("my--model", "not lower-kebab"),
        ("model-", "not lower-kebab"),
        ("", "not lower-kebab"),
        ("fastvideo-mine", "includes the 'fastvideo-' prefix"),
        ("core", "reserved"),
    ],
)
def test_bad_names_are_refused(name: str, match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        scaffold.create_plugin(name, "attention", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_names_taken_by_fastvideo_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="would add the command `fv generate`, which is fastvideo's own"):
        scaffold.create_plugin("generate", "family", tmp_path)
    with pytest.raises(ValueError, match="the attention backend 'sdpa', which is built into fastvideo"):
        scaffold.create_plugin("sdpa", "attention", tmp_path)
    with pytest.raises(ValueError, match="the training algorithm 'lora', which is built into fastvideo"):
        scaffold.create_plugin("lora", "training", tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert scaffold.create_plugin("generate", "attention", tmp_path).is_dir()  # adds no command


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="unknown plugin kind 'sampler'; expected one of: family, attention, training"
    ):
        scaffold.create_plugin("mine", "sampler", tmp_path)


def test_existing_target_is_kept_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "fastvideo-mine"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(
        ValueError, match=r"fastvideo-mine exists and is not empty; pass --force to replace it"
    ):
        scaffold.create_plugin("mine", "attention", tmp_path)
    assert _files(target) == {"notes.txt"}

    scaffold.create_plugin("mine", "attention", tmp_path, force=True)
    assert "notes.txt" not in _files(target) and "src/fastvideo_mine/backend.py" in _files(target)
    assert [p.name for p in tmp_path.iterdir()] == ["fastvideo-mine"]  # the old copy is gone too


def test_empty_target_folder_is_used_and_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fastvideo-mine").mkdir()
    assert (scaffold.create_plugin("mine", "training", tmp_path) / "pyproject.toml").is_file()
    (tmp_path / "fastvideo-file").write_text("x")
    with pytest.raises(ValueError, match="exists and is a file"):
        scaffold.create_plugin("file", "training", tmp_path)


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = []
    original = Path.write_text

    def failing(self: Path, *args: object, **kwargs: object) -> int:
        writes.append(self)
        if len(writes) == 3:
            raise OSError("disk full")
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(OSError, match="disk full"):
        scaffold.create_plugin("mine", "family", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_and_refuses_with_one_line(tmp_path: Path) -> None:
    env = plugin_env(FASTVIDEO_DISABLE_PLUGIN_AUTOLOAD="1")
    proc = run_fv(["plugins", "new", "my-attn", "--kind", "attention", "--output", str(tmp_path)], env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        f"wrote {tmp_path / 'fastvideo-my-attn'} (attention plugin fastvideo-my-attn)"
    )
    again = run_fv(["plugins", "new", "my-attn", "--kind", "attention", "--output", str(tmp_path)], env=env)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'fastvideo-my-attn'} exists and is not empty; pass --force to replace it"
    ]
    bad = run_fv(["plugins", "new", "My_Attn", "--output", str(tmp_path)], env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "expected lowercase letters and digits in dash-separated words" in bad.stderr
    forced = run_fv(
        ["plugins", "new", "my-attn", "--kind", "training", "--output", str(tmp_path), "--force"], env=env
    )
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "fastvideo-my-attn" / "src" / "fastvideo_my_attn" / "algorithm.py").is_file()


# ---------------------------------------------------------------- the packages work


@pytest.mark.slow
def test_attention_package_installs_in_a_venv_registers_and_passes_its_tests(tmp_path: Path) -> None:
    """A real ``pip install`` into a fresh venv (offline: fastvideo-core and its dependencies are this
    environment's, made visible to the venv by a ``.pth`` file)."""
    project = scaffold.create_plugin("my-attn", "attention", tmp_path / "src")
    python = _venv(tmp_path / "venv")
    _pip_install(project, python=python)
    env = plugin_env()
    code = "import fastvideo_my_attn.backend as b; print(b.__file__)"
    where = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert str(tmp_path / "venv") in where.stdout  # imported from the venv, not from the project
    listed = subprocess.run(
        [python, "-m", "fastvideo.cli", "plugins", "list", "--json"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout) if r["distribution"] == "fastvideo-my-attn"]
    assert row["broken"] is None and row["registers"] == {"attention_backend": ["my-attn"]}
    flags = subprocess.run(
        [python, "-m", "fastvideo.cli", "generate", "--help"], env=env, capture_output=True, text=True
    )
    assert "--my-attn-softcap" in flags.stdout  # the backend's option became a flag
    _run_generated_tests(project, python=python)


@pytest.mark.slow
def test_training_package_passes_its_tests(tmp_path: Path) -> None:
    project = scaffold.create_plugin("my-algo", "training", tmp_path)
    _run_generated_tests(project, project / "src")


@pytest.mark.slow
def test_family_package_installs_passes_its_tests_and_generates(tmp_path: Path) -> None:
    import imageio.v3 as iio

    project = scaffold.create_plugin("my-model", "family", tmp_path / "src")
    site = tmp_path / "site"
    _pip_install(project, target=site)
    _run_generated_tests(project, site)

    env = plugin_env(site, HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "cache"), FASTVIDEO_DEBUG=None)
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.mp4"
    made = run_fv(["my-model", "make-checkpoint", str(ckpt)], env=env, timeout=300)
    assert made.returncode == 0, made.stderr
    assert json.loads((ckpt / "model_index.json").read_text())["_class_name"] == "MyModelPipeline"
    refused = run_fv(["my-model", "make-checkpoint", str(ckpt)], env=env)
    assert refused.returncode == 2 and "is not empty; pass --overwrite" in refused.stderr
    args = ["generate", "--model", str(ckpt), "--prompt", "a red ball", "--num-frames", "9", "--height", "32"]
    args += ["--width", "32", "--steps", "2", "--seed", "0", "--output", str(out), "--json"]
    gen = run_fv(args, env=env, timeout=300)
    assert gen.returncode == 0, gen.stderr
    summary = json.loads(gen.stdout)
    assert (summary["frames"], summary["height"], summary["width"]) == (9, 32, 32)
    frames = iio.imread(out)
    assert frames.shape == (9, 32, 32, 3) and frames.std() > 0


@pytest.mark.slow
def test_templates_ship_in_the_core_wheel(tmp_path: Path) -> None:
    import shutil
    import zipfile

    core = Path(scaffold.__file__).resolve().parents[2]  # core/src/fastvideo/scaffold.py -> core
    copy = tmp_path / "core"  # build a copy: setuptools writes build/ and egg-info folders
    shutil.copytree(core, copy, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [*cmd, "-w", str(tmp_path / "dist"), str(copy)], check=True, capture_output=True, timeout=300
    )
    (wheel,) = (tmp_path / "dist").glob("fastvideo_core-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("fastvideo/templates/")}
    source = core / "src"
    want = {str(p.relative_to(source)) for p in (source / "fastvideo" / "templates").rglob("*.tmpl")}
    assert shipped == want and len(want) > 10
