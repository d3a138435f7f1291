"""The ``rescore`` command line. Thin commands that call library functions.

Each command group lives in its own module under ``rescore.commands`` and exposes ``register(app)``.
Importing this module must stay light: no torch, transformers or vllm (a test checks).
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="rescore",
    help="Generate once on a GPU, score forever on a CPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
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
    raise KeyboardInterrupt


def main() -> None:
    import signal
    import warnings

    warnings.formatwarning = _one_line_warning  # users see "warning: ...", not a source location
    signal.signal(signal.SIGTERM, _sigterm)  # Slurm's time limit: stop like Ctrl-C, releasing unit locks
    app()


if __name__ == "__main__":
    main()
