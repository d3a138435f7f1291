"""``rescore plan`` and ``rescore backfill``: a checkpoint matrix against the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from rescore.commands.common import DEFAULT_STORE, INT64_MAX, JsonOpt, StoreOpt, handle_errors, out_console

MatrixArg = Annotated[Path | None, typer.Argument(help="Checkpoint matrix YAML (examples: rescore/configs/models/*.yaml).")]
DataRootOpt = Annotated[Path | None, typer.Option(help="Directory that local task files are relative to.")]


def _units(store: Path, matrix: Path | None, from_results: str | None, mapping: Path | None,
           data_root: Path | None, direct: bool, check_paths: bool = True) -> tuple[list[Any], Any]:
    from rescore.artifacts.store import Store
    from rescore.errors import ConfigError

    st = Store(store)
    if from_results:
        if matrix is not None:
            raise ConfigError("give either a MATRIX or --from-results, not both", hint="drop one of them")
        if mapping is None:
            raise ConfigError("--from-results needs --map MAPPING.yaml", hint="see the README section on backfill")
        from rescore.plan.from_results import plan_from_results

        return plan_from_results(st, from_results, mapping, data_root=data_root, allow_direct=direct), None
    if matrix is None:
        raise ConfigError("missing MATRIX", hint="rescore plan MATRIX.yaml (e.g. rescore/configs/models/demo_fake.yaml), or --from-results GLOB --map FILE")
    from rescore.plan.backfill import plan_matrix
    from rescore.plan.matrix import load_matrix

    m = load_matrix(matrix)
    return plan_matrix(st, m, source=str(matrix), data_root=data_root, allow_direct=direct, check_paths=check_paths), m


def _row(u: Any) -> dict[str, Any]:
    p = u.plan
    return {"run_id": p.run_id, "checkpoint": p.model.name, "stage": p.model.stage, "step": p.model.step,
            "suite": p.suite.name, "task": p.task.name, "seed": p.seed, "state": u.state, "rows_done": u.rows_done,
            "rows_total": u.rows_total, "bridge_for": u.bridge_for}


def print_plan(units: list[Any], groups_todo: list[list[Any]], json_out: bool, costs: dict[str, Any] | None = None) -> None:
    costs = costs or {}
    rows = [_row(u) for u in units]
    for r in rows:
        if (c := costs.get(r["run_id"])) is not None:  # stored distributions (a task's dist)
            r.update(dist_positions=c.positions, dist_bytes=c.bytes, dist_problem=c.problem, dist_note=c.note)
    would = [u.plan.run_id for g in groups_todo for u in g]
    if json_out:
        print(json.dumps({"units": rows, "would_run": would, "jobs": len(groups_todo)}, indent=2))
        return
    from rich.table import Table

    from rescore.gen.dist import human_bytes

    t = Table()
    for c in ("checkpoint", "suite", "task", "seed", "state", "rows", *(("dist",) if costs else ()), "note"):
        t.add_column(c)
    style = {"complete": "green", "partial": "yellow", "missing": "red", "corrupt": "red"}
    for r in rows:
        st = style[r["state"]]
        rows_txt = f"{r['rows_done']}/{r['rows_total']}" if r["rows_total"] is not None else "-"
        note = f"bridge for {r['bridge_for']}" if r["bridge_for"] else ""
        dist: tuple[str, ...] = ()
        if costs:
            size = r.get("dist_bytes")
            dist = ((human_bytes(size) if size is not None else "?" if "dist_bytes" in r else "")
                    + (" [red]refused[/red]" if r.get("dist_problem") else ""),)
        t.add_row(r["checkpoint"], r["suite"], r["task"], str(r["seed"]), f"[{st}]{r['state']}[/{st}]", rows_txt,
                  *dist, note)
    c = out_console()
    c.print(t)
    if costs:
        print_dist_total(c, list(costs.values()))
    n = {k: sum(1 for r in rows if r["state"] == k) for k in ("complete", "partial", "missing", "corrupt")}
    c.print(f"{len(rows)} units: {n['complete']} complete, {n['partial']} partial, {n['missing']} missing"
            + (f", {n['corrupt']} corrupt (`rescore verify` lists them; backfill leaves them as they are)"
               if n["corrupt"] else "")
            + f"; backfill would run {len(would)} unit(s) in {len(groups_todo)} job(s)", highlight=False)


def print_dist_total(c: Any, costs: list[Any]) -> None:
    """The stored distributions of the units to run: total size, and each unit gen would refuse, as gen says it."""
    from rescore.gen.dist import human_bytes

    known = [x.bytes for x in costs if x.bytes is not None]
    c.print(f"stored distributions: about {human_bytes(sum(known))} in {len(known)} unit(s) to run"
            + (f", {len(costs) - len(known)} more of unknown size" if len(known) < len(costs) else ""), highlight=False)
    for note in sorted({x.note for x in costs if x.note}):
        c.print(f"  size unknown: {note}", highlight=False, markup=False)
    for problem in sorted({x.problem for x in costs if x.problem}):
        c.print(f"  gen would refuse: {problem}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def plan(
        matrix: MatrixArg = None,
        store: StoreOpt = DEFAULT_STORE,
        from_results: Annotated[str | None, typer.Option(help="Glob of existing results JSON files to reconstruct runs from.")] = None,
        mapping: Annotated[Path | None, typer.Option("--map", help="With --from-results: mapping YAML.")] = None,
        data_root: DataRootOpt = None,
        direct: Annotated[bool, typer.Option("--direct", help="Load task data from its source when it is not prepared.")] = False,
        units_per_job: Annotated[int | None, typer.Option(min=0, max=INT64_MAX, help="Units per job (default: one job per checkpoint).")] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Show every unit of MATRIX (checkpoint x task x seed) as complete / partial / missing, and what
        `backfill` would run; for tasks that store distributions (dist), their expected size and the units
        `gen` would refuse."""
        from rescore.plan.backfill import group_units, todo

        units, m = _units(store, matrix, from_results, mapping, data_root, direct)
        upj = units_per_job if units_per_job is not None else (m.slurm.units_per_job if m else 0)
        costs = None
        if any(u.plan.task.dist is not None and u.state != "complete" for u in units):
            from rescore.plan.dist_cost import dist_costs

            costs = dist_costs(units)
        print_plan(units, todo(group_units(units, upj)), json_out, costs)

    @app.command()
    @handle_errors
    def backfill(
        matrix: MatrixArg = None,
        store: StoreOpt = DEFAULT_STORE,
        executor: Annotated[str, typer.Option(help="local | slurm")] = "local",
        max_parallel: Annotated[int | None, typer.Option(min=1, max=INT64_MAX, help="local: worker processes; slurm: array tasks at once.")] = None,
        shard: Annotated[str | None, typer.Option(help="Run only groups i::N of the plan, e.g. 0/4.")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would run and stop.")] = False,
        emit_sbatch: Annotated[Path | None, typer.Option(help="Write a plain sbatch array script to FILE and stop.")] = None,
        partition: Annotated[str | None, typer.Option(help="Slurm partition.")] = None,
        gres: Annotated[str | None, typer.Option(help="Slurm gres, e.g. gpu:1.")] = None,
        cpus: Annotated[int | None, typer.Option(min=1, max=INT64_MAX, help="Slurm cpus per task.")] = None,
        time: Annotated[str | None, typer.Option(help="Slurm time limit HH:MM:SS.")] = None,
        account: Annotated[str | None, typer.Option(help="Slurm account.")] = None,
        sbatch_opt: Annotated[list[str] | None, typer.Option(help="Extra sbatch option, e.g. --constraint=a100. Repeatable.")] = None,
        units_per_job: Annotated[int | None, typer.Option(min=0, max=INT64_MAX, help="Units per job (default: one job per checkpoint).")] = None,
        from_results: Annotated[str | None, typer.Option(help="Glob of existing results JSON files to reconstruct runs from.")] = None,
        mapping: Annotated[Path | None, typer.Option("--map", help="With --from-results: mapping YAML.")] = None,
        data_root: DataRootOpt = None,
        direct: Annotated[bool, typer.Option("--direct", help="Load task data from its source when it is not prepared.")] = False,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress bar.")] = None,  # type: ignore[assignment]
    ) -> None:
        """Run only the missing and partial units of MATRIX, locally or as a Slurm job array."""
        from pydantic import ValidationError

        from rescore.artifacts.store import Store
        from rescore.config import ConfigProblems, format_validation_error
        from rescore.errors import ConfigError
        from rescore.plan.backfill import group_units, parse_shard, shard_groups, todo
        from rescore.plan.executors import run_local, run_workers, sbatch_script, set_offline_env, submit_slurm
        from rescore.plan.matrix import SlurmConfig

        if executor not in ("local", "slurm"):
            raise ConfigError(f"unknown executor {executor!r}", hint="use --executor local or --executor slurm")
        Store(store).check_writable()
        units, m = _units(store, matrix, from_results, mapping, data_root, direct)
        cfg = m.slurm if m is not None else SlurmConfig()
        upd: dict[str, Any] = {k: v for k, v in {"partition": partition, "gres": gres, "cpus_per_task": cpus, "time": time,
                                  "account": account, "max_parallel": max_parallel,
                                  "units_per_job": units_per_job}.items() if v is not None}
        if sbatch_opt:
            upd["extra"] = tuple(cfg.extra) + tuple(sbatch_opt)
        try:  # the flags are checked like the matrix's own slurm: section
            cfg = SlurmConfig.model_validate({**cfg.model_dump(), **upd})
        except ValidationError as e:
            raise ConfigProblems("backfill options", format_validation_error(e, "slurm")) from None
        all_groups = group_units(units, cfg.units_per_job)
        mine = shard_groups(all_groups, parse_shard(shard))
        pending = todo(mine)
        if emit_sbatch is not None:
            if matrix is None:
                raise ConfigError("--emit-sbatch needs a MATRIX file", hint="pass the matrix YAML")
            from rescore.artifacts.io import atomic_write_text

            atomic_write_text(emit_sbatch, sbatch_script(Path(store), matrix, len(all_groups), cfg, data_root, direct))
            emit_sbatch.chmod(0o755)
            (Path(store) / "logs" / "slurm").mkdir(parents=True, exist_ok=True)  # sbatch opens logs there first
            print(f"wrote {emit_sbatch}: {len(all_groups)} array task(s), {sum(len(g) for g in pending)} unit(s) to run; "
                  f"submit with `sbatch {emit_sbatch}`")
            return
        if dry_run or not pending:
            print_plan([u for g in mine for u in g], pending, json_out=False)
            if not pending:
                print("nothing to run: every unit is complete")
            return
        set_offline_env()
        if executor == "slurm":
            if matrix is None:  # each array task plans the matrix file again
                raise ConfigError("--executor slurm needs a MATRIX file",
                                  hint="use --executor local with --from-results, or write a matrix YAML")
            jobs = submit_slurm(Store(store), matrix, pending, cfg, data_root, direct)
            ids = ", ".join(j.job_id for j in jobs[:3]) + (" ..." if len(jobs) > 3 else "")
            print(f"submitted {len(jobs)} array task(s) ({ids}); logs in {Path(store) / 'logs' / 'slurm'}")
            return
        if max_parallel and max_parallel > 1 and shard is None and matrix is not None:
            extra = ["--data-root", str(data_root)] if data_root else []
            if direct:
                extra.append("--direct")
            code = run_workers(matrix, Path(store), max_parallel, extra)
            after, _ = _units(store, matrix, None, None, data_root, direct, check_paths=False)
            done = sum(1 for u in after if u.state == "complete")
            print(f"{max_parallel} workers finished: {done}/{len(after)} units of the matrix complete")
            if code:
                raise typer.Exit(code)
            return

        from rescore.commands.progress import RichProgress
        from rescore.gen.progress import summarize

        with RichProgress(enabled=progress) as prog:
            results = run_local(Store(store), pending, progress=prog)
        summarize(results, out_console())
