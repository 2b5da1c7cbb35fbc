"""The plugin guide (docs/plugins.md) and the complete plugins in the docstrings of
``fastvideo.interfaces`` stay true to the code.

Every ```python block of the guide (and of docs/parallel.md and docs/training.md, which it links) and
every ``::`` example of an interfaces module compiles, and every core name it imports or spells out
(``from fastvideo.x import Y``, ``fastvideo.x.y``) resolves. The guide's blocks and the docstring
examples also run at module level (class bodies construct their ``Preset``, ``BackendOption``,
``ModelRole``...; fragments may stop only at names they never define), and each shown plugin module
declares a supported ``FASTVIDEO_PLUGIN_API``. In the guide's prose, every inline ``fastvideo.x.y``
name and every ``Class.member`` of a core class resolves, every inline signature of a core callable
(``load_component(folder, model_index, name, *, dtype=None, device="cpu")``, the stage table's
constructors) matches the real parameters (names, kinds, defaults), every call (``ModelRole(shard=
False)``) binds, and every repository path exists. Nothing heavier than imports runs.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
#: The pages the guide sends plugin authors to: their code blocks and core names are checked too.
LINKED = (ROOT / "docs" / "parallel.md", ROOT / "docs" / "training.md")
INTERFACES = ROOT / "core" / "src" / "fastvideo" / "interfaces"

#: Modules whose public classes the guide may name without their module (``DenoisingStage.guidance``).
NAMESPACES = (
    "fastvideo",
    "fastvideo.interfaces",
    "fastvideo.interfaces.model_family",
    "fastvideo.pipelines",
    "fastvideo.pipelines.stages",
    "fastvideo.models",
    "fastvideo.loader",
    "fastvideo.attention",
    "fastvideo.testing",
    "fastvideo.configs",
    "fastvideo.generator",
)

DOTTED = re.compile(r"\bfastvideo(?:\.[A-Za-z_]\w*)+")


# ---------------------------------------------------------------- what the docs hold


def guide_text() -> str:
    return GUIDE.read_text()


def guide_blocks(pages: tuple[Path, ...] = (GUIDE,)) -> list[tuple[str, str]]:
    """``(id, code)`` of every ```python block of ``pages``; the id is the page and first line."""
    out = []
    for page in pages:
        text = page.read_text()
        for m in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
            line = text.count("\n", 0, m.start()) + 1
            out.append((f"{page.name}:{line}", m.group(1)))
    return out


def docstring_examples() -> list[tuple[str, str]]:
    """``(id, code)`` of every ``::`` literal block in the docstrings of the interfaces modules."""
    out = []
    for path in sorted(INTERFACES.glob("*.py")):
        tree = ast.parse(path.read_text())
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef)))]
        for node in nodes:
            doc = ast.get_docstring(node, clean=True)
            if not doc:
                continue
            lines = doc.splitlines()
            for i, line in enumerate(lines):
                if not line.rstrip().endswith("::"):
                    continue
                block = []
                for follow in lines[i + 1 :]:
                    if follow.strip() and not follow.startswith((" ", "\t")):
                        break
                    block.append(follow)
                code = textwrap.dedent("\n".join(block)).strip("\n")
                if code:
                    out.append((f"{path.name}:{getattr(node, 'name', 'module')}:{i + 1}", code + "\n"))
    return out


def inline_spans(page: Path = GUIDE) -> list[str]:
    """The inline code spans of a page's prose (code blocks removed)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text)]  # a span may wrap lines


ALL_CODE = guide_blocks((GUIDE, *LINKED)) + docstring_examples()


# ---------------------------------------------------------------- resolving names


def resolve(dotted: str) -> Any:
    """The object ``fastvideo.a.b.C.d`` names: modules imported, then attributes (dataclass fields
    and attributes a class sets in ``__init__`` count). Raises ``LookupError`` saying what is missing."""
    parts = dotted.split(".")
    obj: Any = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        obj = member(obj, part, ".".join(parts[:i]))
    return obj


def member(obj: Any, name: str, where: str) -> Any:
    if hasattr(obj, name):
        return getattr(obj, name)
    if inspect.ismodule(obj) and hasattr(obj, "__path__"):
        sub = f"{obj.__name__}.{name}"
        if importlib.util.find_spec(sub) is not None:
            return importlib.import_module(sub)
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}:
            return None
        if name in instance_attributes(obj):
            return None
    raise LookupError(f"{where} has no {name!r}")


def instance_attributes(cls: type) -> set[str]:
    """Names assigned as ``self.NAME = ...`` in the ``__init__`` of ``cls`` or its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or not inspect.isfunction(init):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(init))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                    if target.value.id == "self":
                        names.add(target.attr)
    return names


def namespace() -> dict[str, Any]:
    """Public classes and functions of :data:`NAMESPACES` defined in fastvideo, by name."""
    out: dict[str, Any] = {}
    for module_name in NAMESPACES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if name.startswith("_") or not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            if (getattr(value, "__module__", "") or "").startswith("fastvideo"):
                out.setdefault(name, value)
    return out


def imported_names(code: str) -> list[str]:
    """Dotted names of the core objects ``code`` imports, and the core names it spells out."""
    names = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "fastvideo" or node.module.startswith("fastvideo."):
                names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name == "fastvideo" or a.name.startswith("fastvideo.")]
    names += [n for n in DOTTED.findall(code) if not n.endswith(".json")]
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------- the code blocks


def test_the_docs_have_code_to_check() -> None:
    assert len(guide_blocks()) >= 8, "the guide's ```python blocks were not found"
    found = {name.split(":")[0] for name, _ in docstring_examples()}
    want = {"attention.py", "model_family.py", "parallel.py", "sampler.py", "training.py", "transform.py"}
    assert want <= found, f"no docstring example found in {sorted(want - found)}"


