"""Progress of downloads, denoising and decoding on stderr.

On a terminal: rich progress bars. Otherwise (a log file, a pipe, CI): plain lines such as
``denoising 3/8 (4.1 s)``, at most one every ``FASTVIDEO_PROGRESS_INTERVAL`` seconds (default 5)
plus the last one (a task without a count: one ``... done`` line when it took over a second).
``FASTVIDEO_PROGRESS=0`` (or ``--no-progress``, ``--json``) turns both off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator

_ENABLED = [True]
DEFAULT_INTERVAL_S = 5.0


def set_enabled(enabled: bool) -> None:
    _ENABLED[0] = enabled


def enabled() -> bool:
    return _ENABLED[0] and os.environ.get("FASTVIDEO_PROGRESS", "1") != "0"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("FASTVIDEO_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


#: Callbacks ``(description, done, total)`` told of every task's start and advances (see :func:`listen`).
_LISTENERS: list[Callable[[str, int, int | None], None]] = []


@contextlib.contextmanager
def listen(callback: Callable[[str, int, int | None], None]) -> Iterator[None]:
    """Call ``callback(description, done, total)`` when a task starts (``done=0``) and after each
    advance, in this process, while the block runs, whether or not progress is shown (``fv serve``
    reports a job's progress with it). An exception the callback raises stops the task."""
    _LISTENERS.append(callback)
    try:
        yield
    finally:
        _LISTENERS.remove(callback)


@contextlib.contextmanager
def task(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a bar (or plain lines) on stderr while the block runs."""
    with _shown(description, total) as show:
        if not _LISTENERS:
            yield show
            return
        done = [0]

        def advance(n: int = 1) -> None:
            show(n)
            done[0] += n
            for callback in list(_LISTENERS):
                callback(description, done[0], total)

        for callback in list(_LISTENERS):
            callback(description, 0, total)
        yield advance


@contextlib.contextmanager
def _shown(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """The bar or plain lines of :func:`task` (nothing when progress is off)."""
    if not enabled():
        yield _no_advance
        return
    stream = sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        with _plain_task(description, total, stream) as advance:
            yield advance
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=stream)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        tid = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(tid, n)

        yield advance


@contextlib.contextmanager
def _plain_task(description: str, total: int | None, stream: object) -> Iterator[Callable[[int], None]]:
    """Plain ``description done/total (elapsed)`` lines, for a stderr that is not a terminal."""
    start = time.monotonic()
    interval = _interval()
    state = {"done": 0, "last": start, "printed": -1}

    def emit() -> None:
        count = f"{state['done']}/{total}" if total is not None else f"{state['done']}"
        print(f"{description} {count} ({time.monotonic() - start:.1f} s)", file=stream, flush=True)  # type: ignore[call-overload]
        state["printed"] = state["done"]
        state["last"] = time.monotonic()

    def advance(n: int = 1) -> None:
        state["done"] += n
        if time.monotonic() - state["last"] >= interval or (total is not None and state["done"] >= total):
            emit()

    yield advance
    if total is None:  # no count to show: one line at the end, when it took a while
        if time.monotonic() - start >= 1.0:
            print(f"{description} done ({time.monotonic() - start:.1f} s)", file=stream, flush=True)  # type: ignore[call-overload]
    elif state["printed"] != state["done"]:
        emit()


def _no_advance(n: int = 1) -> None:
    """What :func:`task` yields when progress bars are off."""
