"""Rough edges a new user meets first: comma lists for -t, did-you-mean on a task name, the demo store ignored by git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from support import invoke

ROOT = Path(__file__).resolve().parents[1]


def test_task_option_takes_comma_lists_and_names_the_closest_task(tmp_path: Path) -> None:
    store = tmp_path / "store"
    r = invoke("gen", "demo", "--model", "fake", "--store", str(store), "--no-progress", "-t", "hellaswag,arc_easy,gsm8k_chat")
    assert r.exit_code == 0, r.output
    r = invoke("gen", "demo", "--model", "fake", "--store", str(store), "--no-progress", "-t", "hellaswag,arc_eazy")
    assert r.exit_code == 2
    assert "has no task 'arc_eazy' (did you mean arc_easy? tasks: wikitext2_packed, " in " ".join(r.output.split())
    assert "[" not in r.output  # the valid names as a sentence, not a Python list
    assert invoke("score", "--store", str(store), "--no-progress").exit_code == 0
    r = invoke("results", "--store", str(store), "-t", "hellaswag,arc_easy", "--format", "csv")
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    col = lines[0].split(",").index("task")
    assert {line.split(",")[col] for line in lines[1:]} == {"hellaswag", "arc_easy"}  # gsm8k_chat left out


def test_the_demo_store_is_ignored_by_git() -> None:
    from rescore.commands.demo import DEMO_STORE

    if not (ROOT / ".git").exists():
        return
    r = subprocess.run(["git", "check-ignore", "-q", f"{DEMO_STORE}/x"], cwd=ROOT, check=False)
    assert r.returncode == 0, f"{DEMO_STORE}/ is not in .gitignore"


def test_piped_tables_and_progress_never_cut_a_model_run_id_or_task(tmp_path: Path) -> None:
    """Not a terminal (a log file, a pipe): every table prints full width and no progress line wraps."""
    from support import cli

    long = "stage1-step100-a-checkpoint-name-long-enough-to-be-cut-at-eighty-columns"
    models = tmp_path / "m.yaml"
    models.write_text(f"models:\n  - {{name: {long}, path: fake, backend: fake}}\n"
                      f"  - {{name: {long}-2, path: fake, backend: fake}}\n", encoding="utf-8")
    store = tmp_path / "store"
    r = cli("gen", "demo", "--model", models, "--store", store, "--no-progress", "-t", "hellaswag")
    assert r.returncode == 0, r.stderr
    assert f"{long}-2" in r.stdout and f"[2/2] {long}-2 · hellaswag · seed 0: 8 rows" in r.stderr.splitlines()
    r = cli("status", "--store", store)
    assert r.returncode == 0 and f" {long} " in r.stdout and f" {long}-2 " in r.stdout
    r = cli("ls", "--store", store)
    runs = [p.name for p in (store / "gen").iterdir()]
    assert all(run in r.stdout for run in runs) and f"{long}-2" in r.stdout


def test_the_scorer_installs_with_every_builtin_metric_available() -> None:
    """math-verify comes with the core install, so `rescore score` has no per-run note that math_equiv is
    skipped; every built-in metric can run."""
    from importlib.metadata import requires

    from rescore.score.spec import metrics

    core = [r for r in requires("rescore") or [] if "extra ==" not in r]
    assert any(r.startswith("math-verify") for r in core), core
    assert {n: metrics.get(n).available() for n in metrics.names() if metrics.get(n).available()} == {}


def test_status_marks_seeds_a_task_does_not_run_and_says_why(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert invoke("gen", "demo", "--model", "fake", "--store", str(store), "--no-progress", "-t", "arc_easy,gsm8k_chat").exit_code == 0
    r = invoke("status", "--store", str(store))
    assert r.exit_code == 0, r.output
    rows = {line.split("│")[2].strip(): [c.strip() for c in line.split("│")[3:5]] for line in r.output.splitlines()
            if line.startswith("│")}
    assert rows == {"arc_easy": ["complete", "-"], "gsm8k_chat": ["complete", "complete"]}
    assert "-: no unit at that seed (a deterministic task runs at one seed" in r.output


def test_results_name_the_suite_when_a_task_is_in_two_suites_of_a_checkpoint(tmp_path: Path) -> None:
    """A bridge scored on its own stage's suite and on the next one's: two arc_easy rows, told apart."""
    import yaml

    from rescore.tasks.suites import suite_path

    demo = yaml.safe_load(suite_path("demo").read_text())
    demo.update(name="next_stage", data_root=str(ROOT / "rescore" / "data"),
                tasks=[{**t, "subset_size": 4} for t in demo["tasks"] if t["name"] == "arc_easy"])
    other = tmp_path / "next_stage.yaml"
    other.write_text(yaml.safe_dump(demo), encoding="utf-8")
    store = tmp_path / "store"
    for suite in ("demo", str(other)):
        r = invoke("gen", suite, "--model", "fake", "--store", str(store), "--no-progress", "-t", "arc_easy")
        assert r.exit_code == 0, r.output
    assert invoke("score", "--store", str(store), "--no-progress").exit_code == 0
    r = invoke("results", "--store", str(store), "--metric", "acc")
    assert r.exit_code == 0, r.output
    assert "suite" in r.output and "next_stage" in r.output and "demo" in r.output
    r = invoke("results", "--store", str(store), "--metric", "acc", "--format", "markdown")
    assert "| arc_easy (suite demo) | acc" in r.output and "| arc_easy (suite next_stage) | acc" in r.output


def test_export_lm_eval_keys_and_versions_look_like_lm_evals(tmp_path: Path) -> None:
    import json

    store = tmp_path / "store"
    assert invoke("gen", "demo", "--model", "fake", "--store", str(store), "--no-progress",
                  "-t", "hellaswag,wikitext2_docs").exit_code == 0
    assert invoke("score", "--store", str(store), "--no-progress").exit_code == 0
    r = invoke("export", "lm-eval", str(tmp_path / "out"), "--store", str(store))
    assert r.exit_code == 0 and r.output.strip() == str(tmp_path / "out" / "fake" / "results.json")  # says what it wrote
    doc = json.loads((tmp_path / "out" / "fake" / "results.json").read_text())
    keys = set(doc["results"])
    assert {"hellaswag", "wikitext2_docs"} <= keys and "wikitext2_docs_wikitext2_docs" not in keys
    assert all(" " not in k and k == k.lower() for k in keys), keys
    assert "hellaswag_education_and_communications" in keys
    assert doc["results"]["hellaswag_education_and_communications"]["alias"] == " - Education and Communications"
    assert all(isinstance(v, float) for v in doc["versions"].values()), doc["versions"]
    assert doc["configs"]["hellaswag"]["metadata"]["rescore_metric_versions"]["acc"] == 1


def test_show_rows_is_one_json_document_and_a_closed_pipe_is_not_an_error(tmp_path: Path) -> None:
    import json

    from support import cli

    store = tmp_path / "store"
    assert invoke("gen", "demo", "--model", "fake", "--store", str(store), "--no-progress",
                  "-t", "gsm8k_chat,hellaswag").exit_code == 0
    runs = {json.loads((p / "manifest.json").read_text())["task"]["name"]: p.name for p in (store / "gen").iterdir()}
    r = invoke("show", runs["gsm8k_chat"], "--store", str(store), "--rows", "2")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # one document, not a manifest followed by JSON lines
    assert doc["manifest"]["run_id"] == runs["gsm8k_chat"] and len(doc["rows"]) == 2
    row = doc["rows"][0]
    assert isinstance(row["messages"], list) and isinstance(row["meta"], dict) and isinstance(row["sampling"], dict)
    # `| head`: the reader stops early; rescore stops quietly
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "rescore.cli", "show", runs["hellaswag"], "--store", str(store),
                          "--rows", "100"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.read(100)
    p.stdout.close()
    err = p.stderr.read().decode() if p.stderr else ""
    assert p.wait(timeout=120) == 0 and err == "", err
    assert cli("show", runs["hellaswag"], "--store", str(store)).returncode == 0


@pytest.mark.slow  # over 5 s on 2 cores: the slow tier (CI runs it too)
def test_gen_prints_its_own_progress_and_no_library_progress_bars(tmp_path: Path, tiny_model: Path) -> None:
    from support import cli

    r = cli("gen", "demo", "--model", tiny_model, "--store", tmp_path / "store", "--no-progress", "-t", "arc_easy",
            "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "arc_easy · seed 0: 8 rows" in r.stderr
    for bar in ("Loading weights", "Writing model shards", "it/s]", "%|"):
        assert bar not in r.stderr and bar not in r.stdout, bar


def test_an_ece_interval_stays_within_0_and_1_and_counts_print_as_integers() -> None:
    import numpy as np

    import rescore.score.aggregate  # noqa: F401  (registers the built-in aggregators)
    from rescore.report.results import fmt_value
    from rescore.score.spec import aggregators

    ece = aggregators.get("ece")
    conf = np.array([0.99, 0.99, 0.99, 0.99, 0.15])  # confident and wrong: ECE 0.82, a wide interval
    agg = ece.finish(ece.stats({"conf": conf, "correct": np.zeros(5)}, {}), {})
    assert agg.value is not None and agg.ci_high is not None and agg.ci_low is not None
    assert 0.0 <= agg.ci_low <= agg.value <= agg.ci_high <= 1.0
    assert agg.value + 1.96 * (agg.stderr or 0) > 1.0  # the clip is what keeps it there
    assert fmt_value({"value": 15457.0, "aggregator": "sum"}) == "15457"
    assert fmt_value({"value": 0.5, "aggregator": "mean"}) == "0.5000"
