"""Exception types raised by fastvideo.

Bad user input raises ``ValueError`` / ``TypeError`` (or the subclasses below, which keep that
base), problems with plugins or the environment raise :class:`FastVideoError` subclasses. Every
message says what was expected, what was received and how to fix it, on one line, so that the CLI
can print it without a traceback.
"""

from __future__ import annotations


class FastVideoError(Exception):
    """Base class of every error that fastvideo raises on purpose."""


class PluginError(FastVideoError):
    """A plugin could not be loaded, or registered something invalid."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same name for the same kind of extension."""


class UnknownNameError(FastVideoError, ValueError):
    """A model, backend, strategy or algorithm name that nothing registered."""


class BackendUnavailableError(FastVideoError):
    """An attention backend was requested explicitly but cannot run here."""


class ModelNotFoundError(FastVideoError, ValueError):
    """A model argument resolved to nothing (no preset, no folder, no Hub repo)."""


class ModelNotCachedError(FastVideoError):
    """A Hub model is needed but is not in the local cache and the Hub is unreachable/offline."""


class CheckpointError(FastVideoError):
    """A checkpoint on disk is missing a component, truncated, corrupt, or does not match the model."""


class OutputPathError(FastVideoError, ValueError):
    """The output path cannot be written (exists without overwrite, or not writable)."""


_WARNED: set[str] = set()


def warn_once(message: str, *, stacklevel: int = 2) -> None:
    """A one-line ``RuntimeWarning``, once per distinct message in the process (a fallback that every
    call would otherwise repeat). ``stacklevel`` counts from the caller of this function, as for
    :func:`warnings.warn`."""
    import warnings

    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)
