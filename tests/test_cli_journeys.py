"""What a user meets on the command line: model identity, seeds, overrides, bad data, filters, damaged units."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from support import cli

from rescore.artifacts.store import Store


def one_line_error(out: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert out.returncode == code, (out.returncode, out.stderr)
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_checkpoints_are_identified_by_absolute_path(tmp_path):
    for d in ("a/step_1", "b/step_1"):
        (tmp_path / d).mkdir(parents=True)
    store = str(tmp_path / "st")
    args = ["gen", "demo", "--backend", "fake", "--model", "step_1", "--store", store, "-t", "arc_easy"]
    first = cli(*args, cwd=tmp_path / "a")
    assert first.returncode == 0 and "1 generated" in first.stdout
    other = cli(*args, cwd=tmp_path / "b")  # another directory with the same name is another model
    assert other.returncode == 0 and "1 generated" in other.stdout
    same = cli("gen", "demo", "--backend", "fake", "--model", str(tmp_path / "a" / "step_1"), "--name", "step_1",
               "--store", store, "-t", "arc_easy")
    assert same.returncode == 0 and "1 already complete" in same.stdout
    paths = {u.manifest["model"]["path"] for u in Store(store).units()}
    assert paths == {str((tmp_path / "a" / "step_1").resolve()), str((tmp_path / "b" / "step_1").resolve())}
    status = cli("status", "--store", store, "--json")
    assert len(json.loads(status.stdout)["matrix"]) == 2  # two rows, not one merged cell


def test_seeds_override_keeps_deterministic_tasks_to_one_unit(tmp_path):
    store = str(tmp_path / "st")
    out = cli("gen", "demo", "--model", "fake", "--store", store, "-t", "arc_easy", "-t", "gsm8k_chat",
              "--seeds", "0,1,2")
    assert out.returncode == 0, out.stderr
    seeds = sorted((u.manifest["task"]["name"], u.manifest["seed"]) for u in Store(store).units())
    assert seeds == [("arc_easy", 0), ("gsm8k_chat", 0), ("gsm8k_chat", 1), ("gsm8k_chat", 2)]


def test_overrides_address_tasks_by_name_and_bad_paths_are_one_line(tmp_path):
    store = str(tmp_path / "st")
    out = cli("gen", "demo", "--model", "fake", "--store", store, "-t", "gsm8k_chat", "--seeds", "0",
              "-O", "tasks.gsm8k_chat.gen.n=3")
    assert out.returncode == 0, out.stderr
    (unit,) = Store(store).units()
    assert unit.manifest["gen"]["n"] == 3
    one_line_error(cli("gen", "demo", "--model", "fake", "--store", store, "-O", "tasks.99.gen.n=3"), 2, "out of range")
    one_line_error(cli("gen", "demo", "--model", "fake", "--store", store, "-O", "tasks.nosuch.gen.n=3"), 2,
                   "no list item named 'nosuch'")


def test_task_data_that_does_not_fit_is_a_one_line_error(tmp_path, shared_data):
    data = tmp_path / "data"
    data.mkdir()
    rows = (shared_data / "arc_easy" / "arc_easy.jsonl").read_text().splitlines()[:5]
    (data / "broken.jsonl").write_text("\n".join(rows[:2] + ["{not json"] + rows[2:]) + "\n")
    (data / "nogold.jsonl").write_text("\n".join(json.dumps({k: v for k, v in json.loads(r).items() if k != "gold"})
                                                 for r in rows) + "\n")
    for name in ("broken", "nogold"):
        suite = tmp_path / f"{name}.yaml"
        suite.write_text(textwrap.dedent(f"""
            name: s{name}
            data_root: {data}
            tasks:
              - name: arc
                family: multiple_choice
                source: {{path: {name}.jsonl}}
                params: {{prompt: arc, schema: llm_foundry}}
        """))
        out = cli("gen", str(suite), "--model", "fake", "--store", str(tmp_path / "st"))
        assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert f"{name}.jsonl" in out.stderr


def test_results_filters_that_match_nothing_say_so(tmp_path):
    store = str(tmp_path / "st")
    assert cli("gen", "demo", "--model", "fake", "--store", store, "-t", "arc_easy").returncode == 0
    assert cli("score", "--store", store).returncode == 0
    one_line_error(cli("results", "--store", store, "--metric", "acc_nrom"), 2, "did you mean 'acc_norm'")
    one_line_error(cli("results", "--store", store, "--task", "mmlu*"), 2, "matches no results")
    assert cli("results", "--store", store, "--metric", "acc*", "--format", "csv").returncode == 0


def test_a_damaged_manifest_does_not_block_the_store(tmp_path):
    store = tmp_path / "st"
    assert cli("gen", "demo", "--model", "fake", "--store", str(store), "-t", "arc_easy", "-t",
               "hellaswag").returncode == 0
    bad = sorted((store / "gen").iterdir())[0] / "manifest.json"
    bad.write_text(bad.read_text()[:40])
    status = cli("status", "--store", str(store))
    assert status.returncode == 0 and "1 corrupt" in status.stdout
    assert cli("ls", "--store", str(store)).returncode == 0
    verify = cli("verify", "--store", str(store), "--json")
    assert verify.returncode == 1
    assert [f["kind"] for f in json.loads(verify.stdout)["findings"]] == ["corrupt"]


def test_one_damaged_unit_does_not_stop_scoring_the_others(tmp_path):
    store = tmp_path / "st"
    assert cli("gen", "demo", "--model", "fake", "--store", str(store), "-t", "arc_easy", "-t",
               "hellaswag").returncode == 0
    units = sorted(Store(store).units(), key=lambda u: u.manifest["task"]["name"])
    damaged = units[0].parquet_path
    damaged.write_bytes(damaged.read_bytes()[:-20])
    out = cli("score", "--store", str(store))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert units[0].run_id[:12] in out.stderr and "not scored" in out.stderr
    scored = {p.parent.name for p in (store / "scores").glob("*/*.arrow")}
    assert units[1].run_id in scored and units[0].run_id not in scored


def test_sigterm_stops_like_ctrl_c_and_releases_the_lock(tmp_path):
    import os
    import signal
    import time

    store = tmp_path / "st"
    proc = subprocess.Popen([sys.executable, "-m", "rescore.cli", "gen", "demo", "--model", "fake", "--store", str(store),
                             "-t", "arc_easy", "--fake-rows-per-s", "2", "--batch-size", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # a guard against a hang: wait for the first row written under the lock
    while proc.poll() is None and time.monotonic() < deadline and not any(
            u.rows_done() >= 1 for u in Store(store).units() if (u.path / ".lock").exists()):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1]
    os.kill(proc.pid, signal.SIGTERM)  # what Slurm sends at the time limit
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "interrupted" in err and "Traceback" not in err
    assert not list((store / "gen").glob("*/.lock"))
    (unit,) = Store(store).units()
    assert not unit.complete and unit.rows_done() >= 1
    again = cli("gen", "demo", "--model", "fake", "--store", str(store), "-t", "arc_easy")
    assert again.returncode == 0 and "1 resumed" in again.stdout


def test_report_labels_do_not_change_run_ids(tmp_path):
    store = str(tmp_path / "st")
    assert cli("gen", "demo", "--model", "fake", "--store", store, "-t", "arc_easy").returncode == 0
    out = cli("gen", "demo", "--model", "fake", "--store", store, "-t", "arc_easy", "-O", "tasks.arc_easy.tier=tier2")
    assert out.returncode == 0 and "1 already complete" in out.stdout


def test_store_path_that_is_a_file_is_a_one_line_error(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    one_line_error(cli("gen", "demo", "--model", "fake", "--store", str(f), "-t", "arc_easy"), 1, "afile")


def test_status_with_a_suite_lists_missing_units_beside_complete_ones(tmp_path):
    store = str(tmp_path / "st")
    assert cli("gen", "demo", "--model", "fake", "--store", store, "-t", "arc_easy").returncode == 0
    out = cli("status", "--store", store, "--suite", "demo", "--model", "fake", "--json")
    assert out.returncode == 0, out.stderr
    matrix = json.loads(out.stdout)["matrix"]
    assert list(matrix) == ["fake"]  # one row per checkpoint, planned and generated units together
    assert matrix["fake"]["arc_easy"] == {"0": "complete"}
    assert matrix["fake"]["gsm8k_chat"] == {"0": "missing", "1": "missing"}


def test_a_metric_asked_for_that_applies_nowhere_says_so(tmp_path):
    store = str(tmp_path / "st")
    assert cli("gen", "demo", "--model", "fake", "--store", store, "-t", "gsm8k_chat").returncode == 0
    out = cli("score", "--store", store, "--metric", "pass_at_k:k=8")  # the demo samples 2 candidates
    assert out.returncode == 0 and "pass_at_8 applies to no row" in out.stdout + out.stderr
    ok = cli("score", "--store", store, "--metric", "pass_at_k:k=2")
    assert ok.returncode == 0 and "applies to no row" not in ok.stdout + ok.stderr
