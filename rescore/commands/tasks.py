"""``rescore prepare SUITE`` (freeze task data into the store) and ``rescore suites`` (list shipped suites)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from rescore.commands.common import (
    DEFAULT_STORE,
    INT64_MAX,
    JsonOpt,
    OverridesOpt,
    StoreOpt,
    comma_list,
    handle_errors,
    out_console,
)


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def prepare(
        suite: Annotated[str | None, typer.Argument(help="A shipped suite's name (rescore suites) or the path to a suite YAML (or --tasks).")] = None,
        store: StoreOpt = DEFAULT_STORE,
        task: Annotated[list[str] | None, typer.Option("--task", "-t", help="Only these tasks of the suite. Repeatable, or comma separated.", callback=comma_list)] = None,
        lm_tasks: Annotated[str | None, typer.Option("--tasks", help="lm-evaluation-harness tasks, comma separated, instead of a suite (as `rescore gen --tasks`).")] = None,
        limit: Annotated[int | None, typer.Option("--limit", min=1, max=INT64_MAX, help="lm_eval tasks: the first N documents of each task.")] = None,
        num_fewshot: Annotated[int | None, typer.Option("--num-fewshot", min=0, max=INT64_MAX, help="lm_eval tasks: few-shot examples (default: the task's own).")] = None,
        data_root: Annotated[Path | None, typer.Option(help="Directory that local task files are relative to.")] = None,
        tokenizer: Annotated[str | None, typer.Option(help="Also cache packed perplexity windows for this tokenizer (a model directory or hub id).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Prepare again even when a prepared copy exists.")] = False,
        check: Annotated[bool, typer.Option("--check", help="Only ask the Hugging Face Hub whether each source's dataset, config, split, revision and fields exist (or are gated); downloads no data, writes nothing.")] = False,
        override: OverridesOpt = None,
    ) -> None:
        """Download and freeze every task's rows into STORE/data/<task>/<fingerprint>/ (run while online).

        With --check, resolve every Hugging Face source instead and report what is missing or gated."""
        from rich.table import Table

        from rescore import tasks as task_api
        from rescore.errors import ConfigError
        from rescore.tasks.data import prepare_task
        from rescore.tasks.lm_eval.cli import suite_from_tasks, with_lm_eval_options
        from rescore.tasks.suites import load_suite, suite_data_root

        if (suite is None) == (lm_tasks is None):
            raise ConfigError("give a SUITE or --tasks (lm-eval task names), not both" if suite else "no SUITE given",
                              hint="e.g. `rescore prepare stage1` or `rescore prepare --tasks arc_easy,gsm8k`")
        if lm_tasks is not None:
            cfg = suite_from_tasks(lm_tasks, limit=limit, num_fewshot=num_fewshot)
        else:
            assert suite is not None  # one of SUITE and --tasks, checked above
            cfg = with_lm_eval_options(load_suite(suite, overrides=override), limit=limit, num_fewshot=num_fewshot)
        chosen = list(cfg.tasks)
        if task:
            for name in task:
                cfg.task(name)  # raises with the valid names
            chosen = [t for t in chosen if t.name in set(task)]
        if check:
            _check_sources(cfg, chosen)
            return
        root = suite_data_root(cfg, data_root)
        tok = _load_tokenizer(tokenizer) if tokenizer else None
        table = Table(title=f"prepared {cfg.name} into {store}")
        for col in ("task", "family", "rows", "few-shot", "fingerprint", "windows"):
            table.add_column(col)
        console = out_console()
        for t in chosen:
            data = prepare_task(store, t, data_root=root, force=force)
            windows = "-"
            if tok is not None and t.family == "ppl_packed":
                windows = str(len(task_api.build_requests(t, data, tok)))
            table.add_row(t.name, t.family, str(len(data.rows)), str(len(data.fewshot_rows)), data.data_fp, windows)
        console.print(table)

    @app.command("tasks")
    @handle_errors
    def tasks_cmd(
        pattern: Annotated[str | None, typer.Argument(help="Only names containing this text (or matching this glob).")] = None,
        lm_eval: Annotated[bool, typer.Option("--lm-eval", help="List lm-evaluation-harness's tasks, groups and tags (the lm_eval family).")] = False,
        include_path: Annotated[Path | None, typer.Option(help="--lm-eval: also the task YAMLs in this directory.")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """List the task families, or with --lm-eval the lm-eval tasks a suite (or `gen --tasks`) can name."""
        if lm_eval:
            from rescore.tasks.lm_eval.loading import matching

            items = matching(pattern, str(include_path) if include_path else None)
        else:
            from rescore.tasks import families

            items = [(n, "family") for n in families.names() if not pattern or pattern in n]
        if as_json:
            print(json.dumps([{"name": n, "kind": k} for n, k in items], indent=2))
            return
        for n, k in items:
            print(f"{n}\t{k}")

    @app.command()
    @handle_errors
    def suites(as_json: JsonOpt = False) -> None:
        """List the shipped suites (rescore/configs/suites/*.yaml, inside the package)."""
        from rescore.tasks.suites import list_suites

        items = list_suites()
        if as_json:
            print(json.dumps([{"name": n, "path": str(p), "description": d} for n, p, d in items], indent=2))
            return
        from rich.table import Table

        table = Table(title="suites")
        table.add_column("name")
        table.add_column("description")
        for n, _, d in items:
            table.add_row(n, d)
        out_console().print(table)


def _check_sources(cfg: Any, chosen: list[Any]) -> None:
    """prepare --check: one row per task with a Hugging Face source; exit 1 when any has a problem."""
    from rich.table import Table

    from rescore.tasks.source_check import check_suite, live_hub

    reports = check_suite(cfg, chosen, live_hub())
    console = out_console()
    if not reports:
        console.print(f"{cfg.name}: no task reads a Hugging Face dataset; nothing to check")
        return
    table = Table(title=f"Hugging Face sources of {cfg.name}")
    for col in ("task", "dataset", "config", "split", "revision", "status"):
        table.add_column(col, overflow="fold")
    for r in reports:
        status = "[red]problem[/red]" if r.problems else "ok, gated" if r.gated else "ok"
        table.add_row(r.task, r.dataset, r.config or "-", r.split, r.revision or "-", status)
    console.print(table)
    for r in reports:  # one line per finding, whole, for a log or a terminal of any width
        for line in r.problems:
            print(f"{r.task}: {r.dataset}: {line}")
        for line in r.notes:
            print(f"{r.task}: {r.dataset}: note: {line}")
    bad = [r.task for r in reports if r.problems]
    if bad:
        print(f"{len(bad)} of {len(reports)} sources have problems: {', '.join(bad)}")
        raise typer.Exit(1)


def _load_tokenizer(path: str):  # type: ignore[no-untyped-def]
    from rescore.errors import BackendError

    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise BackendError("--tokenizer needs transformers", hint="pip install 'rescore[hf]'") from None
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a bad path
        raise BackendError(f"cannot load a tokenizer from {path!r}: {e}", hint="give a model directory or hub id") from None