@pytest.mark.parametrize(("where", "code"), ALL_CODE, ids=[w for w, _ in ALL_CODE])
def test_code_compiles(where: str, code: str) -> None:
    try:
        compile(code, where, "exec")
    except SyntaxError as exc:
        pytest.fail(f"{where} (+{exc.lineno}): {exc.msg}: {exc.text!r}")


@pytest.mark.parametrize(("where", "code"), ALL_CODE, ids=[w for w, _ in ALL_CODE])
def test_core_names_in_code_resolve(where: str, code: str) -> None:
    missing = []
    for name in imported_names(code):
        try:
            resolve(name)
        except (LookupError, ImportError) as exc:
            missing.append(f"{name} ({exc})")
    assert not missing, f"{where} names what the core does not have: {'; '.join(missing)}"


RUNNABLE = guide_blocks() + docstring_examples()  # the linked pages' blocks generate videos: not run


@pytest.mark.parametrize(("where", "code"), RUNNABLE, ids=[w for w, _ in RUNNABLE])
def test_code_runs_as_far_as_it_is_complete(where: str, code: str) -> None:
    """Run the block (module level only: class bodies, so ``Preset(...)``, ``BackendOption(...)``,
    ``ModelRole(...)``, ``SequenceParallelPlan(...)`` are really constructed). A fragment may stop at
    a name it never defines, but not at a core name it forgot to import, nor at anything else."""
    try:
        exec(compile(code, where, "exec"), {"__name__": f"docs_{abs(hash(where))}"})
    except NameError as exc:
        assert exc.name not in namespace(), f"{where}: uses {exc.name} without importing it"
    except ModuleNotFoundError as exc:  # a plugin of the examples, when it is not installed
        assert not str(exc.name).startswith("fastvideo."), f"{where}: {exc}"


@pytest.mark.parametrize(("where", "code"), ALL_CODE, ids=[w for w, _ in ALL_CODE])
def test_plugin_modules_declare_the_plugin_api(where: str, code: str) -> None:
    """A shown plugin module (one that imports ``hookimpl``) declares an API this core supports: a
    module without ``FASTVIDEO_PLUGIN_API`` is loaded as a broken plugin."""
    if "from fastvideo import hookimpl" not in code:
        return
    from fastvideo.hookspecs import SUPPORTED_PLUGIN_APIS

    declared = [int(v) for v in re.findall(r"^\s*FASTVIDEO_PLUGIN_API = (\d+)", code, flags=re.M)]
    assert declared, f"{where}: a plugin module without FASTVIDEO_PLUGIN_API (the core marks it broken)"
    assert set(declared) <= SUPPORTED_PLUGIN_APIS, f"{where}: FASTVIDEO_PLUGIN_API {declared}"


# ---------------------------------------------------------------- the prose


@pytest.mark.parametrize("page", [GUIDE, *LINKED], ids=lambda p: p.name)
def test_dotted_core_names_in_prose_resolve(page: Path) -> None:
    names = {n for span in inline_spans(page) for n in DOTTED.findall(span) if not n.endswith(".json")}
    assert names or page is not GUIDE
    missing = []
    for name in sorted(names):
        try:
            resolve(name)
        except (LookupError, ImportError) as exc:
            missing.append(f"{name} ({exc})")
    assert not missing, f"docs/{page.name} names what the core does not have: " + "; ".join(missing)


