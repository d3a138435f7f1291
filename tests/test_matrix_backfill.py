"""Checkpoint matrices, plan, backfill (local, workers, shards, sbatch script), backfill from results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import ARC_EASY, GSM8K_SAMPLED, cli, write_suite

from rescore.artifacts.store import Store

ROOT = Path(__file__).resolve().parents[1]


def small_suite(tmp: Path, shared: Path) -> Path:
    return write_suite(tmp / "small.yaml", shared, [
        {**ARC_EASY, "subset_size": 20},
        {**GSM8K_SAMPLED, "subset_size": 6, "gen": {"temperature": 0.7, "n": 2, "max_new_tokens": 32}},
    ], name="small", seeds=(0, 1))


def write_matrix(tmp: Path, suite: Path, extra: str = "", backend: str = "fake", root: str = "fake") -> Path:
    p = tmp / "matrix.yaml"
    p.write_text(textwrap.dedent(f"""
        name: m
        backend: {backend}
        precision: fp32
        suites: [{suite}]
        stages:
          - name: s1
            path: {root}/s1/step_{{step}}
            steps: [1, 2]
          - name: s2
            path: {root}/s2/step_{{step}}
            steps: [1]
            bridge: s1
    """) + extra)
    return p


def plan_json(matrix: Path, store: Path, *extra: str) -> dict:
    out = cli("plan", str(matrix), "--store", str(store), "--json", *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_plan_then_backfill_runs_only_missing_units(tmp_path, shared_data):
    matrix = write_matrix(tmp_path, small_suite(tmp_path, shared_data))
    store = tmp_path / "st"
    p = plan_json(matrix, store)
    # 3 checkpoints x (arc once + gsm8k x 2 seeds); the bridge (s1 step 2) shares its units with stage s1
    assert len(p["units"]) == 9 and {u["state"] for u in p["units"]} == {"missing"}
    assert len(p["would_run"]) == 9 and p["jobs"] == 3
    assert {u["checkpoint"] for u in p["units"]} == {"s1-step1", "s1-step2", "s2-step1"}

    # make one unit complete and one partial by hand, then backfill the rest
    first = cli("gen", str(tmp_path / "small.yaml"), "--model", "fake", "--name", "s1-step1", "--step", "1",
                "--store", str(store), "-t", "arc_easy")
    assert first.returncode == 0, first.stderr
    p = plan_json(matrix, store)
    states = {(u["checkpoint"], u["task"], u["seed"]): u["state"] for u in p["units"]}
    # a plain gen of the same checkpoint label but without the matrix's stage/path is a different unit
    assert list(states.values()).count("complete") == 0

    out = cli("backfill", str(matrix), "--store", str(store), "--no-progress")
    assert out.returncode == 0, out.stderr
    p = plan_json(matrix, store)
    assert {u["state"] for u in p["units"]} == {"complete"} and p["would_run"] == []
    again = cli("backfill", str(matrix), "--store", str(store))
    assert again.returncode == 0 and "nothing to run" in again.stdout


def test_backfill_resumes_partial_units_and_dry_run_writes_nothing(tmp_path, shared_data):
    suite = small_suite(tmp_path, shared_data)
    matrix = write_matrix(tmp_path, suite, extra="model:\n  options: {fail_after: 5}\n")
    store = tmp_path / "st"
    dry = cli("backfill", str(matrix), "--store", str(store), "--dry-run")
    assert dry.returncode == 0 and "would run 9 unit(s)" in dry.stdout.replace("\n", " ")
    assert not (store / "gen").exists()
    crashed = cli("backfill", str(matrix), "--store", str(store), "--no-progress")
    assert crashed.returncode == 1 and "injected failure" in crashed.stderr
    p = plan_json(matrix, store)
    assert [u["state"] for u in p["units"]].count("partial") == 1
    # the same matrix without failure injection has the same run ids: it resumes the partial unit
    fixed = write_matrix(tmp_path, suite)
    ok = cli("backfill", str(fixed), "--store", str(store), "--no-progress")
    assert ok.returncode == 0, ok.stderr
    assert "resumed" in ok.stdout
    assert {u["state"] for u in plan_json(fixed, store)["units"]} == {"complete"}


@pytest.mark.slow  # three backfill runs, one with three worker processes
def test_shards_partition_the_plan_and_parallel_workers_share_one_store(tmp_path, shared_data):
    matrix = write_matrix(tmp_path, small_suite(tmp_path, shared_data))
    store = tmp_path / "st"
    out = cli("backfill", str(matrix), "--store", str(store), "--shard", "1/3", "--no-progress")
    assert out.returncode == 0, out.stderr
    done = {u.manifest["model"]["name"] for u in Store(store).units()}
    assert len(done) == 1  # one checkpoint's group
    par = cli("backfill", str(matrix), "--store", str(store), "--max-parallel", "3")
    assert par.returncode == 0, par.stderr
    assert {u["state"] for u in plan_json(matrix, store)["units"]} == {"complete"}
    bad = cli("backfill", str(matrix), "--store", str(store), "--shard", "3/3")
    assert bad.returncode == 2 and "0 <= i < N" in bad.stderr


@pytest.mark.slow  # runs the emitted script once per array task
def test_emit_sbatch_script_runs_every_array_task(tmp_path, shared_data):
    matrix = write_matrix(tmp_path, small_suite(tmp_path, shared_data))
    store = tmp_path / "st"
    script = tmp_path / "job.sbatch"
    out = cli("backfill", str(matrix), "--store", str(store), "--emit-sbatch", str(script), "--partition", "gpu",
              "--gres", "gpu:1", "--time", "01:30:00", "--sbatch-opt", "--constraint=a100", "--max-parallel", "2")
    assert out.returncode == 0, out.stderr
    text = script.read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1", "#SBATCH --time=01:30:00",
                 "#SBATCH --constraint=a100", "export HF_HUB_OFFLINE=1", '--shard "${SLURM_ARRAY_TASK_ID}/3"'):
        assert line in text, line
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    for k in range(3):  # what sbatch would do: run the script once per array index
        r = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(k)}, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert {u["state"] for u in plan_json(matrix, store)["units"]} == {"complete"}


def test_missing_checkpoints_are_reported_all_at_once(tmp_path, shared_data):
    (tmp_path / "ck" / "s1" / "step_1").mkdir(parents=True)
    (tmp_path / "ck" / "s1" / "step_1" / "config.json").write_text("{}")
    matrix = write_matrix(tmp_path, small_suite(tmp_path, shared_data), backend="hf", root=str(tmp_path / "ck"))
    out = cli("plan", str(matrix), "--store", str(tmp_path / "st"))
    assert out.returncode == 2
    assert "s1 step 2" in out.stderr and "s2 step 1" in out.stderr and "s1 step 1:" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_matrix_validation_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: m\nbackend: fak\nsuites: [nosuite]\nstages:\n  - {name: a, path: /x, steps: [1], bridge: zz}\n")
    out = cli("validate", str(bad))
    assert out.returncode == 2
    assert "{step}" in out.stdout and "bridge" in out.stdout


def test_backfill_from_existing_results(tmp_path, shared_data):
    suite = small_suite(tmp_path, shared_data)
    res = tmp_path / "results"
    res.mkdir()
    for step, seed in ((100, 0), (200, 3)):
        (res / f"results_{step}.json").write_text(json.dumps({
            "results": {"arc_easy": {"acc,none": 0.5}, "gsm8k_cot": {"exact_match,strict-match": 0.1},
                        "unmapped": {}},
            "configs": {"arc_easy": {"task": "arc_easy", "num_fewshot": 0, "output_type": "multiple_choice"},
                        "gsm8k_cot": {"task": "gsm8k_cot", "output_type": "generate_until",
                                      "generation_kwargs": {"until": ["Question:"], "do_sample": True,
                                                            "temperature": 0.6, "max_gen_toks": 16}}},
            "n-shot": {"arc_easy": 0, "gsm8k_cot": 0},
            "config": {"model": "hf", "model_args": f"pretrained=/ck/stage1/step_{step},dtype=bfloat16",
                       "random_seed": seed},
        }))
    mapping = tmp_path / "map.yaml"
    mapping.write_text(textwrap.dedent(f"""
        suite: {suite}
        tasks: {{arc_easy: arc_easy, gsm8k_cot: gsm8k_sampled}}
        model: {{backend: fake, stage_regex: "(stage\\\\d+)"}}
    """))
    store = tmp_path / "st"
    out = cli("plan", "--from-results", str(res / "results_*.json"), "--map", str(mapping), "--store", str(store),
              "--json")
    assert out.returncode == 0, out.stderr
    units = json.loads(out.stdout)["units"]
    assert sorted((u["checkpoint"], u["step"], u["task"], u["seed"]) for u in units) == [
        ("step_100", 100, "arc_easy", 0), ("step_100", 100, "gsm8k_sampled", 0),
        ("step_200", 200, "arc_easy", 3), ("step_200", 200, "gsm8k_sampled", 3)]
    run = cli("backfill", "--from-results", str(res / "results_*.json"), "--map", str(mapping), "--store", str(store),
              "--no-progress")
    assert run.returncode == 0, run.stderr
    gen_units = [u for u in Store(store).units() if u.request_type == "generate"]
    assert {u.manifest["gen"]["temperature"] for u in gen_units} == {0.6}
    assert {u.manifest["model"]["precision"] for u in Store(store).units()} == {"bf16"}
    assert {u.manifest["model"]["stage"] for u in Store(store).units()} == {"stage1"}
    bad = cli("plan", "--from-results", str(tmp_path / "nothing*.json"), "--map", str(mapping), "--store", str(store))
    assert bad.returncode == 1 and "no results files" in bad.stderr
