"""``rescore gen``: run a suite on one or more models into the store (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rescore.commands.common import (
    DEFAULT_STORE,
    INT64_MAX,
    OverridesOpt,
    StoreOpt,
    comma_list,
    handle_errors,
    out_console,
)


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    from rescore.config import seeds_check, value_problem
    from rescore.errors import ConfigError

    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} is not a comma-separated list of integers", hint="e.g. --seeds 0,1,2") from None
    try:
        seeds_check(tuple(seeds))
        why = value_problem(seeds)
    except ValueError as e:
        why = str(e)
    if why:
        raise ConfigError(f"--seeds {text!r}: {why}", hint="e.g. --seeds 0,1,2")
    return seeds


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def gen(
        model: Annotated[str, typer.Option("--model", "-m", help="Model directory, hub id, 'fake', or a models YAML.")],
        suite: Annotated[str | None, typer.Argument(help="A shipped suite's name (rescore suites) or the path to a suite YAML (or --tasks).")] = None,
        store: StoreOpt = DEFAULT_STORE,
        backend: Annotated[str | None, typer.Option(help="Backend: hf, vllm, fake, a plugin's, or package.module:Class (default: hf; fake for --model fake).")] = None,
        loader: Annotated[str | None, typer.Option(help="Checkpoint loader of the hf backend: hf, a plugin's, or package.module:function (default: hf).")] = None,
        precision: Annotated[str | None, typer.Option(help="fp32 | bf16 | fp16 | int8 | int4")] = None,
        name: Annotated[str | None, typer.Option(help="Model label in the store (default: the directory name).")] = None,
        step: Annotated[int | None, typer.Option(min=0, max=INT64_MAX, help="Training step of this checkpoint.")] = None,
        task: Annotated[list[str] | None, typer.Option("--task", "-t", help="Only these tasks of the suite. Repeatable, or comma separated.", callback=comma_list)] = None,
        lm_tasks: Annotated[str | None, typer.Option("--tasks", help="lm-evaluation-harness tasks, groups or tags, comma separated, instead of a suite (lm_eval family; the suite is written into the store).")] = None,
        limit: Annotated[int | None, typer.Option("--limit", min=1, max=INT64_MAX, help="lm_eval tasks: the first N documents of each task.")] = None,
        num_fewshot: Annotated[int | None, typer.Option("--num-fewshot", min=0, max=INT64_MAX, help="lm_eval tasks: few-shot examples (default: the task's own).")] = None,
        seeds: Annotated[str | None, typer.Option(help="Override the suite's seeds, e.g. 0,1,2.")] = None,
        batch_size: Annotated[int | None, typer.Option(min=1, max=INT64_MAX, help="Rows per batch.")] = None,
        device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
        data_root: Annotated[Path | None, typer.Option(help="Directory that local task files are relative to.")] = None,
        direct: Annotated[bool, typer.Option("--direct", help="Load task data from its source when it is not prepared.")] = False,
        override: OverridesOpt = None,
        rows_per_s: Annotated[float | None, typer.Option("--fake-rows-per-s", min=0.0, help="fake backend: simulated speed.")] = None,
        fail_after: Annotated[int | None, typer.Option("--fake-fail-after", min=0, max=INT64_MAX, help="fake backend: crash after N rows (tests).")] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress bar (default: when a terminal).")] = None,  # type: ignore[assignment]
    ) -> None:
        """Generate artifacts for SUITE with MODEL. Completed units are skipped, partial ones resume."""
        from rescore.artifacts.store import Store
        from rescore.commands.models import resolve_models
        from rescore.commands.progress import RichProgress
        from rescore.errors import ConfigError
        from rescore.gen.progress import summarize
        from rescore.gen.runner import plan_units, run_units
        from rescore.tasks.suites import load_suite

        if (suite is None) == (lm_tasks is None):
            raise ConfigError("give a SUITE or --tasks (lm-eval task names), not both" if suite else
                              "no SUITE given", hint="e.g. `rescore gen stage1 --model PATH` or "
                              "`rescore gen --tasks arc_easy,gsm8k --model PATH`")
        if lm_tasks is not None:
            from rescore.tasks.lm_eval.cli import suite_from_tasks

            suite_cfg = suite_from_tasks(lm_tasks, limit=limit, num_fewshot=num_fewshot)
        else:
            from rescore.tasks.lm_eval.cli import with_lm_eval_options

            assert suite is not None  # one of SUITE and --tasks, checked above
            suite_cfg = with_lm_eval_options(load_suite(suite, overrides=override), limit=limit, num_fewshot=num_fewshot)
        options = {}
        if rows_per_s is not None:
            options["rows_per_s"] = rows_per_s
        if fail_after is not None:
            options["fail_after"] = fail_after
        fields = {"precision": precision, "name": name, "step": step, "batch_size": batch_size, "device": device,
                  "loader": loader}
        models = resolve_models(model, backend=backend, overrides=fields)
        if options:
            models = [m.model_copy(update={"options": {**m.options, **options}}) for m in models]
        st = Store(store).check_writable()
        if lm_tasks is not None:
            from rescore.tasks.lm_eval.cli import write_provenance

            write_provenance(st.root, suite_cfg)
        plans = plan_units(st, suite_cfg, models, data_root=data_root, allow_direct=direct, tasks=task,
                           seeds=parse_seeds(seeds))

        from rescore.errors import StoreError

        skipped: StoreError | None = None
        with RichProgress(enabled=progress) as prog:
            try:
                results = run_units(st, plans, progress=prog)
            except StoreError as e:  # units skipped (damaged, or being written): the others ran, show them all
                if not hasattr(e, "results"):
                    raise
                skipped, results = e, e.results
        summarize(results, out_console())
        if skipped is not None:
            raise skipped

