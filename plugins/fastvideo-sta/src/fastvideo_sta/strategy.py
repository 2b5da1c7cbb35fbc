"""Mask strategies: the window of every (denoising step, sparse attention layer, head), in tiles.

The file format is the anchor's (FastVideo's ``assets/mask_strategy_*.json``), so its published
strategies load unchanged: one JSON object whose keys are ``"{step}_{layer}_{head}"`` and whose values
are ``[t, h, w]`` windows in tiles. ``layer`` counts the model's sparse attention layers in module
order (HunyuanVideo: the 20 double-stream blocks, then the 40 single-stream blocks; Wan: ``blocks.N``).
Pure Python (no torch): ``fv --help`` and option checks read it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastvideo_sta.tiles import TileGeometry, Window


@dataclass(frozen=True)
class Strategy:
    """Windows by ``(step, layer, head)``; every step has the same layers and heads."""

    windows: Mapping[tuple[int, int, int], Window]
    num_steps: int = field(init=False)
    num_layers: int = field(init=False)
    num_heads: int = field(init=False)

    def __post_init__(self) -> None:
        keys = list(self.windows)
        if not keys:
            raise ValueError("a mask strategy needs at least one window")
        dims = [max(k[i] for k in keys) + 1 for i in range(3)]
        missing = dims[0] * dims[1] * dims[2] - len(set(keys))
        if missing:
            example = next(
                f"{s}_{layer}_{h}"
                for s in range(dims[0])
                for layer in range(dims[1])
                for h in range(dims[2])
                if (s, layer, h) not in self.windows
            )
            raise ValueError(
                f"a mask strategy must give a window for every step, layer and head up to "
                f"{dims[0]}x{dims[1]}x{dims[2]}; {missing} are missing (e.g. {example!r})"
            )
        for name, value in zip(("num_steps", "num_layers", "num_heads"), dims, strict=True):
            object.__setattr__(self, name, value)

    def window(self, step: int, layer: int, head: int) -> Window:
        return self.windows[(step, layer, head)]

    def step_table(self, step: int) -> list[list[Window]]:
        """``[layer][head]`` windows of ``step``.

        :raises ValueError: ``step`` beyond the steps the strategy covers.
        """
        if not 0 <= step < self.num_steps:
            raise ValueError(
                f"the sta mask strategy covers denoising steps 0..{self.num_steps - 1}, but step {step} runs; "
                f"generate with at most {self.num_steps} steps or search a strategy for this many"
            )
        return [
            [self.windows[(step, layer, h)] for h in range(self.num_heads)]
            for layer in range(self.num_layers)
        ]

    def sparsity(self, geom: TileGeometry, steps: Iterable[int] | None = None) -> float:
        """Fraction of the video-video attention the strategy skips on ``geom``, over ``steps`` (all)."""
        chosen = set(range(self.num_steps) if steps is None else steps)
        counts = Counter(w for (s, _, _), w in self.windows.items() if s in chosen)
        kept = sum(n * geom.kept_fraction(geom.clamp(w)) for w, n in counts.items())
        return 1.0 - kept / max(1, sum(counts.values()))

    def to_json(self) -> dict[str, list[int]]:
        return {f"{s}_{layer}_{h}": list(w) for (s, layer, h), w in sorted(self.windows.items())}


def parse_strategy(data: object, source: str = "mask strategy") -> Strategy:
    """A :class:`Strategy` from the anchor's JSON object; one-line ``ValueError`` on a bad entry."""
    if not isinstance(data, Mapping):
        raise ValueError(
            f'{source} must be a JSON object {{"step_layer_head": [t, h, w]}}, got {type(data).__name__}'
        )
    windows: dict[tuple[int, int, int], Window] = {}
    for key, value in data.items():
        parts = str(key).split("_")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f'{source}: key {key!r} is not "step_layer_head" (three non-negative integers)')
        if not (
            isinstance(value, list | tuple)
            and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            raise ValueError(
                f"{source}: {key!r} must map to a window [t, h, w] of positive integers, got {value!r}"
            )
        windows[(int(parts[0]), int(parts[1]), int(parts[2]))] = tuple(value)  # type: ignore[assignment]
    return Strategy(windows)


_CACHE: dict[tuple[str, int, int], Strategy] = {}


def load_strategy(path: str | os.PathLike[str]) -> Strategy:
    """Read a strategy file (cached by path, size and modification time).

    :raises ValueError: a missing or unreadable file, invalid JSON, or a bad entry (one line each).
    """
    p = Path(path).expanduser()
    try:
        stat = p.stat()
    except OSError:
        raise ValueError(
            f"sta mask strategy file {str(p)!r} does not exist; pass a JSON file from `fv sta search`"
        ) from None
    key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CACHE:
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"sta mask strategy file {str(p)!r} is not valid JSON: {exc}") from None
        _CACHE[key] = parse_strategy(data, f"sta mask strategy {p.name}")
    return _CACHE[key]


def write_json_atomic(data: Any, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """``data`` as JSON at ``path``, written to a temporary file then renamed.

    :raises FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    p = Path(path).expanduser()
    if p.exists() and not overwrite:
        raise FileExistsError(f"{str(p)!r} exists; pass --overwrite to replace it or choose another path")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=None)
            f.write("\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def save_strategy(strategy: Strategy, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``strategy`` as JSON atomically (:func:`write_json_atomic`).

    :raises FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    return write_json_atomic(strategy.to_json(), path, overwrite=overwrite)
