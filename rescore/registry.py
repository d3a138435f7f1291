"""One generic registry type for every kind of pluggable component.

Entries are either objects registered with the decorator or lazy ``"module:attr"`` strings that are
imported on first use, so heavy backends (torch, vllm) cost nothing until they are asked for.
Unknown names raise :class:`UnknownNameError` with the closest matches.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from rescore.errors import ConfigError, UnknownNameError

T = TypeVar("T")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def check_name(name: str, kind: str = "name") -> str:
    """Names reach the filesystem: only ``[a-z0-9_.-]``, not starting with a dot or dash."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise ConfigError(
            f"invalid {kind} {name!r}",
            hint="use lowercase letters, digits, '_', '.', '-' and start with a letter or digit",
        )
    return name


class Registry(Generic[T]):
    """A name -> component map for one kind of component (metrics, backends, task families...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    @overload
    def register(self, name: str, obj: T) -> T: ...

    @overload
    def register(self, name: str | None = None) -> Callable[[T], T]: ...

    def register(self, name: str | None = None, obj: T | None = None):  # type: ignore[no-untyped-def]
        """``reg.register("x", obj)`` or ``@reg.register("x")`` / ``@reg.register()`` (uses ``__name__``)."""

        def add(o: T) -> T:
            key = name if name is not None else getattr(o, "name", None) or o.__name__
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
        try:
            entry = self._entries[name]
        except KeyError:
            raise self.unknown(name) from None
        if isinstance(entry, str):
            module, attr = entry.split(":", 1)
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def unknown(self, name: str) -> UnknownNameError:
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else None
        choices = ", ".join(sorted(self._entries)) or "(none registered)"
        return UnknownNameError(
            f"unknown {self.kind} {name!r}",
            hint=(hint + " " if hint else "") + f"choices: {choices}",
        )

    def names(self) -> list[str]:
        return sorted(self._entries)

    def is_loaded(self, name: str) -> bool:
        return name in self._entries and not isinstance(self._entries[name], str)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
