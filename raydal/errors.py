"""The one error hierarchy: every mistake a user can make raises a ``RaydalError``.

A RaydalError's message says what was wrong (the field, file or value) and how to fix it, on one
line; the ``raydal`` command prints it as ``error: ...`` and exits with status 2, never with a
traceback. Anything else that escapes is a bug in raydal and keeps its traceback.

Subclasses also derive from the built-in type they replaced (``ValueError``, ``RuntimeError``),
so code that caught those keeps working.
"""
from __future__ import annotations

import difflib


class RaydalError(Exception):
    """A user error: the message names what was wrong and the fix."""


class ConfigError(RaydalError, ValueError):
    """An invalid configuration (a field, its value and what is expected)."""


class FsError(RaydalError, ValueError):
    """A location that cannot be opened (unsupported scheme, malformed URI)."""


class PoolError(RaydalError, ValueError):
    """A pool or test set that cannot be used as given (missing columns, duplicate ids, bad
    arrays, labeled or test images that do not decode, test labels that are not classes)."""


class LabelError(RaydalError, ValueError):
    """Labels that would corrupt the label log (duplicates, unknown ids, bad classes)."""


class BadImage(RaydalError, ValueError):
    """An image that cannot be used: unreadable, truncated, empty, too large or wrong channels."""


class SelectionError(RaydalError, ValueError):
    """A selection that cannot run as asked (no usable image, labels that do not fit)."""


class ResourceError(RaydalError, RuntimeError):
    """The cluster cannot (or did not in time) provide what actors or trainers request."""


class TrackingError(RaydalError, RuntimeError):
    """A tracking server that cannot be reached (checked before a run starts)."""


class OracleError(RaydalError, RuntimeError):
    """An oracle that cannot be asked (a Label Studio server unreachable, a key not set)."""


class RunDirError(RaydalError, RuntimeError):
    """A run directory that cannot be used as it is (corrupt records, a lost label file)."""


class RunDirLocked(RunDirError):
    """Another process holds the run directory."""


def one_line(message: str) -> str:
    """``message`` with its lines joined by '; ' (the CLI prints one line per error)."""
    return "; ".join(s for s in (line.strip() for line in str(message).splitlines()) if s)


def suggest(name: str, choices: list[str]) -> str:
    """' Did you mean ...?' for a mistyped name, or ''."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    return f" Did you mean {close[0]!r}?" if close else ""
