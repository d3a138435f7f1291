"""A Slurm array task logs the same progress whichever way it was submitted: the submitit job function
(``slurm_job``, run here in-process, no Slurm needed) prints the lines that the sbatch script's
``rescore backfill --no-progress --shard k/N`` prints, one when each unit starts and one when it is done, then
the generation summary; plain text for a log file."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from support import ARC_EASY, GSM8K_SAMPLED, invoke, write_suite

from rescore.artifacts.store import Store
from rescore.plan.backfill import group_units, plan_matrix
from rescore.plan.executors import OFFLINE_ENV, slurm_job
from rescore.plan.matrix import load_matrix


def matrix_file(tmp: Path, shared: Path) -> Path:
    write_suite(tmp / "small.yaml", shared, [
        {**ARC_EASY, "subset_size": 6},
        {**GSM8K_SAMPLED, "subset_size": 2, "gen": {"temperature": 0.7, "n": 2, "max_new_tokens": 8}},
    ], name="small", seeds=(0, 1))
    p = tmp / "matrix.yaml"
    p.write_text(textwrap.dedent(f"""
        name: m
        backend: fake
        precision: fp32
        suites: [{tmp / 'small.yaml'}]
        stages:
          - name: s1
            path: fake/s1/step_{{step}}
            steps: [1, 2]
    """))
    return p


def normalized(text: str) -> list[str]:
    """The log without what differs between two runs of the same units: durations and rates."""
    text = re.sub(r" in \d+\.\ds \([^)]*\)", " in Ts (R)", text)
    return [re.sub(r"│ +\d+\.\d +│", "│ T │", line).rstrip() for line in text.splitlines()]


def test_submitit_job_prints_the_progress_lines_of_the_sbatch_script(tmp_path, shared_data, capsys, monkeypatch):
    for k, v in OFFLINE_ENV.items():  # what both jobs set, undone after the test
        monkeypatch.setenv(k, v)
    matrix = matrix_file(tmp_path, shared_data)
    a, b = tmp_path / "a", tmp_path / "b"
    units = plan_matrix(Store(a), load_matrix(matrix), source=str(matrix))
    groups = group_units(units)
    assert len(groups) == 2 and len(groups[0]) == 3  # per checkpoint: arc (once) + gsm8k sampled x 2 seeds
    first = groups[0]

    result = slurm_job(str(a), str(matrix), [u.plan.run_id for u in first], None)
    assert result["units"] == 3
    log = capsys.readouterr().out

    starts = [line for line in log.splitlines() if re.fullmatch(r"\[\d/3\] .+: \d+ rows", line)]
    rows = {"arc_easy": 6, "gsm8k_sampled": 2}
    assert starts == [f"[{i}/3] {u.plan.label}: {rows[u.plan.task.name]} rows" for i, u in enumerate(first, 1)]
    dones = [line for line in log.splitlines() if " done: " in line]
    assert [d.split(" done: ")[0] for d in dones] == ["[1/3]", "[2/3]", "[3/3]"]
    assert all(re.fullmatch(r"\[\d/3\] done: \d+ rows in \d+\.\ds \([\d,.]+ rows/s(, [\d,]+ tok/s)?\)", d) for d in dones)
    assert log.splitlines()[-1] == "3 units: 3 generated, 0 resumed, 0 already complete"
    assert "\x1b" not in log and "\r" not in log  # no colour codes or redrawn lines in a log file

    # the sbatch script's array task 0: the same units, the same lines (progress on stderr, summary on stdout)
    r = invoke("backfill", str(matrix), "--store", str(b), "--executor", "local", "--no-progress", "--shard", "0/2")
    assert r.exit_code == 0, r.output
    assert normalized(r.stderr + r.stdout) == normalized(log)
