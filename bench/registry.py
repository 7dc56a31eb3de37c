"""One generic registry for what users extend (protocols, dataset sources), in the style of
lm-evaluation-harness: built-ins as lazy ``"module:attr"`` strings imported on first use, plugins
through an entry-point group, run-time ``register`` for tests and notebooks, and "did you mean"
errors. (Backbones keep their own registry in backbones/registry.py, with the same rules.)
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Generic, TypeVar

from .errors import UserError, did_you_mean

T = TypeVar("T")

# every installed entry point, by group, read once per process: one scan of the installed
# distributions costs milliseconds, and planning a sweep asks the registries thousands of times
_ENTRY_POINTS: dict[str, dict[str, metadata.EntryPoint]] | None = None
_generation = 0  # bumped by refresh() and by run-time (un)registration: memos keyed on it go stale


def entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    """The installed entry points of ``group`` (name -> entry point), read once per process for
    every group together; :func:`refresh` reads them again (a plugin installed since)."""
    global _ENTRY_POINTS
    if _ENTRY_POINTS is None:
        found = metadata.entry_points()
        # Python 3.10/3.11: a (deprecated) dict group -> entry points; dict.values avoids its warning
        flat = [ep for eps in dict.values(found) for ep in eps] if isinstance(found, dict) else list(found)
        out: dict[str, dict[str, metadata.EntryPoint]] = {}
        for ep in flat:
            out.setdefault(ep.group, {})[ep.name] = ep
        _ENTRY_POINTS = out
    return _ENTRY_POINTS.get(group, {})


def refresh() -> None:
    """Forget the entry points read so far (and every registry's failed plugin imports): the next
    lookup scans the installed distributions again."""
    global _ENTRY_POINTS
    _ENTRY_POINTS = None
    changed()


def changed() -> None:
    """A registry's contents changed: memos of what was looked up in it are stale."""
    global _generation
    _generation += 1


def generation() -> int:
    """A number that changes whenever a registry's contents may have: a key for memos of lookups."""
    return _generation


def load_target(target: str) -> object:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str, builtins: dict[str, str], base: type) -> None:
        self.kind, self.group, self.base = kind, group, base
        self._builtins = dict(builtins)
        self._registered: dict[str, T] = {}
        self._loaded: dict[str, T] = {}
        self._failed: dict[str, tuple[UserError, int]] = {}  # a plugin that failed to import, per generation

    def register(self, obj: T, name: str | None = None) -> T:
        """Add (or replace) an entry at run time; returns it, so it works as a decorator too."""
        obj = self._check(obj, name or getattr(obj, "name", ""))
        key = name or obj.name  # type: ignore[attr-defined]
        self._registered[key] = obj
        self._loaded.pop(key, None)
        changed()
        return obj

    def unregister(self, name: str) -> None:
        self._registered.pop(name, None)
        self._loaded.pop(name, None)
        changed()

    def refresh(self) -> None:
        """Read the installed plugins again (every registry's: they share one scan)."""
        refresh()

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        return entry_points(self.group)

    def names(self, plugins: bool = True) -> list[str]:
        """Registered at run time first, then built-ins in their declared order (the order
        protocols are matched in), then plugins (``plugins=False``: without importing any)."""
        out = list(self._registered) + [n for n in self._builtins if n not in self._registered]
        return out + sorted(n for n in self._entry_points() if n not in out) if plugins else out

    def get(self, name: str) -> T:
        if name in self._registered:
            return self._registered[name]
        if name in self._loaded:
            return self._loaded[name]
        if name in self._builtins:
            obj = self._check(load_target(self._builtins[name]), name)
        else:
            eps = self._entry_points()
            if name not in eps:
                raise UserError(f"unknown {self.kind} {name!r}; {did_you_mean(name, self.names())}")
            failed = self._failed.get(name)
            if failed is not None and failed[1] == _generation:  # not imported again until a refresh
                raise failed[0]
            try:
                loaded = eps[name].load()
            except Exception as e:  # a broken plugin should not look like a typo
                err = UserError(f"{self.kind} plugin {name!r} ({eps[name].value}) failed to import: {e}")
                self._failed[name] = (err, _generation)
                raise err from e
            obj = self._check(loaded, name)
        self._loaded[name] = obj
        return obj

    def all(self) -> list[T]:
        return [self.get(n) for n in self.names()]

    def _check(self, obj: object, name: str) -> T:
        if isinstance(obj, type) and issubclass(obj, self.base):
            obj = obj()  # a class with a no-argument constructor
        if not isinstance(obj, self.base):
            raise UserError(f"{self.kind} entry {name!r} is not a {self.base.__module__}.{self.base.__name__}")
        return obj  # type: ignore[return-value]
