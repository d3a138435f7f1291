"""``rescore verify``: store integrity (default), ``--against OLD`` rescoring reproduction, and
``verify determinism`` (regenerate rows and compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rescore.commands.common import DEFAULT_STORE, JsonOpt, StoreOpt, handle_errors

verify_app = typer.Typer(help="Check the store: integrity, reproducible scores, deterministic generation.",
                         invoke_without_command=True, no_args_is_help=False)


@verify_app.callback()
@handle_errors
def verify(
    ctx: typer.Context,
    store: StoreOpt = DEFAULT_STORE,
    against: Annotated[Path | None, typer.Option(help="An earlier results file (results.parquet or `results --format json`): "
                                                      "rescoring the store must reproduce it.")] = None,
    tolerance: Annotated[float, typer.Option(help="With --against: allowed difference, relative to max(1, |old|).")] = 1e-9,
    json_out: JsonOpt = False,
) -> None:
    """Without a subcommand: check every unit's checksum and schema and list corrupt or orphaned files.
    With --against: rescore everything (in a scratch copy) and diff against an earlier results file."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from rich.console import Console
    from rich.table import Table

    from rescore.artifacts.store import Store
    from rescore.verify import check_store, compare_results, load_results_file, rescore_into_temp

    st = Store(store)
    console = Console()
    if against is not None:
        old = load_results_file(against)
        diffs = compare_results(old, rescore_into_temp(st), tolerance)
        bad = [d for d in diffs if d.status in ("diff", "missing")]
        if json_out:
            print(json.dumps([{"key": d.key, "old": d.old, "new": d.new, "status": d.status} for d in diffs], indent=2))
        else:
            t = Table(title=f"rescoring {store} against {against}")
            for c in ("model", "step", "task", "subset", "metric", "seed", "old", "new", "abs diff", "status"):
                t.add_column(c)
            for d in diffs:
                if d.status in ("ok", "new") and len(diffs) > 200:
                    continue
                style = {"ok": "green", "diff": "red", "missing": "red", "new": "yellow"}[d.status]
                t.add_row(*(str(x) for x in d.key), *(f"{v:.6g}" if isinstance(v, float) else str(v) for v in (d.old, d.new)),
                          f"{d.abs_diff:.3g}" if d.abs_diff is not None else "-", f"[{style}]{d.status}[/{style}]")
            console.print(t)
            n = {s: sum(1 for d in diffs if d.status == s) for s in ("ok", "diff", "missing", "new")}
            console.print(f"{n['ok']} reproduced, {n['diff']} differ beyond {tolerance:g}, {n['missing']} missing, "
                          f"{n['new']} new", highlight=False)
        if bad:
            raise typer.Exit(1)
        return
    findings, n_units = check_store(st)
    errors = [f for f in findings if f.is_error]
    if json_out:
        print(json.dumps({"units": n_units, "findings": [f.__dict__ for f in findings]}, indent=2))
    else:
        if findings:
            t = Table(title=f"findings in {store}")
            for c in ("kind", "path", "detail"):
                t.add_column(c)
            for f in findings:
                t.add_row(f.kind, f.path, f.detail)
            console.print(t)
        console.print(f"{n_units} unit(s) checked: {len(errors)} problem(s), {len(findings) - len(errors)} note(s)",
                      highlight=False)
    if errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(verify_app, name="verify")
