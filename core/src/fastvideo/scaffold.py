"""``fv plugins new``: write a new plugin package from a template.

The templates are package data (``fastvideo/templates/<kind>/``); every file is named ``*.tmpl``
so that it is not Python until rendered, and is rendered with :class:`string.Template`:

* ``$name``: the plugin name as given, lower-kebab (``my-model``);
* ``$dist``: the distribution (``fastvideo-my-model``);
* ``$module``: the import package (``fastvideo_my_model``);
* ``$Class``: the CamelCase prefix of the classes (``MyModel``);
* ``$snake``: the name in lower_snake (``my_model``), ``$NAME`` in UPPER_SNAKE (``MY_MODEL``);
* ``$core_requirement``: the ``fastvideo-core`` range the package depends on;
* ``$kind`` and ``$description``: what the package adds.

Paths are rendered too: ``__module__`` in a path becomes ``$module``. The package is built in a
temporary folder beside the target and renamed into place, so it appears whole or not at all.

This module imports neither torch nor the templates' dependencies: ``fv --help`` stays fast.
"""

from __future__ import annotations

import re
import shutil
import string
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

KINDS = ("family", "attention", "training")
DESCRIPTIONS = {
    "family": "a fastvideo model family: a small video DiT, its checkpoint writer and pipeline",
    "attention": "a fastvideo attention backend: exact attention in plain PyTorch",
    "training": "a fastvideo training algorithm: flow matching with a per-timestep loss weight",
}
CORE_REQUIREMENT = "fastvideo-core>=0.1,<0.2"
TEMPLATE_SUFFIX = ".tmpl"
_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_RESERVED = ("core",)  # fastvideo-core is the core's distribution
# a family plugin adds `fv NAME ...`: NAME must not be one of fv's own commands; the other kinds
# register NAME, which must not be a built-in's (the registry would reject the duplicate)
_TAKEN = {
    "family": ("generate", "plugins", "models", "doctor", "train", "preprocess"),
    "attention": ("sdpa", "flash-attn"),
    "training": ("finetune", "lora", "vae"),
}
_TAKEN_WHAT = {
    "family": "the command `fv {name}`, which is fastvideo's own",
    "attention": "the attention backend {name!r}, which is built into fastvideo",
    "training": "the training algorithm {name!r}, which is built into fastvideo",
}


@dataclass(frozen=True, kw_only=True)
class PluginNames:
    """The names a plugin ``name`` gives its distribution, package and classes."""

    name: str

    @property
    def dist(self) -> str:
        return f"fastvideo-{self.name}"

    @property
    def snake(self) -> str:
        return self.name.replace("-", "_")

    @property
    def module(self) -> str:
        return f"fastvideo_{self.snake}"

    @property
    def cls(self) -> str:
        return "".join(part[:1].upper() + part[1:] for part in self.name.split("-"))

    def mapping(self) -> dict[str, str]:
        return {
            "name": self.name,
            "dist": self.dist,
            "module": self.module,
            "snake": self.snake,
            "Class": self.cls,
            "NAME": self.snake.upper(),
            "core_requirement": CORE_REQUIREMENT,
        }


def check_name(name: str) -> PluginNames:
    """``name`` as :class:`PluginNames`.

    :raises ValueError: one line with the expected form, when ``name`` is not lower-kebab or is reserved.
    """
    if name.startswith("fastvideo-"):
        raise ValueError(
            f"plugin name {name!r} includes the 'fastvideo-' prefix; give the short name "
            f"({name[len('fastvideo-') :]!r}), the distribution is called fastvideo-NAME"
        )
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"plugin name {name!r} is not lower-kebab: expected lowercase letters and digits in "
            "dash-separated words, starting with a letter (e.g. 'my-model')"
        )
    if name in _RESERVED:
        raise ValueError(
            f"plugin name {name!r} is reserved (fastvideo-{name} is fastvideo's own); pick another"
        )
    return PluginNames(name=name)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of: {', '.join(KINDS)}")
    return kind


def template_files(kind: str) -> dict[str, str]:
    """The template of ``kind``: relative path (unrendered, without ``.tmpl``) -> text."""
    root = resources.files("fastvideo") / "templates"
    out: dict[str, str] = {}
    for sub in ("common", check_kind(kind)):
        _collect(root / sub, "", out)
    return out


def _collect(folder: Any, prefix: str, out: dict[str, str]) -> None:
    for entry in folder.iterdir():
        if entry.is_dir():
            if entry.name != "__pycache__":
                _collect(entry, f"{prefix}{entry.name}/", out)
        elif entry.name.endswith(TEMPLATE_SUFFIX):
            out[prefix + entry.name[: -len(TEMPLATE_SUFFIX)]] = entry.read_text(encoding="utf-8")


def render(kind: str, names: PluginNames) -> dict[str, str]:
    """Every file of the package: path relative to the project folder -> rendered text."""
    mapping = {**names.mapping(), "kind": kind, "description": DESCRIPTIONS[kind]}
    rendered: dict[str, str] = {}
    for rel, text in template_files(kind).items():
        path = rel.replace("__module__", names.module)
        try:
            rendered[path] = string.Template(text).substitute(mapping)
        except (KeyError, ValueError) as exc:  # a template bug, not the user's
            raise RuntimeError(f"template {kind}/{rel}{TEMPLATE_SUFFIX} is broken: {exc!r}") from None
    return rendered


def create_plugin(name: str, kind: str = "family", output: str | Path = ".", *, force: bool = False) -> Path:
    """Write the ``kind`` template for plugin ``name`` into ``output/fastvideo-<name>`` and return it.

    :param force: replace an existing non-empty folder (it is moved aside and deleted only once the
        new one is in place).
    :raises ValueError: a bad name or kind, or a target that exists (a file, or a non-empty folder
        without ``force``).
    """
    names = check_name(name)
    if name in _TAKEN.get(check_kind(kind), ()):
        taken = _TAKEN_WHAT[kind].format(name=name)
        raise ValueError(f"a {kind} plugin named {name!r} would add {taken}; pick another name")
    files = render(kind, names)
    parent = Path(output).expanduser()
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"--output {parent} is a file; expected a folder to create {names.dist} in")
    target = parent / names.dist
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is a file; remove it or choose another --output")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ValueError(f"{target} exists and is not empty; pass --force to replace it")
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{names.dist}-", dir=parent))
    try:
        for rel, text in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _swap_in(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is set aside first and deleted after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{staging.name[-8:]}")
        target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)  # put the user's folder back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def next_steps(kind: str, target: Path, names: PluginNames) -> list[str]:
    """What to run after creating the package (printed by the command)."""
    steps = [f"pip install -e '{target}[test]'", f"python -m pytest {target / 'tests'}"]
    if kind == "family":
        steps += [
            f"fv {names.name} make-checkpoint ./{names.name}-tiny",
            f'fv generate --model ./{names.name}-tiny --prompt "a red ball" --num-frames 9 --height 32 --width 32',
        ]
    elif kind == "attention":
        steps.append(f'fv generate --model MODEL --prompt "..." --attention-backend {names.name}')
    else:
        steps.append(f"fv train CONFIG.yaml  # with `algorithm: {names.name}`")
    return steps