def test_members_of_core_classes_in_prose_exist() -> None:
    """``DenoisingStage.model_inputs``, ``PipelineConfig.sampler``, ``StepContext.backend_options(x)``."""
    known = namespace()
    checked, missing = 0, []
    for span in inline_spans():
        m = re.match(r"([A-Z]\w*)((?:\.[A-Za-z_]\w*)+)", span)
        if not m or m.group(1) not in known:
            continue
        obj: Any = known[m.group(1)]
        where = m.group(1)
        try:
            for part in m.group(2).split(".")[1:]:
                obj = member(obj, part, where)
                where += f".{part}"
        except LookupError as exc:
            missing.append(f"`{span}`: {exc}")
        checked += 1
    assert checked > 5
    assert not missing, "docs/plugins.md: " + "; ".join(missing)


def table_signatures() -> list[str]:
    """``Name(args)`` from table rows whose first cells are `` `Name` `` and `` `(args)` `` (the stages)."""
    rows = re.findall(r"^\| `([A-Za-z_]\w*)` \| `(\([^`]*\))` \|", guide_text(), flags=re.M)
    return [name + args for name, args in rows]


def _callable_spans() -> list[tuple[str, list[Any], str]]:
    """``(span, candidates, argument text)`` for spans ``name(...)`` naming core callables: a dotted
    ``fastvideo.`` name or a core class (and its members) is one candidate; a bare name, the members
    of that name of every core class (``validate(params, source)``); other names are skipped."""
    known = namespace()
    surface = ("fastvideo.interfaces", "fastvideo.pipelines", "fastvideo.models", "fastvideo.attention")
    classes = [c for c in known.values() if inspect.isclass(c) and c.__module__.startswith(surface)]
    out = []
    for span in inline_spans() + table_signatures():
        m = re.fullmatch(r"([A-Za-z_][\w.]*)\((.*?)\)(?:\s*->.*)?", span.strip())
        if not m:
            continue
        name, args = m.group(1), re.sub(r",\s*\.\.\.\s*$", "", m.group(2))  # "a=1, ...": more follow
        head = name.split(".")[0]
        try:
            if name.startswith("fastvideo."):
                candidates = [resolve(name)]
            elif head in known:
                obj = known[head]
                for part in name.split(".")[1:]:
                    obj = getattr(obj, part)
                candidates = [obj]
            elif "." not in name:
                candidates = [getattr(c, name) for c in classes if callable(getattr(c, name, None))]
            else:
                continue
        except (LookupError, AttributeError, ImportError):
            continue  # a missing name fails the tests above
        candidates = [c for c in candidates if callable(c)]
        if candidates:
            out.append((span, candidates, args))
    return out


