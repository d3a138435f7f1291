"""``rescore compare`` (checkpoints against a baseline, policy gate) and ``rescore report`` (HTML page).

Both read only the store (manifests, per-row scores, results.parquet); neither imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rescore.commands.common import DEFAULT_STORE, INT64_MAX, StoreOpt, comma_list, handle_errors
from rescore.report import MAX_RESAMPLES

ModelsOpt = Annotated[list[str] | None, typer.Option(
    "--models", "-m", help="Only these checkpoints: globs on model name, label NAME@STEP or path. Repeatable.")]
SuiteOpt = Annotated[list[str] | None, typer.Option(
    "--suite", "-s", help="Only the tasks of this suite (shipped name or YAML path). Repeatable.")]
TaskOpt = Annotated[list[str] | None, typer.Option("--task", "-t", help="Only these tasks (globs). Repeatable, or comma separated.", callback=comma_list)]
MetricOpt = Annotated[list[str] | None, typer.Option("--metric", "-M", help="Only these metrics (globs). Repeatable.")]
AllowMixedOpt = Annotated[bool, typer.Option(
    "--allow-mixed", help="Put runs of different precision, dtype, tokenizer or chat template side by side anyway.")]


def _store_metrics(st: Any) -> set[str]:
    from rescore.errors import StoreError
    from rescore.score.engine import read_results

    try:
        return set(read_results(st).column("metric").to_pylist())
    except StoreError:
        return set()


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def compare(
        baseline: Annotated[str | None, typer.Option("--baseline", "-b", help="The bridge: label NAME@STEP, model name, checkpoint path, step, or run id prefix.")] = None,
        matrix: Annotated[Path | None, typer.Option("--matrix", help="Checkpoint matrix: without --baseline, compare each stage with its bridge on the stage's suites; its 'policy:' applies unless --policy is given.")] = None,
        store: StoreOpt = DEFAULT_STORE,
        models: ModelsOpt = None,
        suite: SuiteOpt = None,
        task: TaskOpt = None,
        metric: MetricOpt = None,
        policy: Annotated[Path | None, typer.Option("--policy", help="Policy YAML (its 'rules:', or a file with a 'policy:' key); exit 1 when a gated row fails.")] = None,
        fmt: Annotated[str, typer.Option("--format", "-f", help="markdown | csv | json")] = "markdown",
        output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
        resamples: Annotated[int, typer.Option("--resamples", min=1, max=MAX_RESAMPLES, help="Paired bootstrap resamples.")] = 2000,
        level: Annotated[float, typer.Option("--level", help="Confidence level of the intervals.")] = 0.95,
        seed: Annotated[int, typer.Option("--seed", min=0, max=INT64_MAX, help="Bootstrap seed (each task and checkpoint pair draws from a stream derived from it).")] = 0,
        allow_mixed: AllowMixedOpt = False,
    ) -> None:
        """Deltas of each checkpoint against a baseline (--baseline, or each stage's bridge from --matrix) per
        task and metric, with a paired bootstrap CI and p-value over shared samples, and pass/fail against
        --policy (exit code 1 when the policy fails)."""
        from rescore.artifacts.io import atomic_write_text
        from rescore.artifacts.store import Store
        from rescore.errors import ConfigError, UserError
        from rescore.plan.policy import load_policy
        from rescore.report.compare import compare as run_compare
        from rescore.report.compare import render, summary_line
        from rescore.report.results import check_patterns

        if fmt not in ("markdown", "csv", "json"):
            raise ConfigError(f"unknown --format {fmt!r}", hint="choose markdown, csv or json")
        pol = load_policy(policy) if policy is not None else None
        if pol is None and matrix is not None:
            from rescore.report.compare import load_matrix_file

            pol = load_matrix_file(matrix).policy
        result = run_compare(Store(store), baseline, matrix=matrix, models=models, suites=suite, tasks=task, metrics=metric,
                             policy=pol, allow_mixed=allow_mixed, resamples=resamples, level=level, seed=seed)
        check_patterns("metric", metric or (), {r.metric for r in result.rows}, what="compared metric",
                       listing="metrics in the store", names=lambda: _store_metrics(Store(store)))
        if pol is not None and result.rows and not result.gated:
            raise UserError("the policy gated no row: none of its rules applies to the compared metrics",
                            hint="check the policy's metric/task patterns against `rescore results`")
        if pol is not None and not result.rows:
            raise UserError("nothing was compared, so the policy cannot pass",
                            hint="check --baseline, --models, --task and --metric against `rescore status` and "
                                 "`rescore results`")
        text = render(result, fmt)
        if output is not None:
            atomic_write_text(output, text)
        else:
            sys.stdout.write(text)
        if fmt != "markdown" or output is not None:
            print(summary_line(result), file=sys.stderr)
        if pol is not None and result.failed:
            raise typer.Exit(1)

    @app.command()
    @handle_errors
    def report(
        out: Annotated[Path, typer.Argument(help="The HTML file to write (self-contained: plots inline, no network).")],
        store: StoreOpt = DEFAULT_STORE,
        models: ModelsOpt = None,
        suite: SuiteOpt = None,
        task: TaskOpt = None,
        metric: MetricOpt = None,
        baseline: Annotated[str | None, typer.Option("--baseline", "-b", help="Draw this checkpoint as the line on every plot (default: per stage, the last checkpoint of the previous stage).")] = None,
        matrix: Annotated[Path | None, typer.Option("--matrix", help="Checkpoint matrix: its stage order and bridges for the plots.")] = None,
        title: Annotated[str | None, typer.Option("--title", help="Page title.")] = None,
        allow_mixed: AllowMixedOpt = False,
    ) -> None:
        """Write one static HTML page: a summary table per task, per task a figure of metric-vs-step plots (one
        subplot per metric, where there are at least two steps) with the bridge line and seed spread, best-of-n
        selection, Tier4 by category, and run provenance."""
        from rescore.artifacts.store import Store
        from rescore.report.html import write_report
        from rescore.report.results import check_patterns
        from rescore.score.engine import read_results

        if metric:
            t = read_results(Store(store))
            check_patterns("metric", metric, set(t.column("metric").to_pylist()), what="scored metric",
                           listing="metrics in the store")

        path = write_report(Store(store), out, models=models, suites=suite, tasks=task, metrics=metric,
                            baseline=baseline, matrix=matrix, title=title, allow_mixed=allow_mixed)
        print(path)

    @app.command()
    @handle_errors
    def view(
        out: Annotated[Path, typer.Argument(help="The HTML file to write (self-contained: samples embedded, no network).")],
        store: StoreOpt = DEFAULT_STORE,
        models: ModelsOpt = None,
        suite: SuiteOpt = None,
        task: TaskOpt = None,
        baseline: Annotated[str | None, typer.Option("--baseline", "-b", help="With --against: show the samples whose result flipped between the two checkpoints.")] = None,
        against: Annotated[str | None, typer.Option("--against", help="The later checkpoint of the flips (with --baseline).")] = None,
    ) -> None:
        """Write a per-sample viewer: per task a searchable, filterable table of samples, a page per sample
        (prompt, choices with loglikelihoods, candidates with tokens shaded by logprob, least likely tokens),
        and with --baseline/--against the samples that flipped, sorted by the change of the gold loglikelihood."""
        from rescore.artifacts.store import Store
        from rescore.report.view import write_view

        st = Store(store)
        path = write_view(st, out, models=models, suites=suite, tasks=task, baseline=baseline, against=against)
        print(path)
        st.units()  # units with a damaged manifest are missing from the page: named, exit 1
