"""The ``rescore`` command line. Thin commands that call library functions.

Each command group lives in its own module under ``rescore.commands`` and exposes ``register(app)``.
Importing this module must stay light: no torch, transformers or vllm (a test checks).
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup


def _one_line(e: Exception) -> None:
    """Print a command-line mistake (unknown option, value out of range, missing argument) like every other
    user error: one line on stderr, exit 2, naming the command's --help. The help a bare group prints stays."""
    if getattr(e, "exit_code", None) != 2 or not hasattr(e, "ctx") or type(e).__name__ == "NoArgsIsHelpError":
        return
    ctx = e.ctx
    where = ctx.command_path if ctx is not None else "rescore"

    def show(file: Any = None) -> None:
        typer.echo(f"error: {e.format_message().rstrip('.')} (see `{where} --help`)", file=file, err=file is None)  # type: ignore[attr-defined]

    e.show = show  # type: ignore[attr-defined]


class _Group(TyperGroup):
    """The command group: usage errors of any command below it print one line (see :func:`_one_line`)."""

    def make_context(self, info_name: Any, args: list[str], *rest: Any, **kwargs: Any) -> Any:
        for a in args:  # what the commands are given ends up in JSON manifests, which hold UTF-8 text only
            try:
                a.encode("utf-8")
            except UnicodeEncodeError:
                typer.echo(f"error: argument {a!r} is not UTF-8 text (rescore records paths and names as UTF-8: "
                           "rename the file or directory, or give the value in UTF-8)", err=True)
                raise typer.Exit(2) from None
        try:
            return super().make_context(info_name, args, *rest, **kwargs)
        except typer.TyperException as e:
            _one_line(e)
            raise

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as e:  # raised while a subcommand parses its arguments
            _one_line(e)
            raise


app = typer.Typer(
    name="rescore",
    cls=_Group,
    help="Generate once on a GPU, score forever on a CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},  # wide terminals get whole command summaries
)

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = [
    "rescore.commands.demo",
    "rescore.commands.gen",
    "rescore.commands.store",
    "rescore.commands.matrix",
    "rescore.commands.verify",
    "rescore.commands.tasks",
    "rescore.commands.score",
    "rescore.commands.report",
    "rescore.commands.importing",
]

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # type: ignore[no-untyped-def]
    return f"warning: {message}\n"


def _sigterm(signum, frame) -> None:  # type: ignore[no-untyped-def]
    from rescore.commands.common import TERMINATED

    TERMINATED.append(signum)  # the exit code is then 143, not Ctrl-C's 130
    raise KeyboardInterrupt


def _plain_metavars(cmd) -> None:  # type: ignore[no-untyped-def]
    """``--metric METRIC`` in --help, not the Python type (``<list[str]>``, ``<int range>``)."""
    for p in cmd.params:
        if p.param_type_name == "option" and not p.is_flag and not p.count and p.metavar is None and p.name:
            p.metavar = p.name.upper()
        elif p.param_type_name == "argument" and p.metavar is None and p.name:
            p.metavar = p.name.upper()
    for sub in getattr(cmd, "commands", {}).values():
        if sub.short_help is None and sub.help:  # the whole first sentence (wrapped), never cut with "..."
            first = " ".join(sub.help.strip().split("\n\n")[0].split())
            sub.short_help = first.split(". ")[0].rstrip(".") + "."
        _plain_metavars(sub)


def main() -> None:
    import signal
    import warnings

    warnings.formatwarning = _one_line_warning  # users see "warning: ...", not a source location
    signal.signal(signal.SIGTERM, _sigterm)  # Slurm's time limit: stop like Ctrl-C, releasing unit locks
    from rescore.children import die_with_parent_from_env

    die_with_parent_from_env()  # a local backfill worker ends (SIGTERM) when the command that started it does
    cmd = typer.main.get_command(app)
    _plain_metavars(cmd)
    cmd(prog_name="rescore")


if __name__ == "__main__":
    main()
