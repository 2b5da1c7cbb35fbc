"""Rich progress bars for downloads, denoising and decoding (quiet when disabled or not a TTY)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

_ENABLED = [True]


def set_enabled(enabled: bool) -> None:
    _ENABLED[0] = enabled


def enabled() -> bool:
    return _ENABLED[0] and os.environ.get("FASTVIDEO_PROGRESS", "1") != "0"


@contextlib.contextmanager
def task(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a bar on stderr while the block runs."""
    if not enabled():
        yield _no_advance
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=sys.stderr)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        tid = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(tid, n)

        yield advance


def _no_advance(n: int = 1) -> None:
    """What :func:`task` yields when progress bars are off."""
