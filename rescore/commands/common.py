"""Options and error handling shared by every command module."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from rescore.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_STORE = Path("rescore-store")

StoreOpt = Annotated[
    Path,
    typer.Option("--store", envvar="RESCORE_STORE", help="Artifact store root (env RESCORE_STORE).", show_default=True),
]
OverridesOpt = Annotated[
    list[str] | None,
    typer.Option("-O", "--override", help="Config override key.path=value (value parsed as YAML). Repeatable."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


def out_console(*, stderr: bool = False, soft_wrap: bool = False) -> Any:
    """A rich console for tables and messages: the terminal's width, or, when the stream is a pipe or a file,
    wide enough that no table cuts a model, run id or task and no line wraps (rich's default there is 80)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, soft_wrap=soft_wrap, width=None if stream.isatty() else 1000)


def comma_list(values: list[str] | None) -> list[str] | None:
    """Callback of a repeatable option that also takes comma lists: ``-t a,b -t c`` is ``-t a -t b -t c``."""
    if not values:
        return values
    return [v.strip() for given in values for v in given.split(",") if v.strip()]

# every integer option is bounded: what it sets is recorded in manifests (JSON) and Arrow columns (int64)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1



TERMINATED: list[int] = []  # non-empty once SIGTERM arrived (see rescore.cli)

def fail(message: str, code: int = 1) -> None:
    """Print one line to stderr and exit with ``code`` (a message that quotes a multi-line error, from a library
    or a plugin, is joined into that line)."""
    one_line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"error: {one_line}", file=sys.stderr)
    raise typer.Exit(code)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush into a closed pipe raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (a test runner's buffer)
        pass


def handle_errors(fn: F) -> F:
    """Turn :class:`UserError` into one line on stderr and its exit code; no traceback.

    Set ``RESCORE_DEBUG=1`` to see the traceback anyway.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _passed_over().clear()
        try:
            result = fn(*args, **kwargs)
        except typer.Exit as e:
            if not e.exit_code:
                _fail_if_passed_over()
            raise
        except UserError as e:
            if os.environ.get("RESCORE_DEBUG"):
                raise
            fail(e.render(), e.exit_code)
        except BrokenPipeError:  # `rescore ... | head`: the reader has what it wanted; stop quietly
            _quiet_stdout()
            raise typer.Exit(0) from None
        except OSError as e:  # a full disk, a permission problem, a store path that is a file
            if os.environ.get("RESCORE_DEBUG"):
                raise
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            import errno

            hint = (" (free space on the disk of the store, or of the file named, or use a --store on a larger disk; "
                    "then run the same command again)") if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            fail(f"{e.strerror or e}{where}{hint}", 1)
        except KeyboardInterrupt:
            fail("interrupted; everything finished before it is saved: run the same command again to go on",
                 143 if TERMINATED else 130)  # the shell's codes for SIGTERM and Ctrl-C
        _fail_if_passed_over()
        return result

    return wrapper  # type: ignore[return-value]


def _passed_over() -> dict[str, str]:
    """Damaged units the command left out (rescore.artifacts.store.PASSED_OVER; empty when it read no store)."""
    mod = sys.modules.get("rescore.artifacts.store")
    return mod.PASSED_OVER if mod is not None else {}


def _fail_if_passed_over() -> None:
    """A command that finished but could not read some units' manifests names them and exits 1: what it did
    or showed lacks those units, which must not pass for a complete answer."""
    skipped = _passed_over()
    if not skipped:
        return
    shown = "; ".join(list(skipped.values())[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    fail(f"{len(skipped)} damaged unit(s) could not be read: {shown} (`rescore verify` lists every damaged file; "
         "delete a damaged unit's directory and run `rescore gen` to regenerate it)", 1)
