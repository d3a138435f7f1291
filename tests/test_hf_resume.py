"""On the tiny transformers model: kill -9 and resume equals an uninterrupted run, and
`rescore verify determinism --matrix` regenerates a sample of a matrix's units."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support import cli

from rescore.artifacts.store import Store


def suite(tmp: Path, shared: Path) -> Path:
    p = tmp / "hf.yaml"
    p.write_text(textwrap.dedent(f"""
        name: hfresume
        data_root: {shared}
        seeds: [0]
        tasks:
          - name: arc_easy
            family: multiple_choice
            source: {{path: arc_easy/arc_easy.jsonl, split: test}}
            subset_size: 24
            params: {{prompt: arc, schema: llm_foundry}}
          - name: gsm8k_sampled
            family: gsm8k
            source: {{path: gsm8k/test.jsonl}}
            subset_size: 12
            chat: true
            gen: {{temperature: 0.8, top_p: 0.95, n: 2, max_new_tokens: 24}}
    """))
    return p


def written_lines(store: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in store.glob("gen/*/rows.jsonl"))


def tables(store: Path) -> dict:
    units = Store(store).units()
    assert units and all(u.complete for u in units)
    return {u.run_id: pq.read_table(u.parquet_path) for u in units}


@pytest.mark.slow
def test_kill_9_and_resume_on_the_tiny_model_gives_bit_identical_rows(tmp_path, tiny_model, shared_data):
    """Kill -9 at random moments while rows are being written, then resume: every column of every unit
    equals an uninterrupted run's, bit for bit."""
    s = suite(tmp_path, shared_data)
    base = ["gen", str(s), "--model", str(tiny_model), "--name", "tiny", "--device", "cpu", "--no-progress"]
    ref = tmp_path / "ref"
    out = cli(*base, "--store", str(ref), "--batch-size", "3")
    assert out.returncode == 0, out.stderr[-2000:]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rescore.cli", *base, "--store", str(killed), "--batch-size", "3"]
    rng = random.Random(20261203)
    for _ in range(4):  # random kill moments; how many land before a run ends does not matter
        before = written_lines(killed)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120  # model loading: wait for this run's first row, then a random delay
        while proc.poll() is None and time.monotonic() < deadline and written_lines(killed) <= before:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = cli(*base, "--store", str(killed), "--batch-size", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = tables(ref), tables(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].column_names == b[k].column_names and a[k].num_rows == b[k].num_rows
        for col in a[k].column_names:
            assert a[k][col].equals(b[k][col]), f"unit {k}: column {col} differs after kill -9 and resume"
    ver = cli("verify", "determinism", next(iter(a)), "--store", str(killed), "--rows", "5")
    assert ver.returncode == 0 and "bit-identical" in ver.stdout, ver.stdout + ver.stderr[-2000:]


@pytest.mark.slow  # a backfill of the matrix on the tiny model, then two regenerations
def test_verify_determinism_on_a_matrix_sample(tmp_path, tiny_model, shared_data):
    s = suite(tmp_path, shared_data)
    ck = tmp_path / "ck" / "s1" / "step_1"
    ck.parent.mkdir(parents=True)
    ck.symlink_to(tiny_model, target_is_directory=True)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(textwrap.dedent(f"""
        name: m
        backend: hf
        precision: fp32
        suites: [{s}]
        model: {{device: cpu}}
        stages:
          - {{name: s1, path: "{tmp_path}/ck/s1/step_{{step}}", steps: [1]}}
    """))
    store = tmp_path / "st"
    out = cli("backfill", str(matrix), "--store", str(store), "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    ver = cli("verify", "determinism", "--matrix", str(matrix), "--sample", "2", "--rows", "4", "--store", str(store),
              "--json")
    assert ver.returncode == 0, ver.stdout + ver.stderr[-2000:]
    reports = json.loads(ver.stdout)
    assert len(reports) == 2 and all(r["token_mismatches"] == 0 and r["bit_identical"] for r in reports)
    none = cli("verify", "determinism", "--store", str(store))
    assert none.returncode == 2 and "RUN_ID or --matrix" in none.stderr
