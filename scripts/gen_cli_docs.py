"""Write docs/cli.md, the CLI reference, from the `rescore` command tree.

    python scripts/gen_cli_docs.py            # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check    # exit 1 when docs/cli.md is not what the commands say

It walks the click command tree that typer builds (as ``rescore --help`` does) and prints, for every
command and subcommand, its usage, its whole help text and each argument and option with its help,
default and environment variable. Nothing depends on the terminal width or the machine.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "cli.md"

HEADER = """\
# CLI reference

Every `rescore` command, its arguments and options. Generated from the command tree by
`python scripts/gen_cli_docs.py`; do not edit by hand (a test fails when this file is not current).
`rescore COMMAND --help` prints the same. What the commands are for: [the journeys](journeys/README.md).
"""


def command_tree() -> click.Command:
    import typer

    from rescore.cli import _plain_metavars, app

    cmd = typer.main.get_command(app)
    _plain_metavars(cmd)  # the metavars `rescore --help` shows
    return cmd


def walk(cmd: click.Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        if not sub.hidden:
            yield from walk(sub, (*path, name))


def text(s: str) -> str:
    """Help text as Markdown: angle brackets would be read as HTML."""
    return s.replace("<", "&lt;").replace(">", "&gt;")


def anchor(path: tuple[str, ...]) -> str:
    return "-".join(path)


def section(path: tuple[str, ...], cmd: click.Command, parent: click.Context | None) -> str:
    ctx = click.Context(cmd, info_name=path[-1], parent=parent)
    usage = " ".join((" ".join(path), *cmd.collect_usage_pieces(ctx)))
    out = [f'<a id="{anchor(path)}"></a>', f"## `{' '.join(path)}`", "", "```", usage, "```", ""]
    if cmd.help:
        out += [text(inspect.cleandoc(cmd.help)), ""]
    rows = []
    for p in cmd.get_params(ctx):
        if getattr(p, "hidden", False) or p.name == "help":
            continue
        record = p.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        rows.append(f"- `{names}`" + (f": {text(help_text)}" if help_text else ""))
    if rows:
        out += [*rows, ""]
    subs = [(n, s) for n, s in getattr(cmd, "commands", {}).items() if not s.hidden]
    if subs:
        out += ["Commands: " + ", ".join(f"[`{n}`](#{anchor((*path, n))})" for n, _ in subs), ""]
    return "\n".join(out)


def render() -> str:
    root = command_tree()
    parts = [HEADER]
    contexts: dict[tuple[str, ...], click.Context] = {}
    toc, sections = [], []
    for path, cmd in walk(root, ("rescore",)):
        parent = contexts.get(path[:-1])
        contexts[path] = click.Context(cmd, info_name=path[-1], parent=parent)
        if len(path) > 1:
            short = cmd.get_short_help_str(limit=10_000)
            toc.append(f"{'  ' * (len(path) - 2)}- [`{' '.join(path)}`](#{anchor(path)}): {text(short)}")
        sections.append(section(path, cmd, parent))
    parts += ["\n".join(toc) + "\n", *sections]
    return "\n".join(parts).rstrip("\n") + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with docs/cli.md instead of writing it")
    args = ap.parse_args()
    new = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != new:
            print(f"{OUT} is not current: run python scripts/gen_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(new, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
