"""One generic registry type for every kind of pluggable component.

Entries are either objects registered with the decorator or lazy ``"module:attr"`` strings that are
imported on first use, so heavy backends (torch, vllm) cost nothing until they are asked for.
Unknown names raise :class:`UnknownNameError` with the closest matches.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from rescore.errors import UnknownNameError, close_names

# names reach the filesystem: one rule for them all, kept in rescore.names and re-exported here
from rescore.names import NAME_RE as NAME_RE
from rescore.names import check_name as check_name

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> component map for one kind of component (metrics, backends, task families...).

    ``group`` names the entry-point group other packages register in (``[project.entry-points."<group>"]``,
    ``name = "module:attr"``); those entries are lazy like the built-in ones and are read on the first
    lookup of a name that is not registered. A name holding ``:`` (``"mypkg.mod:MyBackend"``) is imported
    as it stands, without registration. ``coerce`` turns what an entry resolves to into the component
    (e.g. a decorated class into an instance) and rejects what is not one.
    """

    def __init__(self, kind: str, *, group: str | None = None, coerce: Callable[[object], T] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._coerce = coerce
        self._entries: dict[str, T | str] = {}
        self._refs: dict[str, T] = {}  # "module:attr" names resolved so far
        self._entry_points_read = group is None

    @overload
    def register(self, name: str, obj: T) -> T: ...

    @overload
    def register(self, name: str | None = None) -> Callable[[T], T]: ...

    def register(self, name: str | None = None, obj: T | None = None):  # type: ignore[no-untyped-def]
        """``reg.register("x", obj)`` or ``@reg.register("x")`` / ``@reg.register()`` (uses ``__name__``)."""

        def add(o: T) -> T:
            key = name if name is not None else getattr(o, "name", None) or getattr(o, "__name__")  # noqa: B009
            check_name(key, self.kind)
            self._entries[key] = o
            return o

        if obj is not None:
            return add(obj)
        return add

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:attr"``, imported only when :meth:`get` asks for it."""
        check_name(name, self.kind)
        if ":" not in target:
            raise ValueError(f"lazy target must be 'module:attr', got {target!r}")
        self._entries[name] = target

    def get(self, name: str) -> T:
        if name not in self._entries:
            if isinstance(name, str) and ":" in name:
                return self._ref(name)
            self.load_entry_points()
        try:
            entry = self._entries[name]
        except KeyError:
            raise self.unknown(name) from None
        if isinstance(entry, str):
            obj = self._import(entry, name)
            current = self._entries[name]
            # importing the module may have registered the component under its name (a decorator): keep that one
            entry = current if not isinstance(current, str) else self._as_component(obj)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def _ref(self, ref: str) -> T:
        if ref not in self._refs:
            self._refs[ref] = self._as_component(self._import(ref, ref))
        return self._refs[ref]

    def _import(self, target: str, name: str) -> object:
        """The object a ``"module:attr"`` target names; a :class:`ConfigError` when it cannot be imported."""
        from rescore.errors import ConfigError

        module, _, attr = target.partition(":")
        if name == target and (not module or not attr):
            raise ConfigError(f"{self.kind} {target!r} is not 'package.module:attr'", hint="e.g. mypkg.mod:MyClass")
        try:
            obj: object = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            where = f" ({target})" if target != name else ""
            raise ConfigError(f"cannot import {self.kind} {name!r}{where}: {type(e).__name__}: {e}",
                              hint="check the name, and that the package providing it is installed") from None
        return obj

    def _as_component(self, obj: object) -> T:
        return self._coerce(obj) if self._coerce is not None else obj  # type: ignore[return-value]

    def load_entry_points(self) -> None:
        """Add the lazy entries of the entry-point group (once). A plugin may not take a built-in's name."""
        if self._entry_points_read:
            return
        self._entry_points_read = True
        from importlib.metadata import entry_points

        from rescore.errors import ConfigError

        assert self.group is not None
        for ep in entry_points(group=self.group):
            current = self._entries.get(ep.name)
            if current is None:
                check_name(ep.name, self.kind)
                if ":" not in ep.value:
                    raise ConfigError(f"entry point {ep.name!r} of group {self.group} is {ep.value!r}, not 'module:attr'",
                                      hint="fix the entry point of the package that provides it")
                self._entries[ep.name] = ep.value
            elif _builtin(current) and not ep.value.startswith("rescore."):
                raise ConfigError(f"entry point {ep.name!r} ({ep.value}) of group {self.group} takes the name of a "
                                  f"built-in {self.kind}", hint="give it a name of its own in the plugin's pyproject.toml")

    def unknown(self, name: str) -> UnknownNameError:
        self.load_entry_points()
        close = close_names(str(name), list(self._entries))
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else None
        choices = ", ".join(sorted(self._entries)) or "(none registered)"
        return UnknownNameError(
            f"unknown {self.kind} {name!r}",
            hint=(hint + " " if hint else "") + f"choices: {choices}",
        )

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(self._entries)

    def is_loaded(self, name: str) -> bool:
        return name in self._entries and not isinstance(self._entries[name], str)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self.load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _builtin(entry: object) -> bool:
    """A built-in entry: a lazy target in rescore, or an object defined there."""
    if isinstance(entry, str):
        return entry.startswith("rescore.")
    module = getattr(entry, "__module__", None) or getattr(type(entry), "__module__", "")
    return str(module).startswith("rescore.")
