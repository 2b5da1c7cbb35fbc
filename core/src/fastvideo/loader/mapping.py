"""Declared checkpoint name mappings: one list of template rules, read in both directions.

A rule is a pair of templates ``(their name, our name)`` whose placeholders ``{i}`` (a block index)
and ``{p}`` (``weight`` or ``bias``) compile into regular expressions (``{param}``: any dotted
parameter name). The first rule that matches wins. Both directions come from the same rules, so
``to_theirs(to_ours(sd)) == sd`` by construction. Tensors are renamed, never reshaped or split;
values pass through untouched.

A plugin's ``convert.py`` declares its rules and builds one :class:`NameMapping`::

    MAPPING = NameMapping(
        RULES,
        rules_name="fastvideo_wan.convert.RULES",
        ours="fastvideo_wan",
        their_class="WanTransformer3DModel",
        our_class="WanTransformer",
    )
    MAPPING.to_ours({"patch_embedding.weight": w})  # {"patch_embed.weight": w}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

from fastvideo.errors import CheckpointError

V = TypeVar("V")

Rule = tuple[str, str]
Compiled = list[tuple[re.Pattern[str], str]]

#: What each placeholder of a rule template matches.
FIELDS = {"i": r"\d+", "p": r"weight|bias", "param": r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"}


class UnmappedKeysError(CheckpointError):
    """Names that no rule of a :class:`NameMapping` matches; :attr:`keys` lists every one."""

    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(message)
        self.keys = keys


def template_pattern(template: str) -> re.Pattern[str]:
    """Compile a rule template (``"blocks.{i}.attn.{p}"``) into a full-name regular expression."""
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    body = "".join(re.escape(s) if n % 2 == 0 else f"(?P<{s}>{FIELDS[s]})" for n, s in enumerate(parts))
    return re.compile(body)


def listing(keys: Sequence[str], limit: int = 12) -> str:
    """``a, b, c, ... (N more)``: the first ``limit`` names of a list, for error messages."""
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _rename(key: str, rules: Compiled) -> str | None:
    for pattern, template in rules:
        m = pattern.fullmatch(key)
        if m:
            return template.format(**m.groupdict())
    return None


class NameMapping:
    """One-to-one renaming between another library's state-dict names and ours.

    :param rules: ``(their name, our name)`` templates, first match wins, used both ways.
    :param read_only: extra rules used only when reading their names (aliases other ports wrote).
    :param ignored: regular expressions of their names dropped when reading (as diffusers'
        ``_keys_to_ignore_on_load_unexpected`` drops them).
    :param rules_name: where the rules are declared, named in errors (``"fastvideo_wan.convert.RULES"``).
    :param ours: how our names are called in errors (the plugin's import name).
    :param theirs: how their names are called in errors.
    :param their_class: / ``our_class``: the state dicts each side expects, named in errors.
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        read_only: Sequence[Rule] = (),
        ignored: Sequence[str] = (),
        rules_name: str,
        ours: str,
        theirs: str = "diffusers",
        their_class: str,
        our_class: str,
    ) -> None:
        self.rules = tuple(rules)
        self.read_only, self.ignored = tuple(read_only), tuple(ignored)
        self.rules_name, self.ours, self.theirs = rules_name, ours, theirs
        self.their_class, self.our_class = their_class, our_class
        self._to_ours: Compiled = [(template_pattern(t), o) for t, o in (*rules, *read_only)]
        self._to_theirs: Compiled = [(template_pattern(o), t) for t, o in rules]
        self._ignored = [re.compile(p) for p in ignored]

    def extended(self, rules: Sequence[Rule], *, read_only: Sequence[Rule] = ()) -> NameMapping:
        """A copy with more rules, tried before these (e.g. an attention backend's layer modules)."""
        return NameMapping(
            (*rules, *self.rules),
            read_only=(*read_only, *self.read_only),
            ignored=self.ignored,
            rules_name=self.rules_name,
            ours=self.ours,
            theirs=self.theirs,
            their_class=self.their_class,
            our_class=self.our_class,
        )

    def to_ours(self, state_dict: Mapping[str, V]) -> dict[str, V]:
        """Rename their state dict (values untouched) to ours; ignored names are dropped.

        :raises UnmappedKeysError: listing every name that no rule matches.
        """
        return self._convert(state_dict, self._to_ours, self._ignored, self.theirs, self.their_class)

    def to_theirs(self, state_dict: Mapping[str, V]) -> dict[str, V]:
        """Rename our state dict (values untouched) to their names.

        :raises UnmappedKeysError: listing every name that no rule matches.
        """
        return self._convert(state_dict, self._to_theirs, [], self.ours, self.our_class)

    def _convert(
        self, state_dict: Mapping[str, V], rules: Compiled, ignored: list, source: str, expected: str
    ) -> dict[str, V]:
        out: dict[str, V] = {}
        unmapped = []
        for key, value in state_dict.items():
            new = _rename(key, rules)
            if new is not None:
                out[new] = value
            elif not any(p.fullmatch(key) for p in ignored):
                unmapped.append(key)
        if unmapped:
            raise UnmappedKeysError(
                f"{len(unmapped)} {source} name(s) match no rule of {self.rules_name}: {listing(unmapped)}. "
                f"Expected a {expected} state dict; add a rule if {self.theirs} renamed a module.",
                unmapped,
            )
        return out
