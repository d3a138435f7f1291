"""Scoring commands: ``score``, ``metrics``, ``results``, ``export tiers``, ``export lm-eval``.

All of them run on a CPU and never import torch (a test checks).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rescore.commands.common import DEFAULT_STORE, INT64_MAX, JsonOpt, StoreOpt, comma_list, handle_errors, out_console

PluginOpt = Annotated[
    list[str] | None,
    typer.Option("--plugin", help="Python file or module that registers metrics with @rescore.score.metric. Repeatable."),
]


def _load_plugins(plugins: list[str] | None) -> list[Any]:
    from rescore.score.registry import load_builtin, load_entry_points, load_plugin

    load_builtin()
    load_entry_points()
    added = []
    for p in plugins or []:
        added.extend(load_plugin(p))
    return added


PLUGINS_FILE = "plugins.json"  # STORE/plugins.json: the metric plugins a plain `rescore score` loads


def plugin_ref(ref: str) -> str:
    """A plugin as the store records it: a file by its absolute path, a module by its name."""
    p = Path(ref)
    return str(p.resolve()) if p.suffix == ".py" or p.exists() else ref


def store_plugins(store: Path) -> list[str]:
    """The plugins recorded in ``store`` (``rescore score --plugin`` records them); checked before use."""
    from rescore.errors import StoreError

    path = store / PLUGINS_FILE
    if not path.is_file():
        return []
    try:
        refs = json.loads(path.read_text(encoding="utf-8"))["plugins"]
        if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
            raise ValueError("'plugins' is not a list of names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreError(f"corrupt file {path}: {e}",
                         hint='it holds {"plugins": ["/path/to/metrics.py", "package.module", ...]}: fix it or remove '
                              "it (then pass --plugin to `rescore score` again)") from None
    return refs


def load_store_plugins(store: Path, given: list[str]) -> list[Any]:
    """Load the store's recorded plugins that ``given`` does not name; a missing one is a one-line error."""
    from rescore.errors import ConfigError

    added = []
    for ref in store_plugins(store):
        if ref in given:
            continue
        try:
            added += _load_plugins([ref])
        except ConfigError as e:
            raise ConfigError(f"{e.message} (a plugin recorded in {store / PLUGINS_FILE}, which a plain `rescore score` "
                              "loads)", hint=f"restore it, or remove it from {store / PLUGINS_FILE}") from None
    return added


def remember_plugins(store: Path, given: list[str]) -> None:
    """Record ``given`` in the store, so later plain ``rescore score`` runs (new checkpoints) compute them too."""
    from rescore.artifacts.io import atomic_write_json

    known = store_plugins(store)
    refs = known + [r for r in given if r not in known]
    if refs != known:
        atomic_write_json(store / PLUGINS_FILE, {"plugins": refs}, root=store)


