"""User-facing errors.

Every mistake a user can make (a broken config, a missing model, a corrupt artifact, an unknown metric)
raises a subclass of :class:`UserError`. The CLI prints its message as one line and exits with
``exit_code``: 2 for configuration problems, 1 for run failures. Messages say what was wrong and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """A problem the user can fix. Printed as one line, no traceback."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(UserError):
    """A configuration file or command-line option is invalid."""

    exit_code = 2


class UnknownNameError(ConfigError):
    """A registry lookup (metric, backend, task family, ...) found no such name."""


class StoreError(UserError):
    """The artifact store cannot be read or written as asked."""


class CorruptArtifactError(StoreError):
    """An artifact file is malformed, truncated or fails its checksum."""


class LockedError(StoreError):
    """Another live process holds the lock of a unit."""


class MissingDataError(UserError):
    """Task data has not been prepared (or a data file is missing)."""


class BackendError(UserError):
    """A generation backend cannot run here (not installed, no GPU, no such model)."""


class InjectedFailure(UserError):
    """Raised on purpose by the fake backend's failure injection (crash tests); rows written so far are kept."""


def close_names(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The choices closest to ``name`` for a "did you mean" hint: never ``name`` itself, never twice."""
    import difflib

    return difflib.get_close_matches(name, [c for c in dict.fromkeys(choices) if c != name], n=n, cutoff=cutoff)
