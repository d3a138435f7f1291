"""``rescore demo``: the whole journey on a tiny model built offline and the real data shipped in the package."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rescore.commands.common import StoreOpt, handle_errors, out_console

if TYPE_CHECKING:
    from rescore.config import SuiteConfig

DEMO_STORE = Path("rescore-demo")


def compact_table(rows: list[dict], title: str):  # type: ignore[no-untyped-def]
    """Task | metric | value ± stderr | n: narrow enough for an 80-column terminal."""
    from rich.table import Table

    from rescore.report.results import fmt, fmt_value

    t = Table(title=title)
    t.add_column("task")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("± stderr", justify="right")
    t.add_column("n", justify="right")
    for r in rows:
        t.add_row(str(r["task"]), str(r["metric"]), fmt_value(r), fmt(r.get("stderr")), fmt(r.get("n")))
    return t


def tokenizer_text(suite: SuiteConfig) -> Path:
    """The demo suite's WikiText-2 file: the tiny tokenizer learns from the text the demo evaluates, which the
    package ships (a wheel has no ../shared/data next to it)."""
    from rescore.tasks.sources import resolve_path
    from rescore.tasks.suites import suite_data_root

    source = suite.task("wikitext2_packed").source
    assert source is not None and source.path is not None  # the shipped demo suite reads a local file
    return resolve_path(source.path, suite_data_root(suite))


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def demo(
        store: StoreOpt = DEMO_STORE,
        backend: Annotated[str, typer.Option(help="hf (a tiny real Llama) or fake (no model).")] = "hf",
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress bar.")] = None,  # type: ignore[assignment]
    ) -> None:
        """Build a tiny Llama + tokenizer offline, generate the `demo` suite on the data shipped in the package
        (WikiText-2, HellaSwag, ARC-Easy, GSM8K chat with 2 seeds x 2 candidates, SFT-native), score it, print
        results.

        Runs again in seconds: the model, the artifacts and the scores are reused from the store."""

        from rescore.artifacts.store import Store
        from rescore.commands.progress import RichProgress
        from rescore.config import ModelConfig
        from rescore.errors import BackendError
        from rescore.gen.progress import summarize
        from rescore.gen.runner import plan_units, run_units
        from rescore.report import results as rep
        from rescore.score.engine import read_results, score_store
        from rescore.tasks.suites import load_suite

        console = out_console()
        t0 = time.perf_counter()
        st = Store(store)
        st.root.mkdir(parents=True, exist_ok=True)
        suite = load_suite("demo")
        if backend == "hf":
            try:
                from rescore.gen.tiny import build_tiny_model
            except ImportError as e:
                raise BackendError(f"the demo needs the transformers backend ({e.name} is not installed)",
                                   hint='pip install -e ".[hf]" (or run `rescore demo --backend fake`)') from None
            console.print("building a tiny Llama and tokenizer (offline, cached in the store)...", highlight=False)
            model_dir = build_tiny_model(st.root / "models" / "tiny-llama", text_path=tokenizer_text(suite))
            model = ModelConfig(name="tiny-llama", path=str(model_dir), backend="hf", precision="fp32", device="cpu",
                                step=0, stage="demo", batch_size=8)
        elif backend == "fake":
            model = ModelConfig(name="fake", path="fake", backend="fake", step=0, stage="demo")
        else:
            from rescore.errors import ConfigError

            raise ConfigError(f"unknown demo backend {backend!r}", hint="use --backend hf or --backend fake")
        plans = plan_units(st, suite, [model])
        with RichProgress(enabled=progress) as prog:
            results = run_units(st, plans, progress=prog)
        summarize(results, console)
        report = score_store(st)
        console.print(f"scored {report.units_complete} unit(s) in {report.seconds:.1f}s", highlight=False)
        rows = rep.filter_results(read_results(st), seed=["agg"], subset=["all"])
        console.print(compact_table(rows, f"demo results: {model.name} ({model.precision}), mean over seeds"))
        console.print(
            f"done in {time.perf_counter() - t0:.0f}s. Next: `rescore status --store {store}`, "
            f"`rescore results --store {store} --format markdown`, `rescore report --store {store} report.html`",
            highlight=False,
        )
