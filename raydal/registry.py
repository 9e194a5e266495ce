"""The one registry class behind every seam a user extends: strategies, oracles, pool sources and
data-set importers.

A registry maps a name to an object (a class or a function). It refuses a name taken by another
object, answers an unknown name with a ConfigError that lists the known ones and the closest,
and finds third-party entries by entry point: an installed distribution that declares, in its
``entry_points.txt``,

    [raydal.oracles]
    my_oracle = my_package.oracles:MyOracle

makes ``loop.oracle: my_oracle`` work without an import in the config or an edit to raydal. An
entry point is loaded (its module imported) the first time a name is looked up that the built-in
entries do not have, or when every name is listed; one that fails to load is reported when its
name is asked for, not before.

Pure Python: importing this module imports neither torch nor any seam's built-in entries.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from raydal.errors import ConfigError, one_line, suggest

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry of one seam.

    kind: what an entry is, in messages ("strategy", "oracle", "pool source", "data set").
    entry_point_group: where third-party entries are declared (default ``raydal.<kind>s``).
    builtin: modules imported before the first lookup (their decorators register the built-in
    entries).
    adopt: how an entry point's loaded object becomes an entry when importing its module did not
    register it: ``adopt(name, obj)`` registers it (default: ``register(name, obj)``).
    check: ``check(name, obj)`` raises ConfigError for an object that cannot be an entry.
    base: entries are subclasses of ``base`` (checked) and learn their name (``cls.name``
    set when registered): the seams whose entries are classes (oracles, pool sources).
    """

    def __init__(self, kind: str, entry_point_group: str | None = None,
                 builtin: Sequence[str] = (), adopt: Callable[[str, Any], Any] | None = None,
                 check: Callable[[str, Any], None] | None = None, base: type | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group or f"raydal.{kind.replace(' ', '_')}s"
        self._builtin = tuple(builtin)
        self._adopt = adopt
        self._check = check
        self._base = base
        self._entries: dict[str, T] = {}
        self._broken: dict[str, str] = {}  # entry point name -> why it did not load
        self._builtin_loaded = False
        self._entry_points_loaded = False

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.entry_point_group!r}, {len(self._entries)} entries)"

    # ---- registering -----------------------------------------------------------------------
    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` as ``name``; without ``obj``, a decorator that does. Registering the
        same object twice is a no-op; another object under a taken name is a ConfigError."""
        if obj is None:
            return lambda o: self.register(name, o)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} is registered under a non-empty str name, got "
                              f"{name!r:.80}")
        base = self._base
        if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
            raise ConfigError(f"{self.kind} {name!r}: expected a subclass of {base.__module__}."
                              f"{base.__qualname__}, got {obj!r:.80}")
        if self._check is not None:
            self._check(name, obj)
        have = self._entries.get(name)
        if have is not None and have is not obj:
            raise ConfigError(f"{self.kind} {name!r} is already registered by {_describe(have)}; "
                              f"choose another name for {_describe(obj)}")
        self._entries[name] = obj
        if base is not None:
            obj.name = name
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests, and replacing an entry on purpose)."""
        self._entries.pop(name, None)

    # ---- looking up ------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every registered name, sorted (built-in and installed by entry point)."""
        self._load_builtin()
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, field: str | None = None) -> T:
        """The entry ``name``; ConfigError naming ``field`` (where the user wrote the name), the
        known names and the closest one for an unknown name."""
        where = f"{field}: " if field else ""
        if not isinstance(name, str):
            raise ConfigError(f"{where}a {self.kind} is named by a str, one of {self.names()}; "
                              f"got {name!r:.80}, of type {type(name).__name__}")
        found = self._find(name)
        if found is not None:
            return found
        if name in self._broken:
            raise ConfigError(f"{where}{self.kind} {name!r} is installed (entry point group "
                              f"{self.entry_point_group}) but does not load: {self._broken[name]}")
        known = self.names()
        raise ConfigError(f"{where}unknown {self.kind} {name!r}; expected one of {known}."
                          + suggest(name, known))

    def _find(self, name: str) -> T | None:
        self._load_builtin()
        if name not in self._entries:
            self._load_entry_points()
        return self._entries.get(name)

    # ---- loading ---------------------------------------------------------------------------
    def _load_builtin(self) -> None:
        if not self._builtin_loaded:
            self._builtin_loaded = True
            for module in self._builtin:
                importlib.import_module(module)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in _entry_points(self.entry_point_group):
            if ep.name in self._entries:
                continue  # a built-in name, or one registered by an earlier import
            try:
                obj = ep.load()
                if ep.name not in self._entries:  # importing its module did not register it
                    (self._adopt or self.register)(ep.name, obj)
            except Exception as e:  # any import error of a third party's module
                self._broken[ep.name] = f"{ep.value} ({type(e).__name__}: {one_line(str(e))[:300]})"


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    """The group's entry points, one per name (the first distribution on sys.path wins, as
    Python's import does)."""
    seen: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=group):
        seen.setdefault(ep.name, ep)
    return list(seen.values())


def _describe(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None)
    return f"{module}.{name}" if module and name else repr(obj)
