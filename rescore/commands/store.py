"""Store inspection commands: ``status``, ``ls``, ``show``, ``validate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from rescore.commands.common import DEFAULT_STORE, INT64_MAX, JsonOpt, StoreOpt, handle_errors, out_console


def unit_rows(store_path: Path) -> list[dict[str, Any]]:
    from rescore.artifacts.manifest import Manifest, ModelInfo
    from rescore.artifacts.store import Store
    from rescore.errors import CorruptArtifactError

    store = Store(store_path)
    out = []
    for u in store.units():
        m = u.manifest
        status, error = ("complete" if u.complete else "partial"), None
        try:
            model = Manifest.load(m, str(u.path / "manifest.json")).model
        except CorruptArtifactError as e:  # listed as corrupt, with what is readable of it
            model, status, error = ModelInfo(name="?"), "corrupt", e.message
        if u.complete and error is None:
            try:  # cheap (size and footer): a complete unit whose rows are missing or misplaced is not complete
                u.check_rows_file()
            except CorruptArtifactError as e:
                status, error = "corrupt", e.message
        out.append({
            "run_id": u.run_id, "model": model.name, "step": model.step,
            "task": m.get("task", {}).get("name"), "suite": m.get("suite"), "seed": m.get("seed"),
            "request_type": m.get("request_type"), "status": status,
            "rows_done": u.rows_done(), "rows_total": u.rows_total(),
            "precision": model.precision, "path": model.path,
            "created_at": m.get("created_at"), **({"error": error} if error else {}),
        })
    from rescore.artifacts.store import acknowledge_damaged

    acknowledge_damaged(path for path, _ in store.corrupt)  # listed as corrupt: status and ls show them
    for path, message in store.corrupt:
        out.append({"run_id": path.name, "model": "?", "step": None, "task": "?", "suite": None, "seed": "?",
                    "request_type": None, "status": "corrupt", "rows_done": 0, "rows_total": None,
                    "precision": None, "path": None, "created_at": None, "error": message})
    return out


def table_console():  # type: ignore[no-untyped-def]
    """A console for tables: the terminal's width, or wide enough not to cut run ids when piped."""


    return out_console()