def reranker_coverage(st: Any, report: Any) -> tuple[int, int, int] | None:
    """(samples the reranker file left unscored, samples it could score, units) over the units where this
    run computed bon_reranker; None when it covered them all. A sample it could score is one that bon_first
    scores (it has a reference and a candidate)."""
    from rescore.score.engine import ALL, choose_files, scan_scores

    def n(meta: dict[str, Any] | None) -> int:
        return int((((meta or {}).get("aggregates") or {}).get(ALL) or {}).get("n") or 0)

    missing = total = units = 0
    for run_id in sorted({r for r, m, _ in report.computed if m == "bon_reranker"}):
        chosen = choose_files(scan_scores(st, run_id), st.unit(run_id).manifest.get("rows_parquet_sha256"), {})
        if "bon_reranker" not in chosen or "bon_first" not in chosen:
            continue
        could, did = n(chosen["bon_first"]), n(chosen["bon_reranker"])
        total += could
        if could > did:
            missing += could - did
            units += 1
    return (missing, total, units) if missing else None


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def score(
        store: StoreOpt = DEFAULT_STORE,
        metric: Annotated[list[str] | None, typer.Option("--metric", "-M", help="Only this metric: NAME, NAME:key=value,... (YAML values, e.g. k=[1,2]) or NAME:{key: value}. Repeatable.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Recompute even scores that are up to date.")] = False,
        plugin: PluginOpt = None,
        reranker: Annotated[Path | None, typer.Option("--reranker", help="CSV/JSONL of sample_id, candidate, score for bon_reranker.")] = None,
        jobs: Annotated[int | None, typer.Option("--jobs", "-j", min=1, max=INT64_MAX, help="Units scored in parallel (processes). Default: one per CPU (up to 8) when there are 200,000+ rows to score, else 1.")] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress bar (default: when a terminal).")] = None,  # type: ignore[assignment]
        json_out: JsonOpt = False,
    ) -> None:
        """Compute the missing (metric, version) scores of every complete unit, then rebuild results.parquet.

        With --plugin (and no --metric) only the plugin's metrics are computed across the store. The store
        records the plugins it was scored with (STORE/plugins.json): a plain `rescore score` loads them again, so
        checkpoints added later get their metrics too.
        """
        from rescore.artifacts.store import Store
        from rescore.errors import StoreError
        from rescore.score.engine import score_store, select_metrics
        from rescore.score.spec import metrics as registry

        given = [plugin_ref(p) for p in plugin or []]
        load_store_plugins(store, given)  # plugins a plain `rescore score` keeps computing (new checkpoints too)
        added = _load_plugins(given)
        params: dict[str, dict[str, Any]] = {}
        if reranker is not None:
            from rescore.score.rerank import check_file

            check_file(reranker)
            params["bon_reranker"] = {"file": str(reranker)}
        only = None
        if plugin and not metric:
            only = list(added) + ([registry.get("bon_reranker")] if reranker is not None else [])
        from rescore.errors import ConfigError

        if (store / "gen").is_dir():  # the lm_eval task family's metrics (lm-eval's own, per task config)
            from rescore.artifacts.store import Store as _Store
            from rescore.tasks.lm_eval.scoring import register_store_metrics

            lm_notes: list[str] = []
            try:
                register_store_metrics(_Store(store), lm_notes)
            except ConfigError as e:  # lm-eval missing here: the other metrics are still computed
                print(f"note: lm-eval metrics not computed: {e.render()}", file=sys.stderr)
            for line in lm_notes:  # imported units whose lm-eval task is not known here
                print(f"note: {line}", file=sys.stderr)
        specs = select_metrics(metric, params=params, only=only)  # bad names fail before the store is read
        st = Store(store)
        if not st.gen_dir.is_dir():
            raise StoreError(f"no generation units in {store}", hint="run `rescore gen` first, or pass --store")
        from rescore.errors import UserError
        from rescore.score.coverage import check_plugin_columns, check_plugin_units, discard_empty_plugin_scores

        check_plugin_columns(st, specs)  # a misspelt column fails before anything is written
        plugin_notes = check_plugin_units(st, specs)
        console = _console()
        with _Progress(console, progress) as prog:
            report = score_store(st, specs, force=force, jobs=jobs, progress=prog.update)
        from rescore.artifacts.store import acknowledge_damaged

        acknowledge_damaged(st.gen_dir / r for r, _ in report.corrupt_units)  # named below, with the exit code
        plugin_error: UserError | None = None
        try:  # a plugin metric with no value on any row: its files are removed, the error comes after the summary
            discard_empty_plugin_scores(st, specs)
        except UserError as e:
            plugin_error = e
        if given and plugin_error is None:
            remember_plugins(store, given)
        if json_out:
            print(json.dumps({
                "computed": [{"run_id": r, "metric": m, "version": v} for r, m, v in report.computed],
                "up_to_date": report.up_to_date, "partial_units": report.partial_units,
                "units_complete": report.units_complete, "unavailable": report.unavailable,
                "skipped": report.skipped, "results_rows": report.results_rows, "seconds": round(report.seconds, 3),
                "jobs": report.jobs,
                "corrupt_units": [{"run_id": r, "error": m} for r, m in report.corrupt_units],
                "damaged_score_files": [{"path": p, "why": w} for p, w in report.damaged],
                "notes": plugin_notes,
            }, indent=2))
            if plugin_error is not None:
                raise plugin_error
            if report.corrupt_units:
                raise typer.Exit(1)
            return
        n_metrics = len({m for _, m, _ in report.computed})
        def n(k: int, word: str) -> str:
            return f"{k} {word}" if k == 1 else f"{k} {word}s"

        console.print(f"scored {report.units_scored} of {n(report.units_complete, 'complete unit')}: computed "
                      f"{n(len(report.computed), 'score')} ({n(n_metrics, 'metric')}), {report.up_to_date} already up to date "
                      f"({report.seconds:.1f}s" + (f", {report.jobs} processes" if report.jobs > 1 else "") + ")",
                      highlight=False)
        if report.partial_units:
            console.print(f"skipped {len(report.partial_units)} partial unit(s) (still generating or interrupted): "
                          + ", ".join(r[:12] for r in report.partial_units)
                          + "; finish them with `rescore gen` (it resumes)", highlight=False)
        for name, why in sorted(report.unavailable.items()):
            console.print(f"metric {name} not computed: {why}", highlight=False)
        for s in report.skipped:
            console.print(f"skipped {s}", highlight=False)
        for name in sorted({m for _, m, _ in report.computed} - report.applied):
            if metric:  # asked for by name: say that it found nothing to measure
                console.print(f"note: {name} applies to no row of the scored units (e.g. pass@k needs at least "
                              f"k candidates per prompt)", highlight=False)
        uncovered = reranker_coverage(st, report)
        if uncovered:
            missing, total, units = uncovered
            console.print(f"note: the reranker file scores no candidate of {missing:,} of {total:,} samples with a "
                          f"reference ({units} unit(s)); bon_reranker leaves them out. Check the file's sample_id "
                          "and run_id/model/task/seed columns, or add scores for them", highlight=False)
        if report.damaged:
            path, why = report.damaged[0]
            more = f" and {len(report.damaged) - 1} more" if len(report.damaged) > 1 else ""
            console.print(f"warning: {len(report.damaged)} damaged score file(s) left out of the results ({path}: "
                          f"{why}{more}); a plain `rescore score` recomputes them", highlight=False)
        for note in plugin_notes:
            console.print(f"note: {note}", highlight=False)
        console.print(f"results: {report.results_rows} rows in {st.results_path}", highlight=False)
        for run_id, message in report.corrupt_units:
            print(f"error: unit {run_id[:12]} not scored: {message}", file=sys.stderr)
        if plugin_error is not None:
            raise plugin_error
        if report.corrupt_units:
            raise typer.Exit(1)

    @app.command("metrics")
    @handle_errors
    def metrics_cmd(plugin: PluginOpt = None, json_out: JsonOpt = False) -> None:
        """List the registered metrics with their versions, request types and descriptions."""
        from rescore.score.spec import aggregators
        from rescore.score.spec import metrics as registry

        _load_plugins(plugin)
        rows: list[dict[str, Any]] = []
        for name in registry.names():
            m = registry.get(name)
            rows.append({"name": name, "version": m.version, "request_type": m.request_type,
                         "higher_is_better": m.higher_is_better, "aggregator": m.aggregator,
                         "needs": list(m.required_params), "available": m.available() is None,
                         "description": m.description + (f" [unavailable: {m.available()}]" if m.available() else "")})
        if json_out:
            print(json.dumps(rows, indent=2))
            return
        from rich.table import Table

        t = Table(title="metrics")
        for c in ("name", "version", "type", "better", "aggregator", "description"):
            t.add_column(c)
        for r in rows:
            needs = f" (needs {', '.join(r['needs'])})" if r["needs"] else ""
            t.add_row(r["name"], str(r["version"]), r["request_type"], "higher" if r["higher_is_better"] else "lower",
                      r["aggregator"], r["description"] + needs)
        console = _console(stdout=True)
        console.print(t)
        console.print("aggregators: " + ", ".join(aggregators.names()), highlight=False)

    @app.command()
    @handle_errors
    def results(
        store: StoreOpt = DEFAULT_STORE,
        model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model name (glob). Repeatable.")] = None,
        task: Annotated[list[str] | None, typer.Option("--task", "-t", help="Task name (glob). Repeatable, or comma separated.", callback=comma_list)] = None,
        metric: Annotated[list[str] | None, typer.Option("--metric", "-M", help="Metric name (glob, e.g. 'bon_*'). Repeatable.")] = None,
        seed: Annotated[list[str] | None, typer.Option("--seed", help="Seed rows to show: 'agg' (default), a seed, or '*'.")] = None,
        subset: Annotated[list[str] | None, typer.Option("--subset", help="Subset rows: 'all' (default), a category, or '*'.")] = None,
        fmt: Annotated[str, typer.Option("--format", "-f", help="table | csv | json | markdown")] = "table",
        output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
        allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="Show runs of different precision, dtype, "
                                                  "tokenizer or chat template side by side.")] = False,
    ) -> None:
        """Print the results table (seed aggregates of whole tasks by default). Refuses runs of one task that
        differ in precision, dtype, tokenizer or chat template unless --allow-mixed."""
        from rescore.artifacts.io import atomic_write_text
        from rescore.artifacts.store import Store
        from rescore.errors import ConfigError
        from rescore.report import results as rep
        from rescore.score.engine import read_results

        if fmt not in ("table", "csv", "json", "markdown"):
            raise ConfigError(f"unknown --format {fmt!r}", hint="choose table, csv, json or markdown")
        table = read_results(Store(store))
        Store(store).units()  # units with a damaged manifest are missing from the table: named, exit 1
        rep.check_filters(table, model=model, task=task, metric=metric, seed=seed, subset=subset)
        rows = rep.filter_results(table, model=model, task=task, metric=metric,
                                  seed=seed or ["agg"], subset=subset or ["all"])
        if not rows and table.num_rows:  # each filter matches something, but not together: say so
            given = " ".join(f"--{k} {v!r}" for k, vs in (("model", model), ("task", task), ("metric", metric),
                                                           ("seed", seed), ("subset", subset)) for v in vs or ())
            raise ConfigError(f"no result row matches {given or 'the default --seed agg --subset all'} together",
                              hint="`rescore results --seed '*' --subset '*'` lists every row")
        from rescore.report.compare import guard_result_rows

        for warning in guard_result_rows(Store(store), rows, allow_mixed=allow_mixed):
            print(f"warning: {warning}", file=sys.stderr)
        if fmt == "table":
            if output is not None:
                raise ConfigError("--output needs --format csv, json or markdown")
            console = _console(stdout=True)
            console.print(rep.rich_table(rows, title=f"results ({len(rows)} rows)"))
            return
        if fmt == "markdown":
            text = rep.to_markdown(rows, rep.run_provenance(Store(store)))
        else:
            text = {"csv": rep.to_csv, "json": rep.to_json}[fmt](rows)
        if output is not None:
            atomic_write_text(output, text)
        else:
            sys.stdout.write(text)

    export_app = typer.Typer(help="Export results: tier layout for dashboards, lm-eval-style JSON.",
                             no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(export_app, name="export")

    @export_app.command("tiers")
    @handle_errors
    def export_tiers_cmd(
        outdir: Annotated[Path, typer.Argument(help="Output directory (by_checkpoint/step_<STEP>/... is written in it).")],
        store: StoreOpt = DEFAULT_STORE,
        model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Only these models (glob). Repeatable.")] = None,
    ) -> None:
        """Write tier2_ppl.json, tier3_cf.json, tier4_sft_native.json and tier4_sft_native_generations.jsonl
        per checkpoint (step from the manifest, else from the checkpoint path, else 'unknown')."""
        from rescore.artifacts.store import Store
        from rescore.report.export import export_tiers

        for p in export_tiers(Store(store), outdir, model):
            print(p)
        Store(store).units()  # units with a damaged manifest are missing from the export: named, exit 1

    @export_app.command("lm-eval")
    @handle_errors
    def export_lm_eval_cmd(
        outdir: Annotated[Path, typer.Argument(help="Output directory (<model>/results.json is written in it).")],
        store: StoreOpt = DEFAULT_STORE,
        model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Only these models (glob). Repeatable.")] = None,
    ) -> None:
        """Write an lm-evaluation-harness-style results JSON per model checkpoint."""
        from rescore.artifacts.store import Store
        from rescore.report.export import export_lm_eval

        for p in export_lm_eval(Store(store), outdir, model):
            print(p)
        Store(store).units()  # units with a damaged manifest are missing from the export: named, exit 1


def _console(stdout: bool = False):  # type: ignore[no-untyped-def]

    return out_console(stderr=not stdout, soft_wrap=True)


class _Progress:
    """Rich progress over the units being scored (only on a terminal unless forced)."""

    def __init__(self, console: Any, enabled: bool | None) -> None:
        self.console = console
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._p: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("units"),
                               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self._p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def update(self, what: str, done: int, total: int) -> None:
        if self._p is None:
            return
        if self._task is None:
            self._task = self._p.add_task("scoring", total=total)
        self._p.update(self._task, completed=done, total=total, description=f"scoring {what}"[:60])
