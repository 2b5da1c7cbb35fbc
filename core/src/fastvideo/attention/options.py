"""Options of attention backends: declared by each backend, checked here, carried in a namespaced dict.

A backend declares its settings as :class:`fastvideo.interfaces.attention.BackendOption` s. Users set
them as ``{"<backend>": {"<option>": value}}`` (``backend_options=`` of the Python API, the flags the
options declare on ``fv generate``, the ``attention:`` section of ``fv train``'s config); core checks
them against the declarations of the *selected* backend and puts the values into the step context
(:attr:`fastvideo.attention.StepContext.options`). Core never interprets an option.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastvideo.errors import UnknownNameError
from fastvideo.registry import get_registry, unknown_name_message

if TYPE_CHECKING:
    from fastvideo.interfaces.attention import AttentionBackend, BackendOption

Options = Mapping[str, Mapping[str, Any]]


def backend_class(name: str) -> type[AttentionBackend]:
    """The registered backend class ``name``; :class:`UnknownNameError` (with a hint) otherwise."""
    entries = get_registry().entries["attention_backend"]
    if name not in entries:
        raise UnknownNameError(unknown_name_message("attention_backend", name, sorted(entries)))
    return entries[name].cls  # type: ignore[return-value]


def check_shape(
    options: Any, what: str = "backend_options", owner: str = "attention backend"
) -> dict[str, dict[str, Any]]:
    """``options`` as a plain ``{owner: {option: value}}`` dict, or a one-line ``TypeError``."""
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Mapping) and all(isinstance(n, str) for n in v)
        for k, v in options.items()
    ):
        raise TypeError(f"{what} must map {owner} names to {{option: value}} mappings, got {options!r}")
    return {k: dict(v) for k, v in options.items()}


def merge(base: Options | None, update: Options | None) -> dict[str, dict[str, Any]]:
    """``base`` with ``update`` applied option by option (a generator's defaults, then a call's)."""
    out = {k: dict(v) for k, v in (base or {}).items()}
    for backend, values in (update or {}).items():
        out.setdefault(backend, {}).update(values)
    return out


def _declared(cls: type[AttentionBackend], name: str, *, training: bool) -> BackendOption:
    by_name = {o.name: o for o in cls.options}
    if name not in by_name:
        names = sorted(by_name)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(names) or "none"
        raise ValueError(
            f"attention backend {cls.name!r} has no option {name!r}{hint} (its options: {listed})"
        )
    option = by_name[name]
    if option.training_only and not training:
        raise ValueError(
            f"{option.describe(cls.name)} is a training schedule setting; set it in fv train's attention "
            "section, not for generation"
        )
    return option


def check_options(
    selected: str, options: Options | None, *, training: bool = False, where: str = "backend_options"
) -> dict[str, Any]:
    """The checked values ``options`` gives for backend ``selected`` (nothing filled in).

    :param selected: the backend that runs (after :func:`fastvideo.attention.resolve_backend_name`).
    :param training: accept ``training_only`` options (``fv train``).
    :param where: how errors name the mapping; other than ``"backend_options"`` (``"attention"``,
        the training config's section) errors name an option ``<where>.<option>``.
    :raises ValueError: options for another backend than ``selected``, an option the backend does
        not declare, or a value its declaration rejects; one line naming the option and its flag.
    :raises TypeError: ``options`` is not ``{backend: {option: value}}``.
    """
    given = check_shape(options, where)
    for backend, values in given.items():
        if backend != selected and values:
            cls = backend_class(backend)
            first = next(iter(values))
            flag = next((o.cli_flags[0] for o in cls.options if o.name == first and o.cli_flags), None)
            what = f"{backend} option {first!r}" + (f" ({flag})" if flag else "")
            raise ValueError(
                f"{what} was given, but the selected attention backend is {selected!r}; select "
                f"{backend!r} (--attention-backend {backend}) or drop the option"
            )
    values = given.get(selected, {})
    if not values:
        return {}
    cls = backend_class(selected)
    label = (lambda name: None) if where == "backend_options" else (lambda name: f"{where}.{name}")
    return {
        name: _declared(cls, name, training=training).check(v, selected, label=label(name))
        for name, v in values.items()
    }


def resolve_options(
    selected: str,
    options: Options | None,
    *,
    step: int | None = None,
    total: int | None = None,
    training: bool = False,
) -> dict[str, dict[str, Any]]:
    """What the step context carries: ``{selected: values}`` with every declared option (defaults
    filled in, schedules evaluated at ``step`` of ``total`` by the backend's ``option_values``), or
    ``{}`` for a backend that declares none."""
    checked = check_options(selected, options, training=training)
    cls = backend_class(selected)
    if not cls.options:
        return {}
    return {selected: cls.option_values(checked, step=step, total=total)}


def moved_option_hint(key: str) -> str:
    """``""``, or a hint for a keyword argument that is a registered backend's option (the Python API
    takes those in ``backend_options``): ``; 'window' is an option of attention backend 'x': ...``."""
    try:
        entries = get_registry().entries["attention_backend"]
    except Exception:  # a hint must never hide the error it decorates
        return ""
    for name, entry in sorted(entries.items()):
        if any(o.name == key for o in getattr(entry.cls, "options", ())):
            return f"; {key!r} is an option of attention backend {name!r}: pass backend_options={{{name!r}: {{{key!r}: ...}}}}"
    return ""


def cli_flags() -> list[tuple[tuple[str, ...], str, BackendOption]]:
    """``(flags, backend, option)`` for every option that declares ``fv generate`` flags.

    A flag that two backends declare stays with the first (by backend name); the other gets a
    warning naming both, so one plugin cannot break ``fv generate`` for the others.
    """
    taken: dict[str, str] = {}
    out = []
    entries = get_registry().entries["attention_backend"]
    for name in sorted(entries):
        cls = entries[name].cls
        for option in getattr(cls, "options", ()):
            if option.training_only or not option.cli_flags:
                continue
            flags = []
            for flag in option.cli_flags:
                if flag in taken:
                    warnings.warn(
                        f"{flag} is declared by attention backends {taken[flag]!r} and {name!r}; it stays "
                        f"with {taken[flag]!r}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    continue
                taken[flag] = name
                flags.append(flag)
            if flags:
                out.append((tuple(flags), name, option))
    return out