JSON_COLUMNS = ("meta", "messages", "sampling")  # the row columns stored as canonical JSON text (schema.py)


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row with its JSON-text columns decoded (model text is never touched)."""
    return {k: json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v for k, v in row.items()}


def model_labels(rows: list[dict[str, Any]]) -> list[str]:
    """A row label per unit that tells checkpoints apart (:func:`rescore.labels.checkpoint_labels`)."""
    from rescore.labels import CheckpointIdent, checkpoint_labels

    return checkpoint_labels([CheckpointIdent(str(r["model"]), r.get("step"), r.get("precision"), r.get("path"))
                              for r in rows])


def status_matrix(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """model label -> task -> seed -> cell text (several units in one cell are joined with ' + ')."""
    matrix: dict[str, dict[str, dict[str, str]]] = {}
    for label, r in zip(model_labels(rows), rows, strict=True):
        if r["status"] in ("complete", "missing", "corrupt"):
            cell = r["status"]
        else:
            cell = f"partial {r['rows_done']}/{r['rows_total'] if r['rows_total'] is not None else '?'}"
        cells = matrix.setdefault(label, {}).setdefault(r["task"], {})
        seed = str(r["seed"])
        cells[seed] = f"{cells[seed]} + {cell}" if seed in cells else cell
    return matrix


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def status(
        store: StoreOpt = DEFAULT_STORE,
        suite: Annotated[str | None, typer.Option(help="Also list the units of this suite that are missing.")] = None,
        model: Annotated[str | None, typer.Option("--model", "-m", help="With --suite: the model(s) to plan for.")] = None,
        backend: Annotated[str | None, typer.Option(help="With --suite: backend of --model.")] = None,
        data_root: Annotated[Path | None, typer.Option(help="Directory that local task files are relative to.")] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """The model x task x seed matrix: complete / partial (rows done/total) / missing."""
        from rich.table import Table

        rows = unit_rows(store)
        if suite:
            from rescore.artifacts.store import Store
            from rescore.commands.models import resolve_models
            from rescore.errors import ConfigError
            from rescore.gen.runner import model_identity, plan_units, unit_state
            from rescore.tasks.suites import load_suite

            if not model:
                raise ConfigError("--suite needs --model to know which units should exist", hint="add --model PATH")
            plans = plan_units(Store(store), load_suite(suite), resolve_models(model, backend=backend, overrides={}),
                               data_root=data_root, allow_direct=True)
            known = {r["run_id"] for r in rows}
            for p in plans:
                if p.run_id not in known:
                    state, done, total = unit_state(Store(store), p.run_id)
                    ident = model_identity(p.model)
                    rows.append({"run_id": p.run_id, "model": p.model.name, "step": p.model.step, "task": p.task.name,
                                 "seed": p.seed, "status": state, "rows_done": done, "rows_total": total,
                                 "precision": ident["precision"], "path": ident["path"]})
        matrix = status_matrix(rows)
        if json_out:
            print(json.dumps({"units": rows, "matrix": matrix}, indent=2, default=str))
            return
        console = table_console()
        if not rows:
            console.print(f"no units in {store} (run `rescore gen SUITE --model PATH` first)", highlight=False)
            return
        seeds = sorted({str(r["seed"]) for r in rows}, key=lambda s: (len(s), s))
        t = Table(title=f"units in {store}")
        t.add_column("model")
        t.add_column("task")
        for s in seeds:
            t.add_column(f"seed {s}")
        style = {"complete": "green", "missing": "red", "-": "dim"}
        unseeded = False
        for m, tasks in sorted(matrix.items()):
            for task, cells in sorted(tasks.items()):
                vals = []
                for s in seeds:
                    c = cells.get(s, "-")
                    unseeded |= c == "-"
                    st = style.get(c, "yellow" if c.startswith("partial") else ("red" if "corrupt" in c else ""))
                    vals.append(f"[{st}]{c}[/{st}]" if st else c)
                t.add_row(m, task, *vals)
        console.print(t)
        if unseeded:
            console.print("-: no unit at that seed (a deterministic task runs at one seed; sampled tasks run at each)",
                          highlight=False)
        n = {k: sum(1 for r in rows if r["status"] == k) for k in ("complete", "partial", "missing", "corrupt")}
        console.print(f"{len(rows)} units: {n['complete']} complete, {n['partial']} partial, {n['missing']} missing"
                      + (f", {n['corrupt']} corrupt (see `rescore verify`)" if n["corrupt"] else ""), highlight=False)

    @app.command("ls")
    @handle_errors
    def ls_cmd(store: StoreOpt = DEFAULT_STORE, json_out: JsonOpt = False) -> None:
        """List the generation units in the store."""
        from rich.table import Table

        rows = unit_rows(store)
        if json_out:
            print(json.dumps(rows, indent=2, default=str))
            return
        t = Table()
        for c in ("run id", "model", "step", "task", "seed", "type", "status", "rows", "precision", "created"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["run_id"], str(r["model"]), str(r["step"] if r["step"] is not None else "-"), str(r["task"]),
                      str(r["seed"]), str(r["request_type"]), r["status"], f"{r['rows_done']}/{r['rows_total']}",
                      str(r["precision"]), str(r["created_at"]))
        table_console().print(t)

    @app.command()
    @handle_errors
    def show(
        run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix), see `rescore ls`.")],
        store: StoreOpt = DEFAULT_STORE,
        rows: Annotated[int, typer.Option(min=0, max=INT64_MAX, help="Also print the first N rows.")] = 0,
    ) -> None:
        """Print a unit's manifest (and with --rows N its first rows) as one JSON document.

        With --rows: {"manifest": ..., "rows": [...]}, the rows' JSON columns (meta, messages, sampling) as JSON."""
        from rescore.artifacts.store import Store

        u = Store(store).unit(run_id)
        if not rows:
            print(json.dumps(u.manifest, indent=2, sort_keys=True, default=str))
            return
        doc: dict[str, Any] = {"manifest": u.manifest, "rows": []}
        if u.complete:
            doc["rows"] = [_decoded(r) for r in u.read_table().slice(0, rows).to_pylist()]
        else:
            doc["note"] = f"the unit is {u.status}: its rows so far are in {u.path / 'rows.jsonl'}"
        print(json.dumps(doc, indent=2, sort_keys=True, default=str, ensure_ascii=False))

    @app.command()
    @handle_errors
    def validate(
        configs: Annotated[list[Path] | None, typer.Argument(help="Config files (suite or models YAML). Default: every shipped config.")] = None,
    ) -> None:
        """Validate config files and report every problem at once (exit 2 when any is invalid)."""
        from rescore.commands.validate import validate_paths

        problems, checked = validate_paths(configs or [])
        for p in problems:
            print(p)
        if problems:
            raise typer.Exit(2)
        print(f"{checked} config file(s) valid")
