"""``rescore verify``: store integrity (default), ``--against OLD`` rescoring reproduction, and
``verify determinism`` (regenerate rows and compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rescore.commands.common import DEFAULT_STORE, INT64_MAX, JsonOpt, StoreOpt, handle_errors, out_console

verify_app = typer.Typer(help="Check the store: integrity, reproducible scores, deterministic generation.",
                         invoke_without_command=True, no_args_is_help=False)


@verify_app.callback()
@handle_errors
def verify(
    ctx: typer.Context,
    store: StoreOpt = DEFAULT_STORE,
    against: Annotated[Path | None, typer.Option(help="An earlier results file (results.parquet or `results --format json`): "
                                                      "rescoring the store must reproduce it.")] = None,
    tolerance: Annotated[float, typer.Option(min=0.0, help="With --against: allowed difference, relative to max(1, |old|).")] = 1e-9,
    plugin: Annotated[list[str] | None, typer.Option("--plugin", help="With --against: metric plugin file or module "
                                                     "the results were scored with. Repeatable.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Without a subcommand: check every unit's checksum and schema and list corrupt or orphaned files.
    With --against: rescore everything (in a scratch copy) and diff against an earlier results file."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from rich.table import Table

    from rescore.artifacts.store import Store
    from rescore.verify import check_store, compare_results, load_results_file, rescore_into_temp

    st = Store(store)
    console = out_console()
    if against is not None:
        from rescore.commands.score import _load_plugins

        _load_plugins(plugin)
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
                t.add_column(c, overflow="fold")  # whole paths: they are what the user acts on
            for f in findings:
                t.add_row(f.kind, f.path, f.detail)
            console.print(t)
        console.print(f"{n_units} unit(s) checked: {len(errors)} problem(s), {len(findings) - len(errors)} note(s)",
                      highlight=False)
    if errors:
        from rescore.commands.common import fail

        named = ", ".join(f.path for f in errors[:3]) + (f" and {len(errors) - 3} more" if len(errors) > 3 else "")
        fail(f"{len(errors)} problem(s) in {store}: {named} (the table lists each with what to do; a damaged score "
             "file or results.parquet is rebuilt by the next `rescore score`)", 1)


@verify_app.command("determinism")
@handle_errors
def determinism(
    run_id: Annotated[str | None, typer.Argument(help="Run id of a complete unit (see `rescore ls`).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    rows: Annotated[int, typer.Option("--rows", min=1, max=INT64_MAX, help="Regenerate this many rows (the unit's first, by sample id).")] = 20,
    atol: Annotated[float, typer.Option("--atol", min=0.0, help="Largest per-token logprob difference still counted as equal.")] = 1e-4,
    model_path: Annotated[str | None, typer.Option("--model-path", help="The model directory, if it moved since the run.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N (default: as recorded).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, max=INT64_MAX, help="Batch size (default: as recorded, which gives bit-identical rows; another shows how far values move).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Directory that local task files are relative to.")] = None,
    direct: Annotated[bool, typer.Option("--direct", help="Load task data from its source when it is not prepared.")] = False,
    matrix: Annotated[Path | None, typer.Option(help="Instead of RUN_ID: check a sample of MATRIX's complete units.")] = None,
    sample: Annotated[int, typer.Option(min=1, max=INT64_MAX, help="With --matrix: how many units to check.")] = 3,
    sample_seed: Annotated[int, typer.Option(min=0, max=INT64_MAX, help="With --matrix: seed of the sample.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Regenerate the first ROWS rows of RUN_ID with the model, data and seed of its manifest, in the batches
    it was generated in; report "bit-identical", or the token mismatches and the max abs logprob difference.
    Exits 1 when tokens differ or a logprob differs by more than --atol. With --matrix, does this for a
    seeded sample of the matrix's complete units."""
    import json

    from rescore.errors import ConfigError
    from rescore.gen.verify import verify_determinism

    if (run_id is None) == (matrix is None):
        raise ConfigError("give a RUN_ID or --matrix MATRIX", hint="e.g. rescore verify determinism 3fa2c1 --rows 20")
    if matrix is not None:
        ids = sample_matrix_units(store, matrix, sample, sample_seed, data_root)
        reports = [verify_determinism(store, rid, rows=rows, atol=atol, data_root=data_root, allow_direct=direct,
                                      device=device, batch_size=batch_size) for rid in ids]
        if json_out:
            print(json.dumps([r.to_dict() for r in reports], indent=1))
        else:
            for r in reports:
                print(f"{r.run_id[:12]} {r.request_type:13s} rows {r.rows:4d}  {r.verdict()}")
            print(f"{sum(r.ok for r in reports)}/{len(reports)} sampled unit(s) reproduced")
        if not all(r.ok for r in reports):
            raise typer.Exit(1)
        return
    assert run_id is not None  # checked above: a RUN_ID or --matrix
    rep = verify_determinism(store, run_id, rows=rows, atol=atol, data_root=data_root, allow_direct=direct,
                             model_path=model_path, device=device, batch_size=batch_size)
    if json_out:
        print(json.dumps(rep.to_dict(), indent=1))
    else:
        fp = {True: "same", False: "DIFFERENT", None: "unknown"}[rep.fingerprint_match]
        print(f"unit {rep.run_id} ({rep.request_type}): regenerated {rep.rows} rows, {rep.sequences} sequences")
        print(f"  model fingerprint: {fp}")
        print(f"  token mismatches: {rep.token_mismatches}"
              + (f" (samples: {', '.join(rep.mismatched_samples[:10])})" if rep.mismatched_samples else ""))
        print(f"  max abs logprob diff: {rep.max_abs_logprob_diff:.3g}"
              + (f" (sample {rep.worst_sample})" if rep.worst_sample else "") + f"; tolerance {rep.atol:g}")
        print("  result: " + rep.verdict())
    if not rep.ok:
        raise typer.Exit(1)


def sample_matrix_units(store: Path, matrix: Path, k: int, seed: int, data_root: Path | None) -> list[str]:
    """Run ids of a seeded sample of the matrix's complete, generated (not imported) units."""
    import random

    from rescore.artifacts.store import Store
    from rescore.errors import UserError
    from rescore.plan.backfill import plan_matrix
    from rescore.plan.matrix import load_matrix

    st = Store(store)
    units = plan_matrix(st, load_matrix(matrix), source=str(matrix), data_root=data_root, check_paths=False)
    done = [u.plan.run_id for u in units if u.state == "complete" and "import" not in st.unit(u.plan.run_id).manifest]
    if not done:
        raise UserError(f"no complete units of {matrix} in {store}", hint="run `rescore backfill` first")
    return sorted(random.Random(seed).sample(done, min(k, len(done))))


def register(app: typer.Typer) -> None:
    app.add_typer(verify_app, name="verify")