def _doc_signature(args: str) -> inspect.Signature | None:
    """``"a, b, *, c=None"`` as a signature (defaults evaluated), or None if it is not one."""
    try:
        fn = ast.parse(f"def _({args}): pass").body[0]
    except SyntaxError:
        return None
    assert isinstance(fn, ast.FunctionDef)
    a = fn.args
    params = []
    positional = [*a.posonlyargs, *a.args]
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for arg, default in zip(positional, defaults, strict=True):
        params.append(_param(arg.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, default))
    if a.vararg:
        params.append(inspect.Parameter(a.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        params.append(_param(arg.arg, inspect.Parameter.KEYWORD_ONLY, default))
    if a.kwarg:
        params.append(inspect.Parameter(a.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def _param(name: str, kind: Any, default: ast.expr | None) -> inspect.Parameter:
    value = inspect.Parameter.empty
    if default is not None:
        try:
            value = eval(compile(ast.Expression(default), "<default>", "eval"), _default_globals())
        except NameError as exc:
            raise AssertionError(f"the documented default of {name!r} is not a value: {exc}") from None
    return inspect.Parameter(name, kind, default=value)


def _default_globals() -> dict[str, Any]:
    """What documented defaults may name: torch, the seam's constants (``DENSE``), core classes."""
    import torch

    import fastvideo.attention

    return {"torch": torch, **vars(fastvideo.attention), **namespace()}


def test_signatures_and_calls_in_prose_match_the_code() -> None:
    """A span written as a signature lists real parameters, in their kind, with their defaults; a
    span written as a call binds to the real signature."""
    checked, wrong = 0, []
    for span, candidates, args in _callable_spans():
        problems = [p for p in (_check_span(c, args) for c in candidates) if p is not None]
        if not problems:
            continue  # neither a signature nor a call (``plugin_module(name, fv_register_...=fn)``)
        checked += 1
        if all(problems):  # every candidate disagrees
            wrong.append(f"`{span}`: {problems[0]}")
    assert checked > 20
    assert not wrong, "docs/plugins.md:\n" + "\n".join(wrong)


def _check_span(obj: Any, args: str) -> str | None:
    """'' when ``args`` matches ``obj``'s signature, what differs when not, None when unreadable."""
    try:
        real = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    doc = None if _looks_like_call(args) or args.strip() in ("", "...") else _doc_signature(args)
    if doc is not None:
        problems = _compare(doc, real)
        return f"{problems}; the code has {real}" if problems else ""
    problem = _bind(args, real)
    return f"{problem}; the code has {real}" if problem else problem


def _looks_like_call(args: str) -> bool:
    """Spans with ``name=value`` and no ``*`` are calls (``ModelRole(shard=False)``); spans with a
    ``*`` or only names are signatures (``DecodingStage(vae, denormalize, *, tiling=None)``)."""
    return "=" in args and "*" not in args


def _compare(doc: inspect.Signature, real: inspect.Signature) -> str:
    params = real.parameters
    out = []
    for name, p in doc.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        r = params.get(name)
        if r is None:
            if not any(q.kind is q.VAR_KEYWORD for q in params.values()):
                out.append(f"no parameter {name!r}")
            continue
        if r.kind is r.KEYWORD_ONLY and p.kind is not p.KEYWORD_ONLY:
            out.append(f"{name!r} is keyword-only")
        if p.kind is p.KEYWORD_ONLY and r.kind not in (r.KEYWORD_ONLY, r.POSITIONAL_OR_KEYWORD):
            out.append(f"{name!r} is positional-only")
        factory = repr(r.default) == "<factory>"  # a dataclass field's default_factory
        if p.default is not p.empty and not factory and r.default != p.default:
            out.append(f"{name!r} defaults to {r.default!r}, not {p.default!r}")
        if p.default is p.empty and r.default is not r.empty and p.kind is p.KEYWORD_ONLY:
            out.append(f"{name!r} has the default {r.default!r}")
    return ", ".join(out)


def _bind(args: str, real: inspect.Signature) -> str | None:
    """'' when ``f(args)`` binds, the reason when not, None when ``args`` is not a call."""
    try:
        call = ast.parse(f"_({args})", mode="eval").body
    except SyntaxError:
        return None
    assert isinstance(call, ast.Call)
    positional = [None for a in call.args if not (isinstance(a, ast.Constant) and a.value is Ellipsis)]
    keywords = {k.arg: None for k in call.keywords if k.arg is not None}
    try:
        real.bind_partial(*positional, **keywords)
    except TypeError as exc:
        return str(exc)
    return ""


def test_repository_paths_in_prose_exist() -> None:
    spans = [s.strip() for s in inline_spans()]
    paths = [
        s
        for s in spans
        if "/" in s
        and " " not in s
        and not s.startswith(("-", "http", "./", "~"))
        and re.fullmatch(r"[\w./-]+", s)
        and (
            s.endswith((".py", ".md", ".toml")) or s.split("/")[0] in ("examples", "plugins", "core", "docs")
        )
    ]
    assert len(paths) > 3
    roots = [
        ROOT,
        ROOT / "docs",
        ROOT / "core" / "src",
        *ROOT.glob("plugins/*/src"),
        *ROOT.glob("examples/*/src"),
    ]
    templates = ROOT / "core" / "src" / "fastvideo" / "templates"  # what `fv plugins new` writes
    roots += [d for d in templates.iterdir() if d.is_dir()]
    missing = [
        p for p in paths if not any((root / p).exists() or (root / f"{p}.tmpl").exists() for root in roots)
    ]
    assert not missing, f"docs/plugins.md names paths that do not exist: {missing}"


def test_a_vanished_name_is_caught() -> None:
    """The resolver fails on names the core does not have (so the checks above can fail)."""
    for name in ("fastvideo.pipelines.stages.NoSuchStage", "fastvideo.no_such_module.X"):
        with pytest.raises((LookupError, ImportError)):
            resolve(name)
    assert resolve("fastvideo.pipelines.stages.DenoisingStage.step_hooks") is None  # set in __init__
    assert _compare(_doc_signature("a, *, b=1"), inspect.signature(lambda a, *, b=2: None))
    assert _bind("x=1", inspect.signature(lambda a: None))
